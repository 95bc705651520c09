"""Any tabular data to a numeric matrix: CSV reading, type inference, labels, leakage checks, splits, the encoder."""

from __future__ import annotations

import csv
import difflib
import io
import re
import shlex
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np
import pandas as pd
from pandas.api import types as ptypes

from leadpilot.crm.errors import Invalid
from leadpilot.intake.reader import detect_encoding

# ---------------------------------------------------------------------------------------------------- errors


class ScoringDataError(ValueError):
    """Input the scoring pipeline cannot use; the message says what is wrong and how to fix it."""


class TableReadError(ScoringDataError):
    """The file is missing or cannot be read as a table."""


class EmptyDataError(ScoringDataError):
    """The table has no data rows (or no usable columns)."""


class ColumnNotFoundError(ScoringDataError):
    """A named column (time, id, drop) is not in the table."""


class TargetNotFoundError(ColumnNotFoundError):
    """The target column is not in the table."""


class SingleClassTargetError(ScoringDataError):
    """The target has only one value: there is nothing to learn."""


class MultiClassTargetError(ScoringDataError):
    """The target has more than two values."""


class PositiveLabelError(ScoringDataError):
    """``--positive`` names a value the target does not have."""


class UnknownLabelError(ScoringDataError):
    """At evaluation, the target has values the model was not trained on."""


class TooFewRowsError(ScoringDataError):
    """Not enough rows of each class to train and evaluate honestly."""


class NoFeaturesError(ScoringDataError):
    """No column is left to learn from."""


class ModelSchemaError(ScoringDataError):
    """The data does not have the columns (or column types) the model was trained on."""


class ModelDirectoryError(ScoringDataError):
    """A model directory is missing, incomplete or corrupt."""


def column_error(name: str, columns: Iterable[object], what: str = "column") -> ColumnNotFoundError:
    """A ColumnNotFoundError (TargetNotFoundError for the target) naming close matches."""
    names = [str(c) for c in columns]
    close = [c for c in names if c.strip().lower() == name.strip().lower() and c != name]
    close += [c for c in difflib.get_close_matches(name, names, n=3, cutoff=0.6) if c not in close]
    hint = f"; did you mean {', '.join(repr(c) for c in close[:3])}?" if close else ""
    shown = ", ".join(repr(c) for c in names[:20]) + (f" and {len(names) - 20} more" if len(names) > 20 else "")
    cls = TargetNotFoundError if what == "target" else ColumnNotFoundError
    return cls(f"{what} column {name!r} is not in the data{hint} (columns: {shown})")


# --------------------------------------------------------------------------------------------------- reading

DELIMITERS = ",;\t|"
MISSING_TOKENS = frozenset({"", "na", "n/a", "nan", "null", "none", "#n/a", "<na>", "nat"})


