"""The scoring pipeline: train a calibrated XGBoost model on any table, evaluate it beside baselines, explain scores.

``fit_model`` splits the rows (latest 20 % by time, or a stratified 20 %), learns the encoder on the
training rows only, warns about columns that may leak the outcome, trains XGBoost (early stopping on a
validation slice, then a refit with it), calibrates its outputs on a calibration slice, and measures the
model and both baselines on the same held-out rows. ``ScoringModel``
is what it returns: it scores, explains and saves itself into a model directory (docs/scoring.md).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from leadpilot import __version__
from leadpilot.models.baselines import baselines_from_json, baselines_to_json, fit_baselines
from leadpilot.models.evaluation import binary_metrics, plot_calibration
from leadpilot.models.tabular import (
    ColumnSpec,
    EmptyDataError,
    Labels,
    LeakageFinding,
    ModelDirectoryError,
    ModelSchemaError,
    NoFeaturesError,
    ScoringDataError,
    Split,
    TabularEncoder,
    column_error,
    find_leakage,
    map_labels,
    parse_datetimes,
    parse_labels,
    read_table,
    row_refs,
    split_rows,
)

__all__ = [
    "Calibrator",
    "Explanation",
    "Factor",
    "FitResult",
    "ModelDirectoryError",
    "ModelSchemaError",
    "ScoringDataError",
    "ScoringModel",
    "check_leakage",
    "check_output_directory",
    "evaluate_model",
    "fit_model",
    "read_table",
]

FORMAT = "leadpilot-scoring-model"
FORMAT_VERSION = 1
MODEL_FILES = ("model.json", "encoder.json", "calibrator.json", "baselines.json", "meta.json")
PLOT_FILE = "calibration.png"

# Booster parameters; ``params`` overrides them and sets num_boost_round, early_stopping_rounds, refit, n_jobs.
DEFAULT_PARAMS: dict[str, Any] = {
    "objective": "binary:logistic",
    "eval_metric": "logloss",
    "tree_method": "hist",
    "learning_rate": 0.05,
    "max_depth": 5,
    "min_child_weight": 2.0,
    "subsample": 0.8,
    "colsample_bytree": 0.8,
    "reg_lambda": 1.0,
    "max_bin": 256,
    "nthread": 2,
}
DEFAULT_ROUNDS = 500
DEFAULT_EARLY_STOPPING = 50


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-np.clip(z, -35, 35))), dtype=np.float64)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    return np.asarray(np.log(p / (1 - p)), dtype=np.float64)


# ----------------------------------------------------------------------------------------------- calibrator


@dataclass
class Calibrator:
    """Maps the booster's probability to a calibrated one: isotonic (enough rows) or Platt (few rows)."""

    method: str  # "isotonic", "platt" or "none"
    x: list[float] = field(default_factory=list)  # isotonic: thresholds of the raw probability ...
    y: list[float] = field(default_factory=list)  # ... and the calibrated value at each (linear in between)
    a: float = 1.0  # platt: p = sigmoid(a * logit(raw) + b)
    b: float = 0.0
    rows: int = 0
    cv: dict[str, float] = field(default_factory=dict)  # cross-validated log loss per method, when auto chose

    @classmethod
    def fit(cls, raw: np.ndarray, y: np.ndarray, *, method: str = "auto", seed: int = 0) -> Calibrator:
        """Fit on the calibration slice; ``auto`` picks the method with the lowest 5-fold CV log loss there.

        The candidates are Platt, isotonic (only with >= 1,000 rows and >= 50 of each class: with fewer it
        overfits) and none (the booster's log-loss-trained output is often calibrated already).
        """
        raw = np.asarray(raw, dtype=np.float64)
        y = np.asarray(y).astype(np.int64)
        n, minority = len(y), int(min(y.sum(), len(y) - y.sum()))
        cv: dict[str, float] = {}
        if method == "auto":
            cv = cls._cross_validate(raw, y, seed, isotonic=n >= 1000 and minority >= 50)
            method = min(cv, key=lambda m: cv[m])
        if method == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            eps = 1.0 / (n + 2)  # never exactly 0 or 1: one surprise would cost infinite log loss
            iso = IsotonicRegression(out_of_bounds="clip", y_min=eps, y_max=1 - eps).fit(raw, y)
            return cls("isotonic", x=iso.X_thresholds_.tolist(), y=iso.y_thresholds_.tolist(), rows=n, cv=cv)
        if method == "platt":
            from sklearn.linear_model import LogisticRegression

            lr = LogisticRegression(C=1e4, max_iter=1000).fit(_logit(raw).reshape(-1, 1), y)
            return cls("platt", a=float(lr.coef_[0, 0]), b=float(lr.intercept_[0]), rows=n, cv=cv)
        return cls("none", rows=n, cv=cv)

    @classmethod
    def _cross_validate(cls, raw: np.ndarray, y: np.ndarray, seed: int, *, isotonic: bool) -> dict[str, float]:
        from sklearn.metrics import log_loss
        from sklearn.model_selection import StratifiedKFold

        methods = ["platt", "none", *(["isotonic"] if isotonic else [])]
        losses: dict[str, list[float]] = {m: [] for m in methods}
        folds = max(2, min(5, int(min(y.sum(), len(y) - y.sum()))))
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(raw, y):
            for method, scores in losses.items():
                p = cls.fit(raw[train], y[train], method=method)(raw[test])
                scores.append(float(log_loss(y[test], np.clip(p, 1e-15, 1 - 1e-15), labels=[0, 1])))
        return {method: round(float(np.mean(scores)), 6) for method, scores in losses.items()}

    def __call__(self, raw: np.ndarray) -> np.ndarray:
        raw = np.asarray(raw, dtype=np.float64)
        if self.method == "isotonic":
            return np.interp(raw, self.x, self.y)
        if self.method == "platt":
            return _sigmoid(self.a * _logit(raw) + self.b)
        return raw


