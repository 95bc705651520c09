"""SQL the engines run, generated from the dictionary: daily tiles from events, windows from tiles.

Tiles are the engines' unit of work: one row per (dimension, entity key, base feature, product-line bucket,
day) with count, sum, sum of squares, min, max and the last value and its time.  A window is a merge of
tiles, so a daily run adds one day of tiles instead of re-reading a year of events.  Distinct counts keep
their per-day distinct values in a second tile table (exact, mergeable by union).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

from leadpilot.expressions import Expression
from leadpilot.features.dictionary import (
    FUNCTION_CODES,
    TABLE_DIMENSION,
    WINDOWS,
    Dimension,
    EventSource,
    FeatureDictionary,
    Function,
    TableSource,
)

DIMENSION_CODES: dict[Dimension, int] = {
    Dimension.LEAD: 1,
    Dimension.ACCOUNT: 2,
    Dimension.SALESPERSON: 3,
    Dimension.LEAD_SALESPERSON: 4,
}
# Entity key columns of each dimension in the joined event rows (k2 is 0 for one-part keys).
_KEYS: dict[Dimension, tuple[str, str | None]] = {
    Dimension.LEAD: ("lead_id", None),
    Dimension.ACCOUNT: ("account_id", None),
    Dimension.SALESPERSON: ("actor_id", None),
    Dimension.LEAD_SALESPERSON: ("lead_id", "actor_id"),
}
EVENT_COLUMNS = {
    "type": "type",
    "lead_id": "lead_id",
    "actor_id": "actor_id",
    "product_line": "product_line",
    "region": "region",
    "lead_source": "lead_source",
}


_FEATURE_ID = "CAST(base_id AS INTEGER) * 10000 + CAST(bucket AS INTEGER) * 100"


def quote(value: str) -> str:
    """A DuckDB string literal."""
    return "'" + value.replace("'", "''") + "'"


def file_list(paths: list[str] | list[Path]) -> str:
    """A DuckDB list of file-name literals, for ``read_parquet``."""
    return "[" + ", ".join(quote(str(p)) for p in paths) + "]"


def event_rows_sql(event_files: list[str], leads_file: str, days: list[date] | None) -> str:
    """Events joined with their lead's product line, region, source and account, optionally for some days."""
    where = ""
    if days:
        # The range lets the Parquet reader skip rows on the raw column before anything else is decoded.
        where = (
            f"WHERE {_time_range(min(days), max(days))} "
            "AND CAST(e.occurred_at AS DATE) IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in days) + ")"
        )
    elif days is not None:
        where = "WHERE FALSE"
    return _joined_events(event_files, leads_file, where)


def event_span_sql(event_files: list[str], leads_file: str, first: date | None, last: date) -> str:
    """Events of the days ``first`` (None: from the start) to ``last``, joined like ``event_rows_sql``."""
    return _joined_events(event_files, leads_file, f"WHERE {_time_range(first, last)}")


def _time_range(first: date | None, last: date) -> str:
    """``occurred_at`` from the start of ``first`` (None: any time) to the end of ``last``."""
    high = f"e.occurred_at < TIMESTAMP '{(last + timedelta(days=1)).isoformat()} 00:00:00'"
    return high if first is None else f"e.occurred_at >= TIMESTAMP '{first.isoformat()} 00:00:00' AND {high}"


def _joined_events(event_files: list[str], leads_file: str, where: str) -> str:
    """The lake's events (``where`` filters them as ``e``) with their lead's columns joined."""
    return (
        "SELECT e.id, e.type, e.lead_id, e.actor_id, e.occurred_at, e.payload, "
        "CAST(e.occurred_at AS DATE) AS day, l.product_line, l.region, l.source AS lead_source, l.account_id "
        f"FROM read_parquet({file_list(event_files)}) e "
        f"LEFT JOIN read_parquet({quote(leads_file)}) l ON l.id = e.lead_id "
        f"{where}"
    )


def _bucket_case(dictionary: FeatureDictionary) -> str:
    names = dictionary.bucket_names()
    if not names:
        return "CAST(NULL AS INTEGER)"
    whens = " ".join(f"WHEN {quote(n)} THEN {c}" for n, c in names.items())
    return f"CASE product_line {whens} END"


