"""Reading the event log, and recording activities (calls, messages, notes, ...) against a lead."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm import schemas
from leadpilot.crm.access import Actor, event_scope
from leadpilot.crm.audit import audit
from leadpilot.crm.common import get_visible
from leadpilot.crm.errors import Forbidden, Invalid
from leadpilot.crm.events import ACTIVITY_TYPES, append_event
from leadpilot.crm.leads import _check_can_work, get_lead
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import AuditEntry, Event
from leadpilot.db.base import utcnow

EVENT_SORT = sort_keys(Event.id, Event.occurred_at)
AUDIT_SORT = sort_keys(AuditEntry.id, AuditEntry.at)


def list_events(
    session: Session,
    *,
    actor: Actor,
    lead_id: int | None = None,
    type: list[str] | None = None,
    actor_id: int | None = None,
    after: datetime | None = None,
    before: datetime | None = None,
    sort: str = "id",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Event]:
    """Events the actor may see (those about visible leads; admins all), oldest first by default."""
    stmt = select(Event).where(event_scope(actor))
    if lead_id is not None:
        stmt = stmt.where(Event.lead_id == lead_id)
    if type:
        stmt = stmt.where(Event.type.in_(type))
    if actor_id is not None:
        stmt = stmt.where(Event.actor_id == actor_id)
    if after is not None:
        stmt = stmt.where(Event.occurred_at >= after)
    if before is not None:
        stmt = stmt.where(Event.occurred_at < before)
    return paginate(session, stmt, model=Event, sortable=EVENT_SORT, sort=sort, cursor=cursor, limit=limit)


def get_event(session: Session, *, actor: Actor, event_id: int) -> Event:
    """One event the actor may see."""
    return get_visible(session, Event, event_id, event_scope(actor))


def record_activity(session: Session, *, actor: Actor, data: schemas.EventCreate) -> Event:
    """Append an activity (call, message, note, meeting, quote, ...) to a lead the actor works on."""
    if data.type not in ACTIVITY_TYPES:
        allowed = ", ".join(sorted(ACTIVITY_TYPES))
        raise Invalid(f"event type {data.type!r} cannot be posted; allowed: {allowed}", field="type")
    lead = get_lead(session, actor=actor, lead_id=data.lead_id)
    _check_can_work(actor, lead)
    if data.occurred_at is not None and data.occurred_at.tzinfo is None:
        raise Invalid("occurred_at needs a time zone (e.g. 2026-01-31T09:00:00Z)", field="occurred_at")
    if data.occurred_at is not None and data.occurred_at > utcnow():
        raise Invalid("occurred_at is in the future", field="occurred_at")
    event = append_event(
        session, data.type, lead_id=lead.id, actor_id=actor.id, payload=data.payload, occurred_at=data.occurred_at
    )
    audit(session, actor, "create", "event", event.id, {"type": data.type})
    return event


def list_audit(
    session: Session,
    *,
    actor: Actor,
    entity: str | None = None,
    entity_id: int | None = None,
    action: str | None = None,
    actor_id: int | None = None,
    sort: str = "-id",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[AuditEntry]:
    """The audit log (admins only)."""
    if not actor.is_admin:
        raise Forbidden("only an admin may read the audit log")
    stmt = select(AuditEntry)
    if entity:
        stmt = stmt.where(AuditEntry.entity == entity)
    if entity_id is not None:
        stmt = stmt.where(AuditEntry.entity_id == entity_id)
    if action:
        stmt = stmt.where(AuditEntry.action == action)
    if actor_id is not None:
        stmt = stmt.where(AuditEntry.actor_id == actor_id)
    return paginate(session, stmt, model=AuditEntry, sortable=AUDIT_SORT, sort=sort, cursor=cursor, limit=limit)
