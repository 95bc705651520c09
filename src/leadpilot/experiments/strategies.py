"""Routing strategies an experiment's arms compare: who gets each pool lead, under today's capacity.

Every strategy receives the leads of its arm, the salespeople it may use and how many leads each of them
may still take in this run (``left``, which it decreases), and returns ``(lead, salesperson, reason)``
triples. Eligibility is the distribution run's rule recall (region and product line; an empty list covers
everything):

* ``round_robin``: leads in arrival order (lead id) go to the next eligible salesperson in user-id order,
  the rotation continuing after whoever received the most recent assignment;
* ``least_busy``: each lead goes to the eligible salesperson with the fewest open leads (assigned,
  contacted, negotiating), counting the ones this run gives out;
* ``score_round_robin``: like Odoo's lead assignment, the best-scored leads first (lead score, highest
  first), handed out in rotation;
* ``v1_xgb``: the ranked distribution of issue #5: p(convert) from the ``convert`` champion (the V1
  XGBoost model) × deal value, assigned by the capacity-aware solver;
* ``v2_mmoe`` / ``v2_ple``: the same solver on the ``mmoe`` / ``ple`` champion's p(convert); until such
  a model is registered and promoted they fail with a clear error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import pandas as pd
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.crm.events import EventType
from leadpilot.crm.models import Event, Lead
from leadpilot.crm.stages import OWNED_STAGES
from leadpilot.distribution.assign import AssignmentProblem, explain, solve
from leadpilot.distribution.recommend import recall, score_pairs
from leadpilot.experiments.analysis import ExperimentError
from leadpilot.features.store import FeatureStore
from leadpilot.models.registry import champion
from leadpilot.models.service import ScoringService

# Strategy name -> the registered model whose champion it needs (None: a rule-based strategy).
MODEL_OF: dict[str, str | None] = {
    "round_robin": None,
    "least_busy": None,
    "score_round_robin": None,
    "v1_xgb": "convert",
    "v2_mmoe": "mmoe",
    "v2_ple": "ple",
}
STRATEGIES: tuple[str, ...] = tuple(MODEL_OF)

Routed = tuple[int, int, str]
Strategy = Callable[["RoutingContext", Sequence[int], Sequence[int], dict[int, int]], list[Routed]]


class StrategyUnavailable(ExperimentError):
    """A strategy that cannot run here (its model is not registered or promoted)."""


@dataclass
class RoutingContext:
    """What every strategy of one run sees: the pool, the salespeople, eligibility and the scoring inputs."""

    engine: Engine
    store: FeatureStore | None
    now: datetime
    pool: pd.DataFrame  # lead_id, region, product_line, budget, score
    reps: pd.DataFrame  # user_id, regions, product_lines, capacity, left
    per_lead: int = 10
    eligible: dict[int, list[int]] = field(default_factory=dict)  # lead -> eligible salespeople, least loaded first
    open_load: dict[int, int] = field(default_factory=dict)  # salesperson -> open leads owned now
    last_assignee: int | None = None  # who received the most recent assignment (round robin continues after)
    _service: ScoringService | None = None

    @classmethod
    def build(
        cls,
        engine: Engine,
        store: FeatureStore | None,
        *,
        now: datetime,
        pool: pd.DataFrame,
        reps: pd.DataFrame,
        per_lead: int = 10,
    ) -> RoutingContext:
        """Eligibility by rules for every pool lead, open leads per salesperson, the last assignee."""
        ctx = cls(engine, store, now, pool, reps, per_lead)
        everyone = max(1, len(reps))
        pairs = recall(pool, reps, per_lead=everyone) if len(pool) and len(reps) else None
        if pairs is not None:
            for lead_id, user_id in zip(pairs.lead_id.tolist(), pairs.user_id.tolist(), strict=True):
                ctx.eligible.setdefault(int(lead_id), []).append(int(user_id))
        with Session(engine) as session:
            ctx.open_load = {
                int(owner or 0): int(n)
                for owner, n in session.execute(
                    select(Lead.owner_id, func.count())
                    .where(Lead.owner_id.is_not(None), Lead.stage.in_([s.value for s in OWNED_STAGES]))
                    .group_by(Lead.owner_id)
                )
            }
            last = session.scalar(
                select(Event.payload).where(Event.type == EventType.ASSIGN).order_by(Event.id.desc()).limit(1)
            )
        to = (last or {}).get("to")
        ctx.last_assignee = to if isinstance(to, int) else None
        return ctx

    def service(self) -> ScoringService:
        """The scoring service (for the model-based strategies)."""
        if self.store is None:
            raise StrategyUnavailable("model-based strategies need the feature store")
        if self._service is None:
            self._service = ScoringService(self.engine, self.store)
        return self._service


def check_available(session: Session, strategy: str) -> None:
    """Refuse a strategy whose model has no promoted champion, naming what to train."""
    if strategy not in MODEL_OF:
        raise ExperimentError(f"unknown strategy {strategy!r}; strategies are {', '.join(STRATEGIES)}")
    model = MODEL_OF[strategy]
    if model is None or champion(session, name=model) is not None:
        return
    if strategy.startswith("v2_"):
        raise StrategyUnavailable(
            f"strategy {strategy!r}: no V2 model registered (no promoted {model!r} model); "
            "train and promote one, or use another strategy"
        )
    raise StrategyUnavailable(
        f"strategy {strategy!r} needs a promoted {model!r} model: run `leadpilot scoring train` (and promote it) first"
    )


def _rotation(ctx: RoutingContext, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]) -> list[Routed]:
    """Hand the leads, in the given order, to eligible salespeople in turn."""
    order = sorted(reps)
    if not order:
        return []
    position = {u: i for i, u in enumerate(order)}
    start = 0
    if ctx.last_assignee is not None:
        start = sum(1 for u in order if u <= ctx.last_assignee) % len(order)
    allowed = set(reps)
    out: list[Routed] = []
    for lead_id in leads:
        candidates = [u for u in ctx.eligible.get(lead_id, []) if u in allowed and left.get(u, 0) > 0]
        if not candidates:
            continue
        # The first candidate at or after the rotation's position.
        chosen = min(candidates, key=lambda u: (position[u] - start) % len(order))
        left[chosen] -= 1
        start = (position[chosen] + 1) % len(order)
        out.append((lead_id, chosen, f"user {chosen}: next in rotation among {len(candidates)} eligible"))
    return out


def round_robin(ctx: RoutingContext, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]) -> list[Routed]:
    """Leads in arrival order, to eligible salespeople in turn."""
    return _rotation(ctx, sorted(leads), reps, left)


def score_round_robin(
    ctx: RoutingContext, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]
) -> list[Routed]:
    """Best-scored leads first (Odoo style), to eligible salespeople in turn."""
    scores = dict(zip(ctx.pool.lead_id.tolist(), ctx.pool.score.tolist(), strict=True))

    def key(lead_id: int) -> tuple[float, int]:
        s = scores.get(lead_id)
        return (-(float(s)) if s is not None and s == s else float("inf"), lead_id)  # unscored (None / NaN) last

    return _rotation(ctx, sorted(leads, key=key), reps, left)


def least_busy(ctx: RoutingContext, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]) -> list[Routed]:
    """Each lead to the eligible salesperson with the fewest open leads."""
    allowed = set(reps)
    load = {u: ctx.open_load.get(u, 0) for u in reps}
    out: list[Routed] = []
    for lead_id in sorted(leads):
        candidates = [u for u in ctx.eligible.get(lead_id, []) if u in allowed and left.get(u, 0) > 0]
        if not candidates:
            continue
        chosen = min(candidates, key=lambda u: (load[u], u))
        out.append((lead_id, chosen, f"user {chosen}: least busy ({load[chosen]} open leads)"))
        load[chosen] += 1
        left[chosen] -= 1
    return out


def _ranked(model_name: str) -> Strategy:
    def ranked(ctx: RoutingContext, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]) -> list[Routed]:
        allowed = set(reps)
        pairs = [
            (lead_id, u)
            for lead_id in sorted(leads)
            for u in [u for u in ctx.eligible.get(lead_id, []) if u in allowed and left.get(u, 0) > 0][: ctx.per_lead]
        ]
        if not pairs:
            return []
        frame = pd.DataFrame(pairs, columns=["lead_id", "user_id"])
        pool = ctx.pool[ctx.pool.lead_id.isin(set(frame.lead_id))]
        p, _ = score_pairs(ctx.service(), frame, pool, ctx.now, model_name=model_name)
        budgets = ctx.pool.set_index("lead_id").budget
        median = budgets.median() if budgets.notna().any() else 1.0
        deal = budgets.reindex(frame.lead_id).fillna(median).to_numpy(dtype=np.float64)
        value = p * np.maximum(deal, 0.0)
        lead_ids = sorted(set(frame.lead_id.tolist()))
        lead_index = {lead: i for i, lead in enumerate(lead_ids)}
        rep_ids = sorted(allowed)
        rep_index = {u: j for j, u in enumerate(rep_ids)}
        problem = AssignmentProblem(
            lead=frame.lead_id.map(lead_index).to_numpy(),
            rep=frame.user_id.map(rep_index).to_numpy(),
            value=value,
            capacity=np.array([left.get(u, 0) for u in rep_ids]),
            n_leads=len(lead_ids),
        )
        result = solve(problem)
        reasons = explain(problem, result, [f"user {u}" for u in rep_ids])
        out: list[Routed] = []
        for i, j, reason in zip(result.lead.tolist(), result.rep.tolist(), reasons, strict=True):
            user = rep_ids[j]
            left[user] -= 1
            out.append((lead_ids[i], user, reason))
        return out

    ranked.__doc__ = f"p(convert) from the {model_name!r} champion × deal value, assigned by the solver."
    return ranked


STRATEGY_FUNCTIONS: dict[str, Strategy] = {
    "round_robin": round_robin,
    "least_busy": least_busy,
    "score_round_robin": score_round_robin,
    "v1_xgb": _ranked("convert"),
    "v2_mmoe": _ranked("mmoe"),
    "v2_ple": _ranked("ple"),
}


def route(
    ctx: RoutingContext, strategy: str, leads: Sequence[int], reps: Sequence[int], left: dict[int, int]
) -> list[Routed]:
    """Route ``leads`` to ``reps`` by ``strategy`` within ``left`` (decreased by what is given out)."""
    with Session(ctx.engine) as session:
        check_available(session, strategy)
    return STRATEGY_FUNCTIONS[strategy](ctx, list(leads), list(reps), left)
