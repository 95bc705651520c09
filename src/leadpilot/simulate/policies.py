"""Routing policies for the replay: what CRMs do today, and models trained on the history before the replay.

* ``least_busy``: each lead (oldest first) to the salesperson with room who has been given the fewest leads
  so far (Frappe's and EspoCRM's load balancing).
* ``score_round_robin``: leads ordered by a lead-only score (logistic regression of p(convert) on the lead's
  fields), then round robin among the salespeople of the lead's region who declare its product line (Odoo
  style), falling back to the region, then to anyone with room.
* ``v1_xgb``: XGBoost of p(convert | lead, salesperson) on lead, salesperson and pair features; each day's
  pool is assigned by maximising Σ p × expected contract value under capacity with
  :func:`leadpilot.distribution.assign.solve`.
* ``v2_mmoe`` / ``v2_ple``: the same features through a multi-task ranker (ESMM: p(transfer) over every
  contacted lead, p(convert | transfer) over the worked ones), assigned the same way.

Model policies learn only from what the CRM held before the replay starts (point in time): outcomes closed
before the cutoff, observable lead fields, declared salesperson attributes. No hidden truth, no luck draws.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np

from leadpilot.distribution.assign import AssignmentProblem, solve
from leadpilot.simulate.generate import _History
from leadpilot.simulate.replay import PoolView, ReplayEnv, TeamView
from leadpilot.simulate.world import PRODUCT_LINES, REGIONS, SEGMENTS, SOURCES, World

# --- the history as a CRM holds it ---------------------------------------------------------------


@dataclass
class History:
    """What the CRM knew at ``cutoff``: observable lead fields, routing and the outcomes closed by then."""

    cutoff: float
    product: np.ndarray
    region: np.ndarray
    segment: np.ndarray
    source: np.ndarray
    budget: np.ndarray
    visits: np.ndarray
    arrival: np.ndarray
    contacted: np.ndarray  # bool: screening reached the lead before the cutoff
    qualified: np.ndarray  # bool: transferred to sales before the cutoff
    rep: np.ndarray  # salesperson the lead was assigned to before the cutoff, -1 when none
    waited_days: np.ndarray  # qualification to assignment (NaN when unassigned)
    closed: np.ndarray  # bool: won or lost before the cutoff
    closed_day: np.ndarray  # NaN when still open at the cutoff
    won: np.ndarray  # bool (False when not closed)
    contract_value: np.ndarray  # value of won contracts, NaN otherwise
    rep_region: np.ndarray
    rep_capacity: np.ndarray
    declared: np.ndarray  # (salespeople, products) bool

    @property
    def n_reps(self) -> int:
        return int(self.rep_region.shape[0])


_HISTORIES: weakref.WeakKeyDictionary[World, dict[float, History]] = weakref.WeakKeyDictionary()


def history_for(world: World, *, cutoff: float | None = None) -> History:
    """The world's history (round-robin routing, as generated into the CRM store) as known at ``cutoff``."""
    end = float(world.days if cutoff is None else cutoff)
    if not 0 < end <= world.days:
        raise ValueError(f"cutoff {end} is outside the history (0, {world.days}]")
    cached = _HISTORIES.setdefault(world, {})
    if end in cached:
        return cached[end]
    leads = world.leads_for_days(0, world.days)
    people = world.people
    run = _History(world, leads, np.arange(people.n), np.arange(max(1, people.screeners)))
    run.run()
    known = leads.arrival < end
    contacted = known & ~np.isnan(run.connected_day) & (np.nan_to_num(run.connected_day, nan=np.inf) < end)
    qualified = run.qualified & contacted
    assigned = (run.rep >= 0) & (np.nan_to_num(run.assigned_day, nan=np.inf) < end)
    closed_day = np.where(np.nan_to_num(run.closed_day, nan=np.inf) < end, run.closed_day, np.nan)
    closed = ~np.isnan(closed_day) & assigned
    won = run.won & closed
    declared = np.zeros((people.n, len(PRODUCT_LINES)), dtype=bool)
    for r, lines in enumerate(people.product_lines):
        declared[r, lines] = True
    history = History(
        cutoff=end,
        product=leads.product[known],
        region=leads.region[known],
        segment=leads.segment[known],
        source=leads.source[known],
        budget=leads.budget[known],
        visits=leads.visits[known],
        arrival=leads.arrival[known],
        contacted=contacted[known],
        qualified=qualified[known],
        rep=np.where(assigned, run.rep, -1)[known],
        waited_days=np.where(assigned, run.assigned_day - run.connected_day, np.nan)[known],
        closed=closed[known],
        closed_day=np.where(closed, closed_day, np.nan)[known],
        won=won[known],
        contract_value=np.where(won, leads.value, np.nan)[known],
        rep_region=people.sales_region.copy(),
        rep_capacity=people.capacity.copy(),
        declared=declared,
    )
    cached[end] = history
    return history


