"""lead milestones: when each lead first moved to qualified, assigned and contacted (backfilled from the log)

The dashboard's conversion and speed-to-lead figures read these three columns instead of one grouped pass
over every ``stage_change`` event, and all its figures read leads through the covering ``ix_leads_dashboard``. They are a cache of the event log: the stage-change services write them
in the same transaction as the event, and this migration fills them from the events already stored.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leadpilot.db.base import UTCDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

# Column -> the stage a ``stage_change`` event moves the lead to.
MILESTONES = {
    "first_qualified_at": "qualified",
    "first_assigned_at": "assigned",
    "first_contacted_at": "contacted",
}


def backfill_sql(dialect: str) -> str:
    """One UPDATE setting every lead's milestones to the earliest matching ``stage_change`` event."""
    to = "events.payload ->> 'to'" if dialect == "postgresql" else "json_extract(events.payload, '$.to')"
    firsts = ", ".join(
        f"MIN(CASE WHEN {to} = '{stage}' THEN events.occurred_at END) AS {column}"
        for column, stage in MILESTONES.items()
    )
    sets = ", ".join(f"{column} = m.{column}" for column in MILESTONES)
    stages = ", ".join(f"'{stage}'" for stage in MILESTONES.values())
    return (
        f"UPDATE leads SET {sets} FROM (SELECT events.lead_id AS lead_id, {firsts} FROM events "  # noqa: S608 (constants only)
        f"WHERE events.type = 'stage_change' AND {to} IN ({stages}) GROUP BY events.lead_id) AS m "
        "WHERE leads.id = m.lead_id"
    )


# Covers every column the dashboard reads from leads, so its grouped queries scan this narrow index, never the
# wide table rows; leading (stage, owner_id, product_line, region): the summary's GROUP BY needs no sort.
DASHBOARD_INDEX = (
    "stage",
    "owner_id",
    "product_line",
    "region",
    "budget",
    "created_at",
    "team_id",
    *MILESTONES,
)


def upgrade() -> None:
    with op.batch_alter_table("leads") as batch:
        for column in MILESTONES:
            batch.add_column(sa.Column(column, UTCDateTime(), nullable=True))
    op.execute(backfill_sql(op.get_bind().dialect.name))
    op.create_index("ix_leads_dashboard", "leads", list(DASHBOARD_INDEX))
    op.execute("ANALYZE leads")  # so the planner knows the new index (SQLite keeps no statistics otherwise)


def downgrade() -> None:
    op.drop_index("ix_leads_dashboard", table_name="leads")
    with op.batch_alter_table("leads") as batch:
        for column in reversed(MILESTONES):
            batch.drop_column(column)
