"""Table models of the CRM store; one module so Alembic and every subsystem see one schema."""

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
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from leadpilot.db.base import Base, BigId, JSONType, UTCDateTime, utcnow

# Tables whose ids bulk jobs reserve in blocks (db.bulk.allocate_ids): on SQLite ids then never reuse
# a reserved value, because AUTOINCREMENT keeps the high-water mark in sqlite_sequence.
AUTOINCREMENT = {"sqlite_autoincrement": True}


def _in(column: str, values: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(v.value) for v in values)})"


class Role(StrEnum):
    """What a user may see and do."""

    ADMIN = "admin"
    SUPERVISOR = "supervisor"
    SALES = "sales"
    SCREENER = "screener"


class TeamKind(StrEnum):
    """The "Michigan" split: an opportunity group screens leads, a sales group converts them."""

    OPPORTUNITY = "opportunity"
    SALES = "sales"


class Stage(StrEnum):
    """Where a lead is in its life."""

    NEW = "new"
    SCREENING = "screening"
    QUALIFIED = "qualified"
    ASSIGNED = "assigned"
    CONTACTED = "contacted"
    NEGOTIATING = "negotiating"
    WON = "won"
    LOST = "lost"
    RECYCLED = "recycled"


class Consent(StrEnum):
    """Whether a contact agreed to be contacted."""

    UNKNOWN = "unknown"
    GRANTED = "granted"
    DENIED = "denied"


class AccountSize(StrEnum):
    """Size band of a customer company."""

    MICRO = "micro"
    SMALL = "small"
    MEDIUM = "medium"
    LARGE = "large"
    ENTERPRISE = "enterprise"


class TaskStatus(StrEnum):
    """State of a task or follow-up."""

    OPEN = "open"
    DONE = "done"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    """What kind of work a task is."""

    FOLLOW_UP = "follow_up"
    CALL = "call"
    MEETING = "meeting"
    OTHER = "other"


class TimestampMixin:
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow, nullable=False)


class Team(TimestampMixin, Base):
    """A team in the hierarchy; supervisors see the subtree under their team."""

    __tablename__ = "teams"
    __table_args__ = (CheckConstraint(_in("kind", TeamKind), name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(120), unique=True, nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"), index=True)


class User(TimestampMixin, Base):
    """A person who logs in: admin, supervisor, salesperson or screener."""

    __tablename__ = "users"
    __table_args__ = (
        CheckConstraint(_in("role", Role), name="role"),
        CheckConstraint("daily_capacity >= 0", name="capacity"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(80), unique=True, nullable=False)
    full_name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    email: Mapped[str | None] = mapped_column(String(254))
    password_hash: Mapped[str] = mapped_column(String(255), nullable=False)
    role: Mapped[str] = mapped_column(String(20), nullable=False)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="RESTRICT"), index=True)
    product_lines: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    regions: Mapped[list[str]] = mapped_column(JSONType, nullable=False, default=list)
    daily_capacity: Mapped[int] = mapped_column(Integer, nullable=False, default=20)
    work_start: Mapped[str] = mapped_column(String(5), nullable=False, default="09:00")
    work_end: Mapped[str] = mapped_column(String(5), nullable=False, default="18:00")
    time_zone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    is_active: Mapped[bool] = mapped_column(Boolean, nullable=False, default=True)


class Account(TimestampMixin, Base):
    """The customer company or merchant behind leads."""

    __tablename__ = "accounts"
    __table_args__ = (
        CheckConstraint(f"size IS NULL OR {_in('size', AccountSize)}", name="size"),
        AUTOINCREMENT,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(300), nullable=False)
    # Lower-cased, whitespace- and punctuation-folded name used for de-duplication.
    name_key: Mapped[str] = mapped_column(String(300), nullable=False, index=True)
    industry: Mapped[str | None] = mapped_column(String(120))
    region: Mapped[str | None] = mapped_column(String(120))
    size: Mapped[str | None] = mapped_column(String(20))
    # Who created it: they may see and link it before any lead of theirs refers to it.
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)


class Contact(TimestampMixin, Base):
    """A person at an account; phone in E.164, consent and do-not-call kept for the dialer."""

    __tablename__ = "contacts"
    __table_args__ = (CheckConstraint(_in("consent", Consent), name="consent"), AUTOINCREMENT)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), index=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False, default="")
    phone: Mapped[str | None] = mapped_column(String(20), index=True)
    email: Mapped[str | None] = mapped_column(String(254), index=True)
    consent: Mapped[str] = mapped_column(String(10), nullable=False, default=Consent.UNKNOWN.value)
    do_not_call: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"), index=True)