# --- features ------------------------------------------------------------------------------------


@dataclass
class RepRecord:
    """Each salesperson's closed deals in the training history: counts overall, per product line, per segment."""

    n: np.ndarray
    won: np.ndarray
    n_product: np.ndarray
    won_product: np.ndarray
    n_segment: np.ndarray
    won_segment: np.ndarray
    prior: float
    strength: float

    @classmethod
    def from_history(cls, history: History, *, strength: float, rows: np.ndarray | None = None) -> RepRecord:
        """Count the closed, assigned leads of the history (or of its ``rows``) per salesperson."""
        if rows is None:
            rows = np.flatnonzero(history.closed & (history.rep >= 0))
        rep, won = history.rep[rows], history.won[rows].astype(np.float64)
        r, p, s = history.n_reps, len(PRODUCT_LINES), len(SEGMENTS)
        flat_p = rep * p + history.product[rows]
        flat_s = rep * s + history.segment[rows]
        return cls(
            n=np.bincount(rep, minlength=r).astype(np.float64),
            won=np.bincount(rep, weights=won, minlength=r),
            n_product=np.bincount(flat_p, minlength=r * p).reshape(r, p).astype(np.float64),
            won_product=np.bincount(flat_p, weights=won, minlength=r * p).reshape(r, p),
            n_segment=np.bincount(flat_s, minlength=r * s).reshape(r, s).astype(np.float64),
            won_segment=np.bincount(flat_s, weights=won, minlength=r * s).reshape(r, s),
            prior=float(won.mean()) if len(won) else 0.5,
            strength=strength,
        )

    def rates(self, reps: np.ndarray, product: np.ndarray, segment: np.ndarray) -> np.ndarray:
        """Smoothed win rates (overall, product line, segment), their additive logit combination, and volumes."""
        m = self.strength
        n, won = self.n[reps], self.won[reps]
        overall = (won + m * self.prior) / (n + m)
        n_p = self.n_product[reps, product]
        by_product = (self.won_product[reps, product] + m * overall) / (n_p + m)
        n_s = self.n_segment[reps, segment]
        by_segment = (self.won_segment[reps, segment] + m * overall) / (n_s + m)
        combined = _logit(by_product) + _logit(by_segment) - _logit(overall)
        return np.column_stack([overall, by_product, by_segment, combined, np.log1p(n), np.log1p(n_p), np.log1p(n_s)])


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, 1e-4, 1 - 1e-4)
    return np.asarray(np.log(q / (1 - q)))


FEATURES = (
    "product",
    "region",
    "segment",
    "source",
    "log_budget",
    "visits",
    "waited_days",
    "rep_region",
    "rep_capacity",
    "rep_declares_product",
    "rep_declared_lines",
    "same_region",
    "rep_win_rate",
    "rep_win_rate_product",
    "rep_win_rate_segment",
    "rep_logit_product_plus_segment",
    "rep_log_deals",
    "rep_log_deals_product",
    "rep_log_deals_segment",
)
CATEGORICAL = ("product", "region", "segment", "source", "rep_region")


@dataclass
class Pairs:
    """(lead, salesperson) pairs as parallel arrays of the lead's observable fields and the salesperson index."""

    product: np.ndarray
    region: np.ndarray
    segment: np.ndarray
    source: np.ndarray
    budget: np.ndarray
    visits: np.ndarray
    waited_days: np.ndarray
    rep: np.ndarray  # -1: no salesperson (a lead that was never assigned)