# Payload keys are read once per event into columns ``p_<n>`` of the prepared events (``prepared_events_sql``;
# numbered, not named: JSON keys are case-sensitive, SQL names are not);
# the compiled expressions then refer to those columns instead of parsing the JSON again for every feature.
_PAYLOAD_MARK = "__lp_payload__"
# Dimensions keyed by the lead: an entity's events all share the lead's product line, so its `all` tile is
# its product line's tile (no second aggregation needed).
_LEAD_KEYED = (Dimension.LEAD, Dimension.LEAD_SALESPERSON)
# Base id and product-line bucket packed in one INTEGER key: base_id * _PL_SPAN + bucket (codes are 0..99;
# _NO_PL: none).
_PL_SPAN = 128
_NO_PL = 127
# (occurred_at, id) as one orderable number: LAST is the value of the latest event by time, then id.
_ORDER_KEY = (
    "CAST(epoch_us(occurred_at) AS HUGEINT) * CAST(18446744073709551616 AS HUGEINT) "
    "+ (CAST(id AS HUGEINT) + CAST(9223372036854775808 AS HUGEINT))"
)


def payload_keys(dictionary: FeatureDictionary) -> list[str]:
    """Every payload key an event source's filter, value or distinct expression reads, sorted."""
    keys: set[str] = set()
    for base in dictionary.base_features:
        if isinstance(base.source, EventSource):
            for expression in (base.source.filter, base.source.value, base.source.distinct):
                if expression is not None:
                    keys |= expression.payload_keys
    return sorted(keys)


def _event_types(dictionary: FeatureDictionary) -> list[str]:
    return sorted({t for b in dictionary.base_features if isinstance(b.source, EventSource) for t in b.source.events})


def prepared_events_sql(dictionary: FeatureDictionary, rows_sql: str) -> str:
    """The event rows any event source can use, one row per event, with what every feature reads parsed once:
    the product-line bucket code (``pl_code``), a LAST ordering key (``ord``) and each payload key
    (``p_<n>`` for the n-th of ``payload_keys``, text, from one JSON parse).  ``tiles_sql`` reads a relation
    holding this."""
    keys = payload_keys(dictionary)
    paths = ", ".join(quote("$." + k) for k in keys)
    columns = "".join(f", pj[{i + 1}] AS p_{i + 1}" for i in range(len(keys)))
    parsed = f", json_extract_string(payload, [{paths}]) AS pj" if keys else ""
    types = ", ".join(quote(t) for t in _event_types(dictionary)) or "NULL"
    return (
        "SELECT id, type, lead_id, actor_id, account_id, product_line, region, lead_source, day, occurred_at, "
        f"CAST({_bucket_case(dictionary)} AS TINYINT) AS pl_code, {_ORDER_KEY} AS ord{columns} "
        f"FROM (SELECT *{parsed} FROM ({rows_sql}) ev WHERE type IN ({types})) p"
    )


def _compile(expression: Expression, keys: list[str]) -> str:
    """An expression as DuckDB SQL over the prepared events (payload keys read from their ``p_<n>`` columns)."""
    text = expression.to_sql(EVENT_COLUMNS, dialect="duckdb", payload_column=_PAYLOAD_MARK)
    for i, key in enumerate(keys):
        text = text.replace(f"json_extract_string({_PAYLOAD_MARK}, '$.{key}')", f"p_{i + 1}")
    if _PAYLOAD_MARK in text:  # pragma: no cover - every key the expression reads is in `keys`
        raise ValueError(f"unexpected payload access in {text!r}")
    return text


