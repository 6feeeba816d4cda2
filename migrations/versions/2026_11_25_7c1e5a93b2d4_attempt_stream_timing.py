"""attempt stream timing

Revision ID: 7c1e5a93b2d4
Revises: 59d49e20bd51
Create Date: 2026-11-25 10:05:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7c1e5a93b2d4"
down_revision: str | None = "59d49e20bd51"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("attempt", sa.Column("time_to_first_token_s", sa.Double(), nullable=True))
    op.add_column("attempt", sa.Column("tokens_per_s", sa.Double(), nullable=True))


def downgrade() -> None:
    op.drop_column("attempt", "tokens_per_s")
    op.drop_column("attempt", "time_to_first_token_s")