def pair_features(
    pairs: Pairs,
    *,
    rep_region: np.ndarray,
    rep_capacity: np.ndarray,
    declared: np.ndarray,
    record: RepRecord,
) -> np.ndarray:
    """The feature matrix (columns :data:`FEATURES`) of lead × salesperson pairs; rows without one get NaN."""
    has = pairs.rep >= 0
    rep = np.where(has, pairs.rep, 0)
    nan = np.float64("nan")
    rates = record.rates(rep, pairs.product, pairs.segment)
    rep_cols = np.column_stack(
        [
            rep_region[rep],
            rep_capacity[rep],
            declared[rep, pairs.product],
            declared[rep].sum(axis=1),
            rep_region[rep] == pairs.region,
            rates,
        ]
    ).astype(np.float64)
    rep_cols[~has] = nan
    lead_cols = np.column_stack(
        [
            pairs.product,
            pairs.region,
            pairs.segment,
            pairs.source,
            np.log(np.maximum(pairs.budget, 1.0)),
            pairs.visits,
            np.nan_to_num(pairs.waited_days, nan=0.0),
        ]
    ).astype(np.float64)
    return np.column_stack([lead_cols, rep_cols]).astype(np.float32)


def _history_pairs(history: History, rows: np.ndarray) -> Pairs:
    return Pairs(
        history.product[rows],
        history.region[rows],
        history.segment[rows],
        history.source[rows],
        history.budget[rows],
        history.visits[rows],
        history.waited_days[rows],
        history.rep[rows],
    )


def out_of_fold_features(
    history: History, rows: np.ndarray, *, strength: float, folds: int = 5, seed: int = 0
) -> np.ndarray:
    """Training features of history ``rows``: each row's salesperson record counted without the row's fold.

    A record that included the row's own outcome would leak the label into the features (and leave-one-out
    leaks it the other way), so the deals are split into folds and each fold is described by the others.
    """
    fold = np.random.default_rng(seed).integers(0, folds, size=len(history.rep))
    deals = np.flatnonzero(history.closed & (history.rep >= 0))
    X = np.empty((len(rows), len(FEATURES)), dtype=np.float32)
    for k in range(folds):
        record = RepRecord.from_history(history, strength=strength, rows=deals[fold[deals] != k])
        part = fold[rows] == k
        X[part] = pair_features(
            _history_pairs(history, rows[part]),
            rep_region=history.rep_region,
            rep_capacity=history.rep_capacity,
            declared=history.declared,
            record=record,
        )
    return X


def _value_table(history: History, strength: float = 20.0) -> np.ndarray:
    """Expected contract value by (product line, segment): the mean of won contracts, shrunk to the line's mean."""
    won = history.won & ~np.isnan(history.contract_value)
    overall = float(history.contract_value[won].mean()) if won.any() else 1.0
    table = np.full((len(PRODUCT_LINES), len(SEGMENTS)), overall)
    for p in range(len(PRODUCT_LINES)):
        line = won & (history.product == p)
        line_mean = float(history.contract_value[line].mean()) if line.any() else overall
        for s in range(len(SEGMENTS)):
            cell = line & (history.segment == s)
            k = int(cell.sum())
            total = float(history.contract_value[cell].sum()) if k else 0.0
            table[p, s] = (total + strength * line_mean) / (k + strength)
    return table


def _check_history(history: History, needed: int = 20) -> np.ndarray:
    """The closed, assigned training rows, or a clear error when the history has too few to learn from."""
    rows = np.flatnonzero(history.closed & (history.rep >= 0))
    if len(rows) < needed:
        raise ValueError(f"the history before day {history.cutoff:g} holds {len(rows)} closed deals; need {needed}")
    if np.unique(history.won[rows]).size < 2:
        raise ValueError("the history's closed deals are all won or all lost; a model needs both")
    return rows


# --- policies without a model --------------------------------------------------------------------


class LeastBusyPolicy:
    """Each pool lead, oldest first, to the salesperson with room who has been given the fewest leads so far."""

    name = "least_busy"

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        """Oldest lead first; ties between equally busy salespeople go to the lower index."""
        room = (team.capacity - team.load).astype(np.int64)
        given = team.assigned_total.astype(np.int64).copy()
        pairs = []
        for pos in np.argsort(-pool.waited_days, kind="stable"):
            free = np.flatnonzero(room > 0)
            if free.size == 0:
                break
            rep = int(free[np.argmin(given[free])])
            room[rep] -= 1
            given[rep] += 1
            pairs.append((int(pos), rep))
        return pairs


