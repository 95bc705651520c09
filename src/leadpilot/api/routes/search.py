"""Finding leads: full-text search (English and Chinese) and each salesperson's ranked pool."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from leadpilot.api.deps import CurrentActor, ReadDB, SessionReleasingRoute, WriteDB
from leadpilot.crm.schemas import LeadPublic
from leadpilot.distribution import recommend
from leadpilot.distribution import search as lead_search

router = APIRouter(tags=["search"], route_class=SessionReleasingRoute)


@router.get("/search/leads")
def search_leads(
    actor: CurrentActor,
    db: WriteDB,  # a search first brings the index up to date (derived data, no audit row)
    q: Annotated[str, Query(min_length=1, max_length=200, description="Words to find (English or Chinese).")],
    stage: Annotated[list[str] | None, Query(max_length=20)] = None,
    product_line: Annotated[str | None, Query(max_length=80)] = None,
    region: Annotated[str | None, Query(max_length=120)] = None,
    score_min: Annotated[float | None, Query(ge=0, le=1)] = None,
    score_max: Annotated[float | None, Query(ge=0, le=1)] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
) -> dict[str, Any]:
    """Leads the caller may see holding every word of ``q``; best first (relevance × score)."""
    hits = lead_search.search(
        db,
        actor=actor,
        q=q,
        stage=stage,
        product_line=product_line,
        region=region,
        score_min=score_min,
        score_max=score_max,
        limit=limit,
    )
    items = [
        {"lead": LeadPublic.model_validate(h.lead).model_dump(mode="json"), "relevance": h.relevance, "rank": h.rank}
        for h in hits
    ]
    db.commit()
    return {"items": items}


@router.get("/me/recommendations")
def my_recommendations(
    actor: CurrentActor, db: ReadDB, limit: Annotated[int, Query(ge=1, le=200)] = 50
) -> dict[str, Any]:
    """The caller's ranked claim pool from the last distribution run (leads still in the pool, best first)."""
    return {"items": recommend.recommendations_for(db, actor=actor, limit=limit)}
