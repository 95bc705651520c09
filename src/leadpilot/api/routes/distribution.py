"""Distribution runs over the API: rank the claim pool for every salesperson, optionally assign it (admins)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.orm import Session

from leadpilot.api.deps import CurrentActor, SessionReleasingRoute
from leadpilot.api.routes.scoring import scoring_service
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Conflict, Forbidden
from leadpilot.crm.models import Role
from leadpilot.distribution.recommend import run_distribution

router = APIRouter(prefix="/distribution", tags=["distribution"], route_class=SessionReleasingRoute)


class DistributionRunIn(BaseModel):
    """What a run does: rank the pool (always), assign it, with which ranker or by an experiment's arms."""

    model_config = ConfigDict(extra="forbid")

    assign: bool = False
    per_lead: int = Field(default=10, ge=1, le=200, description="salespeople recalled per lead")
    top_n: int = Field(default=50, ge=1, le=1000, description="ranked pool leads kept per salesperson")
    ranker: Literal["convert", "mmoe", "ple"] = "convert"
    working_hours: bool = Field(default=True, description="assign only to salespeople on shift now")
    experiment: str | None = Field(
        default=None, min_length=1, max_length=80, description="route by this running experiment's arms (assigns)"
    )


@router.post("/runs")
def create_run(actor: CurrentActor, request: Request, data: DistributionRunIn) -> dict[str, Any]:
    """Run the distribution now (admins): what `leadpilot distribute run` does, with its JSON as the answer."""
    if actor.role is not Role.ADMIN:
        raise Forbidden("only admins run the distribution")
    engine = request.app.state.engine
    store = scoring_service(request).store
    if data.experiment is not None:
        from leadpilot.experiments.service import run_experiment

        if not data.assign:
            raise Conflict("an experiment routes and assigns the pool: set assign to true")
        result = run_experiment(engine, store, key=data.experiment, per_lead=data.per_lead, actor=actor).to_json()
    else:
        if data.ranker != "convert":
            from leadpilot.distribution.ranking_v2 import multitask_champion

            if multitask_champion(engine, data.ranker) is None:
                raise Conflict(f"no promoted {data.ranker} model: train one with `leadpilot distribute train-v2`")
        result = run_distribution(
            engine,
            store,
            per_lead=data.per_lead,
            top_n=data.top_n,
            assign=data.assign,
            ranker=data.ranker,
            actor=actor,
            working_hours=data.working_hours,
        ).to_json()
    with Session(engine) as session:
        audit(session, actor, "distribution_run", "distribution", detail=data.model_dump() | {"result": result})
        session.commit()
    return result