# --- score round robin ----------------------------------------------------------------------------


def _lead_design(
    product: np.ndarray,
    region: np.ndarray,
    segment: np.ndarray,
    source: np.ndarray,
    budget: np.ndarray,
    visits: np.ndarray,
) -> np.ndarray:
    """One-hot lead fields plus log budget and capped visits: the lead-only scoring design matrix."""
    blocks = [
        np.eye(len(PRODUCT_LINES))[product],
        np.eye(len(REGIONS))[region],
        np.eye(len(SEGMENTS))[segment],
        np.eye(len(SOURCES))[source],
        np.column_stack([np.log(np.maximum(budget, 1.0)) - np.log(5000.0), np.minimum(visits, 15) / 5.0]),
    ]
    return np.column_stack(blocks)


class ScoreRoundRobinPolicy:
    """Leads by a lead-only score, round robin among the salespeople of the lead's region and product line."""

    name = "score_round_robin"

    def __init__(self, *, C: float = 1.0, seed: int = 0) -> None:
        self.C = C
        self.seed = seed  # kept for the common policy signature; the fit is deterministic

    def fit(self, history: History) -> ScoreRoundRobinPolicy:
        """Train the lead score: logistic regression of won on the lead's fields over the closed deals."""
        from sklearn.linear_model import LogisticRegression

        rows = _check_history(history)
        X = _lead_design(
            history.product[rows],
            history.region[rows],
            history.segment[rows],
            history.source[rows],
            history.budget[rows],
            history.visits[rows],
        )
        self.model_ = LogisticRegression(C=self.C, max_iter=500).fit(X, history.won[rows])
        self.trained_rows_ = len(rows)
        self.trained_until_ = float(np.nanmax(history.closed_day[rows]))
        self.pointer_: dict[tuple[int, int], int] = {}
        return self

    def score(self, pool: PoolView) -> np.ndarray:
        """p(convert) of each pool lead from its own fields."""
        X = _lead_design(pool.product, pool.region, pool.segment, pool.source, pool.budget, pool.visits)
        return np.asarray(self.model_.predict_proba(X)[:, 1])

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        """Best-scored lead first; each to the next salesperson in turn in its region and product line with room."""
        room = (team.capacity - team.load).astype(np.int64)
        pairs = []
        for pos in np.argsort(-self.score(pool), kind="stable"):
            if not (room > 0).any():
                break
            product, region = int(pool.product[pos]), int(pool.region[pos])
            groups: list[tuple[tuple[int, int], np.ndarray]] = [
                ((region, product), np.flatnonzero((team.region == region) & team.declared[:, product])),
                ((region, -1), np.flatnonzero(team.region == region)),
                ((-1, -1), np.arange(team.n)),
            ]
            for key, members in groups:
                free = members[room[members] > 0]
                if free.size == 0:
                    continue
                start = self.pointer_.get(key, 0)
                # The next member in turn after the last one served, skipping anyone without room.
                turn = members[(start + np.arange(members.size)) % members.size]
                rep = int(turn[room[turn] > 0][0])
                self.pointer_[key] = (int(np.flatnonzero(members == rep)[0]) + 1) % members.size
                room[rep] -= 1
                pairs.append((int(pos), rep))
                break
        return pairs


# --- model policies: p(convert | lead, salesperson) × value under capacity --------------------------