class Lead(TimestampMixin, Base):
    """A sales opportunity; no owner means it sits in the claim pool."""

    __tablename__ = "leads"
    __table_args__ = (
        CheckConstraint(_in("stage", Stage), name="stage"),
        CheckConstraint("budget IS NULL OR budget >= 0", name="budget"),
        Index("ix_leads_created_at_id", "created_at", "id"),
        # Serves owner_id = ? (a salesperson's leads), owner_id = ? AND stage = ? newest first (one range,
        # no sort) and owner_id IS NULL AND stage IN (...) (the pool).
        Index("ix_leads_owner_stage_created_at", "owner_id", "stage", "created_at", "id"),
        # Filtered lead lists in the default order (newest first) read one index range, no sort (migration 0002).
        Index("ix_leads_region_created_at", "region", "created_at", "id"),
        Index("ix_leads_product_line_created_at", "product_line", "created_at", "id"),
        # Covers every column the dashboard reads (crm.dashboard; migration 0009): its grouped queries scan this
        # narrow index instead of the wide rows.
        Index(
            "ix_leads_dashboard",
            "stage",
            "owner_id",
            "product_line",
            "region",
            "budget",
            "created_at",
            "team_id",
            "first_qualified_at",
            "first_assigned_at",
            "first_contacted_at",
        ),
        AUTOINCREMENT,
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"), index=True)
    contact_id: Mapped[int | None] = mapped_column(ForeignKey("contacts.id", ondelete="SET NULL"), index=True)
    product_line: Mapped[str | None] = mapped_column(String(80))
    source: Mapped[str | None] = mapped_column(String(80))
    region: Mapped[str | None] = mapped_column(String(120))
    budget: Mapped[float | None] = mapped_column(Float)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("teams.id", ondelete="SET NULL"), index=True)
    stage: Mapped[str] = mapped_column(String(20), nullable=False, default=Stage.NEW.value)
    stage_changed_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    lost_reason: Mapped[str | None] = mapped_column(String(300))
    score: Mapped[float | None] = mapped_column(Float)
    score_transfer: Mapped[float | None] = mapped_column(Float)
    score_convert: Mapped[float | None] = mapped_column(Float)
    score_updated_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Set by a cold-start scoring rule (high / medium / low) while the models have too little data.
    priority: Mapped[str | None] = mapped_column(String(10))
    notes: Mapped[str] = mapped_column(Text, nullable=False, default="")
    external_id: Mapped[str | None] = mapped_column(String(120), index=True)
    # Milestones, a cache of the event log (migration 0009): when a stage_change event first moved the lead to
    # qualified / assigned / contacted; written with the event by crm.leads, read by the dashboard.
    first_qualified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_assigned_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    first_contacted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    # Bumped on every change; lets clients detect a concurrent edit (optimistic locking).
    version: Mapped[int] = mapped_column(Integer, nullable=False, default=1)

    __mapper_args__ = {"version_id_col": version}


class Task(TimestampMixin, Base):
    """A follow-up or other piece of work, usually about one lead."""

    __tablename__ = "tasks"
    __table_args__ = (
        CheckConstraint(_in("status", TaskStatus), name="status"),
        CheckConstraint(_in("kind", TaskKind), name="kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    lead_id: Mapped[int | None] = mapped_column(ForeignKey("leads.id", ondelete="CASCADE"), index=True)
    assignee_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="RESTRICT"), index=True)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    title: Mapped[str] = mapped_column(String(300), nullable=False)
    kind: Mapped[str] = mapped_column(String(20), nullable=False, default=TaskKind.FOLLOW_UP.value)
    status: Mapped[str] = mapped_column(String(20), nullable=False, default=TaskStatus.OPEN.value)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), index=True)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Event(Base):
    """One fact in the append-only event log (the spine every later subsystem reads)."""

    __tablename__ = "events"
    __table_args__ = (
        Index("ix_events_lead_occurred", "lead_id", "occurred_at"),
        Index("ix_events_type_occurred", "type", "occurred_at"),
        AUTOINCREMENT,
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(40), nullable=False)
    # No foreign key on purpose: the log outlives the rows it talks about.
    lead_id: Mapped[int | None] = mapped_column(Integer)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    payload: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


class OutboxEntry(Base):
    """An event committed but not yet published to the Redis Stream (transactional outbox)."""

    __tablename__ = "event_outbox"

    event_id: Mapped[int] = mapped_column(BigId, ForeignKey("events.id"), primary_key=True)


class AuditEntry(Base):
    """Who wrote or read what, and when; every write and every read of contact PII lands here."""

    __tablename__ = "audit_log"
    __table_args__ = (Index("ix_audit_log_entity", "entity", "entity_id"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow, index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer, index=True)
    action: Mapped[str] = mapped_column(String(30), nullable=False)
    entity: Mapped[str] = mapped_column(String(40), nullable=False)
    entity_id: Mapped[int | None] = mapped_column(BigId)
    detail: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)


class LoginThrottle(Base):
    """Consecutive failed logins per username, to slow down password guessing."""

    __tablename__ = "login_throttle"

    username: Mapped[str] = mapped_column(String(80), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    blocked_until: Mapped[datetime | None] = mapped_column(UTCDateTime())


class ImportRun(Base):
    """One run of a lead import, with its counts and per-row error report."""

    __tablename__ = "import_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    file_name: Mapped[str] = mapped_column(String(500), nullable=False)
    file_sha256: Mapped[str] = mapped_column(String(64), nullable=False, index=True)
    actor_id: Mapped[int | None] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    status: Mapped[str] = mapped_column(String(20), nullable=False, default="running")
    counts: Mapped[dict[str, Any]] = mapped_column(JSONType, nullable=False, default=dict)
    errors: Mapped[list[dict[str, Any]]] = mapped_column(JSONType, nullable=False, default=list)


class ImportedRow(Base):
    """A row already applied by an import, by the hash of its normalised values (makes re-runs no-ops)."""

    __tablename__ = "imported_rows"
    __table_args__ = (UniqueConstraint("fingerprint"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    fingerprint: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)  # SHA-256 digest, 32 bytes
    lead_id: Mapped[int] = mapped_column(Integer, nullable=False)
    run_id: Mapped[int | None] = mapped_column(Integer)


# The feature pipeline's tables share this metadata (migrations and the models-vs-schema test see them).
from leadpilot.contracts import tables as _contract_tables  # noqa: E402, F401
from leadpilot.distribution import tables as _distribution_tables  # noqa: E402, F401
from leadpilot.experiments import tables as _experiment_tables  # noqa: E402, F401
from leadpilot.features import models as _feature_models  # noqa: E402, F401
from leadpilot.models import tables as _scoring_tables  # noqa: E402, F401
from leadpilot.workflow import tables as _workflow_tables  # noqa: E402, F401