def _raw_probability(booster: Any, matrix: np.ndarray) -> np.ndarray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.shape[0] == 0:
        return np.zeros(0)
    return np.asarray(booster.inplace_predict(matrix, predict_type="value"), dtype=np.float64)


# ---------------------------------------------------------------------------------------------- explanations


@dataclass
class Factor:
    """One input column's push on one score, in log-odds, with a sentence a salesperson understands."""

    feature: str  # the column's strongest encoded feature (e.g. ``contact=cellular``)
    column: str
    value: object  # the row's raw value (None when missing)
    contribution: float  # log-odds; positive raises the score
    text: str
    effect: float = 0.0  # about how much the calibrated probability would drop (or rise) without it


@dataclass
class Explanation:
    """Why a row got its score: base log-odds plus per-column contributions (largest up and down)."""

    score: float  # calibrated probability
    base: float  # log-odds every row starts from
    up: list[Factor]
    down: list[Factor]
    margin: float = 0.0  # base + every column's contribution = the booster's log-odds


def _plain(value: object) -> object:
    """A cell as a plain JSON-able value; None when missing."""
    if value is None:
        return None
    if isinstance(value, float | np.floating) and not math.isfinite(float(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    if value is pd.NaT or (not isinstance(value, str | bytes) and pd.api.types.is_scalar(value) and pd.isna(value)):
        return None
    item = getattr(value, "item", None)
    return item() if callable(item) else value


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:g}" if not value.is_integer() else str(int(value))
    return str(value)


def _sentence(spec: ColumnSpec, value: object, label: str, contribution: float, effect: float) -> str:
    verb = "raises" if contribution > 0 else "lowers"
    shown = f" (about {effect * 100:+.1f} points)" if abs(effect) >= 0.0005 else ""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"no value for {label} {verb} the score{shown}"
    if spec.kind == "numeric":
        if label != spec.name:
            return f"{_fmt(value)} {label} ({spec.name} = {_fmt(value)}) {verb} the score{shown}"
        return f"{spec.name} = {_fmt(value)} {verb} the score{shown}"
    if spec.kind == "text":
        words = len(str(value).split())
        return f"what {label} says ({words} word{'s' if words != 1 else ''}) {verb} the score{shown}"
    return f"{label}: {_fmt(value)} {verb} the score{shown}"


# -------------------------------------------------------------------------------------------------- model


class ScoringModel:
    """A trained scorer: encoder -> XGBoost booster -> calibrator, with its baselines, metadata and report."""

    def __init__(
        self,
        *,
        target: str,
        positive_label: str,
        negative_label: str,
        encoder: TabularEncoder,
        booster: Any,
        calibrator: Calibrator,
        baselines: dict[str, Any],
        meta: dict[str, Any],
        report: dict[str, Any] | None = None,
    ) -> None:
        self.target = target
        self.positive_label = positive_label
        self.negative_label = negative_label
        self.encoder = encoder
        self.booster = booster
        self.calibrator = calibrator
        self.baselines = baselines
        self.meta = meta
        self.report = report
        self.feature_names: list[str] = list(encoder.feature_names_)
        self.input_columns: list[str] = list(encoder.input_columns_)
        self.feature_labels: dict[str, str] = dict(meta.get("feature_labels") or {})

    def transform(self, frame: pd.DataFrame, *, warnings: list[str] | None = None) -> np.ndarray:
        """The float32 matrix in ``feature_names`` order (ModelSchemaError if columns are missing or changed)."""
        return self.encoder.transform(frame, warnings=warnings)

    def predict_raw(self, matrix: np.ndarray) -> np.ndarray:
        """The booster's uncalibrated probability per row."""
        return _raw_probability(self.booster, matrix)

    def calibrate(self, raw: np.ndarray) -> np.ndarray:
        """Calibrated probabilities from raw booster probabilities."""
        return self.calibrator(raw)

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        """Calibrated p(positive) per row of ``frame``, shape (n,)."""
        return self.calibrate(self.predict_raw(self.transform(frame)))

    def explain(self, frame: pd.DataFrame, *, top: int = 3) -> list[Explanation]:
        """Per row: score, base and the ``top`` columns that raise and lower it most (XGBoost SHAP values)."""
        import xgboost as xgb

        matrix = self.transform(frame)
        if matrix.shape[0] == 0:
            return []
        contribs = self.booster.predict(xgb.DMatrix(matrix, missing=np.nan), pred_contribs=True).astype(np.float64)
        groups = self.encoder.groups()
        assign = np.zeros((matrix.shape[1], len(groups)))
        for j, (_, idx) in enumerate(groups):
            assign[idx, j] = 1.0
        per_column = contribs[:, :-1] @ assign  # one-hot levels of a column add up to one factor
        base = contribs[:, -1]
        margin = base + per_column.sum(axis=1)
        score = self.calibrate(self.predict_raw(matrix))  # exactly what predict_proba says
        out = []
        for i in range(matrix.shape[0]):
            row = per_column[i]
            order = np.argsort(-row, kind="stable")
            ups = [j for j in order[:top] if row[j] > 1e-9]
            downs = [j for j in order[::-1][:top] if row[j] < -1e-9]
            without = self.calibrate(_sigmoid(margin[i] - row[ups + downs])) if ups or downs else np.zeros(0)
            effects = dict(zip(ups + downs, score[i] - without, strict=True))
            factors = {j: self._factor(frame, i, groups[j], contribs[i], row[j], effects[j]) for j in ups + downs}
            out.append(
                Explanation(
                    score=float(score[i]),
                    base=float(base[i]),
                    up=[factors[j] for j in ups],
                    down=[factors[j] for j in downs],
                    margin=float(margin[i]),
                )
            )
        return out

    def _factor(
        self,
        frame: pd.DataFrame,
        i: int,
        group: tuple[ColumnSpec, np.ndarray],
        contribs: np.ndarray,
        contribution: float,
        effect: float,
    ) -> Factor:
        spec, idx = group
        value = _plain(frame[spec.name].iloc[i])
        strongest = idx[int(np.argmax(np.abs(contribs[idx])))]
        label = self.feature_labels.get(spec.name, spec.name)
        return Factor(
            feature=self.feature_names[strongest],
            column=spec.name,
            value=value,
            contribution=float(contribution),
            text=_sentence(spec, value, label, contribution, float(effect)),
            effect=float(effect),
        )

    # -- persistence

    def save(self, directory: Path) -> None:
        """Write the model directory atomically: a temp directory beside it, renamed into place at the end."""
        directory = Path(directory)
        parent = directory.parent
        check_output_directory(directory)
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=parent))
        try:
            os.chmod(tmp, 0o755)
            self.booster.save_model(str(tmp / "model.json"))
            _write_json(tmp / "encoder.json", self.encoder.to_json())
            _write_json(tmp / "calibrator.json", asdict(self.calibrator))
            _write_json(tmp / "baselines.json", baselines_to_json(self.baselines))
            _write_json(tmp / "meta.json", self.meta)
            if self.report is not None:
                curves = self.report.get("calibration_curves")
                if curves and self.report.get("calibration_plot"):
                    title = f"{self.target} = {self.positive_label}: calibration on the held-out rows"
                    plot_calibration(curves, tmp / str(self.report["calibration_plot"]), title=title)
                _write_json(tmp / "report.json", self.report)
            if directory.exists():  # replace an older model: move it aside first so a crash keeps one of them
                old = parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
                directory.rename(old)
                tmp.rename(directory)
                shutil.rmtree(old, ignore_errors=True)
            else:
                tmp.rename(directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    @classmethod
    def load(cls, directory: Path) -> ScoringModel:
        """Read a model directory; ModelDirectoryError when it is missing, incomplete or corrupt."""
        import xgboost as xgb

        directory = Path(directory)
        if not directory.is_dir():
            raise ModelDirectoryError(f"no model directory at {directory} (train one with `leadpilot scoring fit`)")
        missing = [f for f in MODEL_FILES if not (directory / f).is_file()]
        if missing:
            raise ModelDirectoryError(f"{directory} is not a complete model directory: {', '.join(missing)} missing")
        current = ""
        try:
            current = "meta.json"
            meta = _read_json(directory / current)
            if meta.get("format") != FORMAT or int(meta.get("format_version", 0)) > FORMAT_VERSION:
                raise ValueError(f"format {meta.get('format')!r} version {meta.get('format_version')!r} is not known")
            current = "encoder.json"
            encoder = TabularEncoder.from_json(_read_json(directory / current))
            current = "calibrator.json"
            calibrator = Calibrator(**_read_json(directory / current))
            current = "baselines.json"
            baselines = baselines_from_json(_read_json(directory / current))
            current = "model.json"
            booster = xgb.Booster()
            booster.load_model(str(directory / current))
            booster.set_param({"nthread": int(meta.get("params", {}).get("nthread", 2))})
            current = "report.json"
            report = _read_json(directory / current) if (directory / current).is_file() else None
        except (ValueError, KeyError, TypeError, OSError, xgb.core.XGBoostError) as exc:
            raise ModelDirectoryError(f"model directory {directory} is corrupt ({current}: {exc})") from exc
        if _fingerprint(encoder) != meta.get("schema_fingerprint"):
            raise ModelDirectoryError(f"model directory {directory} is corrupt: encoder.json does not match meta.json")
        if booster.num_features() != len(encoder.feature_names_):
            raise ModelDirectoryError(
                f"model directory {directory} is corrupt: model.json has {booster.num_features()} features, "
                f"the encoder {len(encoder.feature_names_)}"
            )
        return cls(
            target=str(meta["target"]),
            positive_label=str(meta["positive_label"]),
            negative_label=str(meta["negative_label"]),
            encoder=encoder,
            booster=booster,
            calibrator=calibrator,
            baselines=baselines,
            meta=meta,
            report=report,
        )


def check_output_directory(directory: Path) -> None:
    """ModelDirectoryError unless ``directory`` is absent, empty or an older model (what ``save`` may replace)."""
    directory = Path(directory)
    if directory.exists() and not (
        directory.is_dir() and (not any(directory.iterdir()) or (directory / "meta.json").is_file())
    ):
        raise ModelDirectoryError(f"{directory} exists and is not a leadpilot model directory: choose another one")


def _json_default(value: object) -> object:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, datetime | pd.Timestamp):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, ensure_ascii=False, indent=2, allow_nan=False, default=_json_default) + "\n")


