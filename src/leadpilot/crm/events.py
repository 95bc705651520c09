"""The append-only event log: append in the caller's transaction, deliver after commit.

``append_event`` adds the event to the caller's session, so the fact and the state change commit or
roll back together (transactional outbox). After commit, in-process subscribers receive the events;
when a Redis URL is configured each event also gets an outbox row, is published to a Redis Stream
with XADD, and its outbox row is deleted. Events whose publication failed stay in the outbox until
``relay_outbox`` (``leadpilot events relay``) publishes them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Engine, delete, event, select
from sqlalchemy.orm import Session, SessionTransaction

from leadpilot.crm.models import Event, OutboxEntry
from leadpilot.db.base import utcnow
from leadpilot.db.bulk import allocate_ids, bulk_insert

log = logging.getLogger(__name__)

_PENDING = "leadpilot_pending_events"


class EventType(StrEnum):
    """Known event types; the log also accepts other lower_snake names from integrations."""

    PAGE_VIEW = "page_view"
    FORM_SUBMIT = "form_submit"
    CALL_ATTEMPT = "call_attempt"
    CALL_CONNECTED = "call_connected"
    CALL_COMPLETED = "call_completed"
    MESSAGE = "message"
    CLAIM = "claim"
    RELEASE = "release"
    ASSIGN = "assign"
    STAGE_CHANGE = "stage_change"
    NOTE = "note"
    MEETING = "meeting"
    QUOTE = "quote"
    CONTRACT_SIGNED = "contract_signed"
    PAYMENT = "payment"
    LEAD_CREATED = "lead_created"
    LEAD_UPDATED = "lead_updated"
    LEAD_MERGED = "lead_merged"
    TASK_CREATED = "task_created"
    TASK_UPDATED = "task_updated"
    EXPERIMENT_EXPOSURE = "experiment_exposure"
    # Written by the workflow engine (leadpilot.workflow).
    WORKFLOW_FIRED = "workflow_fired"
    WORKFLOW_FAILED = "workflow_failed"
    WORKFLOW_STOPPED = "workflow_stopped"
    NOTIFICATION = "notification"
    CALL_ENQUEUED = "call_enqueued"
    WEBHOOK_DELIVERED = "webhook_delivered"
    WEBHOOK_FAILED = "webhook_failed"
    # Written by contracts and payments (leadpilot.contracts); contract_signed and payment are above.
    CONTRACT_CREATED = "contract_created"
    CONTRACT_SENT = "contract_sent"
    CONTRACT_DECLINED = "contract_declined"
    CONTRACT_EXPIRED = "contract_expired"
    CONTRACT_CANCELLED = "contract_cancelled"
    PAYMENT_REMINDER = "payment_reminder"
    PAYMENT_OVERDUE = "payment_overdue"


# Types an integrator may post directly; the rest are written by the service that makes the change.
ACTIVITY_TYPES: frozenset[str] = frozenset(
    {
        EventType.PAGE_VIEW,
        EventType.FORM_SUBMIT,
        EventType.CALL_ATTEMPT,
        EventType.CALL_CONNECTED,
        EventType.CALL_COMPLETED,
        EventType.MESSAGE,
        EventType.NOTE,
        EventType.MEETING,
        EventType.QUOTE,
        EventType.CONTRACT_SIGNED,
        EventType.PAYMENT,
    }
)

Subscriber = Callable[[list["EventRecord"]], None]


@dataclass(frozen=True)
class EventRecord:
    """A committed event as delivered to subscribers and to the stream."""

    id: int
    type: str
    lead_id: int | None
    actor_id: int | None
    occurred_at: datetime
    payload: dict[str, Any]

    def to_stream_fields(self) -> dict[str, str]:
        return {
            "id": str(self.id),
            "type": self.type,
            "lead_id": "" if self.lead_id is None else str(self.lead_id),
            "actor_id": "" if self.actor_id is None else str(self.actor_id),
            "occurred_at": self.occurred_at.isoformat(),
            "payload": json.dumps(self.payload, ensure_ascii=False, default=str),
        }


@dataclass
class EventBus:
    """Delivers committed events to in-process subscribers and, when configured, a Redis Stream."""

    subscribers: list[Subscriber] = field(default_factory=list)
    redis_url: str | None = None
    stream: str = "leadpilot:events"
    _redis: Any = None

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Register a subscriber; returns a function that unregisters it."""
        self.subscribers.append(fn)
        return lambda: self.subscribers.remove(fn) if fn in self.subscribers else None

    def configure_redis(self, url: str | None, stream: str = "leadpilot:events") -> None:
        """Publish to this Redis Stream from now on (None turns publishing off)."""
        self.redis_url, self.stream, self._redis = url, stream, None

    @property
    def publishing(self) -> bool:
        return self.redis_url is not None

    def client(self) -> Any:
        if self._redis is None:
            import redis

            self._redis = redis.Redis.from_url(self.redis_url, socket_timeout=5)  # type: ignore[arg-type]
        return self._redis

    def publish(self, records: Iterable[EventRecord]) -> list[int]:
        """XADD the records to the stream in one pipeline; returns the ids published (none on failure)."""
        batch = list(records)
        try:
            pipe = self.client().pipeline(transaction=False)
            for rec in batch:
                pipe.xadd(self.stream, rec.to_stream_fields())
            pipe.execute()
        except Exception as exc:  # Redis down: the outbox keeps them for the relay
            log.warning("publishing %s events to Redis failed (kept in the outbox): %s", len(batch), exc)
            return []
        return [r.id for r in batch]

    def deliver(self, records: list[EventRecord]) -> None:
        for fn in list(self.subscribers):
            try:
                fn(records)
            except Exception:  # one bad subscriber must not break the writer or the others
                log.exception("event subscriber %r failed", fn)


