"""The workflow engine: events schedule durable timers; workers claim due timers and fire them exactly once.

* **Scheduling.** Each event (read from the log by a cursor, or handed over by the in-process subscriber
  after commit) is matched against the enabled rules: trigger type, then the condition on the lead and the
  event. A match inserts a timer ``(rule, "event:<id>")``, due at once or after the rule's delay or deadline;
  the unique key makes scheduling the same event twice a no-op.
* **Claiming.** A worker claims a batch of due timers in one statement (PostgreSQL: ``FOR UPDATE SKIP
  LOCKED``; SQLite: one ``UPDATE ... RETURNING`` under its single-writer lock) with a lease; a timer whose
  lease ran out (its worker died) is claimable again.
* **Firing.** In one transaction per batch, each timer is checked (``unless`` events in the window, the
  condition on the lead now, the rule still enabled, the chain guard) and its actions run in a savepoint
  together with its firing record, whose unique key (rule, trigger) makes a second firing impossible even
  when a lease expired under a slow worker. Each firing appends a ``workflow_fired`` event; the events its
  actions write carry ``payload.workflow.chain`` so rules they trigger know the chain that led to them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol, cast

from sqlalchemy import Engine, Table, and_, func, or_, select, update
from sqlalchemy import event as sa_event
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session

from leadpilot.crm.errors import DomainError
from leadpilot.crm.events import EventRecord, EventType, bus
from leadpilot.crm.models import Event, Lead
from leadpilot.db.base import utcnow
from leadpilot.workflow.actions import ActionError, Firing, Resolver, Writes, run_action
from leadpilot.workflow.conditions import evaluate
from leadpilot.workflow.rules import WORKFLOW_EVENT_TYPES, Rule, parse_rule
from leadpilot.workflow.tables import (
    TimerStatus,
    WorkflowCursor,
    WorkflowFiring,
    WorkflowRule,
    WorkflowTimer,
)

log = logging.getLogger(__name__)
CURSOR = "events"


class EventLike(Protocol):
    """An event row or a delivered EventRecord."""

    @property
    def id(self) -> int: ...
    @property
    def type(self) -> str: ...
    @property
    def lead_id(self) -> int | None: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def payload(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class EngineConfig:
    """Knobs of the engine (from Settings in the CLI)."""

    lease_seconds: float = 60.0
    max_depth: int = 5
    batch_size: int = 500
    settle_seconds: float = 2.0
    webhook_backoff_seconds: float = 1.0


def default_worker_id() -> str:
    """host:pid:random, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class LoadedRule:
    """A stored rule with its parsed definition."""

    id: int
    version: int
    enabled: bool
    rule: Rule


_PARSED: dict[str, Rule] = {}


def _parsed(row: WorkflowRule) -> Rule:
    """The parsed definition, cached by its text (rows of different databases may share ids)."""
    key = json.dumps(row.definition, sort_keys=True, default=str)
    rule = _PARSED.get(key)
    if rule is None:
        if len(_PARSED) > 1000:
            _PARSED.clear()
        rule = _PARSED[key] = parse_rule(row.definition)
    return rule


def load_rules(session: Session, *, enabled_only: bool = True) -> list[LoadedRule]:
    """The stored rules (by default only the enabled ones), parsed."""
    stmt = select(WorkflowRule).order_by(WorkflowRule.name)
    if enabled_only:
        stmt = stmt.where(WorkflowRule.enabled.is_(True))
    return [LoadedRule(r.id, r.version, r.enabled, _parsed(r)) for r in session.scalars(stmt)]


_LEAD_COLUMNS = (
    Lead.id,
    Lead.stage,
    Lead.score,
    Lead.score_transfer,
    Lead.score_convert,
    Lead.priority,
    Lead.budget,
    Lead.product_line,
    Lead.source,
    Lead.region,
    Lead.owner_id,
    Lead.team_id,
    Lead.account_id,
    Lead.title,
)


