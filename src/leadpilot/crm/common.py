"""Small helpers shared by the service modules."""

from __future__ import annotations

from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, select, true
from sqlalchemy.orm import Session

from leadpilot.crm.errors import Invalid, NotFound

M = TypeVar("M")


def get_visible(
    session: Session, model: type[M], obj_id: int, scope: ColumnElement[bool], *, for_update: bool = False
) -> M:
    """The row with this id if the scope lets the actor see it; NotFound otherwise (never 403, never a leak)."""
    stmt = select(model).where(model.id == obj_id, scope)  # type: ignore[attr-defined]
    if for_update:
        stmt = stmt.with_for_update()
    row = session.scalar(stmt)
    if row is None:
        raise NotFound(f"{model.__name__.lower()} {obj_id} not found")
    return row


def apply_changes(obj: Any, changes: dict[str, Any]) -> dict[str, Any]:
    """Set the attributes that differ; returns {field: [old, new]} of what actually changed."""
    diff: dict[str, Any] = {}
    for name, value in changes.items():
        old = getattr(obj, name)
        if isinstance(value, Enum):
            value = value.value
        if old != value:
            setattr(obj, name, value)
            diff[name] = [_jsonable(old), _jsonable(value)]
    return diff


def _jsonable(value: Any) -> Any:
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def redact(diff: dict[str, Any], secret_fields: frozenset[str]) -> dict[str, Any]:
    """The diff with personal or secret values replaced by a marker (the audit log keeps field names only)."""
    return {k: ("<redacted>" if k in secret_fields else v) for k, v in diff.items()}


def require_exists(session: Session, model: type, obj_id: Any, field: str) -> None:
    """Refuse a reference to a row that does not exist, naming the field."""
    require_visible(session, model, obj_id, true(), field)


def require_visible(session: Session, model: type, obj_id: Any, scope: ColumnElement[bool], field: str) -> None:
    """Refuse a reference to a row the actor may not see exactly as one to a missing row (no leak)."""
    if obj_id is None:
        return
    found = session.scalar(select(model.id).where(model.id == obj_id, scope))  # type: ignore[attr-defined]
    if found is None:
        raise Invalid(f"{field} {obj_id} does not exist", field=field)