def detect_delimiter(sample: str) -> str:
    """The delimiter among , ; tab | that splits the sample's lines (quotes respected) into the most equal rows."""
    lines = sample.splitlines()
    if len(lines) > 1:
        lines = lines[:-1]  # the last line of a sample may be cut in the middle
    text = "\n".join(lines[:200])
    best, best_score = ",", (-1.0, 0)
    for delim in DELIMITERS:
        try:
            rows = [r for r in csv.reader(io.StringIO(text), delimiter=delim) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        score = (sum(1 for r in rows if len(r) == width) / len(rows), width)
        if score > best_score:
            best, best_score = delim, score
    return best


def read_table(path: Path) -> pd.DataFrame:
    """Read a CSV (delimiter , ; tab or |, encoding UTF-8, UTF-8-BOM or GBK, all detected) into a DataFrame."""
    path = Path(path)
    if not path.is_file():
        raise TableReadError(f"file {path} does not exist")
    raw = path.read_bytes()
    if not raw.strip():
        raise EmptyDataError(f"{path} is empty")
    try:
        text = raw.decode(detect_encoding(raw))
    except Invalid as exc:
        raise TableReadError(f"{path}: {exc.message}") from exc
    text = text.lstrip("\ufeff")
    delimiter = detect_delimiter(text[:65_536])
    try:
        frame = pd.read_csv(io.StringIO(text), sep=delimiter, low_memory=False, skipinitialspace=True)
    except (pd.errors.ParserError, csv.Error, ValueError) as exc:
        raise TableReadError(f"cannot read {path} as a table (delimiter {delimiter!r}): {exc}") from exc
    frame.columns = [str(c).strip() for c in frame.columns]
    if frame.empty:
        raise EmptyDataError(f"{path} has a header but no data rows")
    frame.attrs["leadpilot_rows"] = "csv"  # messages then name file lines, not index labels
    frame.attrs["leadpilot_source"] = str(path)
    return frame


def row_refs(index: pd.Index, attrs: dict[str, Any], limit: int = 5) -> str:
    """Where some rows are, for a message: file lines for a CSV from read_table, index labels otherwise."""
    shown = list(index[:limit])
    if attrs.get("leadpilot_rows") == "csv":
        return "line " + ", ".join(str(int(i) + 2) for i in shown)
    return "row index " + ", ".join(str(i) for i in shown)


# ----------------------------------------------------------------------------------------------- parsing


def clean_strings(series: pd.Series) -> pd.Series:
    """Values as stripped strings, with NaN for missing and for the usual missing markers (NA, null, ...).

    Whole numbers print without ``.0`` (a column of codes read as floats because of a gap still says ``7``).
    """
    if ptypes.is_bool_dtype(series):
        return series.map({True: "true", False: "false"}).astype(str).where(series.notna())
    if _plain_numeric(series.dtype):
        num = pd.to_numeric(series, errors="coerce").astype(float)
        text = num.astype(str)
        whole = (num.notna() & (num == np.round(num)) & (num.abs() < 2**53)).to_numpy()
        text[whole] = num[whole].astype("int64").astype(str)
        return text.where(num.notna())
    s = series.astype(str).str.strip()
    s = s.where(~series.isna().to_numpy())
    return s.where(~s.str.lower().isin(MISSING_TOKENS))


_THOUSANDS = r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$"
_DECIMAL_COMMA = r"^[+-]?\d*,\d+$"
_CURRENCY = r"^([+-]?)[¥$€£]"


def parse_numbers(strings: pd.Series) -> pd.Series:
    """Numbers from cleaned strings (``1,234.5``, ``1 234``, ``3,5``, ``¥12``); NaN where missing or not a number."""
    direct = pd.to_numeric(strings, errors="coerce")
    todo = direct.isna() & strings.notna()
    if not todo.any():
        return direct.astype(float)
    t = strings[todo].str.replace(r"[\s\u00a0]", "", regex=True).str.replace(_CURRENCY, r"\1", regex=True)
    thousands = t.str.match(_THOUSANDS).fillna(False).astype(bool)
    t = t.where(~thousands, t.str.replace(",", "", regex=False))
    decimal = t.str.match(_DECIMAL_COMMA).fillna(False).astype(bool)
    t = t.where(~decimal, t.str.replace(",", ".", regex=False))
    out = direct.astype(float).copy()
    out[todo] = pd.to_numeric(t, errors="coerce").astype(float)
    return out


_DATE_LIKE = r"^\d{4}[-/.年]\d{1,2}|^\d{1,2}[-/.]\d{1,2}[-/.]\d{2,4}"


def parse_datetimes(values: pd.Series) -> pd.Series:
    """Timestamps (naive, UTC) from a datetime column or strings (ISO, 2024/3/5, 2024年3月5日 ...); NaT if not."""
    if ptypes.is_datetime64_any_dtype(values):
        out = pd.to_datetime(values, utc=True)
    else:
        s = clean_strings(values)
        s = s.str.replace(r"(\d{4})年(\d{1,2})月(\d{1,2})日?", r"\1-\2-\3", regex=True)
        out = pd.to_datetime(s, errors="coerce", format="ISO8601", utc=True)
        rest = out.isna() & s.notna()
        if rest.any():
            out = out.copy()
            out[rest] = pd.to_datetime(s[rest], errors="coerce", format="mixed", utc=True)
    return out.dt.tz_convert(None)


# Pairs of words a two-valued column uses for true / false.
BOOLEAN_PAIRS = (
    ("yes", "no"),
    ("y", "n"),
    ("true", "false"),
    ("t", "f"),
    ("1", "0"),
    ("是", "否"),
    ("有", "无"),
    ("on", "off"),
)
TRUE_WORDS = frozenset(p[0] for p in BOOLEAN_PAIRS) | {"1.0"}
FALSE_WORDS = frozenset(p[1] for p in BOOLEAN_PAIRS) | {"0.0"}
# Target values that obviously mean "the good outcome" / "the other one".
POSITIVE_LABELS = frozenset({"yes", "y", "1", "1.0", "true", "t", "won", "win", "success", "converted", "是", "成交"})
NEGATIVE_LABELS = frozenset({"no", "n", "0", "0.0", "false", "f", "lost", "lose", "failure", "否", "未成交"})


@dataclass
class Labels:
    """A parsed target: 1 for the positive label, 0 for the other, and which rows had no label."""

    y: np.ndarray  # int8, one per labelled row
    labelled: np.ndarray  # bool mask over the input rows
    positive: str
    negative: str
    how: str  # why this label is the positive one


def parse_labels(series: pd.Series, *, target: str, positive: str | None = None) -> Labels:
    """A two-valued target as 0/1; positive: ``positive``, else an obvious one (yes, 1, won, 是...), else the rarer."""
    s = clean_strings(series)
    labelled = s.notna().to_numpy()
    counts = s[labelled].value_counts()
    if len(counts) == 0:
        raise SingleClassTargetError(f"target {target!r} has no values")
    if len(counts) == 1:
        raise SingleClassTargetError(
            f"target {target!r} has only one value ({counts.index[0]!r} in all {int(counts.iloc[0]):,} labelled "
            "rows): a model needs examples of both outcomes"
        )
    if len(counts) > 2:
        shown = ", ".join(f"{v!r}: {int(n):,}" for v, n in counts.head(8).items())
        more = f" and {len(counts) - 8} more" if len(counts) > 8 else ""
        raise MultiClassTargetError(
            f"target {target!r} has {len(counts)} values ({shown}{more}); scoring needs exactly two: "
            "map them to two first (for example won vs everything else)"
        )
    a, b = (str(v) for v in counts.index)  # a is the more frequent
    if positive is not None:
        wanted = [v for v in (a, b) if v == positive] or [v for v in (a, b) if v.lower() == positive.strip().lower()]
        if not wanted:
            raise PositiveLabelError(f"--positive {positive!r} is not a value of {target!r} (values: {a!r}, {b!r})")
        pos, how = wanted[0], "given"
    elif (a.lower() in POSITIVE_LABELS) != (b.lower() in POSITIVE_LABELS):
        pos, how = (a if a.lower() in POSITIVE_LABELS else b), "the usual positive word"
    elif (a.lower() in NEGATIVE_LABELS) != (b.lower() in NEGATIVE_LABELS):
        pos, how = (b if a.lower() in NEGATIVE_LABELS else a), "the other value is the usual negative word"
    else:
        pos, how = (b if counts.iloc[1] < counts.iloc[0] else max(a, b)), "the rarer value"
    neg = b if pos == a else a
    y = (s[labelled] == pos).to_numpy().astype(np.int8)
    return Labels(y=y, labelled=labelled, positive=pos, negative=neg, how=how)


def map_labels(series: pd.Series, *, target: str, positive: str, negative: str) -> tuple[np.ndarray, np.ndarray]:
    """A model's own labels in new data: (0/1 per labelled row, labelled mask); other values are an error."""
    s = clean_strings(series)
    labelled = s.notna().to_numpy()
    values = s[labelled]
    low = values.str.lower()
    is_pos = (values == positive) | (low == positive.lower())
    is_neg = (values == negative) | (low == negative.lower())
    unknown = values[~(is_pos | is_neg)]
    if len(unknown):
        shown = ", ".join(repr(v) for v in unknown.unique()[:5])
        raise UnknownLabelError(
            f"target {target!r} has values the model does not know: {shown} ({len(unknown):,} rows); the model "
            f"was trained on {positive!r} (positive) and {negative!r}"
        )
    return is_pos.to_numpy().astype(np.int8), labelled


# ----------------------------------------------------------------------------------------------- encoder

KINDS = ("numeric", "boolean", "categorical", "datetime", "text")
_ID_WORDS = frozenset({"id", "uuid", "guid", "key", "编号", "序号", "no"})
_TOKEN = r"[\u4e00-\u9fff]|[^\W\u4e00-\u9fff_]+"  # a CJK character, or a run of other letters/digits


def name_tokens(name: str) -> list[str]:
    """A column name's words, lower-cased (snake_case, camelCase, dots and spaces split)."""
    return [t.lower() for t in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", name)]


@dataclass
class ColumnSpec:
    """What the encoder learned about one input column and the features it makes of it."""

    name: str
    kind: str
    features: list[str]
    levels: list[str] = field(default_factory=list)  # categorical: one-hot levels
    other: bool = False  # categorical: a `col=(other)` feature for rare and unseen levels
    missing: bool = False  # categorical: a `col=(missing)` feature
    frequencies: dict[str, float] = field(default_factory=dict)  # categorical with many levels: `col:freq`
    true_value: str = ""  # boolean: the (lower-cased) word for 1
    false_value: str = ""
    reference: str = ""  # datetime: `col:age_days` counts days back from this timestamp
    parts: list[str] = field(default_factory=list)  # datetime: which parts become features
    buckets: int = 0  # text: hashed token buckets


class TabularEncoder:
    """Turns a DataFrame of mixed columns into a float32 matrix with readable feature names (fit / transform).

    Learned attributes: ``columns_`` (one ColumnSpec per kept input column), ``feature_names_``,
    ``input_columns_``, ``dropped_`` (column -> why it was left out) and ``notes_``.
    """

    def __init__(
        self,
        *,
        max_levels: int = 30,
        min_level_count: int = 5,
        text_buckets: int = 8,
        numeric_share: float = 0.8,
        time_col: str | None = None,
    ) -> None:
        self.max_levels = max_levels
        self.min_level_count = min_level_count
        self.text_buckets = text_buckets
        self.numeric_share = numeric_share
        self.time_col = time_col

    # -- fitting

    def fit(self, frame: pd.DataFrame, y: object = None) -> Self:
        """Infer each column's type and learn its levels, references and feature names from ``frame``."""
        n = len(frame)
        if n == 0:
            raise EmptyDataError("no rows to learn the columns from")
        specs: dict[str, ColumnSpec] = {}
        dropped: dict[str, str] = {}
        columns = [str(c) for c in frame.columns]
        numeric = [c for c, t in zip(columns, frame.dtypes, strict=True) if _plain_numeric(t)]
        if numeric:
            self._fit_numeric_block(frame, numeric, specs, dropped)
        for name in columns:
            if name in specs or name in dropped:
                continue
            spec, why = self._infer(name, frame[name], n)
            if spec is None:
                dropped[name] = why
            else:
                specs[name] = spec
        self.columns_ = [specs[c] for c in columns if c in specs]
        self.dropped_ = {c: dropped[c] for c in columns if c in dropped}
        names = [f for spec in self.columns_ for f in spec.features]
        if len(set(names)) != len(names):
            names = _dedupe(names)
            offset = 0
            for spec in self.columns_:
                spec.features = names[offset : offset + len(spec.features)]
                offset += len(spec.features)
        self.feature_names_ = names
        self.input_columns_ = [spec.name for spec in self.columns_]
        self.notes_ = [f"column {c!r} left out: {why}" for c, why in self.dropped_.items()]
        return self

    def _fit_numeric_block(
        self, frame: pd.DataFrame, names: list[str], specs: dict[str, ColumnSpec], dropped: dict[str, str]
    ) -> None:
        # One vectorised pass over every numeric column (feature-store frames have thousands of them).
        block = frame[names].to_numpy(dtype=np.float32, na_value=np.nan)
        present = np.isfinite(block)
        count = present.sum(axis=0)
        low = np.min(block, axis=0, initial=np.inf, where=present)
        high = np.max(block, axis=0, initial=-np.inf, where=present)
        n = block.shape[0]
        for j, name in enumerate(names):
            if count[j] == 0:
                dropped[name] = "empty (no values)"
            elif count[j] == n and low[j] == high[j]:
                dropped[name] = f"the same value ({low[j]:g}) in every row"
            elif name == self.time_col:
                dropped[name] = "the time column is used for the split only (a number, not a date)"
            elif ptypes.is_integer_dtype(frame[name].dtype) and n >= 20 and self._id_like_numbers(name, frame[name]):
                dropped[name] = "an id (a different whole number in every row)"
            else:
                specs[name] = ColumnSpec(name, "numeric", [name])

    @staticmethod
    def _id_like_numbers(name: str, series: pd.Series) -> bool:
        if not series.is_unique:
            return False
        return bool(set(name_tokens(name)) & _ID_WORDS) or series.is_monotonic_increasing

    def _infer(self, name: str, series: pd.Series, n: int) -> tuple[ColumnSpec | None, str]:
        if name == self.time_col or ptypes.is_datetime64_any_dtype(series):
            return self._datetime_spec(name, parse_datetimes(series))
        if ptypes.is_bool_dtype(series):
            if series.nunique(dropna=True) < 2 and series.notna().all():
                return None, "the same value in every row"
            return ColumnSpec(name, "boolean", [name], true_value="true", false_value="false"), ""
        s = clean_strings(series)
        values = s[s.notna()]
        k = len(values)
        if k == 0:
            return None, "empty (no values)"
        counts = values.value_counts()
        if len(counts) == 1 and k == n:
            return None, f"the same value ({counts.index[0]!r}) in every row"
        if len(counts) <= 2:
            low = {str(v).lower() for v in counts.index}
            for true, false in BOOLEAN_PAIRS:
                if low <= {true, false}:
                    return ColumnSpec(name, "boolean", [name], true_value=true, false_value=false), ""
        numbers = parse_numbers(values)
        if numbers.notna().mean() >= self.numeric_share:
            if numbers.nunique() < 2 and numbers.notna().all() and k == n:
                return None, "the same value in every row"
            return ColumnSpec(name, "numeric", [name]), ""
        sample = values.iloc[:1000]
        if sample.str.match(_DATE_LIKE).mean() >= 0.95 and parse_datetimes(sample).notna().mean() >= 0.95:
            return self._datetime_spec(name, parse_datetimes(s))
        lengths = values.str.len()
        words = values.str.count(r"\S+")
        ratio = len(counts) / k
        if len(counts) > self.max_levels and ratio > 0.2 and (lengths.mean() >= 20 or words.mean() >= 4):
            return self._text_spec(name), ""
        if len(counts) == k and k >= 0.9 * n and n >= 20:
            return None, "an id (a different value in every row)"
        return self._categorical_spec(name, counts, has_missing=k < n), ""

    def _categorical_spec(self, name: str, counts: pd.Series, *, has_missing: bool) -> ColumnSpec:
        # Most frequent first, ties by the level's text, so the same data always gives the same features.
        ordered = sorted(((int(c), str(v)) for v, c in counts.items()), key=lambda t: (-t[0], t[1]))
        levels = [v for c, v in ordered[: self.max_levels] if c >= self.min_level_count]
        if not levels:
            levels = [ordered[0][1]]
        other = len(ordered) > len(levels)
        features = [f"{name}={v}" for v in levels]
        features += [f"{name}=(other)"] if other else []
        features += [f"{name}=(missing)"] if has_missing else []
        frequencies: dict[str, float] = {}
        if len(ordered) > len(levels) + 1:  # several rare levels: how common a level is says something
            total = sum(c for c, _ in ordered)
            frequencies = {v: c / total for c, v in ordered[:5000]}
            features.append(f"{name}:freq")
        return ColumnSpec(
            name, "categorical", features, levels=levels, other=other, missing=has_missing, frequencies=frequencies
        )

    def _datetime_spec(self, name: str, times: pd.Series) -> tuple[ColumnSpec | None, str]:
        present = times.dropna()
        if present.empty:
            return None, "empty (no dates)"
        parts = [] if name == self.time_col else ["age_days"]
        parts += ["month", "dow"]
        if ((present.dt.hour != 0) | (present.dt.minute != 0)).any():
            parts.append("hour")
        return ColumnSpec(
            name,
            "datetime",
            [f"{name}:{p}" for p in parts],
            reference=present.max().isoformat(),
            parts=parts,
        ), ""

    def _text_spec(self, name: str) -> ColumnSpec:
        b = self.text_buckets
        return ColumnSpec(
            name, "text", [f"{name}:len", f"{name}:tokens"] + [f"{name}:hash{i}" for i in range(b)], buckets=b
        )

    # -- transforming

    def transform(self, frame: pd.DataFrame, *, warnings: list[str] | None = None) -> np.ndarray:
        """The float32 matrix (rows of ``frame``, columns ``feature_names_``); NaN where a value is missing.

        Values that should be numbers but are not become missing; ``warnings`` (if given) gets one line per
        column with the count and the first rows.
        """
        self.check_schema(frame)
        n = len(frame)
        out = np.zeros((n, len(self.feature_names_)), dtype=np.float32)
        offset = 0
        block_names: list[str] = []
        block_pos: list[int] = []
        for spec in self.columns_:
            width = len(spec.features)
            series = frame[spec.name]
            if spec.kind == "numeric" and _plain_numeric(series.dtype):
                block_names.append(spec.name)
                block_pos.append(offset)
            else:
                out[:, offset : offset + width] = self._transform_column(spec, series, frame.attrs, warnings)
            offset += width
        if block_names:
            block = frame[block_names].to_numpy(dtype=np.float32, na_value=np.nan)
            block = np.where(np.isinf(block), np.float32(np.nan), block)
            out[:, block_pos] = block
        return out

    def fit_transform(self, frame: pd.DataFrame, y: object = None, *, warnings: list[str] | None = None) -> np.ndarray:
        return self.fit(frame, y).transform(frame, warnings=warnings)

    def _transform_column(
        self, spec: ColumnSpec, series: pd.Series, attrs: dict[str, Any], warnings: list[str] | None
    ) -> np.ndarray:
        n = len(series)
        if spec.kind == "numeric":
            s = clean_strings(series)
            values = parse_numbers(s)
            bad = s.notna() & values.isna()
            if bad.any() and warnings is not None:
                examples = ", ".join(repr(v) for v in s[bad].unique()[:3])
                warnings.append(
                    f"column {spec.name!r}: {int(bad.sum()):,} values are not numbers ({examples}; "
                    f"{row_refs(series.index[bad.to_numpy()], attrs)}), treated as missing"
                )
            col = np.array(values.to_numpy(dtype=np.float64), copy=True)  # pandas may hand out a read-only view
            col[np.isinf(col)] = np.nan
            return col.astype(np.float32).reshape(n, 1)
        if spec.kind == "boolean":
            return self._boolean(spec, series).reshape(n, 1)
        if spec.kind == "categorical":
            return self._categorical(spec, series)
        if spec.kind == "datetime":
            return self._datetime(spec, series)
        return self._text(spec, series)

    @staticmethod
    def _boolean(spec: ColumnSpec, series: pd.Series) -> np.ndarray:
        if ptypes.is_bool_dtype(series) and not series.isna().any():
            return series.to_numpy(dtype=np.float32)
        if _plain_numeric(series.dtype):
            v = series.to_numpy(dtype=np.float32, na_value=np.nan)
            return np.where((v == 0) | (v == 1), v, np.nan).astype(np.float32)
        low = clean_strings(series).str.lower()
        ones = low.isin(TRUE_WORDS | {spec.true_value}).to_numpy()
        zeros = low.isin(FALSE_WORDS | {spec.false_value}).to_numpy()
        return np.where(ones, 1.0, np.where(zeros, 0.0, np.nan)).astype(np.float32)

    @staticmethod
    def _categorical(spec: ColumnSpec, series: pd.Series) -> np.ndarray:
        n = len(series)
        out = np.zeros((n, len(spec.features)), dtype=np.float32)
        s = clean_strings(series)
        codes = pd.Index(spec.levels).get_indexer(s)  # -1: missing, rare or unseen
        rows = np.flatnonzero(codes >= 0)
        out[rows, codes[rows]] = 1.0
        missing = s.isna().to_numpy()
        j = len(spec.levels)
        if spec.other:
            out[(codes < 0) & ~missing, j] = 1.0
            j += 1
        if spec.missing:
            out[missing, j] = 1.0
            j += 1
        if spec.frequencies:
            out[:, j] = s.map(spec.frequencies).fillna(0.0).to_numpy(dtype=np.float32)
            out[missing, j] = np.nan
        return out

    @staticmethod
    def _datetime(spec: ColumnSpec, series: pd.Series) -> np.ndarray:
        times = parse_datetimes(series)
        cols: list[np.ndarray] = []
        for part in spec.parts:
            if part == "age_days":
                v = (pd.Timestamp(spec.reference) - times) / pd.Timedelta(days=1)
            elif part == "month":
                v = times.dt.month
            elif part == "dow":
                v = times.dt.day_of_week
            else:
                v = times.dt.hour + times.dt.minute / 60
            cols.append(v.to_numpy(dtype=np.float32, na_value=np.nan))
        return np.column_stack(cols)

    @staticmethod
    def _text(spec: ColumnSpec, series: pd.Series) -> np.ndarray:
        n = len(series)
        out = np.zeros((n, len(spec.features)), dtype=np.float32)
        s = clean_strings(series)
        missing = s.isna().to_numpy()
        tokens = s.str.lower().str.findall(_TOKEN)
        out[:, 0] = s.str.len().to_numpy(dtype=np.float32, na_value=np.nan)
        out[:, 1] = tokens.str.len().to_numpy(dtype=np.float32, na_value=np.nan)
        flat = tokens.reset_index(drop=True).explode().dropna()
        if len(flat) and spec.buckets:
            # crc32, not hash(): Python's string hash changes between processes.
            buckets = {t: 2 + zlib.crc32(t.encode()) % spec.buckets for t in flat.unique()}
            np.add.at(out, (flat.index.to_numpy(), flat.map(buckets).to_numpy(dtype=np.int64)), 1.0)
        out[missing, 2:] = np.nan
        return out

    # -- checks and helpers

    def check_schema(self, frame: pd.DataFrame) -> None:
        """Raise ModelSchemaError naming the columns the encoder needs that ``frame`` lacks or that changed type."""
        present = {str(c) for c in frame.columns}
        missing = [c for c in self.input_columns_ if c not in present]
        changed = []
        for spec in self.columns_:
            if spec.name in present:
                why = self._type_change(spec, frame[spec.name])
                if why:
                    changed.append(f"{spec.name!r} ({why})")
        problems = []
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20]) + (
                f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            )
            problems.append(f"missing columns {shown}")
        if changed:
            problems.append("columns whose type changed: " + ", ".join(changed[:20]))
        if problems:
            raise ModelSchemaError(
                "the data does not match the model's schema: " + "; ".join(problems) + " (the model was trained on "
                f"{len(self.input_columns_)} columns; retrain it, or give data with the same columns)"
            )

    def _type_change(self, spec: ColumnSpec, series: pd.Series) -> str:
        if spec.kind in ("categorical", "text") or _plain_numeric(series.dtype) or ptypes.is_bool_dtype(series):
            return ""
        if spec.kind == "datetime" and ptypes.is_datetime64_any_dtype(series):
            return ""
        s = clean_strings(series.iloc[:2000])
        values = s[s.notna()]
        if len(values) < 5:
            return ""
        if spec.kind == "numeric":
            share = parse_numbers(values).notna().mean()
        elif spec.kind == "boolean":
            share = values.str.lower().isin(TRUE_WORDS | FALSE_WORDS | {spec.true_value, spec.false_value}).mean()
        else:
            share = parse_datetimes(values).notna().mean()
        return f"was {spec.kind}, now mostly other values" if share < 0.5 else ""

    def groups(self) -> list[tuple[ColumnSpec, np.ndarray]]:
        """Each input column with the positions of its features in the matrix."""
        out, offset = [], 0
        for spec in self.columns_:
            out.append((spec, np.arange(offset, offset + len(spec.features))))
            offset += len(spec.features)
        return out

    def describe(self) -> list[dict[str, Any]]:
        """Per kept column: its kind and how many features it became (for reports)."""
        return [{"column": s.name, "kind": s.kind, "features": len(s.features)} for s in self.columns_]

    def fingerprint_data(self) -> dict[str, Any]:
        """What the schema fingerprint hashes: input columns, their kinds and the feature names."""
        return {"columns": [[s.name, s.kind] for s in self.columns_], "features": self.feature_names_}

    def to_json(self) -> dict[str, Any]:
        """Everything needed to rebuild the fitted encoder (plain JSON data)."""
        return {
            "params": {
                "max_levels": self.max_levels,
                "min_level_count": self.min_level_count,
                "text_buckets": self.text_buckets,
                "numeric_share": self.numeric_share,
                "time_col": self.time_col,
            },
            "columns": [asdict(s) for s in self.columns_],
            "dropped": self.dropped_,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TabularEncoder:
        """The fitted encoder ``to_json`` described."""
        encoder = cls(**data["params"])
        encoder.columns_ = [ColumnSpec(**c) for c in data["columns"]]
        for spec in encoder.columns_:
            if spec.kind not in KINDS:
                raise ValueError(f"unknown column kind {spec.kind!r}")
        encoder.dropped_ = dict(data.get("dropped", {}))
        encoder.feature_names_ = [f for s in encoder.columns_ for f in s.features]
        encoder.input_columns_ = [s.name for s in encoder.columns_]
        encoder.notes_ = [f"column {c!r} left out: {why}" for c, why in encoder.dropped_.items()]
        return encoder


def _plain_numeric(dtype: Any) -> bool:
    return bool(ptypes.is_numeric_dtype(dtype) and not ptypes.is_bool_dtype(dtype))


def _dedupe(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}#{seen[name]}")
    return out


# ---------------------------------------------------------------------------------------------- leakage

LEAK_AUC = 0.95
# Words in a column name that suggest it is filled in only once the outcome is known.
AFTER_OUTCOME_WORDS = frozenset(
    {
        "duration",
        "outcome",
        "result",
        "results",
        "status",
        "stage",
        "closed",
        "close",
        "won",
        "lost",
        "reason",
        "converted",
        "conversion",
        "churned",
        "signed",
    }
)
AFTER_OUTCOME_CHINESE = ("结果", "状态", "时长", "原因", "成交", "签约", "赢单", "输单", "关闭", "阶段")


@dataclass
class LeakageFinding:
    """A column that may leak the outcome, and why it is suspected."""

    column: str
    reason: str  # predicts_alone, pure_level, name, missing_for_one_class
    message: str
    auc: float | None = None


def column_aucs(matrix: np.ndarray, y: np.ndarray, *, chunk: int = 256) -> np.ndarray:
    """Each column's AUC as a score for y (missing values rank lowest), computed in column chunks."""
    from scipy.stats import rankdata

    pos = y == 1
    n1, n0 = int(pos.sum()), int((~pos).sum())
    out = np.full(matrix.shape[1], 0.5)
    if n1 == 0 or n0 == 0:
        return out
    for start in range(0, matrix.shape[1], chunk):
        block = matrix[:, start : start + chunk].astype(np.float64)
        block[np.isnan(block)] = -np.inf
        ranks = rankdata(block, axis=0)
        out[start : start + chunk] = (ranks[pos].sum(axis=0) - n1 * (n1 + 1) / 2) / (n1 * n0)
    return out


def _drop_hint(column: str) -> str:
    return f"--drop {shlex.quote(column)}"


def find_leakage(
    encoder: TabularEncoder,
    matrix: np.ndarray,
    y: np.ndarray,
    *,
    target: str,
    positive: str,
    negative: str,
    max_rows: int = 20_000,
    seed: int = 0,
) -> list[LeakageFinding]:
    """Columns that may leak the outcome: too predictive alone, pure levels, telling names, missing for one class.

    ``matrix`` is the encoder's output for training rows only, ``y`` their 0/1 labels.
    """
    if len(y) > max_rows:  # the checks are about strong effects: a sample sees them
        rows = np.sort(np.random.default_rng(seed).choice(len(y), max_rows, replace=False))
        matrix, y = matrix[rows], y[rows]
    findings: list[LeakageFinding] = []
    names = {0: negative, 1: positive}
    aucs = column_aucs(matrix, y)
    base = float(y.mean())
    for spec, idx in encoder.groups():
        col = spec.name
        if spec.kind == "categorical":
            n_levels = len(spec.levels) + spec.other + spec.missing
            onehot = matrix[:, idx[:n_levels]]
            codes = np.where(onehot.max(axis=1) > 0, onehot.argmax(axis=1), n_levels)
            auc = _categorical_auc(codes, y)
            findings += _pure_levels(spec, codes, y, base, names, target)
        else:
            scores = aucs[idx[:2]] if spec.kind == "text" else aucs[idx]
            auc = float(np.max(np.maximum(scores, 1 - scores)))
        if auc >= LEAK_AUC:
            findings.append(
                LeakageFinding(
                    col,
                    "predicts_alone",
                    f"column {col!r} alone predicts {target} almost perfectly (AUC {auc:.3f} on the training rows): "
                    f"it is probably known only after the outcome; if so, drop it ({_drop_hint(col)})",
                    round(auc, 4),
                )
            )
        word = _after_outcome_word(col)
        if word:
            findings.append(
                LeakageFinding(
                    col,
                    "name",
                    f"column {col!r} looks like it is known only after the outcome (its name has {word!r}; alone it "
                    f"gives AUC {auc:.3f}); if it is, drop it ({_drop_hint(col)}): a model that needs it cannot score "
                    "a lead before the outcome",
                    round(auc, 4),
                )
            )
        missing = _missing_mask(spec, idx, matrix)
        if missing is not None and missing.any():
            rates = [float(missing[y == c].mean()) for c in (0, 1)]
            hi = int(np.argmax(rates))
            if rates[1 - hi] <= 0.01 and rates[hi] >= 0.5:
                findings.append(
                    LeakageFinding(
                        col,
                        "missing_for_one_class",
                        f"column {col!r} is empty in {rates[hi]:.0%} of the {names[hi]!r} rows but in only "
                        f"{rates[1 - hi]:.1%} of the {names[1 - hi]!r} rows: it may be filled in only after the "
                        f"outcome; if so, drop it ({_drop_hint(col)})",
                        round(auc, 4),
                    )
                )
    return findings


def _categorical_auc(codes: np.ndarray, y: np.ndarray) -> float:
    # Each level scored by its positive rate, shrunk towards the overall rate so that rare levels
    # (ids, free text) cannot look predictive in-sample.
    base, m = float(y.mean()), 20.0
    pos = np.bincount(codes, weights=y.astype(np.float64))
    cnt = np.bincount(codes).astype(np.float64)
    rate = (pos + m * base) / (cnt + m)
    auc = float(column_aucs(rate[codes].reshape(-1, 1), y)[0])
    return max(auc, 1 - auc)


def _pure_levels(
    spec: ColumnSpec, codes: np.ndarray, y: np.ndarray, base: float, names: dict[int, str], target: str
) -> list[LeakageFinding]:
    found = []
    class_counts = {1: int(y.sum()), 0: int(len(y) - y.sum())}
    rates = {1: base, 0: 1 - base}
    for k, level in enumerate(spec.levels):
        in_level = codes == k
        count = int(in_level.sum())
        if count < 20:
            continue
        share_pos = float(y[in_level].mean())
        for c in (0, 1):
            purity = share_pos if c == 1 else 1 - share_pos
            covers = purity * count / max(class_counts[c], 1)
            if purity >= 0.99 and covers >= 0.2 and (1 - purity) <= 0.1 * rates[1 - c]:
                found.append(
                    LeakageFinding(
                        spec.name,
                        "pure_level",
                        f"column {spec.name!r}: {level!r} rows are {purity:.1%} {names[c]!r} and hold {covers:.0%} "
                        f"of all {names[c]!r} rows of {target}: this looks like the outcome itself; if it is, drop "
                        f"the column ({_drop_hint(spec.name)})",
                    )
                )
    return found


def _after_outcome_word(column: str) -> str | None:
    for token in name_tokens(column):
        if token in AFTER_OUTCOME_WORDS:
            return token
    for word in AFTER_OUTCOME_CHINESE:
        if word in column:
            return word
    return None


def _missing_mask(spec: ColumnSpec, idx: np.ndarray, matrix: np.ndarray) -> np.ndarray | None:
    if spec.kind == "categorical":
        if not spec.missing:
            return None
        return matrix[:, idx[len(spec.levels) + spec.other]] > 0
    return np.isnan(matrix[:, idx[0]])


# ---------------------------------------------------------------------------------------------- splits


@dataclass
class Split:
    """Row positions of the four parts: fit (trees), valid (early stopping), calibration, test (held out)."""

    fit: np.ndarray
    valid: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    method: str  # "time" or "stratified"

    @property
    def train(self) -> np.ndarray:
        """Every row the model may learn from (fit + valid + calibration)."""
        return np.sort(np.concatenate([self.fit, self.valid, self.calibration]))

    def describe(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "fit_rows": len(self.fit),
            "valid_rows": len(self.valid),
            "calibration_rows": len(self.calibration),
            "test_rows": len(self.test),
        }


MIN_CLASS_ROWS = 20


def split_rows(
    y: np.ndarray,
    *,
    times: Sequence[Any] | np.ndarray | None = None,
    seed: int = 0,
    test_share: float = 0.2,
    valid_share: float = 0.1,
    calibration_share: float = 0.15,
) -> Split:
    """Hold out the latest ``test_share`` by time (or a stratified random share), then carve the rest.

    Of the training rows, ``calibration_share`` and ``valid_share`` are held out of the trees (the latest
    ones by time, else stratified); the shares are of the training part.
    """
    n = len(y)
    counts = np.bincount(y.astype(np.int64), minlength=2)
    if counts.min() < MIN_CLASS_ROWS:
        raise TooFewRowsError(
            f"only {int(counts.min())} rows of one class ({int(counts[1])} positive, {int(counts[0])} negative): "
            f"at least {MIN_CLASS_ROWS} of each are needed to train, calibrate and test honestly"
        )
    n_test = max(1, round(test_share * n))
    n_cal = max(1, round(calibration_share * (n - n_test)))
    n_val = max(1, round(valid_share * (n - n_test)))
    if times is not None:
        order = np.argsort(np.asarray(times), kind="stable")
        train, test = order[: n - n_test], order[n - n_test :]
        n_fit = len(train) - n_cal - n_val
        parts = {
            "fit": train[:n_fit],
            "valid": train[n_fit : n_fit + n_val],
            "calibration": train[n_fit + n_val :],
            "test": test,
        }
        method = "time"
    else:
        from sklearn.model_selection import train_test_split

        idx = np.arange(n)
        train, test = train_test_split(idx, test_size=n_test, stratify=y, random_state=seed)
        rest, cal = train_test_split(train, test_size=n_cal, stratify=y[train], random_state=seed + 1)
        fit, val = train_test_split(rest, test_size=n_val, stratify=y[rest], random_state=seed + 2)
        parts = {"fit": fit, "valid": val, "calibration": cal, "test": test}
        method = "stratified"
    for name, rows in parts.items():
        present = np.bincount(y[rows].astype(np.int64), minlength=2)
        if present.min() == 0:
            what = "the latest rows by time" if method == "time" else "a stratified sample"
            raise TooFewRowsError(
                f"the {name} part ({len(rows):,} rows, {what}) has no rows of one class; give more data "
                "(or, with --time-col, data where both outcomes happen throughout)"
            )
    return Split(
        fit=np.sort(parts["fit"]),
        valid=np.sort(parts["valid"]),
        calibration=np.sort(parts["calibration"]),
        test=np.sort(parts["test"]),
        method=method,
    )
