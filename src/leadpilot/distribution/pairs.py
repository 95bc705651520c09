"""Offline evaluation of (lead, salesperson) pair models on logged history: point-in-time rates, AUC, IPS.

Three pieces that the real-pairs check (issue #6, ``benchmarks/crm_pairs.py``) needs and that any logged
assignment history can reuse:

* :class:`PointInTimeRates` counts outcomes per key (a salesperson, a salesperson × product, ...) and answers,
  for any (key, time), how many outcomes of that key were known *strictly before* that time and the win
  rate shrunk towards a prior: ``(wins + strength · prior) / (n + strength)``. A row never sees its own label
  or anything that closed later, so the same features serve training rows and counterfactual pairs.
* :class:`ConditionalPropensity` estimates the logged policy ``P(action | context)`` from counts (the
  historical share of a context's opportunities that went to each salesperson).
* :func:`bootstrap_auc` and :func:`ips_estimate` give the ROC-AUC and the inverse-propensity (IPS and
  self-normalised SNIPS) value of a deterministic policy, each with a percentile bootstrap interval.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


class PairEvaluationError(ValueError):
    """Input to a pair evaluation that is malformed; the message says which row or field and why."""


def _key_tuples(keys: Sequence[Any], n: int, what: str) -> list[tuple[Hashable, ...]]:
    """Rows of key values as tuples, checking that every key column has ``n`` rows."""
    if not keys:
        raise PairEvaluationError(f"{what}: at least one key column is needed")
    for position, column in enumerate(keys):
        if len(column) != n:
            raise PairEvaluationError(f"{what}: key column {position} has {len(column)} rows, expected {n}")
    return list(zip(*keys, strict=True))


def _as_times(times: Any, what: str) -> np.ndarray:
    """Times as a float64 array (datetimes become nanoseconds), refusing missing values."""
    array = np.asarray(times)
    if np.issubdtype(array.dtype, np.datetime64):
        missing = np.isnat(array)
        values = array.astype("datetime64[ns]").astype(np.int64).astype(np.float64)
    else:
        try:
            values = array.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise PairEvaluationError(f"{what}: times must be numbers or datetimes ({exc})") from exc
        missing = np.isnan(values)
    if missing.any():
        raise PairEvaluationError(f"{what}: time missing at row {int(np.flatnonzero(missing)[0])}")
    return values


class PointInTimeRates:
    """Per-key outcome counts known strictly before a given time, with a win rate shrunk towards a prior."""

    def __init__(self, strength: float = 20.0) -> None:
        """``strength``: pseudo-observations of the prior added to every key's record."""
        self.strength = strength

    def fit(self, keys: Sequence[Any], times: Any, labels: Any) -> PointInTimeRates:
        """Record each history row's key, the time its outcome became known, and its 0/1 outcome."""
        if self.strength < 0:
            raise PairEvaluationError(f"strength must be >= 0, got {self.strength}")
        y = np.asarray(labels, dtype=np.float64)
        if y.ndim != 1:
            raise PairEvaluationError("labels must be one-dimensional")
        bad = ~np.isin(y, (0.0, 1.0))
        if bad.any():
            raise PairEvaluationError(f"labels must be 0 or 1: row {int(np.flatnonzero(bad)[0])} is {float(y[bad][0])}")
        t = _as_times(times, "fit")
        if len(t) != len(y):
            raise PairEvaluationError(f"fit: {len(t)} times but {len(y)} labels")
        rows = _key_tuples(keys, len(y), "fit")
        groups: dict[tuple[Hashable, ...], list[int]] = {}
        for index, key in enumerate(rows):
            groups.setdefault(key, []).append(index)
        self.n_keys_ = len(keys)
        self.groups_: dict[tuple[Hashable, ...], tuple[np.ndarray, np.ndarray]] = {}
        for key, members in groups.items():
            idx = np.asarray(members)
            order = np.argsort(t[idx], kind="stable")
            self.groups_[key] = (t[idx][order], np.concatenate([[0.0], np.cumsum(y[idx][order])]))
        self.n_rows_ = len(y)
        return self

    def counts(self, keys: Sequence[Any], times: Any) -> tuple[np.ndarray, np.ndarray]:
        """(outcomes, wins) of each query row's key that closed strictly before the row's time."""
        if not hasattr(self, "groups_"):
            raise PairEvaluationError("PointInTimeRates is not fitted: call fit first")
        if len(keys) != self.n_keys_:
            raise PairEvaluationError(f"fitted on {self.n_keys_} key columns, queried with {len(keys)}")
        t = _as_times(times, "query")
        rows = _key_tuples(keys, len(t), "query")
        n = np.zeros(len(t))
        wins = np.zeros(len(t))
        by_key: dict[tuple[Hashable, ...], list[int]] = {}
        for index, key in enumerate(rows):
            by_key.setdefault(key, []).append(index)
        for key, members in by_key.items():
            group = self.groups_.get(key)
            if group is None:
                continue
            idx = np.asarray(members)
            closed, cumulative = group
            before = np.searchsorted(closed, t[idx], side="left")  # strictly earlier outcomes only
            n[idx] = before
            wins[idx] = cumulative[before]
        return n, wins

    def transform(self, keys: Sequence[Any], times: Any, prior: Any) -> tuple[np.ndarray, np.ndarray]:
        """(outcomes known before each row's time, smoothed win rate) for each query row."""
        n, wins = self.counts(keys, times)
        p = np.broadcast_to(np.asarray(prior, dtype=np.float64), n.shape)
        if np.isnan(p).any():
            raise PairEvaluationError(f"prior missing at row {int(np.flatnonzero(np.isnan(p))[0])}")
        denominator = n + self.strength
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(denominator > 0, (wins + self.strength * p) / denominator, p)
        return n, rate


