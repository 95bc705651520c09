"""lead list indexes: (filter column, created_at, id) so filtered pages in the default order read one range

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29

The lead list's most common filters (region, product line, a salesperson's own leads by stage) are served
in the default order (newest first) straight from an index, instead of a search on the filter column
followed by a sort of every match. The composite indexes replace the single-column ones they start with,
so an import maintains the same number of lead indexes as before.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# (new index, its columns, the index it replaces, that index's columns)
REPLACEMENTS = (
    ("ix_leads_region_created_at", ["region", "created_at", "id"], "ix_leads_region", ["region"]),
    (
        "ix_leads_product_line_created_at",
        ["product_line", "created_at", "id"],
        "ix_leads_product_line",
        ["product_line"],
    ),
    (
        "ix_leads_owner_stage_created_at",
        ["owner_id", "stage", "created_at", "id"],
        "ix_leads_owner_stage",
        ["owner_id", "stage"],
    ),
)


def _refresh_sqlite_statistics() -> None:
    # SQLite's planner only knows an index's selectivity from sqlite_stat1. A database that already holds
    # leads (and was analysed before) would otherwise plan with no statistics for the new indexes.
    bind = op.get_bind()
    if bind.dialect.name == "sqlite" and bind.execute(sa.text("SELECT 1 FROM leads LIMIT 1")).first():
        op.execute("ANALYZE leads")


def upgrade() -> None:
    for new, new_columns, old, _old_columns in REPLACEMENTS:
        op.drop_index(old, table_name="leads")
        op.create_index(new, "leads", new_columns, unique=False)
    _refresh_sqlite_statistics()


def downgrade() -> None:
    for new, _new_columns, old, old_columns in reversed(REPLACEMENTS):
        op.drop_index(new, table_name="leads")
        op.create_index(old, "leads", old_columns, unique=False)
    _refresh_sqlite_statistics()
