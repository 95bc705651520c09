"""The event log (read) and activities (append), plus the audit log for admins."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from leadpilot.api.deps import (
    BigIdPath,
    CurrentActor,
    IdQuery,
    PagingDep,
    ReadDB,
    SessionReleasingRoute,
    TimeQuery,
    WriteDB,
    page_response,
)
from leadpilot.crm import eventlog
from leadpilot.crm.models import Event
from leadpilot.crm.schemas import AuditPublic, EventCreate, EventPublic, PageOut

router = APIRouter(tags=["events"], route_class=SessionReleasingRoute)


@router.get("/events", response_model=PageOut[EventPublic])
def list_events(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    lead_id: IdQuery = None,
    type: Annotated[list[str] | None, Query(max_length=40)] = None,
    actor_id: IdQuery = None,
    after: TimeQuery = None,
    before: TimeQuery = None,
) -> Response:
    """Events about the leads the caller may see, oldest first (sort=-id for newest first)."""
    page = eventlog.list_events(
        db,
        actor=actor,
        lead_id=lead_id,
        type=type,
        actor_id=actor_id,
        after=after,
        before=before,
        sort=paging.sort or "id",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, EventPublic)


@router.post("/events", response_model=EventPublic, status_code=201)
def record_activity(data: EventCreate, actor: CurrentActor, db: WriteDB) -> Event:
    """Record an activity (call, message, note, meeting, quote, contract, payment) on a lead."""
    event = eventlog.record_activity(db, actor=actor, data=data)
    db.commit()
    return event


@router.get("/events/{event_id}", response_model=EventPublic)
def get_event(event_id: BigIdPath, actor: CurrentActor, db: ReadDB) -> Event:
    """One event."""
    return eventlog.get_event(db, actor=actor, event_id=event_id)


@router.get("/audit", response_model=PageOut[AuditPublic], tags=["audit"])
def list_audit(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    entity: Annotated[str | None, Query(max_length=40)] = None,
    entity_id: IdQuery = None,
    action: Annotated[str | None, Query(max_length=30)] = None,
    actor_id: IdQuery = None,
) -> Response:
    """The audit log, newest first (admins)."""
    page = eventlog.list_audit(
        db,
        actor=actor,
        entity=entity,
        entity_id=entity_id,
        action=action,
        actor_id=actor_id,
        sort=paging.sort or "-id",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, AuditPublic)
