"""memory-aware retries: memory multiplier, cap, and exit codes never retried

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25 15:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("memory_multiplier", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("memory_max_mb", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("retry_unless_exit", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("retry_unless_exit")
        batch_op.drop_column("memory_max_mb")
        batch_op.drop_column("memory_multiplier")
