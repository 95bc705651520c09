"""The feature dictionary: base features (YAML) expanded into derived features with stable integer ids.

A derived feature is base feature × product-line bucket × calculation function × time window, named
``<base>__<bucket>__<function>__<window>`` (``calls_connected__housing__count__30d``) and numbered
``base_id * 10_000 + bucket_code * 100 + function_code * 10 + window_code`` so that ids never move when
features, buckets or windows are added (codes are fixed here and in the YAML, never reused).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from leadpilot.expressions import Expression, ExpressionError, parse

SCHEMA_VERSION = 1
MAX_BASE_ID = 200_000  # keeps derived ids inside a signed 32-bit integer


class Dimension(StrEnum):
    """The entity a feature describes."""

    LEAD = "lead"
    ACCOUNT = "account"
    SALESPERSON = "salesperson"
    LEAD_SALESPERSON = "lead_salesperson"


class Function(StrEnum):
    """How a window of values becomes one number."""

    COUNT = "COUNT"
    SUM = "SUM"
    MAX = "MAX"
    MIN = "MIN"
    AVG = "AVG"
    DISTINCT_COUNT = "DISTINCT_COUNT"
    LAST = "LAST"
    DAYS_SINCE = "DAYS_SINCE"


FUNCTION_CODES: dict[Function, int] = {
    Function.COUNT: 1,
    Function.SUM: 2,
    Function.MAX: 3,
    Function.MIN: 4,
    Function.AVG: 5,
    Function.DISTINCT_COUNT: 6,
    Function.LAST: 7,
    Function.DAYS_SINCE: 8,
}
# Window name -> (code, days); "all" is the entity's whole retained history.
WINDOWS: dict[str, tuple[int, int | None]] = {
    "1d": (1, 1),
    "7d": (2, 7),
    "30d": (3, 30),
    "90d": (4, 90),
    "180d": (5, 180),
    "365d": (6, 365),
    "all": (7, None),
}
DEFAULT_WINDOWS = ("1d", "7d", "30d", "90d", "180d", "365d")
ALL_BUCKET = "all"

# Names an event-source expression may use (beside payload.<key>), and the columns table sources expose.
EVENT_NAMES = frozenset({"type", "lead_id", "actor_id", "product_line", "region", "lead_source"})
TABLE_COLUMNS: dict[str, frozenset[str]] = {
    "leads": frozenset({"budget", "source", "region", "product_line"}),
    "accounts": frozenset({"industry", "region", "size"}),
    "users": frozenset({"daily_capacity", "role"}),
}
TABLE_DIMENSION = {"leads": Dimension.LEAD, "accounts": Dimension.ACCOUNT, "users": Dimension.SALESPERSON}


class DictionaryError(ValueError):
    """A feature dictionary that does not validate; the message names the entry and the field."""


@dataclass(frozen=True)
class Bucket:
    """A product-line bucket (``all`` is every product line together)."""

    code: int
    name: str


@dataclass(frozen=True)
class EventSource:
    """Values taken from the event log: which types, which rows, what number each row gives."""

    events: tuple[str, ...]
    filter: Expression | None
    value: Expression | None
    distinct: Expression | None


@dataclass(frozen=True)
class TableSource:
    """A value taken from a CRM table row (current value; counted from the row's creation time)."""

    table: str
    value: Expression


@dataclass(frozen=True)
class BaseFeature:
    """One entry of the dictionary."""

    id: int
    name: str
    dimension: Dimension
    explanation: str
    source: EventSource | TableSource
    functions: tuple[Function, ...]
    windows: tuple[str, ...]
    by_product_line: bool


@dataclass(frozen=True)
class DerivedFeature:
    """One column of the feature matrix."""

    id: int
    name: str
    base: BaseFeature
    bucket: Bucket
    function: Function
    window: str

    @property
    def window_days(self) -> int | None:
        return WINDOWS[self.window][1]

    @property
    def explanation(self) -> str:
        scope = "all product lines" if self.bucket.name == ALL_BUCKET else f"product line {self.bucket.name}"
        span = "whole history" if self.window == "all" else f"last {self.window}"
        return f"{self.function.value} of {self.base.name} ({scope}, {span}): {self.base.explanation}"


def derived_id(base_id: int, bucket_code: int, function: Function, window: str) -> int:
    """The stable integer id of a derived feature."""
    return base_id * 10_000 + bucket_code * 100 + FUNCTION_CODES[function] * 10 + WINDOWS[window][0]


@dataclass
class FeatureDictionary:
    """Validated base features and buckets; iterate ``derived`` for the matrix columns."""

    base_features: tuple[BaseFeature, ...]
    buckets: tuple[Bucket, ...]
    schema_version: int = SCHEMA_VERSION
    source_path: str = ""
    _by_id: dict[int, DerivedFeature] = field(default_factory=dict, repr=False)

    @cached_property
    def derived(self) -> tuple[DerivedFeature, ...]:
        out: list[DerivedFeature] = []
        for base in self.base_features:
            buckets = self.buckets if base.by_product_line else self.buckets[:1]
            for bucket in buckets:
                for function in base.functions:
                    for window in base.windows:
                        fid = derived_id(base.id, bucket.code, function, window)
                        name = f"{base.name}__{bucket.name}__{function.value.lower()}__{window}"
                        out.append(DerivedFeature(fid, name, base, bucket, function, window))
        out.sort(key=lambda d: d.id)
        return tuple(out)

    def by_id(self, feature_id: int) -> DerivedFeature:
        if not self._by_id:
            self._by_id.update({d.id: d for d in self.derived})
        return self._by_id[feature_id]

    def by_name(self, name: str) -> DerivedFeature | BaseFeature:
        """A derived feature by its full name, or a base feature by its name."""
        for base in self.base_features:
            if base.name == name:
                return base
        for d in self.derived:
            if d.name == name:
                return d
        raise KeyError(name)

    def for_dimension(self, dimension: Dimension) -> tuple[DerivedFeature, ...]:
        return tuple(d for d in self.derived if d.base.dimension == dimension)

    def bucket_names(self) -> dict[str, int]:
        """Product line name -> bucket code (``all`` excluded)."""
        return {b.name: b.code for b in self.buckets if b.name != ALL_BUCKET}

    def __iter__(self) -> Iterator[BaseFeature]:
        return iter(self.base_features)


DEFAULT_DICTIONARY = "default_dictionary.yaml"


def load_default() -> FeatureDictionary:
    """The dictionary shipped with leadpilot (covers what the simulator and typical CRMs record)."""
    text = resources.files("leadpilot.features").joinpath(DEFAULT_DICTIONARY).read_text(encoding="utf-8")
    return loads(text, source=f"leadpilot/features/{DEFAULT_DICTIONARY}")


def load(path: str | Path | None) -> FeatureDictionary:
    """Load and validate a dictionary file (``None``: the default dictionary)."""
    if path is None:
        return load_default()
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise DictionaryError(f"{p}: cannot read the dictionary ({exc.strerror})") from None
    return loads(text, source=str(p))


def loads(text: str, *, source: str = "<string>") -> FeatureDictionary:
    """Parse and validate dictionary YAML text."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise DictionaryError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise DictionaryError(f"{source}: the top level must be a mapping with 'buckets' and 'features'")
    _only_keys(doc, {"schema_version", "buckets", "features"}, source)
    version = doc.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise DictionaryError(f"{source}: schema_version {version!r} is not supported (expected {SCHEMA_VERSION})")
    buckets = _buckets(doc.get("buckets"), source)
    raw_features = doc.get("features")
    if not isinstance(raw_features, list) or not raw_features:
        raise DictionaryError(f"{source}: 'features' must be a non-empty list")
    features: list[BaseFeature] = []
    ids: dict[int, str] = {}
    names: set[str] = set()
    for index, raw in enumerate(raw_features):
        where = f"{source}: features[{index}]"
        feature = _base_feature(raw, where)
        if feature.id in ids:
            raise DictionaryError(f"{where} ({feature.name}): id {feature.id} is already used by {ids[feature.id]!r}")
        if feature.name in names:
            raise DictionaryError(f"{where}: name {feature.name!r} is used twice")
        ids[feature.id] = feature.name
        names.add(feature.name)
        features.append(feature)
    return FeatureDictionary(tuple(features), buckets, version, source)


def _only_keys(raw: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise DictionaryError(f"{where}: unknown key {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})")


def _buckets(raw: Any, source: str) -> tuple[Bucket, ...]:
    if not isinstance(raw, list) or not raw:
        raise DictionaryError(f"{source}: 'buckets' must be a non-empty list of {{code, name}}")
    out: list[Bucket] = []
    for i, item in enumerate(raw):
        where = f"{source}: buckets[{i}]"
        if not isinstance(item, dict):
            raise DictionaryError(f"{where}: must be a mapping with 'code' and 'name'")
        _only_keys(item, {"code", "name"}, where)
        code, name = item.get("code"), item.get("name")
        if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 99:
            raise DictionaryError(f"{where}: 'code' must be an integer 0..99, got {code!r}")
        if not isinstance(name, str) or not name.replace("_", "").isalnum():
            raise DictionaryError(f"{where}: 'name' must be letters, digits and '_', got {name!r}")
        if any(b.code == code or b.name == name for b in out):
            raise DictionaryError(f"{where}: code {code} or name {name!r} is used twice")
        out.append(Bucket(code, name))
    if out[0].name != ALL_BUCKET or out[0].code != 0:
        raise DictionaryError(f"{source}: buckets[0] must be {{code: 0, name: {ALL_BUCKET}}}")
    return tuple(out)


def _base_feature(raw: Any, where: str) -> BaseFeature:
    if not isinstance(raw, dict):
        raise DictionaryError(f"{where}: must be a mapping")
    _only_keys(
        raw, {"id", "name", "dimension", "explanation", "source", "functions", "windows", "by_product_line"}, where
    )
    fid, name = raw.get("id"), raw.get("name")
    if not isinstance(fid, int) or isinstance(fid, bool) or not 1 <= fid <= MAX_BASE_ID:
        raise DictionaryError(f"{where}: 'id' must be an integer 1..{MAX_BASE_ID}, got {fid!r}")
    if not isinstance(name, str) or not name or not name.replace("_", "").isalnum() or "__" in name:
        raise DictionaryError(f"{where}: 'name' must be letters, digits and single '_', got {name!r}")
    where = f"{where} ({name})"
    try:
        dimension = Dimension(str(raw.get("dimension")))
    except ValueError:
        known = ", ".join(d.value for d in Dimension)
        raise DictionaryError(f"{where}: unknown dimension {raw.get('dimension')!r} (known: {known})") from None
    explanation = raw.get("explanation")
    if not isinstance(explanation, str) or not explanation.strip():
        raise DictionaryError(f"{where}: 'explanation' is required (say what the feature means to a salesperson)")
    source = _source(raw.get("source"), dimension, where)
    functions = _functions(raw.get("functions"), source, where)
    default_windows = ("all",) if isinstance(source, TableSource) else DEFAULT_WINDOWS
    windows = _windows(raw.get("windows", list(default_windows)), source, where)
    by_product_line = raw.get("by_product_line", isinstance(source, EventSource))
    if not isinstance(by_product_line, bool):
        raise DictionaryError(f"{where}: 'by_product_line' must be true or false")
    if isinstance(source, TableSource) and by_product_line:
        raise DictionaryError(f"{where}: table sources cannot be split by product line")
    return BaseFeature(fid, name, dimension, explanation.strip(), source, functions, windows, by_product_line)


def _expression(text: Any, names: frozenset[str], where: str, what: str, *, payload: bool) -> Expression:
    if not isinstance(text, str):
        raise DictionaryError(f"{where}: source.{what} must be a string expression, got {text!r}")
    try:
        return parse(text, names, allow_payload=payload)
    except ExpressionError as exc:
        raise DictionaryError(f"{where}: source.{what}: {exc}") from None


def _source(raw: Any, dimension: Dimension, where: str) -> EventSource | TableSource:
    if not isinstance(raw, dict):
        raise DictionaryError(f"{where}: 'source' must be a mapping with 'events' or 'table'")
    if "table" in raw:
        _only_keys(raw, {"table", "value"}, f"{where}: source")
        table = raw["table"]
        if table not in TABLE_COLUMNS:
            raise DictionaryError(
                f"{where}: unknown source table {table!r} (known: {', '.join(sorted(TABLE_COLUMNS))})"
            )
        if TABLE_DIMENSION[table] != dimension:
            raise DictionaryError(f"{where}: table {table!r} describes {TABLE_DIMENSION[table].value}, not {dimension}")
        value = _expression(raw.get("value"), TABLE_COLUMNS[table], where, "value", payload=False)
        return TableSource(table, value)
    if "events" not in raw:
        raise DictionaryError(f"{where}: 'source' needs 'events' (a list of event types) or 'table'")
    _only_keys(raw, {"events", "filter", "value", "distinct"}, f"{where}: source")
    events = raw["events"]
    if isinstance(events, str):
        events = [events]
    if not isinstance(events, list) or not events or not all(isinstance(e, str) and e for e in events):
        raise DictionaryError(f"{where}: source.events must be a non-empty list of event type names")
    parsed = {
        key: _expression(raw[key], EVENT_NAMES, where, key, payload=True) if raw.get(key) is not None else None
        for key in ("filter", "value", "distinct")
    }
    return EventSource(tuple(events), parsed["filter"], parsed["value"], parsed["distinct"])


def _functions(raw: Any, source: EventSource | TableSource, where: str) -> tuple[Function, ...]:
    if not isinstance(raw, list) or not raw:
        raise DictionaryError(f"{where}: 'functions' must be a non-empty list")
    out: list[Function] = []
    for item in raw:
        try:
            function = Function(str(item).upper())
        except ValueError:
            known = ", ".join(f.value for f in Function)
            raise DictionaryError(f"{where}: unknown function {item!r} (known: {known})") from None
        if function in out:
            raise DictionaryError(f"{where}: function {function.value} is listed twice")
        out.append(function)
    if isinstance(source, TableSource) and out != [Function.LAST]:
        raise DictionaryError(f"{where}: a table source has exactly one function, LAST")
    if isinstance(source, EventSource) and Function.DISTINCT_COUNT in out and source.distinct is None:
        raise DictionaryError(f"{where}: DISTINCT_COUNT needs source.distinct (what to count distinct values of)")
    return tuple(out)


def _windows(raw: Any, source: EventSource | TableSource, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not raw:
        raise DictionaryError(f"{where}: 'windows' must be a non-empty list")
    out: list[str] = []
    for item in raw:
        if item not in WINDOWS:
            raise DictionaryError(f"{where}: unknown window {item!r} (known: {', '.join(WINDOWS)})")
        if item in out:
            raise DictionaryError(f"{where}: window {item} is listed twice")
        out.append(item)
    if isinstance(source, TableSource) and out != ["all"]:
        raise DictionaryError(f"{where}: a table source has exactly one window, all")
    return tuple(out)