class _PairModelPolicy:
    """Shared by the model policies: candidate pairs, features, and the capacity-aware assignment."""

    name = "pair_model"
    region_recall: bool
    prior_strength: float

    def _fit_common(self, history: History) -> np.ndarray:
        rows = _check_history(history)
        self.record_ = RepRecord.from_history(history, strength=self.prior_strength)
        self.values_ = _value_table(history)
        self.trained_rows_ = len(rows)
        self.trained_until_ = float(np.nanmax(history.closed_day[rows]))
        self.cutoff_ = history.cutoff
        return rows

    def predict_convert(self, X: np.ndarray, rep: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        """p(convert | transferred lead, salesperson) for feature rows and their salespeople."""
        raise NotImplementedError

    def candidates(self, pool: PoolView, team: TeamView) -> tuple[np.ndarray, np.ndarray]:
        """(pool position, salesperson) pairs to score: salespeople with room, in the lead's region when any is."""
        free = np.flatnonzero(team.load < team.capacity)
        leads, reps = [], []
        for pos in range(len(pool)):
            chosen = free
            if self.region_recall:
                local = free[team.region[free] == pool.region[pos]]
                chosen = local if local.size else free
            leads.append(np.full(chosen.size, pos))
            reps.append(chosen)
        if not leads:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        return np.concatenate(leads).astype(np.int64), np.concatenate(reps).astype(np.int64)

    def expected_values(self, pool: PoolView, team: TeamView, lead: np.ndarray, rep: np.ndarray) -> np.ndarray:
        """p(convert) × expected contract value of each candidate pair."""
        pairs = Pairs(
            pool.product[lead],
            pool.region[lead],
            pool.segment[lead],
            pool.source[lead],
            pool.budget[lead],
            pool.visits[lead],
            pool.waited_days[lead],
            rep,
        )
        X = pair_features(
            pairs, rep_region=team.region, rep_capacity=team.capacity, declared=team.declared, record=self.record_
        )
        return self.predict_convert(X, rep) * self.values_[pairs.product, pairs.segment]

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        """Maximise the day's Σ p × value under each salesperson's remaining capacity."""
        if len(pool) == 0:
            return []
        lead, rep = self.candidates(pool, team)
        if lead.size == 0:
            return []
        value = self.expected_values(pool, team, lead, rep)
        room = np.maximum(team.capacity - team.load, 0)
        result = solve(AssignmentProblem(lead=lead, rep=rep, value=value, capacity=room, n_leads=len(pool)))
        return [(int(i), int(j)) for i, j in zip(result.lead, result.rep, strict=True)]


class XGBRoutingPolicy(_PairModelPolicy):
    """V1: XGBoost of p(convert | lead, salesperson), routed by expected value under capacity."""

    name = "v1_xgb"

    def __init__(
        self,
        *,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.05,
        prior_strength: float = 20.0,
        region_recall: bool = True,
        n_jobs: int = 2,
        seed: int = 0,
    ) -> None:
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.prior_strength = prior_strength
        self.region_recall = region_recall
        self.n_jobs = n_jobs
        self.seed = seed

    def fit(self, history: History) -> XGBRoutingPolicy:
        """Train on the history's closed deals (salesperson records out of fold)."""
        from xgboost import XGBClassifier

        rows = self._fit_common(history)
        X = out_of_fold_features(history, rows, strength=self.prior_strength, seed=self.seed)
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=0.8,
            tree_method="hist",
            n_jobs=self.n_jobs,
            random_state=self.seed,
        ).fit(X, history.won[rows].astype(np.int64))
        return self

    def predict_convert(self, X: np.ndarray, rep: np.ndarray) -> np.ndarray:
        """p(convert | lead, salesperson) from the booster."""
        return np.asarray(self.model_.predict_proba(X)[:, 1], dtype=np.float64)


_CAT_COLUMNS = [FEATURES.index(c) for c in CATEGORICAL]
_NUM_COLUMNS = [i for i, c in enumerate(FEATURES) if c not in CATEGORICAL]


