"""V2 ranking on the CRM's own data (issue #6): an ESMM-trained MMoE / PLE ranker of p(transfer) and
p(convert | transfer) from the event log, registered as ``mmoe`` / ``ple`` and served with ONNX Runtime.

**Exposures** (:func:`training_data`), point-in-time and split by time:

* a *screening* exposure for every lead that entered screening and left it: decided when screening began;
  task 0 = reached ``qualified`` (1) or was lost in screening (0); task 1 = 0 when not transferred (ESMM: no
  conversion without a transfer), unobserved when transferred (its conversion is learned on the assignment
  exposure below). No salesperson is known then: the salesperson inputs are NaN and its code is 0 ("none").
* an *assignment* exposure for every lead assigned to a salesperson: decided at the (first) assignment, with
  that salesperson; task 0 = 1 (handed to sales); task 1 = won (1) / lost (0), NaN while the deal is open.

A lead that was screened and then assigned gives one exposure of each kind, each with the inputs known at its
own decision: a single row at the assignment would carry the transfer outcome in its inputs (only transferred
leads have a salesperson), and a single row at screening could not carry the pair's features. The inputs are
the convert model's columns as :func:`crm_training.build_frame` makes them (lead, account and pair tile
features the day before the decision, the salesperson's record up to then, the rep columns); the categorical
ones (region, product line, source, industry, company size, salesperson) are integer codes from a vocabulary of
the training rows (0 = missing / none; a value first seen after training maps to the "unknown" embedding).

**Training** (:func:`train_v2`): :class:`MultiTaskRanker` with ``esmm=True`` on the older rows (early stopping
on the newest 15 % of them), evaluated on the newest window: AUC of p(convert | transfer) on the decided
assignment exposures beside the V1 ``convert`` champion's AUC on the same rows and a lead-only baseline, AUC of
p(transfer) on the screening exposures. The network is exported to ONNX and registered under ``mmoe`` / ``ple``
(``params["kind"] == "multitask"``); the model directory holds ``ranker.onnx``, ``v2.json`` (columns and
vocabulary) and the PyTorch weights.

**Serving** (:class:`V2Scorer`, :func:`score_pairs_v2`): the champion's ONNX graph scores (lead, salesperson)
pairs from the same columns built at ``now``; ``distribution.recommend.score_pairs`` dispatches here when the
champion of the requested name is a multi-task model.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM, Actor
from leadpilot.features.store import FeatureStore, FeatureStoreError
from leadpilot.models import crm_training
from leadpilot.models.crm_training import TIME_COLUMN, TrainingDataError
from leadpilot.models.registry import champion, promote, register
from leadpilot.models.tables import ModelVersion

if TYPE_CHECKING:
    from leadpilot.distribution.multitask import MultiTaskRanker, OnnxRanker
    from leadpilot.models.service import ScoringService

ARCHES = ("mmoe", "ple")
KIND = "multitask"
SPEC_FILE = "v2.json"
ONNX_FILE = "ranker.onnx"
TORCH_DIR = "torch"
SPEC_FORMAT = "leadpilot-ranking-v2/1"
# Lead attributes fed as categorical codes; the salesperson is the last categorical column.
CATEGORICAL = ("region", "product_line", "source", "industry", "company_size")
SALESPERSON = "salesperson"
SCREENING, ASSIGNMENT = "screening", "assignment"
# Task columns of the ranker's output (esmm): 0 = p(transfer), 1 = p(convert | transfer).
TRANSFER_TASK, CONVERT_TASK = 0, 1
# Defaults for the ranker on CRM data, under any ``params`` given to train_v2.
DEFAULT_PARAMS: dict[str, Any] = {
    "embedding_dim": 8,
    "expert_units": (64,),
    "tower_units": (32,),
    "epochs": 20,
    "batch_size": 512,
    "learning_rate": 2e-3,
    "weight_decay": 1e-5,
    "patience": 3,
    "seed": 0,
    "threads": 2,
}
TEST_FRACTION = 0.2
# Share of training rows a tile feature must have a non-zero value in to be an input. On the small simulated
# company 2 % gave the best validation AUC of p(convert | transfer) among 0, 1, 2 and 5 % (docs/distribution.md).
MIN_COVERAGE = 0.02
VALIDATION_FRACTION = 0.15
Progress = Callable[[str], None]


# ------------------------------------------------------------------------------------------ exposures


@dataclass
class V2Data:
    """ESMM exposures: one row each, oldest first, with inputs, labels and the time split."""

    rows: pd.DataFrame  # lead_id, phase, decided_at (UTC), owner_id (NaN: none), outcome_at (UTC or NaT)
    frame: pd.DataFrame  # build_frame's columns per row (same order as rows), categoricals as raw values
    y: np.ndarray  # (n, 2) float: task 0 = transferred, task 1 = converted (NaN = unobserved)
    test: np.ndarray  # bool per row: in the newest (held-out) window
    numeric_columns: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of exposures."""
        return len(self.rows)