bus = EventBus()


def append_event(
    session: Session,
    type: str,
    *,
    lead_id: int | None = None,
    actor_id: int | None = None,
    payload: dict[str, Any] | None = None,
    occurred_at: datetime | None = None,
) -> Event:
    """Append an event in the session's transaction; it is delivered only if the transaction commits."""
    now = utcnow()
    row = Event(
        type=str(type),
        lead_id=lead_id,
        actor_id=actor_id,
        payload=payload or {},
        occurred_at=occurred_at or now,
        recorded_at=now,
    )
    session.add(row)
    session.flush()
    if bus.publishing:
        session.add(OutboxEntry(event_id=row.id))
    session.info.setdefault(_PENDING, []).append(row)
    return row


def append_events_bulk(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Append many events with one executemany (bulk paths such as imports); delivered after commit too."""
    if not rows:
        return []
    now = utcnow()
    ids = allocate_ids(session, Event.__table__, len(rows))  # type: ignore[arg-type]
    for event_id, r in zip(ids, rows, strict=True):
        r["id"] = event_id
        r.setdefault("occurred_at", now)
        r.setdefault("recorded_at", now)
        r.setdefault("payload", {})
        r.setdefault("actor_id", None)
        r.setdefault("lead_id", None)
    bulk_insert(session, Event.__table__, rows)  # type: ignore[arg-type]
    if bus.publishing:
        bulk_insert(session, OutboxEntry.__table__, [{"event_id": i} for i in ids])  # type: ignore[arg-type]
    if bus.publishing or bus.subscribers:
        pending = session.info.setdefault(_PENDING, [])
        pending.extend(
            EventRecord(r["id"], r["type"], r["lead_id"], r["actor_id"], r["occurred_at"], r["payload"]) for r in rows
        )
    return ids


def _as_record(obj: Event | EventRecord) -> EventRecord:
    if isinstance(obj, EventRecord):
        return obj
    return EventRecord(obj.id, obj.type, obj.lead_id, obj.actor_id, obj.occurred_at, dict(obj.payload or {}))


# Savepoints: SQLAlchemy dispatches after_commit / after_rollback for them too. Events wait for the outermost
# commit; a savepoint's rollback forgets only the events appended inside it (from its mark).
_SAVEPOINT_MARKS = "leadpilot_pending_marks"


@event.listens_for(Session, "after_transaction_create")
def _mark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        marks = session.info.setdefault(_SAVEPOINT_MARKS, {})
        marks[transaction] = len(session.info.get(_PENDING) or [])


@event.listens_for(Session, "after_transaction_end")
def _unmark_savepoint(session: Session, transaction: SessionTransaction) -> None:
    if transaction.nested:
        session.info.get(_SAVEPOINT_MARKS, {}).pop(transaction, None)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.in_nested_transaction():
        return  # a savepoint was released: the outer transaction may still roll back
    pending = session.info.pop(_PENDING, None)
    if not pending:
        return
    records = [_as_record(p) for p in pending]
    bus.deliver(records)
    if bus.publishing:
        published = bus.publish(records)
        if published:
            _clear_outbox(session.get_bind(), published)  # type: ignore[arg-type]


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    savepoint = session.get_nested_transaction()
    if savepoint is not None:
        mark = session.info.get(_SAVEPOINT_MARKS, {}).get(savepoint)
        pending = session.info.get(_PENDING)
        if pending is not None and mark is not None:
            del pending[mark:]
        return
    session.info.pop(_PENDING, None)


def _clear_outbox(engine: Engine, event_ids: list[int]) -> None:
    # A fresh connection: the committing session is in its after_commit hook and must not be reused.
    with engine.begin() as conn:
        conn.execute(delete(OutboxEntry).where(OutboxEntry.event_id.in_(event_ids)))


def relay_outbox(engine: Engine, *, batch_size: int = 1000) -> int:
    """Publish events left in the outbox (oldest first); returns how many were published."""
    if not bus.publishing:
        raise RuntimeError("no Redis URL configured (set LEADPILOT_REDIS_URL)")
    total = 0
    while True:
        with Session(engine) as session:
            rows = session.scalars(
                select(Event).join(OutboxEntry, OutboxEntry.event_id == Event.id).order_by(Event.id).limit(batch_size)
            ).all()
            records = [_as_record(r) for r in rows]
        if not records:
            return total
        published = bus.publish(records)
        if not published:
            return total
        _clear_outbox(engine, published)
        total += len(published)
