"""Experiment arithmetic: deterministic bucketing, per-arm CTCVR / CVR / revenue per lead with 95 % intervals,
two-proportion z-tests and bootstrap tests against the control arm, a sample-ratio-mismatch check, a plot.

Units (salespeople or leads) are bucketed by a SHA-256 hash of ``experiment key : unit id`` mapped to [0, 1)
and cut by the arms' cumulative traffic shares: the same unit always lands in the same arm, different
experiments are independent, and no table of assignments is needed to know a unit's arm.

Metrics are per exposure (a lead routed by an arm): CTCVR = converted / exposed, CVR = converted / transferred,
revenue per lead = revenue / exposed. Proportions get Wilson intervals; revenue a bootstrap interval.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

Z95 = 1.959963984540054
SRM_ALPHA = 0.001  # the usual threshold: a mismatch this unlikely means the split itself is broken


class ExperimentError(ValueError):
    """Malformed arms or data; the message says which."""


def bucket(experiment_key: str, unit_id: int | str) -> float:
    """A unit's stable position in [0, 1) for one experiment."""
    digest = hashlib.sha256(f"{experiment_key}:{unit_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def check_arms(arms: Sequence[tuple[str, float]]) -> None:
    """Arms need distinct names and positive shares that add up to 1."""
    if len(arms) < 2:
        raise ExperimentError("an experiment needs at least two arms")
    names = [name for name, _ in arms]
    if len(set(names)) != len(names):
        raise ExperimentError(f"arm names repeat: {', '.join(names)}")
    bad = [name for name, share in arms if not (0 < share <= 1)]
    if bad:
        raise ExperimentError(f"arm shares must be in (0, 1]: {', '.join(bad)}")
    total = sum(share for _, share in arms)
    if abs(total - 1) > 1e-9:
        raise ExperimentError(f"arm shares add up to {total:g}, not 1")


def assign_arm(experiment_key: str, unit_id: int | str, arms: Sequence[tuple[str, float]]) -> str:
    """The arm of a unit: the first arm whose cumulative share exceeds the unit's bucket."""
    position = bucket(experiment_key, unit_id)
    cumulative = 0.0
    for name, share in arms:
        cumulative += share
        if position < cumulative:
            return name
    return arms[-1][0]  # rounding at the very top


def wilson(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (sensible at 0 and 1 and for small n)."""
    if trials == 0:
        return (0.0, 1.0)
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


def two_proportion_z(k1: int, n1: int, k2: int, n2: int) -> tuple[float, float]:
    """z statistic and two-sided p-value for p1 = p2 (pooled standard error)."""
    if n1 == 0 or n2 == 0:
        return (0.0, 1.0)
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return (0.0, 1.0)
    z = (k1 / n1 - k2 / n2) / se
    return (z, float(2 * stats.norm.sf(abs(z))))


def bootstrap_difference(
    treatment: np.ndarray, control: np.ndarray, *, resamples: int = 2_000, seed: int = 0
) -> tuple[float, float, float]:
    """95 % percentile interval of mean(treatment) − mean(control), and a two-sided bootstrap p-value."""
    t = np.asarray(treatment, dtype=np.float64)
    c = np.asarray(control, dtype=np.float64)
    if len(t) == 0 or len(c) == 0:
        return (float("nan"), float("nan"), 1.0)
    rng = np.random.default_rng(seed)
    # Means of resamples via multinomial counts: one matrix product instead of resamples × n draws.
    t_means = rng.multinomial(len(t), np.full(len(t), 1 / len(t)), size=resamples) @ t / len(t)
    c_means = rng.multinomial(len(c), np.full(len(c), 1 / len(c)), size=resamples) @ c / len(c)
    diffs = t_means - c_means
    low, high = np.percentile(diffs, [2.5, 97.5])
    p = 2 * min(float((diffs <= 0).mean()), float((diffs >= 0).mean()))
    return (float(low), float(high), min(1.0, p))


def sample_ratio_mismatch(observed: Mapping[str, int], shares: Mapping[str, float]) -> dict[str, Any]:
    """Chi-square test of the units per arm against the configured shares; flags p < 0.001."""
    names = list(shares)
    counts = np.array([observed.get(n, 0) for n in names], dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return {"chi2": 0.0, "p_value": 1.0, "mismatch": False, "observed": dict(observed)}
    expected = np.array([shares[n] for n in names]) * total
    chi2, p = stats.chisquare(counts, expected)
    return {
        "chi2": round(float(chi2), 4),
        "p_value": float(p),
        "mismatch": bool(p < SRM_ALPHA),
        "observed": {n: int(c) for n, c in zip(names, counts, strict=True)},
        "expected": {n: round(float(e), 1) for n, e in zip(names, expected, strict=True)},
    }


@dataclass
class ArmData:
    """Per-exposure outcomes of one arm (aligned arrays) and how many units it holds."""

    name: str
    transferred: np.ndarray
    converted: np.ndarray
    revenue: np.ndarray
    units: int = 0

    def __post_init__(self) -> None:
        self.transferred = np.asarray(self.transferred, dtype=np.int8)
        self.converted = np.asarray(self.converted, dtype=np.int8)
        self.revenue = np.asarray(self.revenue, dtype=np.float64)
        if not (len(self.transferred) == len(self.converted) == len(self.revenue)):
            raise ExperimentError(f"arm {self.name}: outcome arrays of different lengths")
        if (self.converted > self.transferred).any():
            raise ExperimentError(f"arm {self.name}: a conversion without a transfer")


def _arm_metrics(arm: ArmData, seed: int) -> dict[str, Any]:
    n, transfers, conversions = len(arm.converted), int(arm.transferred.sum()), int(arm.converted.sum())
    rev_low, rev_high = (float("nan"), float("nan"))
    if n:
        rng = np.random.default_rng(seed)
        means = rng.multinomial(n, np.full(n, 1 / n), size=2_000) @ arm.revenue / n
        rev_low, rev_high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
    return {
        "units": arm.units,
        "exposures": n,
        "transfers": transfers,
        "conversions": conversions,
        "ctcvr": conversions / n if n else None,
        "ctcvr_ci": wilson(conversions, n),
        "cvr": conversions / transfers if transfers else None,
        "cvr_ci": wilson(conversions, transfers),
        "revenue_per_lead": float(arm.revenue.mean()) if n else None,
        "revenue_per_lead_ci": (rev_low, rev_high),
    }


def _lift(treatment: float | None, control: float | None) -> float | None:
    if treatment is None or control is None or control == 0:
        return None
    return treatment / control - 1


def analyse(
    arms: Sequence[ArmData], *, control: str, shares: Mapping[str, float] | None = None, seed: int = 0
) -> dict[str, Any]:
    """Per-arm metrics with 95 % intervals, and each arm against ``control``: lift, z-test, bootstrap, SRM."""
    by_name = {a.name: a for a in arms}
    if control not in by_name:
        raise ExperimentError(f"control arm {control!r} is not among {', '.join(by_name)}")
    metrics = {a.name: _arm_metrics(a, seed) for a in arms}
    base = by_name[control]
    comparisons = {}
    for arm in arms:
        if arm.name == control:
            continue
        m, c = metrics[arm.name], metrics[control]
        z_ctcvr, p_ctcvr = two_proportion_z(m["conversions"], m["exposures"], c["conversions"], c["exposures"])
        z_cvr, p_cvr = two_proportion_z(m["conversions"], m["transfers"], c["conversions"], c["transfers"])
        boot_ctcvr = bootstrap_difference(arm.converted, base.converted, seed=seed)
        boot_revenue = bootstrap_difference(arm.revenue, base.revenue, seed=seed + 1)
        comparisons[arm.name] = {
            "ctcvr_lift": _lift(m["ctcvr"], c["ctcvr"]),
            "ctcvr_diff_ci": boot_ctcvr[:2],
            "ctcvr_z": z_ctcvr,
            "ctcvr_p_z": p_ctcvr,
            "ctcvr_p_bootstrap": boot_ctcvr[2],
            "cvr_lift": _lift(m["cvr"], c["cvr"]),
            "cvr_z": z_cvr,
            "cvr_p_z": p_cvr,
            "revenue_lift": _lift(m["revenue_per_lead"], c["revenue_per_lead"]),
            "revenue_diff_ci": boot_revenue[:2],
            "revenue_p_bootstrap": boot_revenue[2],
        }
    out: dict[str, Any] = {"control": control, "arms": metrics, "vs_control": comparisons}
    if shares is not None:
        out["sample_ratio"] = sample_ratio_mismatch({a.name: a.units for a in arms}, shares)
    return out


def plot(report: Mapping[str, Any], path: Path) -> Path:
    """Bar charts of CTCVR, CVR and revenue per lead per arm with their 95 % intervals (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(report["arms"])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    for ax, (key, title) in zip(
        axes, (("ctcvr", "CTCVR"), ("cvr", "CVR"), ("revenue_per_lead", "revenue per lead")), strict=True
    ):
        values = [report["arms"][n][key] or 0.0 for n in names]
        lows = [report["arms"][n][f"{key}_ci"][0] for n in names]
        highs = [report["arms"][n][f"{key}_ci"][1] for n in names]
        errors = np.array(
            [
                [max(0.0, v - lo) for v, lo in zip(values, lows, strict=True)],
                [max(0.0, hi - v) for v, hi in zip(values, highs, strict=True)],
            ]
        )
        colours = ["#888888" if n == report["control"] else "#2b7bba" for n in names]
        ax.bar(names, values, yerr=np.nan_to_num(errors), color=colours, capsize=4)
        ax.set_title(title)
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