def _first(ev: pd.DataFrame, mask: pd.Series) -> pd.Series:
    """Per lead, the first time of the events selected by ``mask``."""
    return ev[mask].groupby("lead_id").occurred_at.min()


def exposures(store: FeatureStore) -> pd.DataFrame:
    """Every screening and assignment exposure in the event log with its labels (see the module docstring)."""
    ev = crm_training._events(store, "type IN ('stage_change', 'assign')")
    ev["occurred_at"] = pd.to_datetime(ev["occurred_at"], utc=True)
    started = _first(ev, (ev.type == "stage_change") & (ev.to_value == "screening"))
    qualified = _first(ev, (ev.from_stage == "screening") & (ev.to_value == "qualified"))
    screen_lost = _first(ev, (ev.from_stage == "screening") & (ev.to_value == "lost"))
    won = _first(ev, (ev.type == "stage_change") & (ev.to_value == "won"))
    lost = _first(ev, (ev.type == "stage_change") & (ev.to_value == "lost") & (ev.from_stage != "screening"))

    screening = pd.DataFrame({TIME_COLUMN: started})
    q_at, l_at = qualified.reindex(screening.index), screen_lost.reindex(screening.index)
    screening["transfer"] = np.where(q_at.notna(), 1.0, np.where(l_at.notna(), 0.0, np.nan))
    screening["convert"] = np.where(screening["transfer"] == 0, 0.0, np.nan)
    screening["outcome_at"] = q_at.where(q_at.notna(), l_at)
    screening["owner_id"] = np.nan
    screening["qualified_at"] = pd.NaT
    screening["phase"] = SCREENING
    screening = screening[screening["transfer"].notna()]  # still in screening: nothing to learn yet

    assigned = crm_training.examples(store, "convert", labelled_only=False)
    assignment = pd.DataFrame(index=assigned.index)
    assignment[TIME_COLUMN] = assigned[TIME_COLUMN]
    assignment["transfer"] = 1.0
    outcome = assigned[crm_training.TARGET]
    assignment["convert"] = np.where(outcome >= 0, outcome.astype(float), np.nan)
    w_at, x_at = won.reindex(assignment.index), lost.reindex(assignment.index)
    assignment["outcome_at"] = w_at.where(outcome == 1, x_at.where(outcome == 0))
    assignment["owner_id"] = assigned["owner_id"].astype(float)
    assignment["qualified_at"] = pd.to_datetime(assigned["qualified_at"], utc=True)
    assignment["phase"] = ASSIGNMENT

    out = pd.concat([screening, assignment])
    out.index.name = "lead_id"
    out = out.reset_index()
    out[TIME_COLUMN] = pd.to_datetime(out[TIME_COLUMN], utc=True)
    out["outcome_at"] = pd.to_datetime(out["outcome_at"], utc=True)
    out["qualified_at"] = pd.to_datetime(out["qualified_at"], utc=True)
    return out.sort_values([TIME_COLUMN, "lead_id", "phase"], kind="stable").reset_index(drop=True)


