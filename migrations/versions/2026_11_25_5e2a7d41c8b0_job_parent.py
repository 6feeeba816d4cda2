"""the job a follow-up continues

Revision ID: 5e2a7d41c8b0
Revises: 3b8f0c2d9a61
Create Date: 2026-11-25 15:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "5e2a7d41c8b0"
down_revision: str | None = "3b8f0c2d9a61"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable with no default: a catalog-only change, no table rewrite. No foreign key (see
    # `models.Job.parent_job_id`).
    op.add_column("job", sa.Column("parent_job_id", postgresql.UUID(as_uuid=True), nullable=True))


def downgrade() -> None:
    op.drop_column("job", "parent_job_id")