class ConditionalPropensity:
    """The logged policy ``P(action | context)`` as historical shares, with optional additive smoothing."""

    def __init__(self, alpha: float = 0.0) -> None:
        """``alpha``: pseudo-count added to every action already seen in a context (0 = plain shares)."""
        self.alpha = alpha

    def fit(self, contexts: Collection[Any], actions: Collection[Any]) -> ConditionalPropensity:
        """Count how often each action was taken in each context."""
        if self.alpha < 0:
            raise PairEvaluationError(f"alpha must be >= 0, got {self.alpha}")
        if len(contexts) != len(actions):
            raise PairEvaluationError(f"fit: {len(contexts)} contexts but {len(actions)} actions")
        if len(actions) == 0:
            raise PairEvaluationError("fit: no logged decisions")
        self.counts_: dict[Hashable, dict[Hashable, int]] = {}
        for context, action in zip(contexts, actions, strict=True):
            per = self.counts_.setdefault(context, {})
            per[action] = per.get(action, 0) + 1
        return self

    def actions(self, context: Hashable) -> list[Hashable]:
        """The actions ever logged in this context (the policy's support), most frequent first."""
        per = self._fitted().get(context, {})
        return sorted(per, key=lambda action: (-per[action], str(action)))

    def predict(self, contexts: Collection[Any], actions: Collection[Any]) -> np.ndarray:
        """P(action | context) for each row; 0 where the action was never logged in the context."""
        fitted = self._fitted()
        if len(contexts) != len(actions):
            raise PairEvaluationError(f"predict: {len(contexts)} contexts but {len(actions)} actions")
        out = np.zeros(len(actions))
        for index, (context, action) in enumerate(zip(contexts, actions, strict=True)):
            per = fitted.get(context)
            if not per or action not in per:
                continue
            out[index] = (per[action] + self.alpha) / (sum(per.values()) + self.alpha * len(per))
        return out

    def _fitted(self) -> dict[Hashable, dict[Hashable, int]]:
        """The fitted counts, or a clear error when fit was not called."""
        if not hasattr(self, "counts_"):
            raise PairEvaluationError("ConditionalPropensity is not fitted: call fit first")
        return self.counts_