def _frames(
    engine: Engine,
    store: FeatureStore,
    rows: pd.DataFrame,
    keep: dict[str, list[str] | None],
    say: Progress,
) -> dict[str, pd.DataFrame]:
    """build_frame's columns per kind of exposure (screening ones as ``transfer``, assignment ones as
    ``convert``), indexed like ``rows``; ``keep`` gives each kind's feature columns (None: by coverage)."""
    out: dict[str, pd.DataFrame] = {}
    for phase, name in ((SCREENING, "transfer"), (ASSIGNMENT, "convert")):
        part = rows[rows.phase == phase]
        if part.empty or (phase in keep and keep[phase] == []):
            continue
        ex = pd.DataFrame({TIME_COLUMN: part[TIME_COLUMN].to_numpy()}, index=part.lead_id.to_numpy())
        if name == "convert":
            ex["owner_id"] = part.owner_id.astype(np.int64).to_numpy()
            ex["qualified_at"] = part.qualified_at.to_numpy()
        say(f"{phase} exposures: {len(ex):,} rows")
        frame, _ = crm_training.build_frame(engine, store, name, ex, keep_features=keep.get(phase), progress=say)
        frame.index = part.index
        out[phase] = frame
    return out


def _feature_names(store: FeatureStore, columns: Sequence[str]) -> list[str]:
    """The dictionary's derived features among ``columns``."""
    known = {d.name for d in store.dictionary.derived}
    return [c for c in columns if c in known]


def training_data(
    engine: Engine,
    store: FeatureStore,
    *,
    max_rows: int | None = 60_000,
    test_fraction: float = TEST_FRACTION,
    min_coverage: float = MIN_COVERAGE,
    progress: Progress | None = None,
) -> V2Data:
    """The ESMM exposures with their point-in-time inputs: the newest ``max_rows``, the newest share held out.

    Feature columns with a (non-zero) value in fewer than ``min_coverage`` of the older rows are not inputs.
    """
    say = progress or (lambda _m: None)
    if not store.runs():
        raise FeatureStoreError("no features computed yet: run `leadpilot features compute`")
    if not 0.0 < test_fraction < 0.9:
        raise TrainingDataError(f"test_fraction must be in (0, 0.9), got {test_fraction}")
    rows = exposures(store)
    if max_rows is not None and len(rows) > max_rows:
        rows = rows.iloc[-max_rows:].reset_index(drop=True)  # the newest: closest to what will be scored
    if rows.empty:
        raise TrainingDataError(
            "no exposures in the event log: no lead has finished screening or been assigned yet "
            "(let the CRM record outcomes, or simulate a company)"
        )
    say(f"{len(rows):,} exposures ({int((rows.phase == ASSIGNMENT).sum()):,} assignments)")
    # Feature columns: those with coverage among either kind of exposure, read for both kinds.
    parts = _frames(engine, store, rows, {}, say)
    features = sorted({c for f in parts.values() for c in _feature_names(store, f.columns)})
    missing = {phase: [c for c in features if c not in f.columns] for phase, f in parts.items()}
    if any(missing.values()):
        say(f"{sum(map(len, missing.values())):,} feature columns read again for the exposures that lacked them")
        refill = _frames(engine, store, rows, dict(missing), say)
        for phase, extra in refill.items():
            parts[phase] = parts[phase].join(extra[[c for c in missing[phase] if c in extra]])
    frame = pd.concat(list(parts.values())).reindex(rows.index)
    y = rows[["transfer", "convert"]].to_numpy(dtype=np.float64)
    cut = rows[TIME_COLUMN].iloc[min(len(rows) - 1, int(len(rows) * (1.0 - test_fraction)))]
    test = (rows[TIME_COLUMN] >= cut).to_numpy()
    # Sparse tile features are noise to the network: keep those with a value in min_coverage of the training rows.
    older = frame.loc[~test, features]
    share = (older.notna() & (older != 0)).mean() if len(older) else pd.Series(0.0, index=features)
    rare = {c for c in features if share[c] < min_coverage}
    numeric = [c for c in frame.columns if c not in CATEGORICAL and c not in rare]
    return V2Data(rows=rows, frame=frame, y=y, test=test, numeric_columns=numeric)


