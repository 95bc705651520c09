"""The feedback loop: retrain a challenger on the newest outcomes, promote it only if it wins; drift reports.

``retrain`` trains a challenger with :func:`crm_training.train` and scores champion and challenger on the
same newest window, the challenger's held-out test rows (examples after the end of its training data): the
challenger is promoted only with a higher ROC-AUC there. ``drift_report`` compares the population the
champion was trained on with the newest one by the population stability index (PSI) of its most important
inputs and of its score; PSI ≥ 0.25 says retrain, ≥ 0.1 says watch.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training
from leadpilot.models.crm_training import TARGET, TIME_COLUMN, TrainingDataError
from leadpilot.models.evaluation import binary_metrics
from leadpilot.models.pipeline import ScoringModel
from leadpilot.models.registry import champion, mark_challenger, promote
from leadpilot.models.tables import ModelVersion

PSI_WATCH = 0.10
PSI_RETRAIN = 0.25
Progress = Callable[[str], None]


def psi(reference: np.ndarray, current: np.ndarray, *, bins: int = 10) -> float:
    """Population stability index of ``current`` against ``reference`` (decile bins of the reference).

    Missing values form their own bin; shares are floored at 1e-4 so an empty bin does not give infinity.
    """
    ref = np.asarray(reference, dtype=np.float64)
    cur = np.asarray(current, dtype=np.float64)
    ref_present, cur_present = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    edges: Any = np.unique(np.quantile(ref_present, np.linspace(0, 1, bins + 1)[1:-1])) if len(ref_present) else []

    def shares(values: np.ndarray, present: np.ndarray) -> np.ndarray:
        counts = np.bincount(np.searchsorted(edges, present, side="right"), minlength=len(edges) + 1)
        counts = np.append(counts, len(values) - len(present)).astype(np.float64)
        return np.maximum(counts / max(len(values), 1), 1e-4)

    p, q = shares(ref, ref_present), shares(cur, cur_present)
    return float(np.sum((q - p) * np.log(q / p)))


def _verdict(value: float) -> str:
    return "retrain" if value >= PSI_RETRAIN else "watch" if value >= PSI_WATCH else "stable"


def _champion(engine: Engine, name: str) -> tuple[ModelVersion, ScoringModel]:
    with Session(engine) as session:
        row = champion(session, name=name)
        if row is None:
            raise TrainingDataError(f"no {name} champion yet: run `leadpilot scoring train`")
        session.expunge(row)
    return row, ScoringModel.load(Path(row.path))


def _scoring_frame(
    engine: Engine, store: FeatureStore, name: str, ex: pd.DataFrame, model: ScoringModel
) -> pd.DataFrame:
    frame, _ = crm_training.build_frame(engine, store, name, ex, keep_features=list(model.input_columns))
    frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    return frame


def drift_report(
    engine: Engine,
    store: FeatureStore,
    name: str,
    *,
    recent_days: int = 30,
    top: int = 15,
    sample: int = 20_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """PSI of the champion's score and top inputs: its training population vs the newest ``recent_days``."""
    say = progress or (lambda _m: None)
    row, model = _champion(engine, name)
    ex = crm_training.examples(store, name, labelled_only=False)
    if ex.empty:
        raise TrainingDataError(f"{name}: no examples in the event log")
    newest = ex[TIME_COLUMN].max()
    start = newest - pd.Timedelta(days=recent_days)
    reference = ex[(ex[TIME_COLUMN] >= pd.Timestamp(row.data_from or ex[TIME_COLUMN].min()).tz_convert("UTC"))]
    if row.data_to is not None:
        reference = reference[reference[TIME_COLUMN] <= pd.Timestamp(row.data_to).tz_convert("UTC")]
    current = ex[ex[TIME_COLUMN] > start]
    if reference.empty or current.empty:
        raise TrainingDataError(f"{name}: no examples in the training range or in the last {recent_days} days")
    reference = reference.iloc[-sample:]
    current = current.iloc[-sample:]
    say(f"reading {len(reference):,} training-time and {len(current):,} recent rows")
    ref_frame = _scoring_frame(engine, store, name, reference, model)
    cur_frame = _scoring_frame(engine, store, name, current, model)
    importance = (model.report or {}).get("top_columns") or []
    columns = [c["column"] for c in importance if isinstance(c, dict) and c.get("column") != TIME_COLUMN][:top]
    if not columns:
        columns = [c for c in model.input_columns if c != TIME_COLUMN][:top]
    rows = []
    for column in columns:
        if column not in ref_frame or not pd.api.types.is_numeric_dtype(ref_frame[column]):
            ref_codes, cur_codes = _codes(ref_frame[column], cur_frame[column])
            value = psi(ref_codes, cur_codes)
        else:
            value = psi(ref_frame[column].to_numpy(np.float64), cur_frame[column].to_numpy(np.float64))
        rows.append({"column": column, "psi": round(value, 4), "verdict": _verdict(value)})
    score_psi = psi(model.predict_proba(ref_frame), model.predict_proba(cur_frame))
    worst = max([score_psi, *(float(r["psi"]) for r in rows)])
    return {
        "model": name,
        "version": row.version,
        "reference": {
            "from": str(reference[TIME_COLUMN].min()),
            "to": str(reference[TIME_COLUMN].max()),
            "n": len(reference),
        },
        "current": {"from": str(current[TIME_COLUMN].min()), "to": str(current[TIME_COLUMN].max()), "n": len(current)},
        "score_psi": round(score_psi, 4),
        "features": sorted(rows, key=lambda r: -r["psi"]),
        "verdict": _verdict(worst),
        "thresholds": {"watch": PSI_WATCH, "retrain": PSI_RETRAIN},
    }