def _matches_sql(dictionary: FeatureDictionary, events: str, *, distinct: bool) -> str | None:
    """One row per (event, base feature it feeds): a branch per base feature over the prepared ``events``.

    ``bp`` packs the base id and the event's product-line bucket (for features kept by product line; else
    none) in one number, so the aggregation hashes four keys instead of seven; ``_unpacked`` reverses it.
    """
    keys = payload_keys(dictionary)
    branches = []
    for base in dictionary.base_features:
        source = base.source
        if not isinstance(source, EventSource):
            continue
        if distinct and (source.distinct is None or Function.DISTINCT_COUNT not in base.functions):
            continue
        k1, k2 = _KEYS[base.dimension]
        conditions = [f"type IN ({', '.join(quote(t) for t in source.events)})", f"{k1} IS NOT NULL"]
        if k2:
            conditions.append(f"{k2} IS NOT NULL")
        if source.filter is not None:
            conditions.append(f"COALESCE({_compile(source.filter, keys)}, FALSE)")
        if distinct:
            assert source.distinct is not None
            value = f"CAST({_compile(source.distinct, keys)} AS VARCHAR)"
        elif source.value is not None:
            value = f"CAST({_compile(source.value, keys)} AS DOUBLE)"
        else:
            value = "CAST(1.0 AS DOUBLE)"
        pl = f"COALESCE(pl_code, {_NO_PL})" if base.by_product_line else str(_NO_PL)
        branches.append(
            f"SELECT CAST({base.id * _PL_SPAN} + {pl} AS INTEGER) AS bp, CAST({k1} AS BIGINT) AS k1, "
            f"CAST({k2 or 0} AS BIGINT) AS k2, day, occurred_at, ord, {value} AS v "
            f"FROM {events} WHERE {' AND '.join(conditions)}"
        )
    return " UNION ALL ".join(branches) if branches else None


def _unpacked(dictionary: FeatureDictionary) -> str:
    """Select-list items turning ``bp`` back into dim, base_id, pl (NULL: none) and ``single`` (the feature's
    `all` tile equals its product-line tile: lead-keyed, or not kept by product line)."""
    bases = [b for b in dictionary.base_features if isinstance(b.source, EventSource)]
    dims = " ".join(f"WHEN {b.id} THEN {DIMENSION_CODES[b.dimension]}" for b in bases)
    single = [str(b.id) for b in bases if b.dimension in _LEAD_KEYED or not b.by_product_line]
    is_single = f"(bp // {_PL_SPAN}) IN ({', '.join(single)})" if single else "FALSE"
    return (
        f"CAST(CASE bp // {_PL_SPAN} {dims} END AS TINYINT) AS dim, CAST(bp // {_PL_SPAN} AS INTEGER) AS base_id, "
        f"CAST(NULLIF(bp % {_PL_SPAN}, {_NO_PL}) AS TINYINT) AS pl, {is_single} AS single"
    )


_TILE_COLUMNS = "dim, k1, k2, base_id, bucket, day, cnt, total, sumsq, vmin, vmax, last_at, last_value"


def tiles_sql(dictionary: FeatureDictionary, events: str, *, distinct: bool = False) -> str | None:
    """Daily tiles (or distinct-value tiles) of every event-sourced base feature, in one pass over ``events``
    (a relation holding ``prepared_events_sql``).

    Each event feeds every base feature it matches, in its product-line bucket and in `all` (bucket 0).
    The aggregation runs once per (entity, base feature, product line, day); the `all` tile is that tile
    itself where the entity has one product line (lead-keyed features) and a merge of the product lines'
    tiles otherwise, so no event row is duplicated per bucket.
    """
    matched = _matches_sql(dictionary, events, distinct=distinct)
    if matched is None:
        return None
    if distinct:
        return (
            "SELECT DISTINCT dim, k1, k2, base_id, CAST(bucket AS TINYINT) AS bucket, day, v AS dvalue FROM ("
            "SELECT dim, k1, k2, base_id, UNNEST(CASE WHEN pl IS NOT NULL THEN [0, pl] ELSE [0] END) AS bucket, "
            f"day, v FROM (SELECT {_unpacked(dictionary)}, k1, k2, day, v FROM ({matched}) m) u) x "
            "WHERE v IS NOT NULL"
        )
    by_pl = (
        f"SELECT {_unpacked(dictionary)}, k1, k2, day, cnt, total, sumsq, vmin, vmax, last_at, last_value, last_ord "
        "FROM (SELECT bp, k1, k2, day, count(*) AS cnt, sum(v) AS total, sum(v * v) AS sumsq, min(v) AS vmin, "
        "max(v) AS vmax, max(occurred_at) AS last_at, arg_max(v, ord) AS last_value, "
        f"max(ord) FILTER (WHERE v IS NOT NULL) AS last_ord FROM ({matched}) m GROUP BY bp, k1, k2, day) a"
    )
    same = "SELECT dim, k1, k2, base_id, CAST({bucket} AS TINYINT) AS bucket, day, cnt, total, sumsq, vmin, vmax, "
    same += "last_at, last_value FROM part WHERE {where}"
    merged = (
        "SELECT dim, k1, k2, base_id, CAST(0 AS TINYINT) AS bucket, day, CAST(sum(cnt) AS BIGINT) AS cnt, "
        "sum(total) AS total, sum(sumsq) AS sumsq, min(vmin) AS vmin, max(vmax) AS vmax, max(last_at) AS last_at, "
        "arg_max(last_value, last_ord) AS last_value FROM part WHERE NOT single GROUP BY dim, k1, k2, base_id, day"
    )
    return (
        f"WITH part AS MATERIALIZED ({by_pl}) SELECT {_TILE_COLUMNS} FROM ("
        f"{same.format(bucket='pl', where='pl IS NOT NULL')} UNION ALL {same.format(bucket='0', where='single')} "
        f"UNION ALL {merged}) t"
    )