# ------------------------------------------------------------------------------------------ encoding


def vocabulary(frame: pd.DataFrame, owners: pd.Series) -> dict[str, list[Any]]:
    """Per categorical column the values seen (code = position + 1; 0 = missing / no salesperson)."""
    vocab: dict[str, list[Any]] = {}
    for column in CATEGORICAL:
        values = frame[column].dropna().astype(str) if column in frame else pd.Series([], dtype=str)
        vocab[column] = sorted(set(values.tolist()))
    vocab[SALESPERSON] = sorted({int(o) for o in owners.dropna().tolist()})
    return vocab


def encode(
    frame: pd.DataFrame, owners: Sequence[Any] | np.ndarray, *, numeric: Sequence[str], vocab: dict[str, list[Any]]
) -> tuple[np.ndarray, np.ndarray]:
    """The ranker's inputs: numeric columns as float32 (missing columns / infinities -> NaN) and int64 codes
    (0 = missing or no salesperson, -1 = a value not in the vocabulary: the "unknown" embedding)."""
    x_num = frame.reindex(columns=list(numeric)).to_numpy(dtype=np.float32, na_value=np.nan)
    x_num[~np.isfinite(x_num)] = np.nan
    codes = np.zeros((len(frame), len(CATEGORICAL) + 1), dtype=np.int64)
    for j, column in enumerate(CATEGORICAL):
        lookup = {v: i + 1 for i, v in enumerate(vocab[column])}
        values = frame[column] if column in frame else pd.Series([None] * len(frame), index=frame.index)
        codes[:, j] = [
            0 if v is None or (isinstance(v, float) and np.isnan(v)) else lookup.get(str(v), -1)
            for v in values.tolist()
        ]
    reps = {int(v): i + 1 for i, v in enumerate(vocab[SALESPERSON])}
    codes[:, -1] = [0 if o is None or o != o else reps.get(int(o), -1) for o in list(owners)]
    return x_num, codes


def cardinalities(vocab: dict[str, list[Any]]) -> list[int]:
    """Embedding sizes per categorical column (the vocabulary plus code 0)."""
    return [len(vocab[c]) + 1 for c in (*CATEGORICAL, SALESPERSON)]


# ------------------------------------------------------------------------------------------ training


@dataclass
class TrainedV2:
    """A V2 ranker after training: its registry row, the fitted model and the held-out report."""

    version: ModelVersion
    model: MultiTaskRanker
    data: V2Data
    metrics: dict[str, Any]
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """Plain data for the CLI."""
        return {
            "name": self.version.name,
            "version": self.version.version,
            "status": self.version.status,
            "exposures": self.data.n,
            "test_exposures": int(self.data.test.sum()),
            "columns": len(self.data.numeric_columns) + len(CATEGORICAL) + 1,
            "metrics": self.metrics,
            "baseline_metrics": self.version.baseline_metrics,
            "epochs": self.model.n_epochs_,
            "best_epoch": self.model.best_epoch_,
            "seconds": round(self.seconds, 1),
        }


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """ROC AUC rounded to 4 places (None with one class or no rows)."""
    from sklearn.metrics import roc_auc_score

    if len(y) == 0 or np.unique(y).size < 2:
        return None
    return round(float(roc_auc_score(y, score)), 4)


