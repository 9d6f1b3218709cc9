"""workers: pilot workers the harvester submits, and its per-queue status

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 15:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("harvester", sa.String(length=128), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("provider_job_id", sa.String(length=128), nullable=True),
        sa.Column("provider_data", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("batch_state", sa.String(length=16), nullable=True),
        sa.Column("cores", sa.Integer(), nullable=False),
        sa.Column("memory_mb", sa.Integer(), nullable=True),
        sa.Column("pilot_id", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("submitted_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["pilot_id"], ["pilots.id"], name=op.f("fk_workers_pilot_id_pilots")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index("ix_workers_queue_state", "workers", ["queue", "state"], unique=False)
    op.create_index("ix_workers_queue_submitted", "workers", ["queue", "submitted_at"], unique=False)
    op.create_index("ix_workers_state_harvester", "workers", ["state", "harvester"], unique=False)
    op.create_index("ix_workers_pilot", "workers", ["pilot_id"], unique=False)
    op.create_table(
        "harvester_queues",
        sa.Column("queue", sa.String(length=128), nullable=False),
        sa.Column("harvester", sa.String(length=128), nullable=False),
        sa.Column("cycle_at", sa.Float(), nullable=False),
        sa.Column("ready_jobs", sa.Integer(), nullable=False),
        sa.Column("ready_cores", sa.Integer(), nullable=False),
        sa.Column("unfit_jobs", sa.Integer(), nullable=False),
        sa.Column("idle_slots", sa.Integer(), nullable=False),
        sa.Column("queued_workers", sa.Integer(), nullable=False),
        sa.Column("running_workers", sa.Integer(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("error_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("queue", "harvester", name=op.f("pk_harvester_queues")),
    )


def downgrade() -> None:
    op.drop_table("harvester_queues")
    op.drop_index("ix_workers_pilot", table_name="workers")
    op.drop_index("ix_workers_state_harvester", table_name="workers")
    op.drop_index("ix_workers_queue_submitted", table_name="workers")
    op.drop_index("ix_workers_queue_state", table_name="workers")
    op.drop_table("workers")
