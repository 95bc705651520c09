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

from leadpilot.expressions import Dialect
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
        low, high = min(days), max(days) + timedelta(days=1)
        where = (
            f"WHERE e.occurred_at >= TIMESTAMP '{low.isoformat()} 00:00:00' "
            f"AND e.occurred_at < TIMESTAMP '{high.isoformat()} 00:00:00' "
            "AND CAST(e.occurred_at AS DATE) IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in days) + ")"
        )
    elif days is not None:
        where = "WHERE FALSE"
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


def _event_entries(dictionary: FeatureDictionary, dialect: Dialect, *, distinct: bool) -> list[str]:
    """One struct per base feature an event can feed (NULL when it does not)."""
    entries = []
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
            conditions.append(f"COALESCE({source.filter.to_sql(EVENT_COLUMNS, dialect=dialect)}, FALSE)")
        if distinct:
            assert source.distinct is not None
            value = f"CAST({source.distinct.to_sql(EVENT_COLUMNS, dialect=dialect)} AS VARCHAR)"
        elif source.value is not None:
            value = f"CAST({source.value.to_sql(EVENT_COLUMNS, dialect=dialect)} AS DOUBLE)"
        else:
            value = "CAST(1.0 AS DOUBLE)"
        struct = (
            f"{{'dim': {DIMENSION_CODES[base.dimension]}, 'base_id': {base.id}, "
            f"'by_pl': {'TRUE' if base.by_product_line else 'FALSE'}, "
            f"'k1': CAST({k1} AS BIGINT), 'k2': CAST({k2 or 0} AS BIGINT), 'v': {value}}}"
        )
        entries.append(f"CASE WHEN {' AND '.join(conditions)} THEN {struct} END")
    return entries


def tiles_sql(dictionary: FeatureDictionary, rows_sql: str, *, distinct: bool = False) -> str | None:
    """Daily tiles (or distinct-value tiles) of every event-sourced base feature, in one pass over the events."""
    entries = _event_entries(dictionary, "duckdb", distinct=distinct)
    if not entries:
        return None
    types = sorted({t for b in dictionary.base_features if isinstance(b.source, EventSource) for t in b.source.events})
    matched = (
        f"SELECT day, occurred_at, id, {_bucket_case(dictionary)} AS pl_code, "
        f"UNNEST(list_filter([{', '.join(entries)}], lambda x: x IS NOT NULL)) AS m "
        f"FROM ({rows_sql}) ev WHERE type IN ({', '.join(quote(t) for t in types)})"
    )
    expanded = (
        "SELECT m.dim AS dim, m.k1 AS k1, m.k2 AS k2, m.base_id AS base_id, "
        "UNNEST(CASE WHEN m.by_pl AND pl_code IS NOT NULL THEN [0, pl_code] ELSE [0] END) AS bucket, "
        f"day, occurred_at, id, m.v AS v FROM ({matched}) mm"
    )
    if distinct:
        return (
            "SELECT DISTINCT CAST(dim AS TINYINT) AS dim, k1, k2, CAST(base_id AS INTEGER) AS base_id, "
            f"CAST(bucket AS TINYINT) AS bucket, day, v AS dvalue FROM ({expanded}) x WHERE v IS NOT NULL"
        )
    return (
        "SELECT CAST(dim AS TINYINT) AS dim, k1, k2, CAST(base_id AS INTEGER) AS base_id, "
        "CAST(bucket AS TINYINT) AS bucket, day, count(*) AS cnt, sum(v) AS total, sum(v * v) AS sumsq, "
        "min(v) AS vmin, max(v) AS vmax, max(occurred_at) AS last_at, arg_max(v, (occurred_at, id)) AS last_value "
        f"FROM ({expanded}) x GROUP BY ALL"
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


def window_plan(dictionary: FeatureDictionary, tiles_source: str, day: date) -> WindowPlan | None:
    """The :class:`WindowPlan` of every event-sourced, non-distinct feature as of the end of ``day``."""
    groups: dict[tuple[tuple[Function, ...], tuple[str, ...]], list[int]] = {}
    used_windows: set[str] = set()
    for base in dictionary.base_features:
        if not isinstance(base.source, EventSource):
            continue
        functions = tuple(f for f in base.functions if f is not Function.DISTINCT_COUNT)
        if functions:
            groups.setdefault((functions, base.windows), []).append(base.id)
            used_windows.update(base.windows)
    if not groups:
        return None
    ordered = sorted(used_windows, key=lambda w: WINDOWS[w][0])
    band = "CASE " + " ".join(
        f"WHEN {_window_filter(w, day)} THEN {WINDOWS[w][0]}" for w in ordered if WINDOWS[w][1] is not None
    )
    band += f" ELSE {WINDOWS['all'][0] if 'all' in used_windows else 0} END"
    first = earliest_tile_day(dictionary, day)
    lower = f" AND day >= DATE '{first.isoformat()}'" if first else ""
    sql = (
        "SELECT dim, k1, k2, base_id, bucket, band, CAST(sum(cnt) AS DOUBLE) AS c, sum(total) AS s, "
        "min(vmin) AS mn, max(vmax) AS mx, arg_max(last_value, last_at) AS l, "
        "epoch_us(max(last_at)) / 1000000.0 AS a FROM ("
        f"SELECT *, {band} AS band FROM {tiles_source} WHERE day <= DATE '{day.isoformat()}'{lower}) t "
        "WHERE band > 0 GROUP BY dim, k1, k2, base_id, bucket, band"
    )
    plan = tuple(
        (tuple(ids), tuple((f, WINDOWS[w][0]) for w in windows for f in functions))
        for (functions, windows), ids in groups.items()
    )
    return WindowPlan(sql, plan, tuple(WINDOWS[w][0] for w in ordered))


def distinct_values_sql(dictionary: FeatureDictionary, distinct_source: str, day: date) -> str | None:
    """Long rows of every DISTINCT_COUNT feature as of the end of ``day``."""
    windows = {w for b in dictionary.base_features if Function.DISTINCT_COUNT in b.functions for w in b.windows}
    if not windows:
        return None
    aggregates, entries = [], []
    offset_base = FUNCTION_CODES[Function.DISTINCT_COUNT] * 10
    for window in sorted(windows, key=lambda w: WINDOWS[w][0]):
        code = WINDOWS[window][0]
        aggregates.append(f"count(DISTINCT dvalue) FILTER (WHERE {_window_filter(window, day)}) AS d{code}")
        entries.append(f"{{'f': {_FEATURE_ID} + {offset_base + code}, 'v': CAST(d{code} AS DOUBLE)}}")
    return (
        "SELECT dim, k1, k2, CAST(x.f AS INTEGER) AS feature_id, x.v AS value FROM ("
        f"SELECT dim, k1, k2, UNNEST([{', '.join(entries)}]) AS x FROM ("
        f"SELECT dim, k1, k2, base_id, bucket, {', '.join(aggregates)} FROM {distinct_source} "
        f"WHERE day <= DATE '{day.isoformat()}' GROUP BY dim, k1, k2, base_id, bucket) agg) w "
        "WHERE x.v IS NOT NULL AND x.v <> 0 AND x.f IN (SELECT feature_id FROM wanted)"
    )


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
