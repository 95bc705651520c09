"""The distribution run: recall (lead, salesperson) pairs from the claim pool, rank them with the convert
model, store each salesperson's ranked pool, and optionally assign the pool under capacity.

1. **Recall by rules**: active salespeople whose regions and product lines cover the lead (an empty list
   covers everything) and who have capacity left today; at most ``per_lead`` of them per lead, the least
   loaded first.
2. **Rank**: p(convert | lead, salesperson) from the ``convert`` champion, the lead's features at now
   plus that salesperson's and the pair's (V1: the XGBoost model of issue #5); without a champion, the
   lead's own score (score-based recall). Expected value = p × deal value (the lead's budget, else the pool's
   median budget).
3. **Store** the top ``top_n`` pool leads per salesperson in ``recommendations`` with their "why" sentence;
   ``GET /api/v1/me/recommendations`` reads them (only leads still in the pool).
4. **Assign** (``assign=True``): the pairs go to :func:`assign.solve` (capacity = daily capacity minus
   today's assignments and claims); each chosen pair is assigned through the CRM with its explanation as
   the reason (an ``assign`` event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select
from sqlalchemy.orm import Session

from leadpilot.crm import leads as lead_service
from leadpilot.crm.access import SYSTEM, Actor, pool_clause
from leadpilot.crm.errors import DomainError, Forbidden
from leadpilot.crm.events import EventType
from leadpilot.crm.models import Event, Lead, Role, User
from leadpilot.distribution.assign import AssignmentProblem, explain, solve
from leadpilot.distribution.tables import Recommendation
from leadpilot.features.store import FeatureStore
from leadpilot.models.service import NoChampion, ScoringService, qualified_times

Progress = Callable[[str], None]


@dataclass
class DistributionRun:
    """What a run did."""

    pool: int = 0
    salespeople: int = 0
    pairs: int = 0
    ranker: str = ""
    stored: int = 0
    assignment: dict[str, Any] = field(default_factory=dict)
    assigned: int = 0
    off_shift: int = 0  # salespeople with capacity who got no assignment because they are off shift now
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


def _pool(session: Session) -> pd.DataFrame:
    rows = session.execute(
        select(Lead.id, Lead.region, Lead.product_line, Lead.budget, Lead.score).where(pool_clause())
    ).all()
    return pd.DataFrame(rows, columns=["lead_id", "region", "product_line", "budget", "score"])


def _salespeople(session: Session, now: datetime) -> pd.DataFrame:
    start = now.replace(hour=0, minute=0, second=0, microsecond=0)
    taken = dict(
        session.execute(
            select(Event.actor_id, func.count())
            .where(Event.type == EventType.CLAIM, Event.occurred_at >= start)
            .group_by(Event.actor_id)
        ).all()
    )
    rows = session.execute(
        select(
            User.id,
            User.regions,
            User.product_lines,
            User.daily_capacity,
            User.work_start,
            User.work_end,
            User.time_zone,
        ).where(User.role == Role.SALES.value, User.is_active)
    ).all()
    assigned_today = _assigned_today(session, start)
    out = pd.DataFrame(
        rows, columns=["user_id", "regions", "product_lines", "capacity", "work_start", "work_end", "time_zone"]
    )
    out["left"] = [
        max(0, int(c) - int(taken.get(u, 0)) - int(assigned_today.get(u, 0)))
        for u, c in zip(out.user_id, out.capacity, strict=True)
    ]
    out["on_shift"] = [
        on_shift(a, b, tz, now) for a, b, tz in zip(out.work_start, out.work_end, out.time_zone, strict=True)
    ]
    return out


def _minutes(clock: str) -> int | None:
    try:
        hours, minutes = clock.split(":")
        value = int(hours) * 60 + int(minutes)
    except (AttributeError, ValueError):
        return None
    return value if 0 <= value <= 24 * 60 else None


def on_shift(work_start: str, work_end: str, time_zone: str, now: datetime) -> bool:
    """Whether ``now`` is within the working hours ``work_start``-``work_end`` (HH:MM) in ``time_zone``.

    A shift may pass midnight (22:00-06:00); equal ends mean around the clock; unreadable hours or an unknown
    time zone count as on shift (the user's record is at fault, not the lead's).
    """
    start, end = _minutes(work_start), _minutes(work_end)
    if start is None or end is None or start == end:
        return True
    try:
        local = now.astimezone(ZoneInfo(time_zone))
    except (ZoneInfoNotFoundError, ValueError):
        return True
    minute = local.hour * 60 + local.minute
    return start <= minute < end if start < end else (minute >= start or minute < end)


def _assigned_today(session: Session, start: datetime) -> dict[int, int]:
    counts: dict[int, int] = {}
    for payload in session.scalars(
        select(Event.payload).where(Event.type == EventType.ASSIGN, Event.occurred_at >= start)
    ):
        owner = (payload or {}).get("to")
        if isinstance(owner, int):
            counts[owner] = counts.get(owner, 0) + 1
    return counts


def recall(pool: pd.DataFrame, reps: pd.DataFrame, *, per_lead: int = 10) -> pd.DataFrame:
    """Eligible (lead_id, user_id) pairs by skills and capacity: at most ``per_lead`` per lead, spread evenly.

    A salesperson is eligible when their regions and product lines cover the lead (an empty list covers
    everything) and they have capacity left today; when nobody covers the lead's region, those who cover
    its product line are, and when nobody does either, everyone with capacity (as the simulated company's
    round robin does: a lead nobody covers is not left in the pool for ever). Leads of one kind (region,
    product line) take their candidates in turn from everyone eligible for that kind, the one with most
    capacity left first, so every eligible salesperson is recalled for about the same number of leads
    instead of the same few for all.
    """
    available = reps[reps.left > 0].sort_values(["left", "user_id"], ascending=[False, True])
    user_ids = available.user_id.to_numpy(dtype=np.int64)
    regions = [set(r or []) for r in available.regions]
    products = [set(p or []) for p in available.product_lines]
    kinds: dict[tuple[Any, Any], list[int]] = {}
    for position, key in enumerate(zip(pool.region, pool.product_line, strict=True)):
        kinds.setdefault(key, []).append(position)
    lead_ids = pool.lead_id.to_numpy(dtype=np.int64)
    leads_out: list[np.ndarray] = []
    users_out: list[np.ndarray] = []
    for (region, product), positions in kinds.items():
        sells = np.array([not p or product in p for p in products], dtype=bool)
        covers = np.array([not r or region in r for r in regions], dtype=bool)
        eligible = user_ids[covers & sells] if (covers & sells).any() else user_ids[sells] if sells.any() else user_ids
        if not len(eligible) or per_lead <= 0:
            continue
        take = min(per_lead, len(eligible))
        turn = np.arange(len(positions))[:, None] * take + np.arange(take)[None, :]
        leads_out.append(np.repeat(lead_ids[positions], take))
        users_out.append(eligible[turn % len(eligible)].ravel())
    if not leads_out:
        return pd.DataFrame({"lead_id": np.zeros(0, np.int64), "user_id": np.zeros(0, np.int64)})
    pairs = pd.DataFrame({"lead_id": np.concatenate(leads_out), "user_id": np.concatenate(users_out)})
    return pairs.sort_values("lead_id", kind="stable").reset_index(drop=True)


def score_pairs(
    service: ScoringService, pairs: pd.DataFrame, pool: pd.DataFrame, now: datetime, *, model_name: str = "convert"
) -> tuple[np.ndarray, str]:
    """p(convert) per pair from the ``model_name`` champion (lead score when there is none), and which ranker."""
    if model_name != "convert":  # a V2 multi-task champion (mmoe / ple) is served by ranking_v2 with ONNX Runtime
        from leadpilot.distribution import ranking_v2

        v2 = ranking_v2.multitask_champion(service.engine, model_name)
        if v2 is not None:
            return ranking_v2.score_pairs_v2(service, pairs, now, row=v2)
    try:
        row, model = service.champion_model(model_name)
    except NoChampion:
        fallback = pool.set_index("lead_id").score.reindex(pairs.lead_id).fillna(0.5).to_numpy()
        return fallback.astype(np.float64), "lead score (no convert model promoted)"
    with Session(service.engine) as session:
        found = qualified_times(session, sorted(set(pairs.lead_id.tolist())))
    qualified = pd.Series(found, dtype="datetime64[us, UTC]")
    p = np.zeros(len(pairs))
    # build_frame keys rows by lead: score the pairs in rounds in which every lead appears once.
    round_of = pairs.groupby("lead_id").cumcount().to_numpy()
    for k in range(int(round_of.max()) + 1 if len(pairs) else 0):
        idx = np.flatnonzero(round_of == k)
        part = pairs.iloc[idx]
        leads = pd.DataFrame({"owner_id": part.user_id.to_numpy()}, index=part.lead_id.to_numpy())
        leads["qualified_at"] = qualified.reindex(leads.index).fillna(pd.Timestamp(now)).to_numpy()
        frame = service._frames("convert", leads, now, model)
        p[idx] = model.predict_proba(frame)
    return p, f"{model_name} v{row.version}"


def run_distribution(
    engine: Engine,
    store: FeatureStore,
    *,
    now: datetime | None = None,
    per_lead: int = 10,
    top_n: int = 50,
    assign: bool = False,
    actor: Actor = SYSTEM,
    progress: Progress | None = None,
    ranker: str = "convert",
    working_hours: bool = True,
) -> DistributionRun:
    """Recall, rank and store every salesperson's ranked pool (``ranker``: the champion that scores the pairs,
    convert, mmoe or ple); assign it too with ``assign``, only to salespeople on shift at ``now`` unless
    ``working_hours`` is false (everyone's pool is ranked either way: it waits for them)."""
    started = datetime.now(UTC)
    now = now or started
    say = progress or (lambda _m: None)
    run = DistributionRun()
    with Session(engine) as session:
        pool = _pool(session)
        reps = _salespeople(session, now)
    run.pool, run.salespeople = len(pool), int((reps.left > 0).sum()) if len(reps) else 0
    pairs = (
        recall(pool, reps, per_lead=per_lead)
        if len(pool) and len(reps)
        else pd.DataFrame(columns=["lead_id", "user_id"])
    )
    run.pairs = len(pairs)
    say(f"{len(pool):,} pool leads, {run.salespeople:,} salespeople with capacity, {len(pairs):,} pairs")
    if pairs.empty:
        run.seconds = (datetime.now(UTC) - started).total_seconds()
        return run
    service = ScoringService(engine, store)
    p, run.ranker = score_pairs(service, pairs, pool, now, model_name=ranker)
    budgets = pool.set_index("lead_id").budget
    deal = budgets.reindex(pairs.lead_id).fillna(budgets.median() if budgets.notna().any() else 1.0).to_numpy()
    pairs = pairs.assign(p=p, value=p * np.maximum(deal, 0.0))
    lead_index = {lead: i for i, lead in enumerate(pool.lead_id.tolist())}
    rep_ids = reps.user_id.tolist()
    rep_index = {u: j for j, u in enumerate(rep_ids)}
    problem = AssignmentProblem(
        lead=pairs.lead_id.map(lead_index).to_numpy(),
        rep=pairs.user_id.map(rep_index).to_numpy(),
        value=pairs.value.to_numpy(),
        capacity=np.where(reps.on_shift.to_numpy(dtype=bool) | (not working_hours), reps.left.to_numpy(), 0),
        n_leads=len(pool),
    )
    names = [f"user {u}" for u in rep_ids]
    run.stored = _store_recommendations(engine, pairs, top_n, now)
    if assign:
        run.off_shift = int(((reps.left > 0) & ~reps.on_shift.astype(bool)).sum()) if working_hours else 0
        result = solve(problem)
        run.assignment = result.to_json()
        reasons = explain(problem, result, names)
        pool_ids = pool.lead_id.to_numpy()
        with Session(engine) as session:
            for i, j, reason in zip(result.lead.tolist(), result.rep.tolist(), reasons, strict=True):
                try:
                    lead_service.assign_lead(
                        session, actor=actor, lead_id=int(pool_ids[i]), owner_id=int(rep_ids[j]), reason=reason[:300]
                    )
                    session.commit()
                    run.assigned += 1
                except DomainError:
                    session.rollback()  # claimed meanwhile: the pool moved on
    run.seconds = (datetime.now(UTC) - started).total_seconds()
    return run


def _store_recommendations(engine: Engine, pairs: pd.DataFrame, top_n: int, now: datetime) -> int:
    ranked = pairs.sort_values(["user_id", "value", "lead_id"], ascending=[True, False, True])
    ranked = ranked.assign(rank=ranked.groupby("user_id").cumcount() + 1)
    ranked = ranked[ranked["rank"] <= top_n]
    rows = [
        {
            "user_id": int(u),
            "lead_id": int(lead),
            "rank": int(r),
            "p_convert": round(float(p), 6),
            "value": round(float(v), 4),
            "computed_at": now,
        }
        for u, lead, r, p, v in zip(ranked.user_id, ranked.lead_id, ranked["rank"], ranked.p, ranked.value, strict=True)
    ]
    with Session(engine) as session:
        session.execute(delete(Recommendation))
        for start in range(0, len(rows), 5_000):
            session.execute(insert(Recommendation), rows[start : start + 5_000])
        session.commit()
    return len(rows)


def recommendations_for(session: Session, *, actor: Actor, limit: int = 50) -> list[dict[str, Any]]:
    """The caller's ranked pool from the last run: leads still in the pool, best expected value first."""
    if actor.role not in (Role.SALES, Role.SUPERVISOR) or actor.id is None:
        raise Forbidden("recommendations are for salespeople and supervisors (their own queue)")
    rows = session.execute(
        select(Recommendation, Lead)
        .join(Lead, Lead.id == Recommendation.lead_id)
        .where(Recommendation.user_id == actor.id, pool_clause())
        .order_by(Recommendation.rank)
        .limit(limit)
    ).all()
    return [
        {
            "lead_id": rec.lead_id,
            "rank": rec.rank,
            "p_convert": rec.p_convert,
            "expected_value": rec.value,
            "computed_at": rec.computed_at.isoformat(),
            "title": lead.title,
            "product_line": lead.product_line,
            "region": lead.region,
            "budget": lead.budget,
        }
        for rec, lead in rows
    ]