def _codes(reference: pd.Series, current: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Categorical columns as level codes (by reference frequency) so PSI bins are the levels."""
    levels = {v: i for i, v in enumerate(reference.astype("string").value_counts().index)}
    return (
        reference.astype("string").map(levels).astype("float64").to_numpy(),
        current.astype("string").map(levels).astype("float64").to_numpy(),
    )


def retrain(
    engine: Engine,
    store: FeatureStore,
    name: str,
    *,
    data_dir: Path,
    actor: Actor = SYSTEM,
    params: dict[str, Any] | None = None,
    max_rows: int | None = 200_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Train a challenger on the newest outcomes; promote it if it beats the champion on the newest window."""
    say = progress or (lambda _m: None)
    trained = crm_training.train(
        engine,
        store,
        name,
        data_dir=data_dir,
        actor=actor,
        params=params,
        max_rows=max_rows,
        promote_if_first=True,
        progress=say,
    )
    challenger = trained.version
    if challenger.status == "champion":
        return {"model": name, "challenger": challenger.version, "promoted": True, "reason": "first model of its name"}
    with Session(engine) as session:
        mark_challenger(session, actor=actor, name=name, version=challenger.version)
        session.commit()
    champ_row, champ_model = _champion(engine, name)
    test_from = trained.result.report.get("data_range", {}).get("test_from")
    ex = crm_training.examples(store, name)
    window = (
        ex[ex[TIME_COLUMN] >= pd.Timestamp(test_from).tz_localize("UTC")] if test_from else ex.iloc[-len(ex) // 5 :]
    )
    say(f"comparing v{champ_row.version} (champion) and v{challenger.version} on {len(window):,} newest examples")
    y = window[TARGET].to_numpy()
    new_model = trained.result.model
    champ_p = champ_model.predict_proba(_scoring_frame(engine, store, name, window, champ_model))
    new_p = new_model.predict_proba(_scoring_frame(engine, store, name, window, new_model))
    champ_m, new_m = binary_metrics(y, champ_p), binary_metrics(y, new_p)
    wins = (new_m["auc"] or 0) > (champ_m["auc"] or 0)
    with Session(engine) as session:
        if wins:
            promote(session, actor=actor, name=name, version=challenger.version, reason="retrain: beat the champion")
        session.commit()
    return {
        "model": name,
        "champion": champ_row.version,
        "challenger": challenger.version,
        "window": {"from": str(window[TIME_COLUMN].min()), "to": str(window[TIME_COLUMN].max()), "n": len(window)},
        "champion_metrics": {k: champ_m[k] for k in ("auc", "pr_auc", "log_loss", "brier")},
        "challenger_metrics": {k: new_m[k] for k in ("auc", "pr_auc", "log_loss", "brier")},
        "promoted": wins,
        "reason": "higher ROC-AUC on the newest window" if wins else "did not beat the champion: kept as challenger",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
