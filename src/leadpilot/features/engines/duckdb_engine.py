"""The default engine: DuckDB in-process over the lake's Parquet files."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
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


_TILE_KINDS = (("tiles", False), ("distinct", True))


class DuckDBEngine(ComputeEngine):
    """Tiles and windows as DuckDB SQL (one pass over the events per tile build)."""

    name = "duckdb"

    def __init__(
        self,
        *,
        threads: int | None = None,
        memory_limit: str | None = "4GB",
        temp_directory: str | None = None,
        days_per_pass: int = 92,
        events_per_pass: int = 3_000_000,
    ) -> None:
        self.threads = threads
        self.memory_limit = memory_limit
        self.temp_directory = temp_directory
        self.days_per_pass = days_per_pass
        self.events_per_pass = events_per_pass

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
            files = sql.file_list(event_files)
            wanted = "" if days is None else "WHERE d IN (" + ", ".join(f"DATE '{d.isoformat()}'" for d in days) + ")"
            counts = con.execute(
                f"SELECT d, count(*) FROM (SELECT CAST(occurred_at AS DATE) AS d FROM read_parquet({files})) e "
                f"{wanted} GROUP BY d ORDER BY d"
            ).fetchall()
            # A pass per few million events (at most `days_per_pass` days): the aggregation's hash table and
            # the open partition writers then hold that much, not the whole history (memory stays flat as
            # data grows), while each pass is big enough for its fixed costs not to matter.
            passes: list[list[date]] = []
            in_pass = 0
            for d, n in counts:
                if d is None:
                    continue
                if not passes or len(passes[-1]) >= self.days_per_pass or in_pass + n > self.events_per_pass:
                    passes.append([])
                    in_pass = 0
                passes[-1].append(d)
                in_pass += n
            queries = [(kind, sql.tiles_sql(dictionary, "lp_events", distinct=d)) for kind, d in _TILE_KINDS]
            for pass_days in passes:
                rows = sql.event_rows_sql(event_files, leads_file, pass_days)
                # The pass's events are read and their payloads parsed once, for both kinds of tiles. Sorted by
                # type, each base feature's branch skips the row groups of other event types (by their min/max
                # type) instead of filtering every event: 5x less work for 43 features over 17 event types.
                prepared = sql.prepared_events_sql(dictionary, rows)
                con.execute(f"CREATE OR REPLACE TEMP TABLE lp_events AS {prepared} ORDER BY type")
                for kind, query in queries:
                    if query is None:
                        continue
                    con.execute(
                        f"COPY ({query}) TO {sql.quote(str(staging / kind))} "
                        "(FORMAT parquet, PARTITION_BY (day), COMPRESSION zstd, OVERWRITE_OR_IGNORE)"
                    )
                con.execute("DROP TABLE lp_events")

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
        with self._connect() as con:
            if groups is not None:
                con.register("affected", groups)
            bands: tuple[pa.Table, sql.WindowPlan] | None = None
            if tile_files:
                source = _restricted(_tile_source(tile_files), groups, partition)
                plan = sql.window_plan(dictionary, source, day)
                if plan is not None:
                    bands = (con.sql(plan.sql).to_arrow_table(), plan)
            return sort_values(
                self._values(con, dictionary, bands, distinct_files, table_files, day, groups, partition)
            )

    def window_slices(
        self,
        dictionary: FeatureDictionary,
        *,
        tile_files: list[str],
        distinct_files: list[str],
        table_files: dict[str, str],
        day: date,
        slices: int,
    ) -> Iterator[tuple[tuple[int, int] | None, pa.Table]]:
        """The age bands of every slice are aggregated in one pass over the tiles and written, by slice, to a
        scratch folder; each slice then reads only its own bands (instead of every slice scanning a year of
        tiles again). Tables come unsorted."""
        if slices <= 1 or not tile_files:
            yield from super().window_slices(
                dictionary,
                tile_files=tile_files,
                distinct_files=distinct_files,
                table_files=table_files,
                day=day,
                slices=slices,
            )
            return
        plan = sql.window_plan(dictionary, _tile_source(tile_files), day)
        if self.temp_directory:
            Path(self.temp_directory).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="bands-", dir=self.temp_directory or None) as scratch:
            if plan is not None:
                with self._connect() as con:
                    con.execute(
                        f"COPY (SELECT *, k1 % {int(slices)} AS slice FROM ({plan.sql}) b) TO "
                        f"{sql.quote(scratch)} (FORMAT parquet, PARTITION_BY (slice), COMPRESSION lz4_raw, "
                        "OVERWRITE_OR_IGNORE)"
                    )
            for p in range(slices):
                part = (p, slices)
                with self._connect() as con:
                    bands = None
                    folder = Path(scratch) / f"slice={p}"
                    if plan is not None and folder.exists():
                        files = sorted(str(f) for f in folder.glob("*.parquet"))
                        bands = (con.sql(f"SELECT * FROM read_parquet({sql.file_list(files)})").to_arrow_table(), plan)
                    yield part, self._values(con, dictionary, bands, distinct_files, table_files, day, None, part)

    def _values(
        self,
        con: duckdb.DuckDBPyConnection,
        dictionary: FeatureDictionary,
        bands: tuple[pa.Table, sql.WindowPlan] | None,
        distinct_files: list[str],
        table_files: dict[str, str],
        day: date,
        groups: pa.Table | None,
        partition: tuple[int, int] | None,
    ) -> pa.Table:
        """Window values from age bands, plus distinct-count and table-sourced values (unsorted)."""
        parts: list[pa.Table] = []
        queries: list[str] = []
        if bands is not None:
            parts.append(unpivot(*bands))
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
        return pa.concat_tables([p.cast(VALUES_SCHEMA) for p in parts])


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
        # Bands cover disjoint days, so the band with the later event is the newer one; LAST comes from the
        # newest band that has a value (a band can have events but none with a value).
        later = prev["a"] > col["a"][i]
        l_i, l_j = col["l"][i], prev["l"]
        col["l"][i] = np.where(np.isnan(l_i) | (later & ~np.isnan(l_j)), l_j, l_i)
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