def check_trainable(data: V2Data, fit: np.ndarray) -> None:
    """Refuse a training set a task cannot learn from, saying what is missing."""
    y = data.y[fit]
    transfer = y[:, 0][~np.isnan(y[:, 0])]
    decided = y[:, 1][(data.rows.phase.to_numpy()[fit] == ASSIGNMENT) & ~np.isnan(y[:, 1])]
    problems = []
    if len(y) < 50:
        problems.append(f"{len(y):,} training exposures (at least 50 are needed)")
    for what, labels in (("transfer", transfer), ("convert (decided assigned leads)", decided)):
        pos, neg = int((labels == 1).sum()), int((labels == 0).sum())
        if pos < 10 or neg < 10:
            problems.append(f"{what}: {pos:,} positive and {neg:,} negative outcomes (at least 10 of each)")
    if problems:
        raise TrainingDataError(
            "not enough history for the V2 ranker: "
            + "; ".join(problems)
            + " (let the CRM record more outcomes, or simulate a company)"
        )


def _lead_prior(data: V2Data, fit: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """A lead-only score: the win rate of decided training assignments with the same product line and source,
    shrunk towards the product line's and then everyone's (no salesperson, no features)."""
    phase = data.rows.phase.to_numpy()
    train = fit & (phase == ASSIGNMENT) & ~np.isnan(data.y[:, 1])
    frame = data.frame
    keys = frame[["product_line", "source"]].astype(str).fillna("")
    won = pd.Series(data.y[train, 1], index=keys.index[train])
    overall = float(won.mean()) if len(won) else 0.5
    by_line = won.groupby(keys.product_line[train]).agg(["sum", "count"])
    line_rate = (by_line["sum"] + 20 * overall) / (by_line["count"] + 20)
    by_pair = won.groupby([keys.product_line[train], keys.source[train]]).agg(["sum", "count"])
    prior = line_rate.reindex(keys.product_line[rows]).fillna(overall).to_numpy()
    pair_index = pd.MultiIndex.from_arrays([keys.product_line[rows], keys.source[rows]])
    s = by_pair["sum"].reindex(pair_index).fillna(0.0).to_numpy()
    c = by_pair["count"].reindex(pair_index).fillna(0.0).to_numpy()
    return np.asarray((s + 20 * prior) / (c + 20), dtype=np.float64)


def _v1_scores(
    engine: Engine, store: FeatureStore, data: V2Data, rows: np.ndarray
) -> tuple[ModelVersion, np.ndarray, pd.Timestamp | None] | None:
    """The V1 ``convert`` champion's p(convert) for the assignment exposures ``rows``, and where its own test
    window began (rows before it may have been in its training data); None without a champion."""
    from leadpilot.models.pipeline import ScoringModel

    with Session(engine) as session:
        row = champion(session, name="convert")
        if row is None:
            return None
        session.expunge(row)
    model = ScoringModel.load(Path(row.path))
    part = data.rows.iloc[rows]
    ex = pd.DataFrame({TIME_COLUMN: part[TIME_COLUMN].to_numpy()}, index=part.lead_id.to_numpy())
    ex["owner_id"] = part.owner_id.astype(np.int64).to_numpy()
    ex["qualified_at"] = part.qualified_at.to_numpy()
    frame, _ = crm_training.build_frame(engine, store, "convert", ex, keep_features=list(model.input_columns))
    frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    meta_path = Path(row.path) / "meta.json"
    test_from = None
    found = (
        (json.loads(meta_path.read_text()).get("data_range") or {}).get("test_from") if meta_path.is_file() else None
    )
    if found:
        stamp = pd.Timestamp(found)
        test_from = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return row, np.asarray(model.predict_proba(frame), dtype=np.float64), test_from


def _evaluate(
    engine: Engine, store: FeatureStore, data: V2Data, fit: np.ndarray, probs: np.ndarray, say: Progress
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Held-out metrics of the ranker and its baselines on the newest window (test rows of ``data``)."""
    phase = data.rows.phase.to_numpy()
    test = data.test
    y = data.y
    screen = np.flatnonzero(test & (phase == SCREENING) & ~np.isnan(y[:, 0]))
    decided = np.flatnonzero(test & (phase == ASSIGNMENT) & ~np.isnan(y[:, 1]))
    # End to end at screening: did the screened lead end up won (lost in screening or after assignment: 0)?
    won_later = data.rows[phase == ASSIGNMENT].set_index("lead_id")["convert"]
    won_later = won_later[~won_later.index.duplicated()]
    final = np.where(y[:, 0] == 0, 0.0, won_later.reindex(data.rows.lead_id).to_numpy(dtype=np.float64))
    observed = np.flatnonzero(test & (phase == SCREENING) & ~np.isnan(final))
    p_convert = probs[:, CONVERT_TASK]
    metrics: dict[str, Any] = {
        "auc": _auc(y[decided, 1], p_convert[decided]),
        "auc_convert_given_transfer": _auc(y[decided, 1], p_convert[decided]),
        "auc_transfer": _auc(y[screen, 0], probs[screen, TRANSFER_TASK]),
        "auc_ctcvr_at_screening": _auc(final[observed], probs[observed, 0] * probs[observed, 1]),
        "n_test_convert": len(decided),
        "n_test_transfer": len(screen),
        "test_from": data.rows[TIME_COLUMN][test].min().isoformat() if test.any() else None,
    }
    baselines: dict[str, Any] = {
        "lead_prior": {"auc": _auc(y[decided, 1], _lead_prior(data, fit, decided)), "n": len(decided)}
    }
    if len(decided):
        say(f"scoring {len(decided):,} held-out assignments with the V1 convert champion")
        v1 = _v1_scores(engine, store, data, decided)
        if v1 is not None:
            row, p_v1, v1_test_from = v1
            both = np.ones(len(decided), dtype=bool)
            if v1_test_from is not None:  # rows the V1 model may have trained on are left out of the comparison
                both = (data.rows[TIME_COLUMN].iloc[decided] >= v1_test_from).to_numpy()
            same = decided[both]
            baselines["convert_v1"] = {
                "version": row.version,
                "auc_all_test_rows": _auc(y[decided, 1], p_v1),
                "auc": _auc(y[same, 1], p_v1[both]),
                "v2_auc_same_rows": _auc(y[same, 1], p_convert[same]),
                "lead_prior_auc_same_rows": _auc(y[same, 1], _lead_prior(data, fit, same)),
                "n": int(both.sum()),
                "v1_test_from": v1_test_from.isoformat() if v1_test_from is not None else None,
            }
    return metrics, baselines


def train_v2(
    engine: Engine,
    store: FeatureStore,
    *,
    arch: str,
    data_dir: Path,
    actor: Actor = SYSTEM,
    promote_if_first: bool = True,
    params: dict[str, Any] | None = None,
    max_rows: int | None = 60_000,
    progress: Progress | None = None,
) -> TrainedV2:
    """Train the ``arch`` (mmoe / ple) V2 ranker on the event log, export it to ONNX and register it."""
    import time

    from leadpilot.distribution.multitask import MultiTaskRanker

    started = time.perf_counter()
    say = progress or (lambda _m: None)
    if arch not in ARCHES:
        raise TrainingDataError(f"unknown V2 architecture {arch!r}: one of {', '.join(ARCHES)}")
    data = training_data(engine, store, max_rows=max_rows, progress=say)
    fit = ~data.test
    check_trainable(data, fit)
    fit_idx = np.flatnonzero(fit)
    n_val = max(2, int(len(fit_idx) * VALIDATION_FRACTION))
    train_idx, val_idx = fit_idx[:-n_val], fit_idx[-n_val:]  # the newest training rows stop the fit
    vocab = vocabulary(data.frame.iloc[fit_idx], data.rows.owner_id.iloc[fit_idx])
    x_num, x_cat = encode(data.frame, data.rows.owner_id.to_numpy(), numeric=data.numeric_columns, vocab=vocab)
    settings = {**DEFAULT_PARAMS, **(params or {})}
    model = MultiTaskRanker(arch=arch, esmm=True, **settings)
    val_y = data.y[val_idx]
    use_val = all(np.unique(val_y[:, t][~np.isnan(val_y[:, t])]).size == 2 for t in (0, 1))
    say(
        f"training {arch} on {len(train_idx) if use_val else len(fit_idx):,} exposures × "
        f"{x_num.shape[1]:,} numeric + {x_cat.shape[1]} categorical columns"
    )
    rows_for_fit = train_idx if use_val else fit_idx
    model.fit(
        x_num[rows_for_fit],
        data.y[rows_for_fit],
        X_cat=x_cat[rows_for_fit],
        cat_cardinalities=cardinalities(vocab),
        eval_set=(x_num[val_idx], val_y, x_cat[val_idx]) if use_val else None,
    )
    probs = model.predict_proba(x_num, X_cat=x_cat)
    metrics, baselines = _evaluate(engine, store, data, fit, probs, say)
    columns = [*data.numeric_columns, *CATEGORICAL, SALESPERSON]
    spec = {
        "format": SPEC_FORMAT,
        "kind": KIND,
        "arch": arch,
        "tasks": model.task_names(),
        "serving_task": CONVERT_TASK,
        "numeric_columns": list(data.numeric_columns),
        "categorical_columns": [*CATEGORICAL, SALESPERSON],
        "feature_columns": _feature_names(store, data.numeric_columns),
        "vocabulary": vocab,
        "cardinalities": cardinalities(vocab),
        "metrics": metrics,
        "baseline_metrics": baselines,
    }
    times = data.rows[TIME_COLUMN]
    fingerprint = hashlib.sha256(json.dumps(columns).encode())
    hyper = {k: list(v) if isinstance(v, tuple) else v for k, v in model.get_params().items()}
    meta = {
        "schema_fingerprint": fingerprint.hexdigest(),
        "data_range": {
            "from": times.min().isoformat(),
            "to": times.max().isoformat(),
            "n_train": int(fit.sum()),
            "n_test": int(data.test.sum()),
        },
        "feature_names": columns,
        "params": {"kind": KIND, "arch": arch, **hyper, "epochs_run": model.n_epochs_, "best_epoch": model.best_epoch_},
        "metrics": metrics,
        "baseline_metrics": baselines,
    }
    with tempfile.TemporaryDirectory(prefix="leadpilot-v2-") as tmp:
        out = Path(tmp) / "model"
        out.mkdir()
        model.export_onnx(out / ONNX_FILE)
        model.save(out / TORCH_DIR)
        (out / SPEC_FILE).write_text(json.dumps(spec, indent=2, default=str), encoding="utf-8")
        (out / "meta.json").write_text(json.dumps(meta, indent=2, default=str), encoding="utf-8")
        with Session(engine) as session:
            row = register(session, actor=actor, name=arch, source=out, data_dir=data_dir, meta=meta)
            if promote_if_first and not any(
                v.status == "champion" for v in session.scalars(select(ModelVersion).where(ModelVersion.name == arch))
            ):
                promote(session, actor=actor, name=arch, version=row.version, reason="first model")
            session.commit()
            session.refresh(row)
            session.expunge(row)
    return TrainedV2(row, model, data, metrics, time.perf_counter() - started)


# ------------------------------------------------------------------------------------------ serving


def is_multitask(row: ModelVersion) -> bool:
    """Whether a registered version is a V2 multi-task ranker (served by this module, not the scoring service)."""
    return (row.params or {}).get("kind") == KIND or (Path(row.path) / SPEC_FILE).is_file()


def multitask_champion(engine: Engine, name: str) -> ModelVersion | None:
    """The champion of ``name`` when it is a multi-task ranker, else None."""
    with Session(engine) as session:
        row = champion(session, name=name)
        if row is None or not is_multitask(row):
            return None
        session.expunge(row)
    return row


# Loaded champions by (model dir, threads): a distribution run or experiment scores several rounds.
_LOADED: dict[tuple[str, int | None], tuple[dict[str, Any], OnnxRanker]] = {}


class V2Scorer:
    """A registered V2 ranker served with ONNX Runtime: p(transfer), p(convert | transfer) per (lead, salesperson)."""

    def __init__(self, engine: Engine, store: FeatureStore, row: ModelVersion, *, threads: int | None = 2) -> None:
        from leadpilot.distribution.multitask import OnnxRanker

        self.engine = engine
        self.store = store
        self.row = row
        key = (str(row.path), threads)
        if key not in _LOADED:
            directory = Path(row.path)
            spec_path = directory / SPEC_FILE
            if not spec_path.is_file():
                raise TrainingDataError(f"{row.name} v{row.version}: {spec_path} is missing (not a V2 ranker)")
            spec = json.loads(spec_path.read_text(encoding="utf-8"))
            if spec.get("format") != SPEC_FORMAT:
                raise TrainingDataError(f"{spec_path} is not a V2 ranker description (format {SPEC_FORMAT!r})")
            if len(_LOADED) >= 8:
                _LOADED.clear()
            _LOADED[key] = (spec, OnnxRanker(directory / ONNX_FILE, threads=threads))
        self.spec, self.onnx = _LOADED[key]

    def inputs(self, frame: pd.DataFrame, owners: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The encoded inputs of rows of build_frame's columns with their salespeople."""
        return encode(frame, owners, numeric=self.spec["numeric_columns"], vocab=self.spec["vocabulary"])

    def predict_pairs(self, pairs: pd.DataFrame, now: datetime) -> np.ndarray:
        """(n, 2) probabilities for ``pairs`` (lead_id, user_id) with features at ``now``."""
        from leadpilot.models.service import qualified_times

        with Session(self.engine) as session:
            found = qualified_times(session, sorted(set(pairs.lead_id.tolist())))
        qualified = pd.Series(found, dtype="datetime64[us, UTC]")
        stamp = pd.Timestamp(now)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        out = np.zeros((len(pairs), 2), dtype=np.float64)
        if pairs.empty:
            return out
        # build_frame keys rows by lead: the pairs go in rounds in which every lead appears once.
        round_of = pairs.groupby("lead_id").cumcount().to_numpy()
        for k in range(int(round_of.max()) + 1):
            idx = np.flatnonzero(round_of == k)
            part = pairs.iloc[idx]
            ex = pd.DataFrame(index=part.lead_id.to_numpy(dtype=np.int64))
            ex[TIME_COLUMN] = stamp
            ex["owner_id"] = part.user_id.to_numpy(dtype=np.int64)
            ex["qualified_at"] = qualified.reindex(ex.index).fillna(stamp).to_numpy()
            frame, _ = crm_training.build_frame(
                self.engine, self.store, "convert", ex, keep_features=self.spec["feature_columns"]
            )
            x_num, x_cat = self.inputs(frame, ex["owner_id"].to_numpy())
            out[idx] = self.onnx.predict_proba(x_num, X_cat=x_cat)
        return out


def score_pairs_v2(
    service: ScoringService, pairs: pd.DataFrame, now: datetime, *, row: ModelVersion
) -> tuple[np.ndarray, str]:
    """p(convert | transfer) per (lead, salesperson) pair from the V2 champion ``row``, and the ranker's name."""
    scorer = V2Scorer(service.engine, service.store, row)
    p = scorer.predict_pairs(pairs, now)[:, CONVERT_TASK]
    return p, f"{row.name} v{row.version} (V2 {scorer.spec.get('arch', row.name)}, ONNX Runtime)"