def _read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def _fingerprint(encoder: TabularEncoder) -> str:
    text = json.dumps(encoder.fingerprint_data(), ensure_ascii=False, sort_keys=True)
    return sha256(text.encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------ training


@dataclass
class FitResult:
    """A trained model, its report (held-out metrics beside the baselines, split, data range) and warnings."""

    model: ScoringModel
    report: dict[str, Any]
    warnings: list[str]


def _booster_params(params: dict[str, Any] | None, seed: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """XGBoost's own parameters, and ours (rounds, early stopping, refit)."""
    extra = dict(params or {})
    ours = {
        "num_boost_round": int(extra.pop("num_boost_round", extra.pop("n_estimators", DEFAULT_ROUNDS))),
        "early_stopping_rounds": int(extra.pop("early_stopping_rounds", DEFAULT_EARLY_STOPPING)),
        "refit": bool(extra.pop("refit", True)),
    }
    if "n_jobs" in extra:
        extra["nthread"] = extra.pop("n_jobs")
    if "eta" in extra:
        extra["learning_rate"] = extra.pop("eta")
    return {**DEFAULT_PARAMS, "seed": seed, **extra}, ours


def _train_booster(
    matrix: np.ndarray, y: np.ndarray, split: Split, params: dict[str, Any], ours: dict[str, Any]
) -> Any:
    """Early stopping on the validation slice picks how many trees; ``refit`` then grows them on fit + valid.

    The calibration and test rows stay unseen either way.
    """
    import xgboost as xgb

    fit = xgb.QuantileDMatrix(matrix[split.fit], label=y[split.fit], missing=np.nan, max_bin=params.get("max_bin"))
    valid = xgb.QuantileDMatrix(matrix[split.valid], label=y[split.valid], missing=np.nan, ref=fit)
    booster = xgb.train(
        params,
        fit,
        num_boost_round=ours["num_boost_round"],
        evals=[(valid, "valid")],
        early_stopping_rounds=ours["early_stopping_rounds"],
        verbose_eval=False,
    )
    trees = booster.best_iteration + 1
    if not ours["refit"]:
        return booster[:trees]  # keep only the trees early stopping chose
    del fit, valid
    rows = np.sort(np.concatenate([split.fit, split.valid]))
    both = xgb.QuantileDMatrix(matrix[rows], label=y[rows], missing=np.nan, max_bin=params.get("max_bin"))
    # More rows support proportionally more trees at the same learning rate.
    more = max(1, round(trees * len(rows) / len(split.fit)))
    return xgb.train(params, both, num_boost_round=more, verbose_eval=False)


def _time_values(series: pd.Series, name: str) -> pd.Series:
    """A time column as timestamps (or numbers, e.g. a year or epoch seconds), NaN/NaT where missing."""
    if ptypes.is_numeric_dtype(series) and not ptypes.is_bool_dtype(series):
        return pd.to_numeric(series, errors="coerce")
    times = parse_datetimes(series)
    present = series.notna().sum()
    if present and times.notna().sum() < 0.5 * present:
        examples = ", ".join(repr(v) for v in series[series.notna() & times.isna()].astype(str).unique()[:3])
        raise ScoringDataError(f"time column {name!r} does not hold dates ({examples}); give a date or time column")
    return times


def _column_importance(booster: Any, encoder: TabularEncoder, top: int = 15) -> list[dict[str, Any]]:
    gains = booster.get_score(importance_type="total_gain")
    total = sum(gains.values()) or 1.0
    rows = []
    for spec, idx in encoder.groups():
        gain = sum(gains.get(f"f{i}", 0.0) for i in idx)
        if gain > 0:
            rows.append({"column": spec.name, "kind": spec.kind, "gain_share": round(gain / total, 4)})
    return sorted(rows, key=lambda r: -r["gain_share"])[:top]


def _headline(metrics: dict[str, Any]) -> dict[str, Any]:
    """Metrics without the calibration curve (for meta.json and the registry)."""
    return {k: v for k, v in metrics.items() if k != "calibration"}


@dataclass
class _Prepared:
    """The rows, labels, split, fitted encoder and matrix that training and the leakage check share."""

    labels: Labels
    y: np.ndarray
    rows: np.ndarray
    times: pd.Series | None
    split: Split
    encoder: TabularEncoder
    matrix: np.ndarray
    left_out: list[str]
    warnings: list[str]
    notes: list[str]
    leakage: list[LeakageFinding]


def _prepare(
    frame: pd.DataFrame,
    *,
    target: str,
    time_col: str | None,
    id_col: str | None,
    drop: Sequence[str],
    positive: str | None,
    seed: int,
    say: Callable[[str], None],
) -> _Prepared:
    if frame is None or frame.shape[0] == 0 or frame.shape[1] == 0:
        raise EmptyDataError("the data has no rows" if frame is None or frame.shape[1] else "the data has no columns")
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    columns = list(frame.columns)
    if target not in columns:
        raise column_error(target, columns, "target")
    for name, what in [(time_col, "time"), (id_col, "id"), *((d, "--drop") for d in drop)]:
        if name is not None and name not in columns:
            raise column_error(name, columns, what)
    if time_col == target or id_col == target or target in drop:
        raise ScoringDataError(f"{target!r} is the target: it cannot also be the time, id or a dropped column")

    labels = parse_labels(frame[target], target=target, positive=positive)
    warnings: list[str] = []
    notes: list[str] = [f"positive class: {labels.positive!r} ({labels.how}); the other: {labels.negative!r}"]
    keep = labels.labelled.copy()
    if not keep.all():
        unlabelled = frame.index[~keep]
        warnings.append(
            f"{len(unlabelled):,} rows have no {target} value ({row_refs(unlabelled, frame.attrs)}): left out"
        )
    y_all = np.full(len(frame), -1, dtype=np.int8)
    y_all[keep] = labels.y
    times: pd.Series | None = None
    if time_col is not None:
        times = _time_values(frame[time_col], time_col)
        no_time = times.isna().to_numpy() & keep
        if no_time.any():
            warnings.append(
                f"{int(no_time.sum()):,} rows have no {time_col} value "
                f"({row_refs(frame.index[no_time], frame.attrs)}): left out, the split is by time"
            )
            keep &= ~no_time
    rows = np.flatnonzero(keep)
    y = y_all[rows].astype(np.int8)
    split = split_rows(y, times=None if times is None else times.to_numpy()[rows], seed=seed)
    left_out = list(dict.fromkeys([target, *([id_col] if id_col else []), *drop]))
    # Every row kept (the usual case): no copy of what may be a wide feature-store frame.
    features = (frame if len(rows) == len(frame) else frame.iloc[rows]).drop(columns=left_out)
    if id_col:
        notes.append(f"column {id_col!r} left out: the id column")
    notes += [f"column {c!r} left out: --drop" for c in drop]

    say(f"inferring the types of {features.shape[1]:,} columns")
    encoder = TabularEncoder(time_col=time_col).fit(features.iloc[split.train])
    for column, why in encoder.dropped_.items():
        if why.startswith("empty"):
            warnings.append(f"column {column!r} is empty (no values in the training rows): dropped")
        else:
            notes.append(f"column {column!r} left out: {why}")
    if not encoder.feature_names_:
        why = "; ".join(f"{c!r}: {w}" for c, w in list(encoder.dropped_.items())[:10]) or "no other columns"
        raise NoFeaturesError(f"no column is left to learn from ({why})")
    matrix = encoder.transform(features, warnings=warnings)

    say("checking for leakage")
    leakage = find_leakage(
        encoder,
        matrix[split.train],
        y[split.train],
        target=target,
        positive=labels.positive,
        negative=labels.negative,
        seed=seed,
    )
    warnings += [finding.message for finding in leakage]
    return _Prepared(labels, y, rows, times, split, encoder, matrix, left_out, warnings, notes, leakage)


def check_leakage(
    frame: pd.DataFrame,
    *,
    target: str,
    time_col: str | None = None,
    id_col: str | None = None,
    drop: Sequence[str] = (),
    positive: str | None = None,
    seed: int = 0,
) -> list[LeakageFinding]:
    """Only the leakage checks ``fit_model`` runs (same split and encoder), without training anything."""
    return _prepare(
        frame,
        target=target,
        time_col=time_col,
        id_col=id_col,
        drop=drop,
        positive=positive,
        seed=seed,
        say=lambda _message: None,
    ).leakage


def fit_model(
    frame: pd.DataFrame,
    *,
    target: str,
    time_col: str | None = None,
    id_col: str | None = None,
    drop: Sequence[str] = (),
    positive: str | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    feature_labels: dict[str, str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """Train, calibrate and evaluate a scoring model on any table (see the module docstring for the steps).

    ScoringDataError subclasses say what is wrong with the input; leakage and data problems that do not
    stop training are returned as ``warnings`` (and kept in the report and meta).
    """
    say = progress or (lambda _message: None)
    started = time.perf_counter()
    prep = _prepare(
        frame, target=target, time_col=time_col, id_col=id_col, drop=drop, positive=positive, seed=seed, say=say
    )
    labels, y, rows, times, split, encoder, matrix = (
        prep.labels,
        prep.y,
        prep.rows,
        prep.times,
        prep.split,
        prep.encoder,
        prep.matrix,
    )
    left_out, warnings, notes, leakage = prep.left_out, prep.warnings, prep.notes, prep.leakage

    booster_params, ours = _booster_params(params, seed)
    say(f"training XGBoost: {len(split.fit):,} rows × {matrix.shape[1]:,} features, {len(split.valid):,} to stop early")
    booster = _train_booster(matrix, y, split, booster_params, ours)

    say(f"calibrating on {len(split.calibration):,} rows")
    calibrator = Calibrator.fit(_raw_probability(booster, matrix[split.calibration]), y[split.calibration], seed=seed)

    say("fitting the baselines")
    baselines = fit_baselines(matrix[split.train], y[split.train], encoder, seed=seed)

    say(f"evaluating on {len(split.test):,} held-out rows")
    test_x, test_y = matrix[split.test], y[split.test]
    raw_test = _raw_probability(booster, test_x)
    probs = calibrator(raw_test)
    metrics = binary_metrics(test_y, probs)
    raw_metrics = binary_metrics(test_y, raw_test)
    baseline_metrics = {name: binary_metrics(test_y, b.predict_proba(test_x)) for name, b in baselines.items()}

    data_range: dict[str, Any] = {"rows": len(rows), "n_train": len(split.train), "n_test": len(split.test)}
    if times is not None:
        kept_times = times.iloc[rows]
        data_range |= {
            "time_col": time_col,
            "from": kept_times.min(),
            "to": kept_times.max(),
            "train_to": kept_times.iloc[split.train].max(),
            "test_from": kept_times.iloc[split.test].min(),
        }
    split_info = split.describe() | {"seed": seed, "test_share": 0.2}
    if times is not None:
        split_info["time_col"] = time_col
    params_out = booster_params | ours | {"trees": int(booster.num_boosted_rounds())}
    calibration_info = {
        "method": calibrator.method,
        "rows": calibrator.rows,
        "cv_log_loss": calibrator.cv,
        "test_brier_raw": raw_metrics["brier"],
        "test_brier_calibrated": metrics["brier"],
        "test_log_loss_raw": raw_metrics["log_loss"],
        "test_log_loss_calibrated": metrics["log_loss"],
    }
    meta = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "schema_fingerprint": _fingerprint(encoder),
        "target": target,
        "positive_label": labels.positive,
        "negative_label": labels.negative,
        "input_columns": encoder.input_columns_,
        "column_kinds": {s.name: s.kind for s in encoder.columns_},
        "feature_names": encoder.feature_names_,
        "feature_labels": dict(feature_labels or {}),
        "time_col": time_col,
        "id_col": id_col,
        "dropped_columns": {**{c: "dropped by the caller" for c in left_out[1:]}, **encoder.dropped_},
        "data_range": data_range,
        "n_train": len(split.train),
        "n_test": len(split.test),
        "split": split_info,
        "params": params_out,
        "calibration": calibration_info,
        "metrics": _headline(metrics),
        "baseline_metrics": {name: _headline(m) for name, m in baseline_metrics.items()},
        "warnings": warnings,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "leadpilot_version": __version__,
        "xgboost_version": _xgboost_version(),
    }
    meta = json.loads(json.dumps(meta, default=_json_default))  # plain JSON types (timestamps as ISO text)
    report = {
        "target": target,
        "positive_label": labels.positive,
        "negative_label": labels.negative,
        "split": split_info,
        "data_range": meta["data_range"],
        "metrics": metrics,
        "baselines": baseline_metrics,
        "uncalibrated": _headline(raw_metrics),
        "calibration": calibration_info,
        "calibration_curves": {
            "model": metrics["calibration"],
            "naive Bayes": baseline_metrics["naive_bayes"]["calibration"],
            "logistic regression": baseline_metrics["logistic_regression"]["calibration"],
        },
        "calibration_plot": PLOT_FILE,  # drawn from calibration_curves when the model is saved
        "columns": encoder.describe(),
        "top_columns": _column_importance(booster, encoder),
        "leakage": [asdict(f) for f in leakage],
        "warnings": warnings,
        "notes": notes,
        "params": params_out,
        "features": len(encoder.feature_names_),
        "fit_seconds": round(time.perf_counter() - started, 2),
    }
    model = ScoringModel(
        target=target,
        positive_label=labels.positive,
        negative_label=labels.negative,
        encoder=encoder,
        booster=booster,
        calibrator=calibrator,
        baselines=baselines,
        meta=meta,
        report=report,
    )
    return FitResult(model=model, report=report, warnings=warnings)


def _xgboost_version() -> str:
    import xgboost as xgb

    return str(xgb.__version__)


def evaluate_model(model: ScoringModel, frame: pd.DataFrame, *, target: str) -> dict[str, Any]:
    """The model and its saved baselines measured on every labelled row of ``frame`` (same metrics as at fit)."""
    if frame is None or frame.shape[0] == 0:
        raise EmptyDataError("the data has no rows")
    if not all(isinstance(c, str) for c in frame.columns):
        frame = frame.rename(columns=str)
    if target not in frame.columns:
        raise column_error(target, frame.columns, "target")
    if target in model.input_columns:
        raise ScoringDataError(f"{target!r} is one of the model's input columns, not its target ({model.target!r})")
    y, labelled = map_labels(frame[target], target=target, positive=model.positive_label, negative=model.negative_label)
    warnings: list[str] = []
    if not labelled.all():
        warnings.append(f"{int((~labelled).sum()):,} rows have no {target} value: left out")
    data = frame.iloc[np.flatnonzero(labelled)]
    if data.shape[0] == 0:
        raise EmptyDataError(f"no row has a {target} value")
    matrix = model.transform(data, warnings=warnings)
    result = binary_metrics(y, model.calibrate(model.predict_raw(matrix)))
    result["baselines"] = {name: binary_metrics(y, b.predict_proba(matrix)) for name, b in model.baselines.items()}
    result["warnings"] = warnings
    result["positive_label"] = model.positive_label
    result["fit_metrics"] = {k: (model.meta.get("metrics") or {}).get(k) for k in ("auc", "pr_auc", "brier")}
    return result
