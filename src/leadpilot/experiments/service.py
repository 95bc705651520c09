"""Service functions for experiments: create, start and stop them, route the claim pool by arm, report.

An experiment compares routing strategies. Its arms are ``[{name, strategy, share}]`` (the first arm is the
control); its unit is ``lead`` or ``salesperson``, bucketed by :func:`analysis.assign_arm` (a hash of
``key:unit id``, so no table of assignments is kept).

* ``unit = lead``: each pool lead is routed by its own arm's strategy, to any eligible salesperson. So
  that no arm wins by grabbing capacity first, each salesperson's capacity left today is split between
  the arms by their shares (largest remainder; the remainder seat rotates with the salesperson's id).
* ``unit = salesperson``: each salesperson belongs to one arm and receives leads only from that arm's
  strategy; the pool is split between the arms by hashing each lead too (with the key ``KEY:lead``, so
  that a lead and a salesperson with the same id are bucketed independently).

Every routed lead is assigned through the CRM (an ``assign`` event) and, in the same transaction, gets
one ``experiment_exposure`` event (payload: experiment, arm, unit, unit_id, strategy, owner_id). A lead
already exposed in this experiment (recycled and routed again) is routed by the same arm but not exposed
twice. Outcomes are read from the event log after the exposure: see :func:`report`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import Conflict, DomainError, Forbidden, Invalid, NotFound
from leadpilot.crm.events import EventType, append_event
from leadpilot.crm.models import Event, Role
from leadpilot.db.base import utcnow
from leadpilot.experiments import analysis
from leadpilot.experiments.analysis import ArmData, ExperimentError
from leadpilot.experiments.strategies import STRATEGIES, RoutingContext, check_available, route
from leadpilot.experiments.tables import Experiment, ExperimentStatus, ExperimentUnit
from leadpilot.features.store import FeatureStore

KEY_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,79}$")
ARM_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,39}$")
CONTACTED_STAGES = frozenset({"contacted", "negotiating", "won"})
DEFINITIONS = {
    "exposure": "a pool lead routed (assigned) by the experiment: its first experiment_exposure event",
    "transfer": "the lead reached contacted (or later) after its exposure: the salesperson worked it",
    "conversion": "the lead was won or a contract was signed after its exposure",
    "ctcvr": "conversions / exposures",
    "cvr": "conversions / transfers",
    "revenue_per_lead": "sum of contract_signed amounts after the exposure / exposures",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Arm:
    """One arm: its name, the routing strategy it uses and its share of the traffic."""

    name: str
    strategy: str
    share: float


def _require_admin(actor: Actor) -> None:
    if actor.role is not Role.ADMIN:
        raise Forbidden("only admins create, start and stop experiments")


def _require_reader(actor: Actor) -> None:
    if actor.role not in (Role.ADMIN, Role.SUPERVISOR):
        raise Forbidden("experiments are for supervisors and admins")


def parse_arm(text: str) -> Arm:
    """An arm from ``NAME:STRATEGY:SHARE`` (the CLI's form), e.g. ``control:round_robin:0.5``."""
    parts = text.split(":")
    if len(parts) != 3:
        raise Invalid(f"arm {text!r} is not NAME:STRATEGY:SHARE (e.g. control:round_robin:0.5)", field="arms")
    name, strategy, share = (p.strip() for p in parts)
    try:
        value = float(share)
    except ValueError:
        raise Invalid(f"arm {text!r}: share {share!r} is not a number", field="arms") from None
    return Arm(name, strategy, value)


def validate_arms(arms: Sequence[Arm | dict[str, Any]]) -> list[Arm]:
    """Arms with names, known strategies and shares in (0, 1] adding up to 1; a clear error naming the arm."""
    out: list[Arm] = []
    for n, raw in enumerate(arms, start=1):
        if isinstance(raw, Arm):
            arm = raw
        else:
            missing = [k for k in ("name", "strategy", "share") if k not in raw]
            if missing:
                raise Invalid(f"arm {n}: missing {', '.join(missing)}", field="arms")
            try:
                arm = Arm(str(raw["name"]), str(raw["strategy"]), float(raw["share"]))
            except (TypeError, ValueError):
                raise Invalid(f"arm {n}: share {raw['share']!r} is not a number", field="arms") from None
        if not ARM_PATTERN.match(arm.name):
            raise Invalid(
                f"arm {n}: name {arm.name!r} must be 1-40 letters, digits, '_', '.' or '-' (not starting with one)",
                field="arms",
            )
        if arm.strategy not in STRATEGIES:
            raise Invalid(
                f"arm {arm.name!r}: unknown strategy {arm.strategy!r}; strategies are {', '.join(STRATEGIES)}",
                field="arms",
            )
        if not math.isfinite(arm.share):
            raise Invalid(f"arm {arm.name!r}: share {arm.share} is not a finite number", field="arms")
        out.append(arm)
    try:
        analysis.check_arms([(a.name, a.share) for a in out])
    except ExperimentError as exc:
        raise Invalid(str(exc), field="arms") from None
    return out


def arms_of(experiment: Experiment) -> list[Arm]:
    """The experiment's arms, control first."""
    return [Arm(a["name"], a["strategy"], float(a["share"])) for a in experiment.arms]


def arm_for(experiment: Experiment, unit_id: int | str) -> str:
    """The arm a unit (a salesperson or a lead, by the experiment's unit) belongs to: stable, hash-based."""
    return analysis.assign_arm(experiment.key, unit_id, [(a.name, a.share) for a in arms_of(experiment)])


def lead_arm(experiment: Experiment, lead_id: int) -> str:
    """The arm whose strategy routes a lead (the lead's own arm, or its pool slice in a salesperson test)."""
    if experiment.unit == ExperimentUnit.LEAD.value:
        return arm_for(experiment, lead_id)
    shares = [(a.name, a.share) for a in arms_of(experiment)]
    return analysis.assign_arm(f"{experiment.key}:lead", lead_id, shares)


def experiment_json(row: Experiment) -> dict[str, Any]:
    """An experiment as JSON."""
    return {
        "id": row.id,
        "key": row.key,
        "name": row.name,
        "unit": row.unit,
        "arms": [dict(a) for a in row.arms],
        "control": row.arms[0]["name"] if row.arms else None,
        "status": row.status,
        "started_at": row.started_at.isoformat() if row.started_at else None,
        "stopped_at": row.stopped_at.isoformat() if row.stopped_at else None,
        "created_by_id": row.created_by_id,
        "created_at": row.created_at.isoformat() if row.created_at else None,
    }


def create_experiment(
    session: Session,
    *,
    actor: Actor,
    key: str,
    unit: str,
    arms: Sequence[Arm | dict[str, Any]],
    name: str = "",
) -> Experiment:
    """A new experiment in draft (validated: key, unit, arms with known strategies and shares adding up to 1)."""
    _require_admin(actor)
    if not KEY_PATTERN.match(key or ""):
        raise Invalid(
            f"experiment key {key!r} must be 1-80 letters, digits, '_', '.' or '-' (not starting with one)",
            field="key",
        )
    units = [u.value for u in ExperimentUnit]
    if unit not in units:
        raise Invalid(f"unit {unit!r} is not one of {', '.join(units)}", field="unit")
    checked = validate_arms(arms)
    if len(name) > 200:
        raise Invalid("name is longer than 200 characters", field="name")
    if session.scalar(select(Experiment.id).where(Experiment.key == key)) is not None:
        raise Conflict(f"experiment {key!r} already exists", field="key")
    row = Experiment(
        key=key,
        name=name or key,
        unit=unit,
        arms=[{"name": a.name, "strategy": a.strategy, "share": a.share} for a in checked],
        status=ExperimentStatus.DRAFT.value,
        created_by_id=actor.id,
        created_at=utcnow(),
    )
    session.add(row)
    session.flush()
    audit(session, actor, "create", "experiment", row.id, {"key": key, "unit": unit, "arms": row.arms})
    return row


def list_experiments(session: Session, *, actor: Actor) -> list[Experiment]:
    """Every experiment, newest first (supervisors and admins)."""
    _require_reader(actor)
    return list(session.scalars(select(Experiment).order_by(Experiment.id.desc())))


def get_experiment(session: Session, *, actor: Actor, key: str) -> Experiment:
    """One experiment by key (supervisors and admins)."""
    _require_reader(actor)
    row = session.scalar(select(Experiment).where(Experiment.key == key))
    if row is None:
        raise NotFound(f"experiment {key!r} not found")
    return row


def start_experiment(session: Session, *, actor: Actor, key: str) -> Experiment:
    """Start routing by the experiment (from draft); every arm's strategy must be able to run now."""
    _require_admin(actor)
    row = get_experiment(session, actor=actor, key=key)
    if row.status != ExperimentStatus.DRAFT.value:
        raise Conflict(f"experiment {key!r} is {row.status}; only a draft experiment can be started")
    for arm in arms_of(row):
        try:
            check_available(session, arm.strategy)
        except ExperimentError as exc:
            raise Conflict(f"experiment {key!r}, arm {arm.name!r}: {exc}") from None
    row.status = ExperimentStatus.RUNNING.value
    row.started_at = utcnow()
    audit(session, actor, "start", "experiment", row.id, {"key": key})
    return row


def stop_experiment(session: Session, *, actor: Actor, key: str) -> Experiment:
    """Stop routing by the experiment (from running); its exposures and outcomes stay for the report."""
    _require_admin(actor)
    row = get_experiment(session, actor=actor, key=key)
    if row.status != ExperimentStatus.RUNNING.value:
        raise Conflict(f"experiment {key!r} is {row.status}; only a running experiment can be stopped")
    row.status = ExperimentStatus.STOPPED.value
    row.stopped_at = utcnow()
    audit(session, actor, "stop", "experiment", row.id, {"key": key})
    return row


# --- the experiment-aware distribution run ------------------------------------------------------------------


@dataclass
class ExperimentRun:
    """What an experiment-aware distribution run did, in total and per arm."""

    experiment: str = ""
    unit: str = ""
    pool: int = 0
    salespeople: int = 0
    routed: dict[str, int] = field(default_factory=dict)
    assigned: int = 0
    exposures: int = 0
    already_exposed: int = 0
    failed: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """The run as JSON."""
        return self.__dict__.copy()


def split_capacity(left: int, user_id: int, arms: Sequence[Arm]) -> dict[str, int]:
    """A salesperson's capacity split between arms by share (largest remainder, rotating with the user id)."""
    exact = [left * a.share for a in arms]
    base = [math.floor(x) for x in exact]
    spare = left - sum(base)
    n = len(arms)
    order = sorted(range(n), key=lambda k: (-(exact[k] - base[k]), (k - user_id) % n))
    for k in order[:spare]:
        base[k] += 1
    return {a.name: b for a, b in zip(arms, base, strict=True)}


def exposed_leads(session: Session, key: str) -> dict[int, dict[str, Any]]:
    """Lead id -> its first exposure in the experiment (arm, unit_id, strategy, owner_id, at)."""
    out: dict[int, dict[str, Any]] = {}
    rows = session.execute(
        select(Event.lead_id, Event.occurred_at, Event.payload)
        .where(Event.type == EventType.EXPERIMENT_EXPOSURE, Event.payload["experiment"].as_string() == key)
        .order_by(Event.id)
    )
    for lead_id, at, payload in rows:
        if lead_id is not None and lead_id not in out:
            out[int(lead_id)] = {**(payload or {}), "at": at}
    return out


def run_experiment(
    engine: Engine,
    store: FeatureStore | None,
    *,
    key: str,
    now: datetime | None = None,
    per_lead: int = 10,
    actor: Actor = SYSTEM,
    progress: Progress | None = None,
) -> ExperimentRun:
    """Route the claim pool by the running experiment's arms, assign, and expose each routed lead once."""
    from leadpilot.distribution.recommend import _pool, _salespeople

    started = datetime.now(UTC)
    now = now or started
    say = progress or (lambda _m: None)
    with Session(engine) as session:
        experiment = session.scalar(select(Experiment).where(Experiment.key == key))
        if experiment is None:
            raise NotFound(f"experiment {key!r} not found")
        if experiment.status != ExperimentStatus.RUNNING.value:
            raise Conflict(f"experiment {key!r} is {experiment.status}; start it before routing by it")
        session.expunge(experiment)
        arms = arms_of(experiment)
        for arm in arms:
            try:
                check_available(session, arm.strategy)
            except ExperimentError as exc:
                raise Conflict(f"experiment {key!r}, arm {arm.name!r}: {exc}") from None
        pool = _pool(session)
        reps = _salespeople(session, now)
        already = set(exposed_leads(session, key))
    run = ExperimentRun(experiment=key, unit=experiment.unit, pool=len(pool))
    reps = reps[reps.left > 0] if len(reps) else reps
    run.salespeople = len(reps)
    say(f"{len(pool):,} pool leads, {run.salespeople:,} salespeople with capacity, {len(arms)} arms")
    if not len(pool) or not len(reps):
        run.seconds = (datetime.now(UTC) - started).total_seconds()
        return run
    ctx = RoutingContext.build(engine, store, now=now, pool=pool, reps=reps, per_lead=per_lead)
    lead_ids = [int(x) for x in pool.lead_id.tolist()]
    rep_ids = [int(x) for x in reps.user_id.tolist()]
    rep_left = dict(zip(rep_ids, (int(x) for x in reps.left.tolist()), strict=True))
    leads_by_arm: dict[str, list[int]] = {a.name: [] for a in arms}
    for lead_id in lead_ids:
        leads_by_arm[lead_arm(experiment, lead_id)].append(lead_id)
    routed: list[tuple[int, int, str, Arm, int]] = []  # lead, owner, reason, arm, unit id
    if experiment.unit == ExperimentUnit.LEAD.value:
        shares = {u: split_capacity(rep_left[u], u, arms) for u in rep_ids}
        for arm in arms:
            left = {u: shares[u][arm.name] for u in rep_ids}
            for lead, owner, reason in route(ctx, arm.strategy, leads_by_arm[arm.name], rep_ids, left):
                routed.append((lead, owner, reason, arm, lead))
    else:
        for arm in arms:
            members = [u for u in rep_ids if arm_for(experiment, u) == arm.name]
            left = {u: rep_left[u] for u in members}
            for lead, owner, reason in route(ctx, arm.strategy, leads_by_arm[arm.name], members, left):
                routed.append((lead, owner, reason, arm, owner))
    for arm in arms:
        run.routed[arm.name] = sum(1 for r in routed if r[3].name == arm.name)
    say(f"routed {len(routed):,} leads: " + ", ".join(f"{k} {v:,}" for k, v in run.routed.items()))
    with Session(engine) as session:
        for lead_id, owner_id, reason, arm, unit_id in routed:
            try:
                lead_service.assign_lead(
                    session,
                    actor=actor,
                    lead_id=lead_id,
                    owner_id=owner_id,
                    reason=f"experiment {key}, arm {arm.name} ({arm.strategy}): {reason}"[:300],
                )
                if lead_id in already:
                    run.already_exposed += 1
                else:
                    append_event(
                        session,
                        EventType.EXPERIMENT_EXPOSURE,
                        lead_id=lead_id,
                        actor_id=actor.id,
                        payload={
                            "experiment": key,
                            "arm": arm.name,
                            "unit": experiment.unit,
                            "unit_id": unit_id,
                            "strategy": arm.strategy,
                            "owner_id": owner_id,
                        },
                    )
                    already.add(lead_id)
                    run.exposures += 1
                session.commit()
                run.assigned += 1
            except DomainError:
                session.rollback()  # claimed meanwhile: the pool moved on
                run.failed += 1
    run.seconds = (datetime.now(UTC) - started).total_seconds()
    return run


# --- the report ---------------------------------------------------------------------------------------------


def _amount(payload: dict[str, Any] | None) -> float:
    value = (payload or {}).get("amount")
    try:
        amount = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return 0.0
    return amount if math.isfinite(amount) else 0.0


def _chunks(items: Sequence[int], size: int = 1_000) -> Iterable[Sequence[int]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def outcomes(session: Session, exposures: dict[int, dict[str, Any]]) -> dict[int, tuple[bool, bool, float]]:
    """Lead id -> (transferred, converted, revenue), counting only events at or after the lead's exposure."""
    found: dict[int, list[Any]] = {lead: [False, False, 0.0] for lead in exposures}
    types = (EventType.STAGE_CHANGE.value, EventType.CONTRACT_SIGNED.value)
    for chunk in _chunks(sorted(exposures)):
        rows = session.execute(
            select(Event.lead_id, Event.type, Event.occurred_at, Event.payload).where(
                Event.lead_id.in_(chunk), Event.type.in_(types)
            )
        )
        for lead_id, kind, at, payload in rows:
            if at < exposures[lead_id]["at"]:
                continue
            state = found[lead_id]
            if kind == EventType.CONTRACT_SIGNED.value:
                state[1] = True
                state[2] += _amount(payload)
            else:
                target = (payload or {}).get("to")
                if target in CONTACTED_STAGES:
                    state[0] = True
                if target == "won":
                    state[1] = True
    # A conversion counts as a transfer too (a contract signed on a lead nobody moved to contacted).
    return {lead: (bool(t or c), bool(c), float(r)) for lead, (t, c, r) in found.items()}


def _clean(value: Any) -> Any:
    """JSON-safe: NaN and infinities become None, tuples lists, numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(session: Session, *, actor: Actor, key: str, seed: int = 0, plot: Path | None = None) -> dict[str, Any]:
    """Per-arm CTCVR, CVR and revenue per lead with 95 % intervals, tests against the control arm, SRM, plot."""
    experiment = get_experiment(session, actor=actor, key=key)
    arms = arms_of(experiment)
    exposures = exposed_leads(session, key)
    known = {a.name for a in arms}
    stray = sorted({str(e.get("arm")) for e in exposures.values()} - known)
    if stray:
        raise Conflict(f"experiment {key!r}: exposures name arms it does not have: {', '.join(stray)}")
    results = outcomes(session, exposures)
    data: list[ArmData] = []
    for arm in arms:
        mine = sorted(lead for lead, e in exposures.items() if e.get("arm") == arm.name)
        rows = [results[lead] for lead in mine]
        if experiment.unit == ExperimentUnit.LEAD.value:
            units = len(mine)
        else:
            units = len({exposures[lead].get("unit_id") for lead in mine})
        data.append(
            ArmData(
                arm.name,
                transferred=np.array([r[0] for r in rows], dtype=np.int8),
                converted=np.array([r[1] for r in rows], dtype=np.int8),
                revenue=np.array([r[2] for r in rows], dtype=np.float64),
                units=units,
            )
        )
    result = analysis.analyse(data, control=arms[0].name, shares={a.name: a.share for a in arms}, seed=seed)
    for arm in arms:
        result["arms"][arm.name]["strategy"] = arm.strategy
        result["arms"][arm.name]["share"] = arm.share
        result["arms"][arm.name]["revenue"] = float(next(d for d in data if d.name == arm.name).revenue.sum())
    out = {
        "experiment": experiment_json(experiment),
        "exposures": len(exposures),
        "definitions": DEFINITIONS,
        **result,
    }
    if plot is not None:
        out["plot"] = str(plot_report(out, plot))
    return _clean(out)


def plot_report(result: dict[str, Any], path: Path) -> Path:
    """Write a report's PNG chart (bar charts per arm with 95 % intervals) to ``path``."""
    nan = float("nan")
    arms = {
        name: {k: [nan if x is None else x for x in v] if k.endswith("_ci") else v for k, v in metrics.items()}
        for name, metrics in result["arms"].items()
    }
    return analysis.plot({"control": result["control"], "arms": arms}, path)