def _used(dictionary: FeatureDictionary, *, table: bool) -> tuple[set[Function], set[str]]:
    functions: set[Function] = set()
    windows: set[str] = set()
    for base in dictionary.base_features:
        if isinstance(base.source, TableSource) == table:
            functions.update(base.functions)
            windows.update(base.windows)
    return functions, windows


def _window_filter(window: str, day: date) -> str:
    days = WINDOWS[window][1]
    if days is None:
        return "TRUE"
    return f"day > DATE '{(day - timedelta(days=days)).isoformat()}'"


def band_sql(windows: set[str], day: date) -> str:
    """The age band of a row's ``day`` as of the end of ``day``: the code of the smallest of ``windows`` that
    holds it; beyond the largest, the `all` code when `all` is among them, else 0 (in no window)."""
    finite = sorted((w for w in windows if WINDOWS[w][1] is not None), key=lambda w: WINDOWS[w][0])
    beyond = WINDOWS["all"][0] if "all" in windows else 0
    if not finite:
        return str(beyond)
    whens = " ".join(f"WHEN {_window_filter(w, day)} THEN {WINDOWS[w][0]}" for w in finite)
    return f"CASE {whens} ELSE {beyond} END"


def earliest_tile_day(dictionary: FeatureDictionary, day: date) -> date | None:
    """The first tile day any window ending on ``day`` reads (``None``: the whole history)."""
    _, windows = _used(dictionary, table=False)
    spans = [WINDOWS[w][1] for w in windows]
    if any(s is None for s in spans) or not spans:
        return None
    return day - timedelta(days=max(s for s in spans if s is not None) - 1)


@dataclass(frozen=True)
class WindowPlan:
    """How tiles become window values as of one day.

    ``sql`` returns, per (entity, base feature, bucket), one row per *age band* that has tiles (band k
    holds the tiles inside window k but not inside the next smaller one) with that band's count, sum,
    min, max, last value and last time (unordered).  Each aggregate is computed once per tile
    instead of once per window; the caller accumulates the bands (window k = bands <= k) and unpivots,
    with numpy.  ``groups``: base ids sharing functions and windows, with
    their (function, window code) pairs.
    """

    sql: str
    groups: tuple[tuple[tuple[int, ...], tuple[tuple[Function, int], ...]], ...]
    window_codes: tuple[int, ...]


def _window_groups(
    dictionary: FeatureDictionary, skip: tuple[Function, ...]
) -> dict[tuple[tuple[Function, ...], tuple[str, ...]], list[int]]:
    """Event-sourced base ids grouped by their (functions other than ``skip``, windows)."""
    groups: dict[tuple[tuple[Function, ...], tuple[str, ...]], list[int]] = {}
    for base in dictionary.base_features:
        functions = tuple(f for f in base.functions if f not in skip)
        if isinstance(base.source, EventSource) and functions:
            groups.setdefault((functions, base.windows), []).append(base.id)
    return groups


