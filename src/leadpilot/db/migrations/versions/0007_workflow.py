"""workflow engine: rules and their versions, durable timers, firings, notifications, webhook outbox, cursor

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-22
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from leadpilot.db.base import JSONType, UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "workflow_cursor",
        sa.Column("name", sa.String(length=40), nullable=False),
        sa.Column("last_event_id", BigId, nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_workflow_cursor")),
    )
    op.create_table(
        "workflow_rules",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=120), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("definition", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_rules")),
        sa.UniqueConstraint("name", name=op.f("uq_workflow_rules_name")),
    )
    op.create_table(
        "workflow_rule_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("definition", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("created_by_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["created_by_id"],
            ["users.id"],
            name=op.f("fk_workflow_rule_versions_created_by_id_users"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["workflow_rules.id"],
            name=op.f("fk_workflow_rule_versions_rule_id_workflow_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_rule_versions")),
        sa.UniqueConstraint("rule_id", "version", name="uq_workflow_rule_versions_rule_version"),
    )
    op.create_table(
        "workflow_timers",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("trigger_key", sa.String(length=120), nullable=False),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("trigger_event_id", BigId, nullable=True),
        sa.Column("trigger_at", UTCDateTime(), nullable=False),
        sa.Column("due_at", UTCDateTime(), nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("claimed_by", sa.String(length=80), nullable=True),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("chain", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'done', 'skipped', 'failed', 'stopped')",
            name=op.f("ck_workflow_timers_status"),
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["workflow_rules.id"],
            name=op.f("fk_workflow_timers_rule_id_workflow_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_timers")),
        sa.UniqueConstraint("rule_id", "trigger_key", name="uq_workflow_timers_rule_trigger"),
    )
    op.create_index("ix_workflow_timers_status_due_at", "workflow_timers", ["status", "due_at"])
    op.create_table(
        "workflow_firings",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=False),
        sa.Column("rule_version", sa.Integer(), nullable=False),
        sa.Column("trigger_key", sa.String(length=120), nullable=False),
        sa.Column("timer_id", BigId, nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("detail", JSONType, nullable=False),
        sa.Column("event_id", BigId, nullable=True),
        sa.Column("worker", sa.String(length=80), nullable=True),
        sa.Column("fired_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["workflow_rules.id"],
            name=op.f("fk_workflow_firings_rule_id_workflow_rules"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_firings")),
        sa.UniqueConstraint("rule_id", "trigger_key", name="uq_workflow_firings_rule_trigger"),
    )
    op.create_index(op.f("ix_workflow_firings_lead_id"), "workflow_firings", ["lead_id"])
    op.create_table(
        "workflow_notifications",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("read_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["workflow_rules.id"],
            name=op.f("fk_workflow_notifications_rule_id_workflow_rules"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_workflow_notifications_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_notifications")),
    )
    op.create_index(op.f("ix_workflow_notifications_user_id"), "workflow_notifications", ["user_id"])
    op.create_table(
        "workflow_webhooks",
        sa.Column("id", BigId, autoincrement=True, nullable=False),
        sa.Column("rule_id", sa.Integer(), nullable=True),
        sa.Column("lead_id", sa.Integer(), nullable=True),
        sa.Column("url", sa.String(length=2000), nullable=False),
        sa.Column("payload", JSONType, nullable=False),
        sa.Column("status", sa.String(length=10), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("timeout_s", sa.Float(), nullable=False),
        sa.Column("next_attempt_at", UTCDateTime(), nullable=False),
        sa.Column("claimed_until", UTCDateTime(), nullable=True),
        sa.Column("last_status_code", sa.Integer(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("history", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("delivered_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'delivered', 'failed')", name=op.f("ck_workflow_webhooks_status")
        ),
        sa.ForeignKeyConstraint(
            ["rule_id"],
            ["workflow_rules.id"],
            name=op.f("fk_workflow_webhooks_rule_id_workflow_rules"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workflow_webhooks")),
    )
    op.create_index("ix_workflow_webhooks_status_next", "workflow_webhooks", ["status", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_workflow_webhooks_status_next", table_name="workflow_webhooks")
    op.drop_table("workflow_webhooks")
    op.drop_index(op.f("ix_workflow_notifications_user_id"), table_name="workflow_notifications")
    op.drop_table("workflow_notifications")
    op.drop_index(op.f("ix_workflow_firings_lead_id"), table_name="workflow_firings")
    op.drop_table("workflow_firings")
    op.drop_index("ix_workflow_timers_status_due_at", table_name="workflow_timers")
    op.drop_table("workflow_timers")
    op.drop_table("workflow_rule_versions")
    op.drop_table("workflow_rules")
    op.drop_table("workflow_cursor")
