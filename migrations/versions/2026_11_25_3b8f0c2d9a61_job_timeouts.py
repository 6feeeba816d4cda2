"""per-job timeouts and deadline

Revision ID: 3b8f0c2d9a61
Revises: 0713faeac49e
Create Date: 2026-11-25 12:20:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "3b8f0c2d9a61"
down_revision: str | None = "0713faeac49e"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("job", sa.Column("timeouts", postgresql.JSONB(), nullable=True))
    op.add_column("job", sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_job_deadline",
        "job",
        ["deadline_at"],
        postgresql_where=sa.text(
            "deadline_at IS NOT NULL AND status IN ('queued', 'retrying', 'running')"
        ),
    )


def downgrade() -> None:
    op.drop_index("ix_job_deadline", table_name="job")
    op.drop_column("job", "deadline_at")
    op.drop_column("job", "timeouts")