def _check_binary(y: np.ndarray, what: str) -> None:
    """Refuse values other than 0/1 (naming the first bad row)."""
    bad = ~np.isin(y, (0.0, 1.0))
    if bad.any():
        raise PairEvaluationError(f"{what} must be 0 or 1: row {int(np.flatnonzero(bad)[0])} is {float(y[bad][0])}")


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    """ROC-AUC by the rank-sum formula (ties get average ranks); NaN when one class is absent."""
    from scipy.stats import rankdata

    positives = int(y.sum())
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    ranks = rankdata(score)
    return float((ranks[y == 1].sum() - positives * (positives + 1) / 2) / (positives * negatives))


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval."""

    value: float
    low: float
    high: float

    def as_dict(self, digits: int = 4) -> dict[str, float]:
        """The estimate as JSON-ready numbers."""
        return {
            "value": round(self.value, digits),
            "ci_low": round(self.low, digits),
            "ci_high": round(self.high, digits),
        }


def bootstrap_auc(y: Any, score: Any, *, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> Estimate:
    """ROC-AUC of ``score`` for 0/1 ``y`` with a percentile bootstrap interval (rows resampled)."""
    labels = np.asarray(y, dtype=np.float64)
    scores = np.asarray(score, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise PairEvaluationError(f"labels {labels.shape} and scores {scores.shape} must be 1-D and equal length")
    _check_binary(labels, "labels")
    if np.isnan(scores).any():
        raise PairEvaluationError(f"score missing at row {int(np.flatnonzero(np.isnan(scores))[0])}")
    value = _auc(labels, scores)
    if np.isnan(value):
        raise PairEvaluationError("AUC needs both classes among the labels")
    rng = np.random.default_rng(seed)
    draws = [_auc(labels[i], scores[i]) for i in rng.integers(0, len(labels), (n_boot, len(labels)))]
    low, high = np.nanquantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(low), float(high))


def ips_estimate(
    *,
    matched: Any,
    reward: Any,
    propensity: Any,
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, Any]:
    """IPS and SNIPS value of a deterministic policy from logged rows, with bootstrap intervals.

    ``matched[i]`` says whether the logged action equals the policy's action, ``reward[i]`` is the logged
    outcome and ``propensity[i]`` the logging policy's probability of the logged action. IPS =
    mean(matched · reward / propensity); SNIPS divides Σ matched · reward / propensity by Σ matched / propensity.
    """
    m = np.asarray(matched, dtype=bool)
    r = np.asarray(reward, dtype=np.float64)
    p = np.asarray(propensity, dtype=np.float64)
    if not (m.shape == r.shape == p.shape) or m.ndim != 1:
        raise PairEvaluationError(f"matched {m.shape}, reward {r.shape} and propensity {p.shape} must agree")
    if len(m) == 0:
        raise PairEvaluationError("no logged rows")
    if np.isnan(r).any():
        raise PairEvaluationError(f"reward missing at row {int(np.flatnonzero(np.isnan(r))[0])}")
    invalid = m & ~((p > 0) & (p <= 1))
    if invalid.any():
        row = int(np.flatnonzero(invalid)[0])
        raise PairEvaluationError(
            f"propensity must be in (0, 1] where the policy matches: row {row} has {float(p[row])}"
        )
    weight = np.where(m, 1.0 / np.where(m, p, 1.0), 0.0)

    def values(index: np.ndarray) -> tuple[float, float]:
        w, rr = weight[index], r[index]
        total = w.sum()
        return float((w * rr).mean()), float((w * rr).sum() / total) if total > 0 else float("nan")

    ips, snips = values(np.arange(len(m)))
    logged = float(r.mean())
    rng = np.random.default_rng(seed)
    # Rows are resampled jointly, so the policy's value and the logged rate move together in the gain.
    draws = np.array([[*values(i), r[i].mean()] for i in rng.integers(0, len(m), (n_boot, len(m)))])
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    ips_low, ips_high = np.nanquantile(draws[:, 0], quantiles)
    snips_low, snips_high = np.nanquantile(draws[:, 1], quantiles)
    logged_low, logged_high = np.quantile(draws[:, 2], quantiles)
    ips_gain = np.nanquantile(draws[:, 0] - draws[:, 2], quantiles)
    snips_gain = np.nanquantile(draws[:, 1] - draws[:, 2], quantiles)
    total_weight = weight.sum()
    return {
        "rows": len(m),
        "matched_rows": int(m.sum()),
        "matched_share": round(float(m.mean()), 4),
        "effective_sample_size": round(float(total_weight**2 / (weight**2).sum()), 1) if total_weight > 0 else 0.0,
        "mean_weight_over_matched": round(float(weight[m].mean()), 3) if m.any() else None,
        "sum_weights_over_rows": round(float(total_weight / len(m)), 4),  # ≈ 1 when propensities are right
        "logged": Estimate(logged, float(logged_low), float(logged_high)).as_dict(),
        "ips": Estimate(ips, float(ips_low), float(ips_high)).as_dict(),
        "snips": Estimate(snips, float(snips_low), float(snips_high)).as_dict(),
        "ips_gain": Estimate(ips - logged, *map(float, ips_gain)).as_dict(),
        "snips_gain": Estimate(snips - logged, *map(float, snips_gain)).as_dict(),
    }