def _lead_names(
    values: dict[str, Any] | None, event_type: str | None, actor_id: int | None, lead_id: int | None
) -> dict[str, Any]:
    names = dict(values or {})
    names["has_owner"] = None if values is None else values.get("owner_id") is not None
    names.update(type=event_type, actor_id=actor_id, lead_id=lead_id)
    return names


def _lead_values(session: Session, lead_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    ids = sorted(set(lead_ids))
    out: dict[int, dict[str, Any]] = {}
    for start in range(0, len(ids), 900):
        for row in session.execute(select(*_LEAD_COLUMNS).where(Lead.id.in_(ids[start : start + 900]))):
            out[row.id] = dict(row._mapping)
    return out


def _chain_of(payload: dict[str, Any]) -> list[str]:
    wf = payload.get("workflow") if isinstance(payload, dict) else None
    chain = wf.get("chain") if isinstance(wf, dict) else None
    return [str(c) for c in chain] if isinstance(chain, list) else []


def _parse_deadline(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _insert_ignoring_duplicates(session: Session, rows: list[dict[str, Any]]) -> int:
    """Insert timers, skipping any (rule, trigger) already there; returns how many were new."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    table = cast(Table, WorkflowTimer.__table__)
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert

        stmt: Any = pg_insert(table).on_conflict_do_nothing(index_elements=["rule_id", "trigger_key"])
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        stmt = sqlite_insert(table).on_conflict_do_nothing(index_elements=["rule_id", "trigger_key"])
    created = 0
    for start in range(0, len(rows), 1000):  # RETURNING counts what was new (rowcount is unreliable in bulk)
        created += len(session.execute(stmt.returning(table.c.id), rows[start : start + 1000]).all())
    return created


def schedule(session: Session, events: Sequence[EventLike], *, rules: list[LoadedRule] | None = None) -> int:
    """Create the timers these events call for (idempotent: a (rule, event) pair is scheduled once)."""
    rules = load_rules(session) if rules is None else rules
    by_type: dict[str, list[LoadedRule]] = defaultdict(list)
    for lr in rules:
        for t in lr.rule.triggers:
            by_type[t].append(lr)
    relevant = [e for e in events if e.type in by_type]
    if not relevant:
        return 0
    leads = _lead_values(session, (e.lead_id for e in relevant if e.lead_id is not None))
    now = utcnow()
    rows: list[dict[str, Any]] = []
    for ev in relevant:
        payload = ev.payload or {}
        chain = _chain_of(payload)
        lead = leads.get(ev.lead_id) if ev.lead_id is not None else None
        names = _lead_names(lead, ev.type, getattr(ev, "actor_id", None), ev.lead_id)
        for lr in by_type[ev.type]:
            rule = lr.rule
            if ev.type in WORKFLOW_EVENT_TYPES and payload.get("rule") not in rule.from_rules:
                continue
            if rule.condition is not None and not evaluate(rule.condition, names, payload):
                continue
            due = ev.occurred_at
            if rule.at is not None:
                deadline = _parse_deadline(payload.get(rule.at))
                if deadline is None:
                    log.warning(
                        "rule %s: event %s has no deadline in payload.%s; not scheduled", rule.name, ev.id, rule.at
                    )
                    continue
                due = deadline
            if rule.after is not None:
                due = due + rule.after
            rows.append(
                {
                    "rule_id": lr.id,
                    "trigger_key": f"event:{ev.id}",
                    "lead_id": ev.lead_id,
                    "trigger_event_id": ev.id,
                    "trigger_at": ev.occurred_at,
                    "due_at": due,
                    "status": TimerStatus.PENDING.value,
                    "attempts": 0,
                    "chain": chain,
                    "created_at": now,
                }
            )
    return _insert_ignoring_duplicates(session, rows)


def ensure_cursor(session: Session) -> WorkflowCursor:
    """The event-log cursor; created at the newest event (rules apply from when the engine is set up on)."""
    cursor = session.get(WorkflowCursor, CURSOR)
    if cursor is None:
        newest = session.scalar(select(func.max(Event.id))) or 0
        cursor = WorkflowCursor(name=CURSOR, last_event_id=newest, updated_at=utcnow())
        session.add(cursor)
        session.flush()
    return cursor


def scan_events(engine: Engine, *, batch: int = 5000, settle_seconds: float = 2.0) -> int:
    """Read events after the cursor and schedule their timers; returns how many timers were created.

    The cursor only moves past events recorded ``settle_seconds`` ago, so an event whose transaction
    committed after a later one is still seen (the next scans re-read the unsettled tail; scheduling is
    idempotent).
    """
    created = 0
    with Session(engine) as session:
        cursor = ensure_cursor(session)
        session.commit()
    while True:
        with Session(engine, expire_on_commit=False) as session:
            cursor = session.get_one(WorkflowCursor, CURSOR)
            events = list(
                session.scalars(select(Event).where(Event.id > cursor.last_event_id).order_by(Event.id).limit(batch))
            )
            if not events:
                return created
            created += schedule(session, events)
            settled_before = utcnow() - timedelta(seconds=settle_seconds)
            settled = [e.id for e in events if e.recorded_at <= settled_before]
            moved = False
            if settled and settled[-1] > cursor.last_event_id:
                # Only a prefix of settled events moves the cursor (never past an unsettled one).
                prefix = 0
                for e in events:
                    if e.recorded_at > settled_before:
                        break
                    prefix = e.id
                if prefix > cursor.last_event_id:
                    cursor.last_event_id = prefix
                    cursor.updated_at = utcnow()
                    moved = True
            session.commit()
        if len(events) < batch or not moved:
            return created


def claim_due(
    engine: Engine, *, worker: str, now: datetime | None = None, batch: int = 500, lease_seconds: float = 60.0
) -> list[int]:
    """Atomically claim up to ``batch`` due timers (and timers whose lease expired) for this worker."""
    now = now or utcnow()
    t = WorkflowTimer
    due = select(t.id).where(
        or_(
            and_(t.status == TimerStatus.PENDING.value, t.due_at <= now),
            and_(t.status == TimerStatus.RUNNING.value, t.claimed_until < now),
        )
    )
    due = due.order_by(t.due_at, t.id).limit(batch)
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    stmt = (
        update(t)
        .where(t.id.in_(due.scalar_subquery()))
        .values(
            status=TimerStatus.RUNNING.value,
            claimed_by=worker,
            claimed_until=now + timedelta(seconds=lease_seconds),
            attempts=t.attempts + 1,
        )
        .returning(t.id)
        .execution_options(synchronize_session=False)
    )
    with engine.begin() as conn:
        return sorted(conn.execute(stmt).scalars().all())


@dataclass
class BatchResult:
    """What one batch of timers came to."""

    fired: int = 0
    skipped: int = 0
    failed: int = 0
    stopped: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)

    def add(self, other: BatchResult) -> None:
        self.fired += other.fired
        self.skipped += other.skipped
        self.failed += other.failed
        self.stopped += other.stopped
        self.duplicates += other.duplicates
        self.errors.extend(other.errors[: max(0, 20 - len(self.errors))])

    def as_dict(self) -> dict[str, Any]:
        return {
            "fired": self.fired,
            "skipped": self.skipped,
            "failed": self.failed,
            "stopped": self.stopped,
            "duplicates": self.duplicates,
            "errors": self.errors,
        }


class _Batch:
    """The shared look-ups of one batch of timers."""

    def __init__(self, session: Session, timers: list[WorkflowTimer], *, careful: bool = False) -> None:
        self.session = session
        self.careful = careful
        self.writes = Writes()
        self.errors: dict[int, str] = {}
        rule_ids = {t.rule_id for t in timers}
        self.rules = {r.id: r for r in session.scalars(select(WorkflowRule).where(WorkflowRule.id.in_(rule_ids)))}
        lead_ids = sorted({t.lead_id for t in timers if t.lead_id is not None})
        self.leads: dict[int, Lead] = {}
        for start in range(0, len(lead_ids), 900):
            for lead in session.scalars(select(Lead).where(Lead.id.in_(lead_ids[start : start + 900]))):
                self.leads[lead.id] = lead
        event_ids = sorted({t.trigger_event_id for t in timers if t.trigger_event_id is not None})
        self.triggers: dict[int, tuple[str, int | None, dict[str, Any]]] = {}
        for start in range(0, len(event_ids), 900):
            for row in session.execute(
                select(Event.id, Event.type, Event.actor_id, Event.payload).where(
                    Event.id.in_(event_ids[start : start + 900])
                )
            ):
                self.triggers[row.id] = (row.type, row.actor_id, dict(row.payload or {}))
        keys = {(t.rule_id, t.trigger_key) for t in timers}
        self.done: set[tuple[int, str]] = set()
        trigger_keys = sorted({k for _, k in keys})
        for start in range(0, len(trigger_keys), 900):
            for rid, key in session.execute(
                select(WorkflowFiring.rule_id, WorkflowFiring.trigger_key).where(
                    WorkflowFiring.trigger_key.in_(trigger_keys[start : start + 900])
                )
            ):
                self.done.add((rid, key))
        self.unless = self._unless_events(timers)
        self.resolver = Resolver(session)

    def _unless_events(self, timers: list[WorkflowTimer]) -> dict[int, list[tuple[int, str, datetime, dict[str, Any]]]]:
        types: set[str] = set()
        lead_ids: set[int] = set()
        earliest: datetime | None = None
        for t in timers:
            row = self.rules.get(t.rule_id)
            if row is None or t.lead_id is None:
                continue
            rule = _parsed(row)
            if rule.unless:
                types |= set(rule.unless)
                lead_ids.add(t.lead_id)
                earliest = t.trigger_at if earliest is None or t.trigger_at < earliest else earliest
        out: dict[int, list[tuple[int, str, datetime, dict[str, Any]]]] = defaultdict(list)
        if not types or earliest is None:
            return out
        ids = sorted(lead_ids)
        for start in range(0, len(ids), 900):
            for ev in self.session.execute(
                select(Event.id, Event.lead_id, Event.type, Event.occurred_at, Event.payload).where(
                    Event.lead_id.in_(ids[start : start + 900]),
                    Event.type.in_(sorted(types)),
                    Event.occurred_at >= earliest,
                )
            ):
                out[ev.lead_id].append((ev.id, ev.type, ev.occurred_at, ev.payload or {}))
        return out

    def unless_hit(self, timer: WorkflowTimer, rule: Rule) -> str | None:
        if not rule.unless or timer.lead_id is None:
            return None
        same = rule.unless_same
        wanted = self.triggers.get(timer.trigger_event_id or -1, (None, None, {}))[2].get(same) if same else None
        for event_id, type_, at, payload in self.unless.get(timer.lead_id, []):
            if same and payload.get(same) != wanted:
                continue
            if event_id != timer.trigger_event_id and type_ in rule.unless and timer.trigger_at <= at <= timer.due_at:
                return f"{type_} (event {event_id}) at {at.isoformat()} within the window"
        return None


_CHAIN = "leadpilot_workflow_chain"


@sa_event.listens_for(Session, "before_flush")
def _tag_new_events(session: Session, _context: Any, _instances: Any) -> None:
    """While a rule fires, stamp the events its actions write with the chain of rules behind them.

    The log is append-only (no UPDATE), so the stamp goes in before the INSERT; the cycle guard reads it.
    """
    tag = session.info.get(_CHAIN)
    if tag is None:
        return
    for obj in session.new:
        if isinstance(obj, Event) and "workflow" not in (obj.payload or {}):
            obj.payload = {**(obj.payload or {}), "workflow": tag}


class _Conflict(Exception):
    """Another worker recorded a firing of this batch first: redo the batch carefully (one savepoint each)."""


def _fire_one(s: Session, b: _Batch, t: WorkflowTimer, *, worker: str, now: datetime, config: EngineConfig) -> str:
    """Fire (or skip) one claimed timer; returns the outcome (fired, skipped, failed, stopped, duplicate)."""
    row = b.rules.get(t.rule_id)
    if (t.rule_id, t.trigger_key) in b.done:
        b.writes.timers.append({"id": t.id, "status": TimerStatus.DONE.value, "finished_at": now})
        return "duplicate"
    if row is None or not row.enabled:
        return _finish(s, b, t, row, TimerStatus.SKIPPED, {"reason": "rule disabled"}, worker=worker, now=now)
    rule = _parsed(row)
    chain = list(t.chain or [])
    if rule.name in chain or len(chain) >= config.max_depth:
        path = " -> ".join([*chain, rule.name])
        why = (
            f"cycle: {path} (rule {rule.name!r} already fired in this chain)"
            if rule.name in chain
            else f"chain of {len(chain)} rules reached the depth limit {config.max_depth}: {path}"
        )
        return _finish(
            s,
            b,
            t,
            row,
            TimerStatus.STOPPED,
            {"reason": why, "chain": chain},
            worker=worker,
            now=now,
            event=EventType.WORKFLOW_STOPPED,
        )
    lead = b.leads.get(t.lead_id) if t.lead_id is not None else None
    if t.lead_id is not None and lead is None:
        gone = {"reason": f"lead {t.lead_id} no longer exists"}
        return _finish(s, b, t, row, TimerStatus.SKIPPED, gone, worker=worker, now=now)
    trigger_type, actor_id, payload = b.triggers.get(t.trigger_event_id or -1, (None, None, {}))
    if rule.delayed:
        hit = b.unless_hit(t, rule)
        if hit:
            return _finish(s, b, t, row, TimerStatus.SKIPPED, {"reason": f"unless: {hit}"}, worker=worker, now=now)
        if rule.condition is not None:
            values = None if lead is None else {c.key: getattr(lead, c.key) for c in _LEAD_COLUMNS}
            if not evaluate(rule.condition, _lead_names(values, trigger_type, actor_id, t.lead_id), payload):
                return _finish(
                    s, b, t, row, TimerStatus.SKIPPED, {"reason": "condition no longer holds"}, worker=worker, now=now
                )
    writes_mark = b.writes.mark()
    tag = {"rule": rule.name, "chain": [*chain, rule.name]}
    savepoint = s.begin_nested()
    s.info[_CHAIN] = tag
    firing = Firing(s, rule, row.id, lead, trigger_type, payload, t.trigger_key, now, b.resolver, b.writes, tag)
    try:
        done = [run_action(firing, action) for action in rule.actions]
        event_index = len(b.writes.events)
        firing.event(
            EventType.WORKFLOW_FIRED,
            t.lead_id,
            {
                "rule": rule.name,
                "version": row.version,
                "trigger_key": t.trigger_key,
                "timer_id": t.id,
                "actions": done,
            },
        )
        b.writes.firings.append(
            {
                "rule_id": row.id,
                "rule_version": row.version,
                "trigger_key": t.trigger_key,
                "timer_id": t.id,
                "lead_id": t.lead_id,
                "status": "fired",
                "detail": {"actions": done},
                "_event": event_index,
                "worker": worker,
                "fired_at": now,
            }
        )
        b.writes.timers.append({"id": t.id, "status": TimerStatus.DONE.value, "finished_at": now, "last_error": None})
        if b.careful:
            b.writes.flush(s)
        s.flush()
        savepoint.commit()
    except IntegrityError:
        savepoint.rollback()
        b.writes.undo(writes_mark)
        if not b.careful:
            raise _Conflict() from None
        b.done.add((t.rule_id, t.trigger_key))
        return "duplicate"  # another worker fired it (its lease outlived ours); leave its record alone
    except DBAPIError:
        raise  # the database itself failed: the batch rolls back and the lease brings the timers back
    except (DomainError, ActionError, ValueError, KeyError) as exc:
        savepoint.rollback()
        b.writes.undo(writes_mark)
        message = getattr(exc, "message", None) or str(exc)
        failed = {"error": message}
        return _finish(
            s, b, t, row, TimerStatus.FAILED, failed, worker=worker, now=now, event=EventType.WORKFLOW_FAILED
        )
    b.done.add((t.rule_id, t.trigger_key))
    return "fired"


def _finish(
    s: Session,
    b: _Batch,
    t: WorkflowTimer,
    row: WorkflowRule | None,
    status: TimerStatus,
    detail: dict[str, Any],
    *,
    worker: str,
    now: datetime,
    event: EventType | None = None,
) -> str:
    """Record a firing that did not run its actions (skipped, failed, stopped) and close the timer."""
    writes_mark = b.writes.mark()
    event_index = None
    if event is not None and row is not None:
        name = _parsed(row).name
        event_index = len(b.writes.events)
        b.writes.events.append(
            {
                "type": event.value,
                "lead_id": t.lead_id,
                "payload": {
                    "rule": name,
                    "trigger_key": t.trigger_key,
                    "timer_id": t.id,
                    **detail,
                    "workflow": {"rule": name, "chain": [*(t.chain or []), name]},
                },
                "occurred_at": now,
            }
        )
    b.writes.firings.append(
        {
            "rule_id": t.rule_id,
            "rule_version": row.version if row is not None else 0,
            "trigger_key": t.trigger_key,
            "timer_id": t.id,
            "lead_id": t.lead_id,
            "status": status.value,
            "detail": detail,
            "_event": event_index,
            "worker": worker,
            "fired_at": now,
        }
    )
    error = detail.get("error") or detail.get("reason")
    b.writes.timers.append({"id": t.id, "status": status.value, "finished_at": now, "last_error": error})
    b.errors[t.id] = str(error) if error else ""
    if b.careful:
        savepoint = s.begin_nested()
        try:
            b.writes.flush(s)
            savepoint.commit()
        except IntegrityError:
            savepoint.rollback()
            b.writes.undo(writes_mark)
            return "duplicate"
    b.done.add((t.rule_id, t.trigger_key))
    return status.value


def _fire_batch(
    engine: Engine, ids: Sequence[int], *, worker: str, now: datetime, config: EngineConfig, careful: bool
) -> BatchResult:
    result = BatchResult()
    with Session(engine, expire_on_commit=False) as s:
        timers = list(
            s.scalars(
                select(WorkflowTimer)
                .where(
                    WorkflowTimer.id.in_(list(ids)),
                    WorkflowTimer.claimed_by == worker,
                    WorkflowTimer.status == TimerStatus.RUNNING.value,
                )
                .order_by(WorkflowTimer.id)
            )
        )
        batch = _Batch(s, timers, careful=careful)
        for t in timers:
            try:
                outcome = _fire_one(s, batch, t, worker=worker, now=now, config=config)
            finally:
                s.info.pop(_CHAIN, None)
            if outcome == "fired":
                result.fired += 1
            elif outcome == "duplicate":
                result.duplicates += 1
            else:
                setattr(result, outcome, getattr(result, outcome) + 1)
                if outcome == "failed":
                    result.errors.append(f"timer {t.id} ({t.trigger_key}): {batch.errors.get(t.id)}")
        try:
            batch.writes.flush(s)
            s.commit()
        except IntegrityError:
            s.rollback()
            raise _Conflict() from None
    return result


def fire_claimed(
    engine: Engine, ids: Sequence[int], *, worker: str, now: datetime | None = None, config: EngineConfig | None = None
) -> BatchResult:
    """Fire the timers this worker claimed in one transaction: actions per timer in a savepoint, then the
    firing records, events and timer updates in bulk. If another worker recorded one of these firings
    first (its lease had expired under us), the batch is redone with one savepoint per firing record."""
    config = config or EngineConfig()
    now = now or utcnow()
    if not ids:
        return BatchResult()
    try:
        return _fire_batch(engine, ids, worker=worker, now=now, config=config, careful=False)
    except _Conflict:
        log.info("firing conflict in a batch of %s timers; redoing it one by one", len(ids))
        return _fire_batch(engine, ids, worker=worker, now=now, config=config, careful=True)


def run_due(
    engine: Engine,
    *,
    worker: str | None = None,
    now: datetime | None = None,
    config: EngineConfig | None = None,
    max_batches: int | None = None,
) -> BatchResult:
    """Claim and fire due timers batch after batch until none is due (or ``max_batches``)."""
    config = config or EngineConfig()
    worker = worker or default_worker_id()
    total = BatchResult()
    batches = 0
    while max_batches is None or batches < max_batches:
        ids = claim_due(engine, worker=worker, now=now, batch=config.batch_size, lease_seconds=config.lease_seconds)
        if not ids:
            break
        total.add(fire_claimed(engine, ids, worker=worker, now=now, config=config))
        batches += 1
    return total


def run_once(
    engine: Engine, *, worker: str | None = None, now: datetime | None = None, config: EngineConfig | None = None
) -> dict[str, Any]:
    """One pass of the worker: scan new events, fire every due timer, deliver due webhooks."""
    from leadpilot.workflow.webhooks import deliver_due

    config = config or EngineConfig()
    scheduled = scan_events(engine, settle_seconds=config.settle_seconds)
    result = run_due(engine, worker=worker, now=now, config=config)
    webhooks = deliver_due(engine, now=now, backoff_seconds=config.webhook_backoff_seconds)
    return {"scheduled": scheduled, **result.as_dict(), "webhooks": webhooks}


def run_forever(
    engine: Engine,
    *,
    poll_seconds: float = 1.0,
    config: EngineConfig | None = None,
    stop: threading.Event | None = None,
    on_pass: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """The worker loop: run_once, then sleep ``poll_seconds`` when there was nothing to do."""
    stop = stop or threading.Event()
    worker = default_worker_id()
    while not stop.is_set():
        summary = run_once(engine, worker=worker, config=config)
        if on_pass is not None:
            on_pass(summary)
        busy = summary["scheduled"] or summary["fired"] or summary["skipped"] or summary["failed"]
        if not busy:
            stop.wait(poll_seconds)


def timer_counts(session: Session, *, now: datetime | None = None) -> dict[str, int]:
    """Timers by status, with ``due`` (pending and due now) and ``waiting`` (pending, not yet due)."""
    now = now or utcnow()
    counts = {s.value: 0 for s in TimerStatus}
    for status, n in session.execute(select(WorkflowTimer.status, func.count()).group_by(WorkflowTimer.status)):
        counts[status] = int(n)
    counts["due"] = int(
        session.scalar(
            select(func.count()).where(WorkflowTimer.status == TimerStatus.PENDING.value, WorkflowTimer.due_at <= now)
        )
        or 0
    )
    counts["waiting"] = counts[TimerStatus.PENDING.value] - counts["due"]
    return counts


def install_subscriber(
    engine: Engine, *, fire_immediately: bool = True, config: EngineConfig | None = None
) -> Callable[[], None]:
    """Schedule timers for events as soon as they commit (and fire the due ones); returns the unsubscribe.

    Events written by the firings themselves come back here while firing: they are scheduled, and the
    firing loop (which runs until no timer is due) fires them next, so chains run without waiting for a scan.
    """
    config = config or EngineConfig()
    worker = default_worker_id()
    local = threading.local()

    def on_events(records: list[EventRecord]) -> None:
        with Session(engine) as session:
            session.info["leadpilot_workflow_scheduler"] = True
            schedule(session, records)
            session.commit()
        if not fire_immediately or getattr(local, "busy", False):
            return
        local.busy = True
        try:
            run_due(engine, worker=worker, config=config)
        finally:
            local.busy = False

    return bus.subscribe(on_events)


def reset_cursor(session: Session, *, to_event_id: int) -> None:
    """Move the event cursor (re-scan from an older event, or skip ahead)."""
    cursor = ensure_cursor(session)
    cursor.last_event_id = to_event_id
    cursor.updated_at = utcnow()
