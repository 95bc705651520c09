"""Leads: list with filters, CRUD, explicit stage changes, claim pool and assignment."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, Field

from leadpilot.api.deps import (
    CurrentActor,
    IdPath,
    PagingDep,
    ReadDB,
    SessionReleasingRoute,
    SettingsDep,
    WriteDB,
    row_page_response,
)
from leadpilot.crm import leads
from leadpilot.crm.models import Lead, Stage
from leadpilot.crm.schemas import (
    MAX_ID,
    AssignRequest,
    LeadCreate,
    LeadPublic,
    LeadUpdate,
    PageOut,
    StageChange,
    UTCTimestamp,
)

router = APIRouter(prefix="/leads", tags=["leads"], route_class=SessionReleasingRoute)

Text = Annotated[str | None, Field(max_length=120)]
Id = Annotated[int | None, Field(ge=1, le=MAX_ID)]
Timestamp = Annotated[UTCTimestamp | None, Field(description="ISO 8601 with a time zone")]


class LeadListQuery(BaseModel):
    """The lead list's filters, validated as one model (one pydantic call instead of one per parameter)."""

    stage: list[Stage] | None = Field(None, description="repeat for several stages")
    product_line: Text = None
    region: Text = None
    source: Text = None
    owner_id: Id = None
    team_id: Id = None
    account_id: Id = None
    in_pool: bool | None = None
    min_budget: float | None = None
    max_budget: float | None = None
    min_score: float | None = None
    max_score: float | None = None
    created_after: Timestamp = None
    created_before: Timestamp = None
    q: Annotated[str | None, Field(max_length=200, description="text in the title")] = None


@router.get("", response_model=PageOut[LeadPublic])
def list_leads(
    actor: CurrentActor, db: ReadDB, paging: PagingDep, query: Annotated[LeadListQuery, Query()]
) -> Response:
    """Leads the caller may see: sales their own and the pool, supervisors their subtree, admins all."""
    filters = leads.LeadFilters(
        stage=[s.value for s in query.stage] if query.stage else None,
        product_line=query.product_line,
        region=query.region,
        source=query.source,
        owner_id=query.owner_id,
        team_id=query.team_id,
        account_id=query.account_id,
        in_pool=query.in_pool,
        min_budget=query.min_budget,
        max_budget=query.max_budget,
        min_score=query.min_score,
        max_score=query.max_score,
        created_after=query.created_after,
        created_before=query.created_before,
        q=query.q,
    )
    page = leads.list_leads(
        db, actor=actor, filters=filters, sort=paging.sort or "-created_at", cursor=paging.cursor, limit=paging.limit
    )
    return row_page_response(page, LeadPublic)


@router.post("", response_model=LeadPublic, status_code=201)
def create_lead(data: LeadCreate, actor: CurrentActor, db: WriteDB) -> Lead:
    """Create a lead in stage 'new'."""
    lead = leads.create_lead(db, actor=actor, data=data)
    db.commit()
    return lead


@router.get("/{lead_id}", response_model=LeadPublic)
def get_lead(lead_id: IdPath, actor: CurrentActor, db: ReadDB) -> Lead:
    """One lead."""
    return leads.get_lead(db, actor=actor, lead_id=lead_id)


@router.patch("/{lead_id}", response_model=LeadPublic)
def update_lead(lead_id: IdPath, data: LeadUpdate, actor: CurrentActor, db: WriteDB) -> Lead:
    """Change a lead's fields; stage and owner change through the action routes."""
    lead = leads.update_lead(db, actor=actor, lead_id=lead_id, data=data)
    db.commit()
    return lead


@router.delete("/{lead_id}", status_code=204)
def delete_lead(lead_id: IdPath, actor: CurrentActor, db: WriteDB) -> Response:
    """Delete a lead (admins)."""
    leads.delete_lead(db, actor=actor, lead_id=lead_id)
    db.commit()
    return Response(status_code=204)


@router.post("/{lead_id}/stage", response_model=LeadPublic)
def change_stage(lead_id: IdPath, data: StageChange, actor: CurrentActor, db: WriteDB) -> Lead:
    """Move a lead to another stage; an illegal move answers 409 with the reason."""
    lead = leads.change_stage(db, actor=actor, lead_id=lead_id, stage=data.stage, reason=data.reason)
    db.commit()
    return lead


@router.post("/{lead_id}/claim", response_model=LeadPublic)
def claim_lead(lead_id: IdPath, actor: CurrentActor, db: WriteDB, settings: SettingsDep) -> Lead:
    """Claim a lead from the pool; of two simultaneous claims exactly one wins, the other gets 409 (so does a
    claim past the daily limit, or by a previous owner within the cool-down)."""
    lead = leads.claim_lead(db, actor=actor, lead_id=lead_id, policy=settings.claim_policy())
    db.commit()
    return lead


@router.post("/{lead_id}/release", response_model=LeadPublic)
def release_lead(
    lead_id: IdPath, actor: CurrentActor, db: WriteDB, reason: Annotated[str | None, Query(max_length=300)] = None
) -> Lead:
    """Give a lead back to the pool (stage 'recycled')."""
    lead = leads.release_lead(db, actor=actor, lead_id=lead_id, reason=reason)
    db.commit()
    return lead


@router.post("/{lead_id}/assign", response_model=LeadPublic)
def assign_lead(lead_id: IdPath, data: AssignRequest, actor: CurrentActor, db: WriteDB) -> Lead:
    """Assign a lead to a salesperson (supervisors and admins)."""
    lead = leads.assign_lead(db, actor=actor, lead_id=lead_id, owner_id=data.owner_id, reason=data.reason)
    db.commit()
    return lead
