"""push queues and multi-site brokerage: jobs reserved for a harvester worker, workflow site shares

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_PUSHED = sa.text("worker_id IS NOT NULL")


def upgrade() -> None:
    # Plain ADD COLUMNs (no foreign key): batch mode would copy the tables on SQLite (slow on a
    # big database) and rebuild the indexes from reflection, losing the DESC of ix_jobs_dispatch.
    op.add_column("jobs", sa.Column("worker_id", sa.Integer(), nullable=True))
    op.create_index(
        "ix_jobs_worker",
        "jobs",
        ["worker_id", "status"],
        unique=False,
        sqlite_where=_PUSHED,
        postgresql_where=_PUSHED,
    )
    op.add_column("workflows", sa.Column("sites", sa.Text(), nullable=True))


def downgrade() -> None:
    # A reserved job has no meaning without push queues: it waits for any pilot again.
    op.execute("UPDATE jobs SET status='ready' WHERE status='reserved'")
    op.drop_index("ix_jobs_worker", table_name="jobs")
    # Plain DROP COLUMNs (SQLite >= 3.35): a batch copy of these tables could not drop them while
    # other tables' rows refer to them.
    op.drop_column("workflows", "sites")
    op.drop_column("jobs", "worker_id")
