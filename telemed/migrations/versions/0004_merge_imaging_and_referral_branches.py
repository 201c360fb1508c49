"""Merge the imaging and referral branches, which each grew from 0001 in parallel

Revision ID: 0004
Revises: 0002_imaging, 0003_referral
Create Date: 2026-11-28 16:06:57.327107
"""

from collections.abc import Sequence


revision: str = '0004'
down_revision: tuple[str, ...] = ('0002_imaging', '0003_referral')
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
