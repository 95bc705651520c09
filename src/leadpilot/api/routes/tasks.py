"""Tasks and follow-ups."""

from __future__ import annotations

from fastapi import APIRouter, Response

from leadpilot.api.deps import (
    CurrentActor,
    IdPath,
    IdQuery,
    PagingDep,
    ReadDB,
    SessionReleasingRoute,
    TimeQuery,
    WriteDB,
    page_response,
)
from leadpilot.crm import tasks
from leadpilot.crm.models import Task, TaskStatus
from leadpilot.crm.schemas import PageOut, TaskCreate, TaskPublic, TaskUpdate

router = APIRouter(prefix="/tasks", tags=["tasks"], route_class=SessionReleasingRoute)


@router.get("", response_model=PageOut[TaskPublic])
def list_tasks(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    assignee_id: IdQuery = None,
    lead_id: IdQuery = None,
    status: TaskStatus | None = None,
    due_before: TimeQuery = None,
) -> Response:
    """Tasks the caller may see."""
    page = tasks.list_tasks(
        db,
        actor=actor,
        assignee_id=assignee_id,
        lead_id=lead_id,
        status=status,
        due_before=due_before,
        sort=paging.sort or "due_at",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, TaskPublic)


@router.post("", response_model=TaskPublic, status_code=201)
def create_task(data: TaskCreate, actor: CurrentActor, db: WriteDB) -> Task:
    """Create a task (for yourself unless you supervise the assignee)."""
    task = tasks.create_task(db, actor=actor, data=data)
    db.commit()
    return task


@router.get("/{task_id}", response_model=TaskPublic)
def get_task(task_id: IdPath, actor: CurrentActor, db: ReadDB) -> Task:
    """One task."""
    return tasks.get_task(db, actor=actor, task_id=task_id)


@router.patch("/{task_id}", response_model=TaskPublic)
def update_task(task_id: IdPath, data: TaskUpdate, actor: CurrentActor, db: WriteDB) -> Task:
    """Change or complete a task."""
    task = tasks.update_task(db, actor=actor, task_id=task_id, data=data)
    db.commit()
    return task


@router.delete("/{task_id}", status_code=204)
def delete_task(task_id: IdPath, actor: CurrentActor, db: WriteDB) -> Response:
    """Delete a task."""
    tasks.delete_task(db, actor=actor, task_id=task_id)
    db.commit()
    return Response(status_code=204)
