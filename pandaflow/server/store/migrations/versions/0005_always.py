"""jobs that run once their inputs ended, whatever the outcome (bps finalJob whenRun: ALWAYS)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN: batch mode would copy the jobs table on SQLite (slow on a big database)
    # and rebuild its indexes from reflection, losing the DESC of ix_jobs_dispatch.
    op.add_column("jobs", sa.Column("always", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("jobs", "always")  # plain DROP COLUMN (SQLite >= 3.35), no table copy
