"""Service functions for tasks and follow-ups."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm import schemas
from leadpilot.crm.access import Actor, task_scope
from leadpilot.crm.audit import audit
from leadpilot.crm.common import apply_changes, get_visible
from leadpilot.crm.errors import Forbidden, Invalid
from leadpilot.crm.events import EventType, append_event
from leadpilot.crm.leads import get_lead
from leadpilot.crm.listing import Page, paginate, sort_keys
from leadpilot.crm.models import Role, Task, TaskStatus, User
from leadpilot.db.base import utcnow

TASK_SORT = sort_keys(Task.id, Task.created_at, due_at=(Task.due_at, datetime(9999, 12, 31)))


def _check_assignee(session: Session, actor: Actor, assignee_id: int) -> None:
    user = session.get(User, assignee_id)
    if user is None or not user.is_active:
        raise Invalid(f"assignee {assignee_id} is not an active user", field="assignee_id")
    if actor.is_admin or assignee_id == actor.id:
        return
    if actor.role is Role.SUPERVISOR and user.team_id in actor.team_ids:
        return
    raise Forbidden("you may only give tasks to yourself (supervisors: to their team subtree)")


def list_tasks(
    session: Session,
    *,
    actor: Actor,
    assignee_id: int | None = None,
    lead_id: int | None = None,
    status: str | None = None,
    due_before: datetime | None = None,
    sort: str = "due_at",
    cursor: str | None = None,
    limit: int = 50,
) -> Page[Task]:
    """Tasks the actor may see."""
    stmt = select(Task).where(task_scope(actor))
    if assignee_id is not None:
        stmt = stmt.where(Task.assignee_id == assignee_id)
    if lead_id is not None:
        stmt = stmt.where(Task.lead_id == lead_id)
    if status:
        stmt = stmt.where(Task.status == status)
    if due_before is not None:
        stmt = stmt.where(Task.due_at < due_before)
    return paginate(session, stmt, model=Task, sortable=TASK_SORT, sort=sort, cursor=cursor, limit=limit)


def get_task(session: Session, *, actor: Actor, task_id: int) -> Task:
    """One task the actor may see."""
    return get_visible(session, Task, task_id, task_scope(actor))


def create_task(session: Session, *, actor: Actor, data: schemas.TaskCreate) -> Task:
    """Create a task, by default for the actor, optionally about a lead they can see."""
    if actor.id is None and data.assignee_id is None:
        raise Invalid("a system task needs an assignee", field="assignee_id")
    assignee_id = data.assignee_id if data.assignee_id is not None else actor.id
    assert assignee_id is not None
    _check_assignee(session, actor, assignee_id)
    if data.lead_id is not None:
        get_lead(session, actor=actor, lead_id=data.lead_id)
    task = Task(
        title=data.title,
        lead_id=data.lead_id,
        assignee_id=assignee_id,
        created_by_id=actor.id,
        kind=data.kind.value,
        due_at=data.due_at,
        status=TaskStatus.OPEN.value,
    )
    session.add(task)
    session.flush()
    append_event(
        session,
        EventType.TASK_CREATED,
        lead_id=task.lead_id,
        actor_id=actor.id,
        payload={
            "task_id": task.id,
            "kind": task.kind,
            "assignee_id": assignee_id,
            "due_at": task.due_at.isoformat() if task.due_at else None,
        },
    )
    audit(session, actor, "create", "task", task.id)
    return task


def update_task(session: Session, *, actor: Actor, task_id: int, data: schemas.TaskUpdate) -> Task:
    """Change a task; completing it stamps completed_at."""
    task = get_task(session, actor=actor, task_id=task_id)
    if not actor.is_admin and actor.role is not Role.SUPERVISOR and task.assignee_id != actor.id:
        raise Forbidden("only the assignee, a supervisor or an admin may change this task")
    changes = data.model_dump(exclude_unset=True)
    if changes.get("assignee_id") is not None:
        _check_assignee(session, actor, changes["assignee_id"])
    diff = apply_changes(task, changes)
    if "status" in diff:
        task.completed_at = utcnow() if task.status == TaskStatus.DONE.value else None
    if diff:
        append_event(
            session,
            EventType.TASK_UPDATED,
            lead_id=task.lead_id,
            actor_id=actor.id,
            payload={"task_id": task.id, "changes": diff},
        )
        audit(session, actor, "update", "task", task.id, diff)
    return task


def delete_task(session: Session, *, actor: Actor, task_id: int) -> None:
    """Delete a task (its creator, a supervisor or an admin)."""
    task = get_task(session, actor=actor, task_id=task_id)
    if not actor.is_admin and actor.role is not Role.SUPERVISOR and task.created_by_id != actor.id:
        raise Forbidden("only the creator, a supervisor or an admin may delete this task")
    session.delete(task)
    audit(session, actor, "delete", "task", task_id)
