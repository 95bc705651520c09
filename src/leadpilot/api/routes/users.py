"""Users: salespeople, screeners, supervisors and admins."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from leadpilot.api.deps import (
    CurrentActor,
    IdPath,
    IdQuery,
    PagingDep,
    ReadDB,
    SessionReleasingRoute,
    WriteDB,
    forget_cached_actors,
    page_response,
)
from leadpilot.crm import people
from leadpilot.crm.models import Role, User
from leadpilot.crm.schemas import PageOut, UserCreate, UserPublic, UserUpdate

router = APIRouter(prefix="/users", tags=["users"], route_class=SessionReleasingRoute)


@router.get("", response_model=PageOut[UserPublic])
def list_users(
    actor: CurrentActor,
    db: ReadDB,
    paging: PagingDep,
    role: Role | None = None,
    team_id: IdQuery = None,
    is_active: bool | None = None,
) -> Response:
    """List the users the caller may see."""
    page = people.list_users(
        db,
        actor=actor,
        role=role,
        team_id=team_id,
        is_active=is_active,
        sort=paging.sort or "username",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, UserPublic)


@router.post("", response_model=UserPublic, status_code=201)
def create_user(data: UserCreate, actor: CurrentActor, db: WriteDB) -> User:
    """Create a user (admins)."""
    user = people.create_user(db, actor=actor, data=data)
    db.commit()
    return user


@router.get("/{user_id}", response_model=UserPublic)
def get_user(user_id: IdPath, actor: CurrentActor, db: ReadDB) -> User:
    """One user."""
    return people.get_user(db, actor=actor, user_id=user_id)


@router.patch("/{user_id}", response_model=UserPublic)
def update_user(user_id: IdPath, data: UserUpdate, actor: CurrentActor, db: WriteDB, request: Request) -> User:
    """Change a user (admins; supervisors limited fields in their subtree)."""
    user = people.update_user(db, actor=actor, user_id=user_id, data=data)
    db.commit()
    forget_cached_actors(request)  # role, team or active flag may have changed
    return user


@router.delete("/{user_id}", response_model=UserPublic)
def deactivate_user(user_id: IdPath, actor: CurrentActor, db: WriteDB, request: Request) -> User:
    """Deactivate a user (admins); users are never hard-deleted, the event log refers to them."""
    user = people.deactivate_user(db, actor=actor, user_id=user_id)
    db.commit()
    forget_cached_actors(request)  # their tokens stop working in this worker at once
    return user
