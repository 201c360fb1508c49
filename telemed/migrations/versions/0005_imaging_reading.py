"""imaging: the reading workflow (reading tasks on county worklists, and the radiologists' reports)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 16:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import telemed.core.db

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "imaging_reading_task",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("study_pk", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("worklist_code", sa.String(length=100), nullable=False),
        sa.Column("target_facility_id", sa.Uuid(), nullable=True),
        sa.Column("sending_facility_id", sa.Uuid(), nullable=True),
        sa.Column("priority", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("claimed_by", sa.Uuid(), nullable=True),
        sa.Column("claimed_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("routed_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("completed_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["claimed_by"], ["user_account.id"], name=op.f("fk_imaging_reading_task_claimed_by_user_account")
        ),
        sa.ForeignKeyConstraint(
            ["sending_facility_id"], ["facility.id"], name=op.f("fk_imaging_reading_task_sending_facility_id_facility")
        ),
        sa.ForeignKeyConstraint(
            ["study_pk"], ["imaging_study.id"], name=op.f("fk_imaging_reading_task_study_pk_imaging_study")
        ),
        sa.ForeignKeyConstraint(
            ["target_facility_id"], ["facility.id"], name=op.f("fk_imaging_reading_task_target_facility_id_facility")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_reading_task")),
        sa.UniqueConstraint("study_pk", name=op.f("uq_imaging_reading_task_study_pk")),
    )
    with op.batch_alter_table("imaging_reading_task", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_imaging_reading_task_priority"), ["priority"], unique=False)
        batch_op.create_index(batch_op.f("ix_imaging_reading_task_status"), ["status"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_imaging_reading_task_target_facility_id"), ["target_facility_id"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_imaging_reading_task_worklist_code"), ["worklist_code"], unique=False)

    op.create_table(
        "imaging_report",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("task_id", sa.Uuid(), nullable=False),
        sa.Column("findings", sa.Text(), nullable=False),
        sa.Column("impression", sa.Text(), nullable=False),
        sa.Column("author_id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("signed_at", telemed.core.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("created_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", telemed.core.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["author_id"], ["user_account.id"], name=op.f("fk_imaging_report_author_id_user_account")
        ),
        sa.ForeignKeyConstraint(
            ["task_id"], ["imaging_reading_task.id"], name=op.f("fk_imaging_report_task_id_imaging_reading_task")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_imaging_report")),
        sa.UniqueConstraint("task_id", name=op.f("uq_imaging_report_task_id")),
    )


def downgrade() -> None:
    op.drop_table("imaging_report")
    with op.batch_alter_table("imaging_reading_task", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_imaging_reading_task_worklist_code"))
        batch_op.drop_index(batch_op.f("ix_imaging_reading_task_target_facility_id"))
        batch_op.drop_index(batch_op.f("ix_imaging_reading_task_status"))
        batch_op.drop_index(batch_op.f("ix_imaging_reading_task_priority"))
    op.drop_table("imaging_reading_task")