def _plan(sql: str, groups: dict[tuple[tuple[Function, ...], tuple[str, ...]], list[int]]) -> WindowPlan:
    """A :class:`WindowPlan` of band rows from ``sql`` for the base feature ``groups``."""
    plan = tuple(
        (tuple(ids), tuple((f, WINDOWS[w][0]) for w in windows for f in functions))
        for (functions, windows), ids in groups.items()
    )
    codes = {WINDOWS[w][0] for _, windows in groups for w in windows}
    return WindowPlan(sql, plan, tuple(sorted(codes)))


def window_plan(dictionary: FeatureDictionary, tiles_source: str, day: date) -> WindowPlan | None:
    """The :class:`WindowPlan` of every event-sourced, non-distinct feature as of the end of ``day``."""
    groups = _window_groups(dictionary, (Function.DISTINCT_COUNT,))
    if not groups:
        return None
    band = band_sql({w for _, windows in groups for w in windows}, day)
    first = earliest_tile_day(dictionary, day)
    lower = f" AND day >= DATE '{first.isoformat()}'" if first else ""
    sql = (
        "SELECT dim, k1, k2, base_id, bucket, band, CAST(sum(cnt) AS DOUBLE) AS c, sum(total) AS s, "
        "min(vmin) AS mn, max(vmax) AS mx, arg_max(last_value, last_at) AS l, "
        "epoch_us(max(last_at)) / 1000000.0 AS a FROM ("
        f"SELECT *, {band} AS band FROM {tiles_source} WHERE day <= DATE '{day.isoformat()}'{lower}) t "
        "WHERE band > 0 GROUP BY dim, k1, k2, base_id, bucket, band"
    )
    return _plan(sql, groups)


def distinct_values_sql(
    dictionary: FeatureDictionary, distinct_source: str, day: date, *, banded: bool = False
) -> str | None:
    """Long rows of every DISTINCT_COUNT feature as of the end of ``day``.

    ``banded``: ``distinct_source`` holds the age band (see ``banded_events_sql``) in ``day`` instead of the date.
    """
    windows = {w for b in dictionary.base_features if Function.DISTINCT_COUNT in b.functions for w in b.windows}
    if not windows:
        return None
    aggregates, entries = [], []
    for window in sorted(windows, key=lambda w: WINDOWS[w][0]):
        code = WINDOWS[window][0]
        inside = f"day <= {code}" if banded else _window_filter(window, day)
        aggregates.append(f"count(DISTINCT dvalue) FILTER (WHERE {inside}) AS d{code}")
        entries.append(_entry(Function.DISTINCT_COUNT, code, f"d{code}"))
    where = "TRUE" if banded else f"day <= DATE '{day.isoformat()}'"
    return _unpivoted(distinct_source, where, aggregates, f"[{', '.join(entries)}]")


def _entry(function: Function, window_code: int, value: str) -> str:
    """One (derived feature id, value) struct of an aggregated (entity, base feature, bucket) row."""
    return f"{{'f': {_FEATURE_ID} + {FUNCTION_CODES[function] * 10 + window_code}, 'v': CAST({value} AS DOUBLE)}}"


def _unpivoted(source: str, where: str, aggregates: list[str], entries: str) -> str:
    """Aggregate ``source`` per (entity, base feature, bucket) and unpivot ``entries`` (a list of ``_entry``
    structs) into long rows of the registered ``wanted`` feature ids, zeros and NULLs dropped."""
    return (
        "SELECT dim, k1, k2, CAST(x.f AS INTEGER) AS feature_id, x.v AS value FROM ("
        f"SELECT dim, k1, k2, UNNEST({entries}) AS x FROM ("
        f"SELECT dim, k1, k2, base_id, bucket, {', '.join(aggregates)} FROM {source} "
        f"WHERE {where} GROUP BY dim, k1, k2, base_id, bucket) agg) w "
        "WHERE x.v IS NOT NULL AND x.v <> 0 AND x.f IN (SELECT feature_id FROM wanted)"
    )


# The direct path (no stored tiles): events -> tiles per age band (``tiles_sql`` over ``banded_events_sql``)
# -> windows (window k = the bands up to k): ``direct_band_plan`` for the numpy band merge, ``direct_last_sql``
# for LAST (the numpy merge takes LAST from the newest band even when that band has no value), and
# ``distinct_values_sql(..., banded=True)`` for DISTINCT_COUNT.


