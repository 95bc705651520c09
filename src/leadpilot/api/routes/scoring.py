"""Lead scoring: a lead's score with its explanation, the model registry, cold-start rules, the review queue."""

from __future__ import annotations

import threading
from typing import Annotated, Any

import duckdb
from fastapi import APIRouter, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from leadpilot.api.deps import CurrentActor, IdPath, ReadDB, SessionReleasingRoute, WriteDB
from leadpilot.config import Settings
from leadpilot.crm import leads
from leadpilot.crm.access import Actor
from leadpilot.crm.errors import Forbidden
from leadpilot.crm.models import Role
from leadpilot.features.dictionary import load
from leadpilot.features.store import FeatureStore, FeatureStoreError
from leadpilot.models import registry, rules
from leadpilot.models.service import NoChampion, ScoringService

router = APIRouter(tags=["scoring"], route_class=SessionReleasingRoute)
_lock = threading.Lock()

ModelName = Annotated[str, Path(min_length=1, max_length=80, pattern=r"^[A-Za-z0-9_.\-]+$")]


class RuleIn(BaseModel):
    """A rule to save: ``condition -> action``."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=120)
    text: str = Field(
        min_length=1, max_length=4000, examples=["budget > 500000 and page_views_30d > 3 -> priority: high"]
    )
    enabled: bool = True


class Decision(BaseModel):
    """A reviewer's note on a decision."""

    model_config = ConfigDict(extra="forbid")

    note: str = Field(default="", max_length=2000)


def _store(settings: Settings) -> FeatureStore:
    return FeatureStore(
        settings.feature_dir,
        load(settings.feature_dictionary),
        engine=settings.feature_engine,
        retention_days=settings.feature_retention_days,
        memory_limit=settings.feature_memory_limit,
    )


def scoring_service(request: Request) -> ScoringService:
    """The app's scoring service (built on first use: it opens the feature store and caches champions)."""
    with _lock:
        service = getattr(request.app.state, "scoring", None)
        if service is None:
            service = ScoringService(request.app.state.engine, _store(request.app.state.settings))
            request.app.state.scoring = service
        return service


def _require(actor: Actor, *roles: Role) -> None:
    if actor.role not in roles:
        raise Forbidden(f"{actor.role.value} may not do this")


@router.get("/leads/{lead_id}/score")
def lead_score(lead_id: IdPath, actor: CurrentActor, db: ReadDB, request: Request) -> dict[str, Any]:
    """The lead's score now and the top factors that raise and lower it (only for leads the caller may see)."""
    lead = leads.get_lead(db, actor=actor, lead_id=lead_id)
    stored = {
        "score": lead.score,
        "score_transfer": lead.score_transfer,
        "score_convert": lead.score_convert,
        "score_updated_at": lead.score_updated_at.isoformat() if lead.score_updated_at else None,
        "priority": lead.priority,
    }
    db.close()  # the explanation reads features and the model; no need to hold a connection meanwhile
    try:
        live = scoring_service(request).explain(lead_id)
    except (NoChampion, FeatureStoreError) as exc:
        return {"lead_id": lead_id, "stored": stored, "error": str(exc)}
    except duckdb.IOException:  # a feature job holds the store's write lock: the stored score still answers
        return {"lead_id": lead_id, "stored": stored, "error": "the feature store is busy (a feature job runs)"}
    return {"lead_id": lead_id, "stored": stored, **live}


@router.get("/scoring/models")
def list_models(
    actor: CurrentActor, db: ReadDB, name: Annotated[str | None, Query(max_length=80)] = None
) -> list[dict[str, Any]]:
    """Registered model versions with their metrics and baselines (admins and supervisors)."""
    _require(actor, Role.ADMIN, Role.SUPERVISOR)
    return [registry.version_json(r) for r in registry.list_versions(db, name=name)]


@router.post("/scoring/models/{name}/{version}/promote")
def promote_model(name: ModelName, version: IdPath, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Make a version the champion (admins)."""
    _require(actor, Role.ADMIN)
    row = registry.promote(db, actor=actor, name=name, version=version)
    db.commit()
    return registry.version_json(row)


@router.post("/scoring/models/{name}/rollback")
def rollback_model(name: ModelName, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Give the champion role back to the previous champion (admins)."""
    _require(actor, Role.ADMIN)
    row = registry.rollback(db, actor=actor, name=name)
    db.commit()
    return registry.version_json(row)


@router.post("/scoring/models/{name}/{version}/challenger")
def mark_challenger_model(name: ModelName, version: IdPath, actor: CurrentActor, db: WriteDB) -> dict[str, Any]:
    """Mark a version as the challenger, evaluated beside the champion (admins)."""
    _require(actor, Role.ADMIN)
    row = registry.mark_challenger(db, actor=actor, name=name, version=version)
    db.commit()
    return registry.version_json(row)


@router.get("/scoring/rules")
def list_rules(actor: CurrentActor, db: ReadDB, history: bool = False) -> list[dict[str, Any]]:
    """Current scoring rules (every version with history=true)."""
    _require(actor, Role.ADMIN, Role.SUPERVISOR)
    return [rules.rule_json(r) for r in rules.list_rules(db, history=history)]


@router.post("/scoring/rules", status_code=201)
def save_rule(data: RuleIn, actor: CurrentActor, db: WriteDB, request: Request) -> dict[str, Any]:
    """Validate and save a rule as the next version of its name; a bad rule is a 422 naming the bad part."""
    catalogue = rules.RuleCatalogue.build(load(request.app.state.settings.feature_dictionary))
    row = rules.save_rule(db, actor=actor, name=data.name, text=data.text, catalogue=catalogue, enabled=data.enabled)
    db.commit()
    return rules.rule_json(row)


@router.post("/scoring/rules/run")
def run_rules(actor: CurrentActor, request: Request, dry_run: bool = False) -> dict[str, Any]:
    """Evaluate the rules on every open lead now (admins and supervisors)."""
    _require(actor, Role.ADMIN, Role.SUPERVISOR)
    store = scoring_service(request).store
    return rules.evaluate_rules(request.app.state.engine, store=store, actor=actor, apply=not dry_run).to_json()


@router.get("/scoring/review")
def review_queue(
    actor: CurrentActor,
    db: ReadDB,
    status: Annotated[str | None, Query(max_length=20)] = "pending",
    cursor: Annotated[str | None, Query(max_length=500)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, Any]:
    """Rule-selected leads waiting for review (admins, supervisors: their team's; screeners: in screening)."""
    page = rules.list_review(db, actor=actor, status=status, cursor=cursor, limit=limit)
    return {"items": [rules.review_json(i) for i in page.items], "next_cursor": page.next_cursor}


def _decide(db: WriteDB, actor: Actor, item_id: int, approve: bool, note: str) -> dict[str, Any]:
    item = rules.decide_review(db, actor=actor, item_id=item_id, approve=approve, note=note)
    db.commit()
    return rules.review_json(item)


@router.post("/scoring/review/{item_id}/approve")
def approve(item_id: IdPath, actor: CurrentActor, db: WriteDB, data: Decision) -> dict[str, Any]:
    """Approve a queued lead (body ``{"note": "..."}`` or ``{}``): the rule's priority applies from the next run."""
    return _decide(db, actor, item_id, True, data.note)


@router.post("/scoring/review/{item_id}/reject")
def reject(item_id: IdPath, actor: CurrentActor, db: WriteDB, data: Decision) -> dict[str, Any]:
    """Reject a queued lead (body ``{"note": "..."}`` or ``{}``): the rule's priority never applies to it."""
    return _decide(db, actor, item_id, False, data.note)
