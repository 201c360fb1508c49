"""imaging: de-identified export jobs (PS3.15 E.1 Basic Profile exports of a study, made in the background)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 17:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import telemed.core.db

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "imaging_export",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("requested_by", sa.Uuid(), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("options", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
                  nullable=False),  # fmt: skip
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("instances_total", sa.Integer(), nullable=False),
        sa.Column("instances_done", sa.Integer(), nullable=False),
        sa.Column("instances_skipped", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_token", sa.Uuid(), nullable=True),
        sa.Column("lease_until", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("reason", sa.String(length=64), nullable=True),
        sa.Column("blob_key", sa.String(length=400), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("created_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("started_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("finished_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("expires_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["requested_by"], ["user_account.id"], name=op.f("fk_imaging_export_requested_by_user_account")
        ),
        sa.ForeignKeyConstraint(
            ["study_pk"], ["imaging_study.id"], name=op.f("fk_imaging_export_study_pk_imaging_study")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_export")),
    )
    with op.batch_alter_table("imaging_export", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_export_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_imaging_export_requested_by"), ["requested_by"], unique=False)
        batch_op.create_index(batch_op.f("ix_imaging_export_status"), ["status"], unique=False)
        batch_op.create_index(batch_op.f("ix_imaging_export_study_pk"), ["study_pk"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("imaging_export", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_export_study_pk"))
        batch_op.drop_index(batch_op.f("ix_imaging_export_status"))
        batch_op.drop_index(batch_op.f("ix_imaging_export_requested_by"))
        batch_op.drop_index(batch_op.f("ix_imaging_export_expires_at"))
    op.drop_table("imaging_export")