def banded_events_sql(dictionary: FeatureDictionary, events: str, day: date) -> str:
    """The prepared ``events`` (``prepared_events_sql``) up to the end of ``day`` that fall in some window, with
    ``day`` replaced by the event's age band (``band_sql``), so ``tiles_sql`` over them gives one tile per
    (entity, base feature, bucket, band) instead of per day."""
    windows = {w for b in dictionary.base_features if isinstance(b.source, EventSource) for w in b.windows}
    band = band_sql(windows, day)
    return (
        f"SELECT * FROM (SELECT * REPLACE (CAST({band} AS TINYINT) AS day) FROM {events} "
        f"WHERE day <= DATE '{day.isoformat()}') b WHERE day > 0"
    )


def direct_band_plan(dictionary: FeatureDictionary, band_tiles: str) -> WindowPlan | None:
    """The :class:`WindowPlan` of ``band_tiles`` (``tiles_sql`` over ``banded_events_sql``: already one row per
    band) for every event-sourced function but DISTINCT_COUNT and LAST (``direct_last_sql``)."""
    groups = _window_groups(dictionary, (Function.DISTINCT_COUNT, Function.LAST))
    if not groups:
        return None
    sql = (
        "SELECT dim, k1, k2, base_id, bucket, day AS band, CAST(cnt AS DOUBLE) AS c, total AS s, vmin AS mn, "
        f"vmax AS mx, last_value AS l, epoch_us(last_at) / 1000000.0 AS a FROM {band_tiles}"
    )
    return _plan(sql, groups)


def direct_last_sql(dictionary: FeatureDictionary, band_tiles: str) -> str | None:
    """Long rows of every LAST feature from ``band_tiles``: per window, the value of the latest band up to its
    code that has one (``arg_max`` skips bands without a value; bands cover disjoint days)."""
    groups = _window_groups(dictionary, tuple(f for f in Function if f is not Function.LAST))
    if not groups:
        return None
    codes = sorted({WINDOWS[w][0] for _, windows in groups for w in windows})
    aggregates = [f"arg_max(last_value, last_at) FILTER (WHERE day <= {c}) AS l{c}" for c in codes]
    cases = " ".join(
        f"WHEN base_id IN ({', '.join(map(str, ids))}) THEN "
        f"[{', '.join(_entry(Function.LAST, WINDOWS[w][0], f'l{WINDOWS[w][0]}') for w in windows)}]"
        for (_, windows), ids in groups.items()
    )
    ids = ", ".join(str(i) for group in groups.values() for i in group)
    source = f"(SELECT * FROM {band_tiles} WHERE base_id IN ({ids})) b"
    return _unpivoted(source, "TRUE", aggregates, f"CASE {cases} END")


def table_values_sql(
    dictionary: FeatureDictionary, table_files: dict[str, str], day: date, *, partition: tuple[int, int] | None = None
) -> list[str]:
    """Long rows of table-sourced features: rows created by the end of ``day``, current column values."""
    slice_ = f" AND id % {int(partition[1])} = {int(partition[0])}" if partition else ""
    end = f"TIMESTAMP '{(day + timedelta(days=1)).isoformat()} 00:00:00'"
    out = []
    for base in dictionary.base_features:
        source = base.source
        if not isinstance(source, TableSource):
            continue
        columns = {c: c for c in source.value.names}
        fid = base.id * 10_000 + FUNCTION_CODES[Function.LAST] * 10 + WINDOWS["all"][0]
        value = f"CAST({source.value.to_sql(columns, dialect='duckdb')} AS DOUBLE)"
        dim = DIMENSION_CODES[TABLE_DIMENSION[source.table]]
        out.append(
            f"SELECT CAST({dim} AS TINYINT) AS dim, CAST(id AS BIGINT) AS k1, CAST(0 AS BIGINT) AS k2, "
            f"CAST({fid} AS INTEGER) AS feature_id, v AS value FROM (SELECT id, {value} AS v FROM "
            f"read_parquet({quote(table_files[source.table])}) WHERE created_at < {end}{slice_}) t "
            "WHERE v IS NOT NULL AND v <> 0"
        )
    return out
