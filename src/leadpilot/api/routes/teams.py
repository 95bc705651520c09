"""Teams: the org chart of opportunity (screening) and sales groups."""

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
from leadpilot.crm.models import Team, TeamKind
from leadpilot.crm.schemas import PageOut, TeamCreate, TeamPublic, TeamUpdate

router = APIRouter(prefix="/teams", tags=["teams"], route_class=SessionReleasingRoute)


@router.get("", response_model=PageOut[TeamPublic])
def list_teams(
    actor: CurrentActor, db: ReadDB, paging: PagingDep, kind: TeamKind | None = None, parent_id: IdQuery = None
) -> Response:
    """List teams."""
    page = people.list_teams(
        db,
        actor=actor,
        kind=kind,
        parent_id=parent_id,
        sort=paging.sort or "name",
        cursor=paging.cursor,
        limit=paging.limit,
    )
    return page_response(page, TeamPublic)


@router.post("", response_model=TeamPublic, status_code=201)
def create_team(data: TeamCreate, actor: CurrentActor, db: WriteDB, request: Request) -> Team:
    """Create a team (admins)."""
    team = people.create_team(db, actor=actor, data=data)
    db.commit()
    forget_cached_actors(request)  # a new sub-team widens its supervisors' subtrees
    return team


@router.get("/{team_id}", response_model=TeamPublic)
def get_team(team_id: IdPath, actor: CurrentActor, db: ReadDB) -> Team:
    """One team."""
    return people.get_team(db, actor=actor, team_id=team_id)


@router.patch("/{team_id}", response_model=TeamPublic)
def update_team(team_id: IdPath, data: TeamUpdate, actor: CurrentActor, db: WriteDB, request: Request) -> Team:
    """Change a team (admins)."""
    team = people.update_team(db, actor=actor, team_id=team_id, data=data)
    db.commit()
    forget_cached_actors(request)  # a new parent moves subtrees between supervisors
    return team


@router.delete("/{team_id}", status_code=204)
def delete_team(team_id: IdPath, actor: CurrentActor, db: WriteDB, request: Request) -> Response:
    """Delete an empty team (admins)."""
    people.delete_team(db, actor=actor, team_id=team_id)
    db.commit()
    forget_cached_actors(request)  # supervisors' subtrees lose it
    return Response(status_code=204)
