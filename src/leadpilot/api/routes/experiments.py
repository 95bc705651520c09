"""Experiments: A/B tests of routing strategies (admins create, start and stop; supervisors read reports)."""

from __future__ import annotations

import tempfile
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Response
from pydantic import BaseModel, ConfigDict, Field

from leadpilot.api.deps import CurrentActor, ReadDB, SessionReleasingRoute, WriteDB
from leadpilot.experiments import service
from leadpilot.experiments.strategies import STRATEGIES

router = APIRouter(tags=["experiments"], route_class=SessionReleasingRoute)

KeyPath = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")]


class ArmIn(BaseModel):
    """One arm: a name, a routing strategy and its share of the traffic."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=40, examples=["control"])
    strategy: str = Field(min_length=1, max_length=40, examples=list(STRATEGIES))
    share: float = Field(examples=[0.5])


class ExperimentIn(BaseModel):
    """A new experiment: its key, unit and arms (the first arm is the control; shares add up to 1)."""

    model_config = ConfigDict(extra="forbid")

    key: str = Field(min_length=1, max_length=80, examples=["routing-2026-12"])
    name: str = Field(default="", max_length=200)
    unit: Literal["lead", "salesperson"] = Field(examples=["lead", "salesperson"])
    arms: list[ArmIn] = Field(min_length=1, max_length=20)


@router.get("/experiments")
def list_experiments(actor: CurrentActor, db: ReadDB) -> list[dict[str, Any]]:
    """Every experiment, newest first (supervisors and admins)."""
    return [service.experiment_json(r) for r in service.list_experiments(db, actor=actor)]


@router.post("/experiments", status_code=201)
def create_experiment(data: ExperimentIn, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Create an experiment in draft (admins); bad arms are a 422 naming the arm and the reason."""
    row = service.create_experiment(
        db,
        actor=actor,
        key=data.key,
        unit=data.unit,
        name=data.name,
        arms=[service.Arm(a.name, a.strategy, a.share) for a in data.arms],
    )
    db.commit()
    return service.experiment_json(row)


@router.get("/experiments/{key}")
def get_experiment(key: KeyPath, actor: CurrentActor, db: ReadDB) -> dict[str, Any]:
    """One experiment (supervisors and admins)."""
    return service.experiment_json(service.get_experiment(db, actor=actor, key=key))


@router.post("/experiments/{key}/start")
def start_experiment(key: KeyPath, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Start a draft experiment (admins); 409 when an arm's strategy cannot run (its model is missing)."""
    row = service.start_experiment(db, actor=actor, key=key)
    db.commit()
    return service.experiment_json(row)


@router.post("/experiments/{key}/stop")
def stop_experiment(key: KeyPath, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Stop a running experiment (admins)."""
    row = service.stop_experiment(db, actor=actor, key=key)
    db.commit()
    return service.experiment_json(row)


@router.get("/experiments/{key}/report")
def experiment_report(key: KeyPath, actor: CurrentActor, db: ReadDB) -> dict[str, Any]:
    """Per-arm CTCVR, CVR and revenue per lead with 95 % intervals, p-values against the control, SRM check."""
    return service.report(db, actor=actor, key=key)


@router.get("/experiments/{key}/report.png", response_class=Response)
def experiment_plot(key: KeyPath, actor: CurrentActor, db: ReadDB) -> Response:
    """The report as a PNG chart: CTCVR, CVR and revenue per lead per arm with their 95 % intervals."""
    result = service.report(db, actor=actor, key=key)
    db.close()
    with tempfile.TemporaryDirectory() as folder:
        path = service.plot_report(result, FilePath(folder) / "report.png")
        return Response(path.read_bytes(), media_type="image/png")
