"""The audit log: one row per write and per read of a contact's phone or email."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.orm import Session

from leadpilot.crm.access import Actor
from leadpilot.crm.models import AuditEntry
from leadpilot.db.base import utcnow


def audit(
    session: Session,
    actor: Actor,
    action: str,
    entity: str,
    entity_id: int | None = None,
    detail: dict[str, Any] | None = None,
) -> None:
    """Record an action in the caller's transaction (so a rolled-back write leaves no audit row)."""
    session.add(AuditEntry(actor_id=actor.id, action=action, entity=entity, entity_id=entity_id, detail=detail or {}))


def audit_many(session: Session, actor: Actor, action: str, entity: str, ids: list[int], **detail: Any) -> None:
    """Record the same action on many rows with one INSERT."""
    if not ids:
        return
    now = utcnow()
    session.execute(
        insert(AuditEntry),
        [
            {"at": now, "actor_id": actor.id, "action": action, "entity": entity, "entity_id": i, "detail": detail}
            for i in ids
        ],
    )


def audit_pii_read(session: Session, actor: Actor, contact_ids: list[int], fields: list[str]) -> None:
    """Record that the actor was shown these contacts' phone/email."""
    audit_many(session, actor, "read_pii", "contact", contact_ids, fields=fields)
