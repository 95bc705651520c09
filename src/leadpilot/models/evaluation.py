"""Metrics for a binary score: ROC-AUC, PR-AUC, log loss, Brier, lift and gain, and the calibration curve (+ PNG)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TOP_SHARES = (0.01, 0.05, 0.10, 0.20)
EPS = 1e-15


def _round(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None  # JSON (and PostgreSQL JSONB) has no NaN
    return round(float(value), digits)


def share_key(share: float) -> str:
    """``0.05`` -> ``"5%"``: the keys of ``lift`` and ``gain``."""
    return f"{share * 100:g}%"


def lift_gain(
    y: np.ndarray, p: np.ndarray, shares: Sequence[float] = TOP_SHARES
) -> tuple[dict[str, float | None], dict[str, float | None]]:
    """Lift (positive rate in the top share / overall rate) and gain (share of all positives found there)."""
    y = np.asarray(y, dtype=np.float64)
    order = np.argsort(-np.asarray(p, dtype=np.float64), kind="stable")
    total, rate = float(y.sum()), float(y.mean()) if len(y) else 0.0
    lift: dict[str, float | None] = {}
    gain: dict[str, float | None] = {}
    for share in shares:
        k = max(1, math.ceil(share * len(y)))
        top = y[order[:k]]
        lift[share_key(share)] = _round(float(top.mean()) / rate, 4) if rate > 0 else None
        gain[share_key(share)] = _round(float(top.sum()) / total, 4) if total > 0 else None
    return lift, gain


def calibration_curve(y: np.ndarray, p: np.ndarray, bins: int = 10) -> list[dict[str, Any]]:
    """Equal-count bins of the score: mean predicted vs observed positive rate and the rows in each.

    Equal-count (not equal-width) bins, because scores of rare outcomes crowd near 0 and equal-width
    bins would leave most of them in one bin.
    """
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return []
    order = np.argsort(p, kind="stable")
    out = []
    for chunk in np.array_split(order, min(bins, len(y))):
        if len(chunk) == 0:
            continue
        out.append(
            {
                "low": _round(float(p[chunk].min())),
                "high": _round(float(p[chunk].max())),
                "mean_predicted": _round(float(p[chunk].mean())),
                "observed": _round(float(y[chunk].mean())),
                "count": len(chunk),
            }
        )
    return out


def binary_metrics(y: np.ndarray, p: np.ndarray, *, bins: int = 10) -> dict[str, Any]:
    """Every metric of probabilities ``p`` for 0/1 labels ``y``; AUCs are None when only one class is present."""
    from sklearn.metrics import average_precision_score, brier_score_loss, log_loss, roc_auc_score

    y = np.asarray(y).astype(np.int64)
    p = np.clip(np.asarray(p, dtype=np.float64), 0.0, 1.0)
    both = 0 < y.sum() < len(y)
    lift, gain = lift_gain(y, p)
    curve = calibration_curve(y, p, bins)
    ece = sum(b["count"] * abs(b["mean_predicted"] - b["observed"]) for b in curve) / max(len(y), 1)
    return {
        "auc": _round(roc_auc_score(y, p)) if both else None,
        "pr_auc": _round(average_precision_score(y, p)) if both else None,
        "log_loss": _round(log_loss(y, np.clip(p, EPS, 1 - EPS), labels=[0, 1])) if len(y) else None,
        "brier": _round(brier_score_loss(y, p, pos_label=1)) if len(y) else None,
        "lift": lift,
        "gain": gain,
        "n": len(y),
        "positives": int(y.sum()),
        "base_rate": _round(float(y.mean())) if len(y) else None,
        "mean_predicted": _round(float(p.mean())) if len(y) else None,
        "ece": _round(ece),
        "calibration": curve,
    }


def plot_calibration(curves: Mapping[str, Sequence[Mapping[str, Any]]], path: Path, *, title: str = "") -> None:
    """Draw reliability curves (mean predicted vs observed per bin, one line per model) into a PNG."""
    # The Agg canvas directly, not pyplot: no global backend switch, safe in servers and threads.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 5.6), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    top = 0.05
    for name, curve in curves.items():
        xs = [b["mean_predicted"] for b in curve if b["mean_predicted"] is not None]
        ys = [b["observed"] for b in curve if b["observed"] is not None]
        if xs:
            ax.plot(xs, ys, marker="o", label=name)
            top = max(top, *xs, *ys)
    top = min(1.0, top * 1.05)
    ax.plot([0, top], [0, top], linestyle="--", color="grey", label="perfectly calibrated")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted probability (per bin of equal count)")
    ax.set_ylabel("observed positive rate")
    ax.set_title(title or "calibration on the held-out rows")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # e.g. a Chinese target name
        fig.tight_layout()
        fig.savefig(str(path), format="png")
