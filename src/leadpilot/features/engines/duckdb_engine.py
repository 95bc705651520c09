"""The default engine: DuckDB in-process over the lake's Parquet files."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from leadpilot.features import sql
from leadpilot.features.dictionary import FUNCTION_CODES, FeatureDictionary, Function
from leadpilot.features.engines.base import VALUES_SCHEMA, ComputeEngine


def connect(
    database: str = ":memory:", *, threads: int | None = None, memory_limit: str | None = None
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection that never downloads extensions (json and parquet are built in)."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
    }
    if threads:
        config["threads"] = threads
    if memory_limit:
        config["memory_limit"] = memory_limit
    return duckdb.connect(database, config=config)


class DuckDBEngine(ComputeEngine):
    """Tiles and windows as DuckDB SQL (one pass over the events per tile build)."""

    name = "duckdb"

    def __init__(
        self,
        *,
        threads: int | None = None,
        memory_limit: str | None = "4GB",
        temp_directory: str | None = None,
        days_per_pass: int = 21,
    ) -> None:
        self.threads = threads
        self.memory_limit = memory_limit
        self.temp_directory = temp_directory
        self.days_per_pass = days_per_pass

    def _connect(self) -> duckdb.DuckDBPyConnection:
        con = connect(threads=self.threads, memory_limit=self.memory_limit)
        con.execute("SET preserve_insertion_order = false")
        if self.temp_directory:
            con.execute(f"SET temp_directory = {sql.quote(self.temp_directory)}")
        return con

    def write_tiles(
        self,
        dictionary: FeatureDictionary,
        *,
        event_files: list[str],
        leads_file: str,
        days: list[date] | None,
        staging: Path,
    ) -> None:
        if not event_files or days == []:
            return
        with self._connect() as con:
            if days is None:
                found = con.execute(
                    f"SELECT DISTINCT CAST(occurred_at AS DATE) FROM read_parquet({sql.file_list(event_files)})"
                ).fetchall()
                days = sorted(r[0] for r in found if r[0] is not None)
            # A pass per few weeks of days: the aggregation's hash table and the open partition writers
            # then hold a few weeks of events, not the whole history (memory stays flat as data grows).
            for start in range(0, len(days), self.days_per_pass):
                rows = sql.event_rows_sql(event_files, leads_file, days[start : start + self.days_per_pass])
                for kind, distinct in (("tiles", False), ("distinct", True)):
                    query = sql.tiles_sql(dictionary, rows, distinct=distinct)
                    if query is None:
                        continue
                    con.execute(
                        f"COPY ({query}) TO {sql.quote(str(staging / kind))} "
                        "(FORMAT parquet, PARTITION_BY (day), COMPRESSION zstd, OVERWRITE_OR_IGNORE)"
                    )

    def window_values(
        self,
        dictionary: FeatureDictionary,
        *,
        tile_files: list[str],
        distinct_files: list[str],
        table_files: dict[str, str],
        day: date,
        groups: pa.Table | None = None,
        partition: tuple[int, int] | None = None,
    ) -> pa.Table:
        parts: list[pa.Table] = []
        queries: list[str] = []
        with self._connect() as con:
            if groups is not None:
                con.register("affected", groups)
            if tile_files:
                source = _restricted(_tile_source(tile_files), groups, partition)
                plan = sql.window_plan(dictionary, source, day)
                if plan is not None:
                    parts.append(unpivot(con.sql(plan.sql).to_arrow_table(), plan))
            if distinct_files:
                source = _restricted(_tile_source(distinct_files), groups, partition)
                query = sql.distinct_values_sql(dictionary, source, day)
                if query:
                    queries.append(query)
            queries += sql.table_values_sql(dictionary, table_files, day, partition=partition)
            if queries:
                wanted = pa.table({"feature_id": pa.array([d.id for d in dictionary.derived], pa.int32())})
                con.register("wanted", wanted)
                union = " UNION ALL ".join(f"({q})" for q in queries)
                parts.append(
                    con.sql(
                        "SELECT CAST(dim AS TINYINT) AS dim, CAST(k1 AS BIGINT) AS k1, CAST(k2 AS BIGINT) AS k2, "
                        f"CAST(feature_id AS INTEGER) AS feature_id, CAST(value AS DOUBLE) AS value FROM ({union}) u"
                    ).to_arrow_table()
                )
        if not parts:
            return VALUES_SCHEMA.empty_table()
        return sort_values(pa.concat_tables([p.cast(VALUES_SCHEMA) for p in parts]))


def _tile_source(files: list[str]) -> str:
    """Tile files with their ``day`` read from the ``day=YYYY-MM-DD`` folders."""
    return f"read_parquet({sql.file_list(files)}, hive_partitioning = true)"


def _restricted(source: str, groups: pa.Table | None, partition: tuple[int, int] | None = None) -> str:
    """Tiles of ``source``, only of the registered ``affected`` groups (or entities: dim, k1, k2) and of one
    entity slice (``k1 mod n = p``) when given."""
    if partition is not None:
        source = f"(SELECT * FROM {source} WHERE k1 % {int(partition[1])} = {int(partition[0])})"
    if groups is None:
        return source
    on = " AND ".join(f"t.{c} = a.{c}" for c in ("dim", "k1", "k2", "base_id", "bucket") if c in groups.column_names)
    return f"(SELECT t.* FROM {source} t SEMI JOIN affected a ON {on})"


def _running(col: dict[str, np.ndarray], same_as_previous: np.ndarray) -> None:
    """Accumulate band aggregates within each group, in place (a Hillis-Steele scan: bands per group <= 8)."""
    n = len(col["c"])
    step = 1
    while step < 8 and step < n:
        linked = np.zeros(n, dtype=bool)  # row i and row i - step are in the same group
        run = same_as_previous.copy()
        for k in range(1, step):
            run[k:] &= same_as_previous[: n - k]
        linked[step:] = run[step:]
        i = np.flatnonzero(linked)
        j = i - step
        prev = {name: col[name][j] for name in ("c", "s", "mn", "mx", "l", "a")}
        col["c"][i] = col["c"][i] + prev["c"]
        s_i, s_j = col["s"][i], prev["s"]
        col["s"][i] = np.where(np.isnan(s_i) & np.isnan(s_j), np.nan, np.nan_to_num(s_i) + np.nan_to_num(s_j))
        col["mn"][i] = np.fmin(col["mn"][i], prev["mn"])
        col["mx"][i] = np.fmax(col["mx"][i], prev["mx"])
        later = prev["a"] > col["a"][i]
        col["l"][i] = np.where(later, prev["l"], col["l"][i])
        col["a"][i] = np.where(later, prev["a"], col["a"][i])
        step *= 2


def unpivot(bands: pa.Table, plan: sql.WindowPlan) -> pa.Table:
    """Band rows (see ``WindowPlan``) to long (dim, k1, k2, feature_id, value), zeros and NULLs dropped."""
    n = bands.num_rows
    if not n:
        return VALUES_SCHEMA.empty_table()
    col = {name: bands.column(name).to_numpy(zero_copy_only=False) for name in bands.column_names}
    order = np.lexsort([col[name] for name in ("band", "bucket", "base_id", "k2", "k1", "dim")])
    for name in list(col):
        col[name] = col[name][order]
    for name in ("c", "s", "mn", "mx", "l", "a"):
        col[name] = col[name].astype(np.float64)  # NULL -> NaN
    same = np.zeros(n, dtype=bool)  # row i continues row i - 1's (entity, base, bucket) group
    same[1:] = True
    for name in ("dim", "k1", "k2", "base_id", "bucket"):
        same[1:] &= col[name][1:] == col[name][:-1]
    _running(col, same)
    group_ends = np.ones(n, dtype=bool)
    group_ends[:-1] = ~same[1:]
    band = col["band"]
    prefix = col["base_id"].astype(np.int64) * 10_000 + col["bucket"].astype(np.int64) * 100
    value_of = {
        Function.COUNT: lambda r: col["c"][r],
        Function.SUM: lambda r: col["s"][r],
        Function.AVG: lambda r: col["s"][r] / col["c"][r],
        Function.MIN: lambda r: col["mn"][r],
        Function.MAX: lambda r: col["mx"][r],
        Function.LAST: lambda r: col["l"][r],
        Function.DAYS_SINCE: lambda r: col["a"][r],
    }
    out: dict[str, list[np.ndarray]] = {"dim": [], "k1": [], "k2": [], "feature_id": [], "value": []}
    in_group = {ids: np.isin(col["base_id"], ids) for ids, _ in plan.groups}
    for code in plan.window_codes:
        # The row holding window `code`: the last row of its group whose band is <= code.
        inside = band <= code
        next_outside = np.ones(n, dtype=bool)
        next_outside[:-1] = group_ends[:-1] | ~inside[1:]
        holder = inside & next_outside
        for ids, pairs in plan.groups:
            rows = np.flatnonzero(holder & in_group[ids])
            if not rows.size:
                continue
            for function, window_code in pairs:
                if window_code != code:
                    continue
                with np.errstate(invalid="ignore", divide="ignore"):
                    values = value_of[function](rows)
                keep = ~np.isnan(values) & (values != 0)
                picked = rows[keep]
                for name in ("dim", "k1", "k2"):
                    out[name].append(col[name][picked])
                out["feature_id"].append(prefix[picked] + FUNCTION_CODES[function] * 10 + code)
                out["value"].append(values[keep])
    if not out["value"]:
        return VALUES_SCHEMA.empty_table()
    return pa.table({name: np.concatenate(arrays) for name, arrays in out.items()}).cast(VALUES_SCHEMA)


def sort_values(table: pa.Table) -> pa.Table:
    """Values in (dim, k1, k2, feature_id) order: the order every engine returns."""
    return table.sort_by([("dim", "ascending"), ("k1", "ascending"), ("k2", "ascending"), ("feature_id", "ascending")])
