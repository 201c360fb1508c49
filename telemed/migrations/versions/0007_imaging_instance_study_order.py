"""imaging: serve a study's instances in metadata order from an index (no sort of the stored JSON)

The composite index (study_pk, series_pk, instance_number, id) replaces the index on study_pk alone: it answers
the same look-ups and gives WADO-RS metadata its order, which SQLite otherwise sorted in a temporary b-tree.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 18:20:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.create_index(
            "ix_imaging_instance_study_order", ["study_pk", "series_pk", "instance_number", "id"], unique=False
        )
        batch_op.drop_index(batch_op.f("ix_imaging_instance_study_pk"))


def downgrade() -> None:
    with op.batch_alter_table("imaging_instance", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_instance_study_pk"), ["study_pk"], unique=False)
        batch_op.drop_index("ix_imaging_instance_study_order")