def multitask_inputs(X: np.ndarray, rep: np.ndarray, n_reps: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Split :data:`FEATURES` rows into the ranker's numeric and categorical inputs (code 0 = no salesperson)."""
    cat = X[:, _CAT_COLUMNS].copy()
    rep_region = CATEGORICAL.index("rep_region")
    cat[:, rep_region] = np.where(np.isnan(cat[:, rep_region]), 0, cat[:, rep_region] + 1)
    codes = np.column_stack([cat.astype(np.int64), np.where(rep >= 0, rep + 1, 0)])
    cards = [len(PRODUCT_LINES), len(REGIONS), len(SEGMENTS), len(SOURCES), len(REGIONS) + 1, n_reps + 1]
    return X[:, _NUM_COLUMNS].astype(np.float32), codes, cards


class MultiTaskRoutingPolicy(_PairModelPolicy):
    """V2: an ESMM multi-task ranker (MMoE or PLE) of p(transfer) and p(convert | transfer), routed like V1.

    Its exposures are the history's contacted leads: transfer = qualified; convert = won, known for the
    closed deals; leads never assigned carry the "no salesperson" code in the salesperson inputs. Routing
    uses p(convert | transfer) of each (lead, salesperson) pair, since the pool's leads are already transferred.
    """

    def __init__(
        self,
        *,
        arch: str = "mmoe",
        embedding_dim: int = 8,
        epochs: int = 8,
        batch_size: int = 2048,
        learning_rate: float = 3e-3,
        max_exposures: int = 60_000,
        prior_strength: float = 20.0,
        region_recall: bool = True,
        threads: int | None = 1,
        seed: int = 0,
    ) -> None:
        self.arch = arch
        self.embedding_dim = embedding_dim
        self.epochs = epochs
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.max_exposures = max_exposures
        self.prior_strength = prior_strength
        self.region_recall = region_recall
        self.threads = threads
        self.seed = seed
        self.name = f"v2_{arch}"

    def fit(self, history: History) -> MultiTaskRoutingPolicy:
        """Train on the history's contacted leads (salesperson records out of fold).

        Every worked lead is kept; leads that were never transferred are sampled down to ``max_exposures`` rows
        in all (they teach only the transfer task, and a large company has hundreds of thousands of them).
        """
        from leadpilot.distribution.multitask import MultiTaskRanker

        self._fit_common(history)
        worked = np.flatnonzero(history.contacted & history.qualified)
        others = np.flatnonzero(history.contacted & ~history.qualified)
        room = max(0, self.max_exposures - len(worked))
        if len(others) > room:
            others = np.random.default_rng(self.seed).choice(others, size=room, replace=False)
        rows = np.sort(np.concatenate([worked, others]))
        X = out_of_fold_features(history, rows, strength=self.prior_strength, seed=self.seed)
        x_num, x_cat, cards = multitask_inputs(X, history.rep[rows], history.n_reps)
        Y = np.full((len(rows), 2), np.nan)
        Y[:, 0] = history.qualified[rows]
        closed = history.closed[rows]
        Y[closed, 1] = history.won[rows][closed]
        self.model_ = MultiTaskRanker(
            arch=self.arch,
            esmm=True,
            embedding_dim=self.embedding_dim,
            epochs=self.epochs,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            seed=self.seed,
            threads=self.threads,
        ).fit(x_num, Y, X_cat=x_cat, cat_cardinalities=cards)
        self.exposures_ = len(rows)
        return self

    def predict_convert(self, X: np.ndarray, rep: np.ndarray) -> np.ndarray:
        """p(convert | transfer) of each pair from the ranker's second task."""
        x_num, x_cat, _ = multitask_inputs(X, rep, self.record_.n.shape[0])
        return np.asarray(self.model_.predict_proba(x_num, X_cat=x_cat)[:, 1], dtype=np.float64)


def _for_replay(policy: Any, env: ReplayEnv) -> Any:
    """Train a model policy on the history as known when the replay starts."""
    return policy.fit(history_for(env.world, cutoff=min(float(env.start), float(env.world.days))))


def make_least_busy(env: ReplayEnv, seed: int) -> LeastBusyPolicy:
    """The ``least_busy`` policy (no training)."""
    return LeastBusyPolicy()


def make_score_round_robin(env: ReplayEnv, seed: int) -> ScoreRoundRobinPolicy:
    """The ``score_round_robin`` policy, its lead score trained on the history before the replay."""
    policy: ScoreRoundRobinPolicy = _for_replay(ScoreRoundRobinPolicy(seed=seed), env)
    return policy


def make_v1_xgb(env: ReplayEnv, seed: int) -> XGBRoutingPolicy:
    """The ``v1_xgb`` policy, trained on the history before the replay."""
    policy: XGBRoutingPolicy = _for_replay(XGBRoutingPolicy(seed=seed), env)
    return policy


def make_v2_mmoe(env: ReplayEnv, seed: int) -> MultiTaskRoutingPolicy:
    """The ``v2_mmoe`` policy, trained on the history before the replay."""
    policy: MultiTaskRoutingPolicy = _for_replay(MultiTaskRoutingPolicy(arch="mmoe", seed=seed), env)
    return policy


def make_v2_ple(env: ReplayEnv, seed: int) -> MultiTaskRoutingPolicy:
    """The ``v2_ple`` policy, trained on the history before the replay."""
    policy: MultiTaskRoutingPolicy = _for_replay(MultiTaskRoutingPolicy(arch="ple", seed=seed), env)
    return policy
