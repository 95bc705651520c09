"""Tables the workflow engine keeps in the CRM database: rules, durable timers, firings, notifications, webhooks."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, BigId, JSONType, UTCDateTime, utcnow


class TimerStatus(StrEnum):
    """Where a durable timer stands."""

    PENDING = "pending"  # waiting for due_at
    RUNNING = "running"  # claimed by a worker until claimed_until (then claimable again)
    DONE = "done"  # fired
    SKIPPED = "skipped"  # an `unless` event came, the condition no longer held, or the rule was disabled
    FAILED = "failed"  # an action raised; the reason is kept
    STOPPED = "stopped"  # a rule chain reached the depth limit or came back to a rule already in it


class DeliveryStatus(StrEnum):
    """A webhook call waiting, in flight, done or given up."""

    PENDING = "pending"
    RUNNING = "running"
    DELIVERED = "delivered"
    FAILED = "failed"


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class WorkflowRule(Base):
    """A workflow rule by name: its current definition (JSON of the YAML) and whether it runs."""

    __tablename__ = "workflow_rules"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True, nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)
    enabled: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class WorkflowRuleVersion(Base):
    """Every saved version of a rule's definition, for the record."""

    __tablename__ = "workflow_rule_versions"
    __table_args__ = (UniqueConstraint("rule_id", "version", name="uq_workflow_rule_versions_rule_version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("workflow_rules.id", ondelete="CASCADE"), nullable=False)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    definition: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))


class WorkflowTimer(Base):
    """A durable timer: fire ``rule`` for ``lead`` at ``due_at``; one per (rule, trigger) ever."""

    __tablename__ = "workflow_timers"
    __table_args__ = (
        UniqueConstraint("rule_id", "trigger_key", name="uq_workflow_timers_rule_trigger"),
        CheckConstraint(_in("status", TimerStatus), name="status"),
        Index("ix_workflow_timers_status_due_at", "status", "due_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("workflow_rules.id", ondelete="CASCADE"), nullable=False)
    trigger_key: Mapped[str] = mapped_column(String(120), nullable=False)
    lead_id: Mapped[int | None] = mapped_column(Integer)
    trigger_event_id: Mapped[int | None] = mapped_column(BigId)
    # When the trigger happened: the start of the `unless` window.
    trigger_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    due_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default=TimerStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Rules that led here (a chain of firings); guards against cycles at run time.
    chain: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class WorkflowFiring(Base):
    """The outcome of one rule for one trigger; its unique key makes firing idempotent."""

    __tablename__ = "workflow_firings"
    __table_args__ = (UniqueConstraint("rule_id", "trigger_key", name="uq_workflow_firings_rule_trigger"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_id: Mapped[int] = mapped_column(ForeignKey("workflow_rules.id", ondelete="CASCADE"), nullable=False)
    rule_version: Mapped[int] = mapped_column(Integer, nullable=False)
    trigger_key: Mapped[str] = mapped_column(String(120), nullable=False)
    timer_id: Mapped[int | None] = mapped_column(BigId)
    lead_id: Mapped[int | None] = mapped_column(Integer, index=True)
    status: Mapped[str] = mapped_column(String(10), nullable=False)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    event_id: Mapped[int | None] = mapped_column(BigId)
    worker: Mapped[str | None] = mapped_column(String(80))
    fired_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)


class WorkflowNotification(Base):
    """A message for a person from a workflow rule (the in-app inbox)."""

    __tablename__ = "workflow_notifications"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    lead_id: Mapped[int | None] = mapped_column(Integer)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("workflow_rules.id", ondelete="SET NULL"))
    message: Mapped[str] = mapped_column(Text, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    read_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WebhookDelivery(Base):
    """A webhook call from a rule (outbox): retried with exponential backoff, the outcome recorded."""

    __tablename__ = "workflow_webhooks"
    __table_args__ = (
        CheckConstraint(_in("status", DeliveryStatus), name="status"),
        Index("ix_workflow_webhooks_status_next", "status", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    rule_id: Mapped[int | None] = mapped_column(ForeignKey("workflow_rules.id", ondelete="SET NULL"))
    lead_id: Mapped[int | None] = mapped_column(Integer)
    url: Mapped[str] = mapped_column(String(2000), nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    status: Mapped[str] = mapped_column(String(10), nullable=False, default=DeliveryStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, nullable=False, default=5)
    timeout_s: Mapped[float] = mapped_column(Float, nullable=False, default=5.0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_status_code: Mapped[int | None] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    # Every attempt: when, status code or error.
    history: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class WorkflowCursor(Base):
    """How far a worker has read the event log for triggers (one row per named cursor)."""

    __tablename__ = "workflow_cursor"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    last_event_id: Mapped[int] = mapped_column(BigId, nullable=False, default=0)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
