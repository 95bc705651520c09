"""online feature store: each entity's latest packed feature vector

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "online_features",
        sa.Column("dim", sa.SmallInteger(), nullable=False),
        sa.Column("k1", sa.BigInteger(), nullable=False),
        sa.Column("k2", sa.BigInteger(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=False),
        sa.Column("as_of", sa.Date(), nullable=False),
        sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("dim", "k1", "k2", name=op.f("pk_online_features")),
    )


def downgrade() -> None:
    op.drop_table("online_features")
