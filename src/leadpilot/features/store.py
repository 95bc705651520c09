"""The feature store: lake sync, tiles, daily snapshots into the zipper history, point-in-time retrieval.

Layout under ``<data dir>/features/``::

    lake/            Parquet copy of the CRM event log and entity tables (features.lake)
    tiles/day=D/     daily partial aggregates, one folder per day, replaced whole when the day changes
    distinct/day=D/  per-day distinct values for DISTINCT_COUNT
    store.duckdb     meta (schema version, dictionary fingerprint), tile state, runs and the history
"""

from __future__ import annotations

import hashlib
import re
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from scipy import sparse
from sqlalchemy import Engine

from leadpilot.features import history, sql
from leadpilot.features.dictionary import WINDOWS, Dimension, FeatureDictionary, Function, TableSource
from leadpilot.features.engines import ComputeEngine, get_engine
from leadpilot.features.engines.base import VALUES_SCHEMA
from leadpilot.features.engines.duckdb_engine import connect, unpivot
from leadpilot.features.lake import EventLake, SyncReport
from leadpilot.features.sql import DIMENSION_CODES, earliest_tile_day, file_list, quote

STORE_SCHEMA_VERSION = 1
DEFAULT_RETENTION_DAYS = 548

Progress = Callable[[str, int, int], None]  # (stage, done, total)


class FeatureStoreError(ValueError):
    """A request the store refuses (bad date range, nothing computed yet, a store from a newer version)."""


@dataclass
class FeatureMatrix:
    """Features of many entities: a CSR matrix with its row keys and column (derived feature) ids."""

    dimension: Dimension
    keys: np.ndarray  # shape (rows, 2): k1, k2 (k2 is 0 for one-part keys)
    feature_ids: np.ndarray  # shape (columns,)
    matrix: sparse.csr_matrix

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.matrix.shape[0]), int(self.matrix.shape[1]))

    def row(self, k1: int, k2: int = 0) -> dict[int, float]:
        """One entity's non-zero features as {feature id: value}."""
        hit = np.flatnonzero((self.keys[:, 0] == k1) & (self.keys[:, 1] == k2))
        if not hit.size:
            return {}
        r = self.matrix.getrow(int(hit[0]))
        return {int(self.feature_ids[c]): float(v) for c, v in zip(r.indices, r.data, strict=True)}


@dataclass
class ComputeReport:
    """What a compute run did."""

    days: list[date] = field(default_factory=list)
    tile_days_rebuilt: int = 0
    values_written: int = 0
    keys_changed: int = 0
    sync: SyncReport | None = None
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "days": [d.isoformat() for d in self.days],
            "tile_days_rebuilt": self.tile_days_rebuilt,
            "values_written": self.values_written,
            "keys_changed": self.keys_changed,
            "sync": self.sync.to_json() if self.sync else None,
            "seconds": round(self.seconds, 3),
        }


def dictionary_fingerprint(dictionary: FeatureDictionary) -> str:
    """A hash of the derived feature ids and names (changes when the dictionary's columns change)."""
    digest = hashlib.sha256()
    for d in dictionary.derived:
        digest.update(f"{d.id}:{d.name};".encode())
    return digest.hexdigest()[:16]


def _end_seconds(days: Any) -> Any:
    """Epoch seconds of the end (next midnight, UTC) of each date."""
    return (np.asarray(days, dtype="datetime64[D]").astype(np.int64) + 1) * 86_400.0


def anchors_to_days(
    feature_ids: np.ndarray, values: np.ndarray, end_seconds: Any, dictionary: FeatureDictionary
) -> np.ndarray:
    """Turn DAYS_SINCE anchors (epoch seconds of the last event) into days before the end of the as-of day."""
    since = np.isin(feature_ids, _days_since_ids(dictionary))
    if not since.any():
        return values
    out = values.astype(np.float64, copy=True)
    ends = np.broadcast_to(np.asarray(end_seconds, dtype=np.float64), values.shape)
    out[since] = (ends[since] - out[since]) / 86_400.0
    return out


def _days_since_ids(dictionary: FeatureDictionary) -> np.ndarray:
    return np.array([d.id for d in dictionary.derived if d.function is Function.DAYS_SINCE], dtype=np.int64)


def present(table: pa.Table, day: date, dictionary: FeatureDictionary) -> pa.Table:
    """Values as users see them (DAYS_SINCE in days) for a snapshot of ``day``."""
    fid = table.column("feature_id").to_numpy()
    values = anchors_to_days(fid, table.column("value").to_numpy(), _end_seconds(day), dictionary)
    return table.set_column(table.schema.get_field_index("value"), "value", pa.array(values, pa.float64()))


def _values_to_matrix(table: pa.Table, dimension: Dimension, feature_ids: np.ndarray) -> FeatureMatrix:
    k1 = table.column("k1").to_numpy()
    k2 = table.column("k2").to_numpy()
    fid = table.column("feature_id").to_numpy()
    values = table.column("value").to_numpy()
    keys, rows = (
        np.unique(np.stack([k1, k2], axis=1), axis=0, return_inverse=True)
        if k1.size
        else (
            np.empty((0, 2), dtype=np.int64),
            np.empty(0, dtype=np.int64),
        )
    )
    cols = np.searchsorted(feature_ids, fid)
    matrix = sparse.csr_matrix(
        (values, (rows.reshape(-1), cols)), shape=(len(keys), len(feature_ids)), dtype=np.float64
    )
    return FeatureMatrix(dimension, keys.astype(np.int64), feature_ids, matrix)


class FeatureStore:
    """Computes, keeps and serves the features described by one dictionary."""

    def __init__(
        self,
        root: Path,
        dictionary: FeatureDictionary,
        *,
        engine: ComputeEngine | str = "duckdb",
        retention_days: int = DEFAULT_RETENTION_DAYS,
        memory_limit: str | None = None,
        tile_rows_per_slice: int = 8_000_000,
    ) -> None:
        self.root = Path(root)
        self.tile_rows_per_slice = tile_rows_per_slice
        self.memory_limit = memory_limit or "4GB"
        self.dictionary = dictionary
        self.engine = (
            get_engine(engine, memory_limit=memory_limit, temp_directory=str(self.root / "spill"))
            if isinstance(engine, str)
            else engine
        )
        self.retention_days = retention_days
        self.lake = EventLake(self.root / "lake")
        self.tiles_dir = self.root / "tiles"
        self.distinct_dir = self.root / "distinct"
        self.root.mkdir(parents=True, exist_ok=True)
        self.db_path = self.root / "store.duckdb"
        self._init_db()

    # -- database -------------------------------------------------------------------------------------
    def _connect(self) -> Any:
        # The history's own connection is capped too (a quarter of the engine's: during a fold both are
        # open), so a full fold's transaction spills to the temp folder instead of growing in memory.
        con = connect(str(self.db_path), memory_limit=history_memory_limit(self.memory_limit))
        con.execute(f"SET temp_directory = {quote((self.root / 'spill').as_posix())}")
        return con

    def _init_db(self) -> None:
        with self._connect() as con:
            con.execute("CREATE TABLE IF NOT EXISTS meta (key VARCHAR PRIMARY KEY, value VARCHAR NOT NULL)")
            con.execute("CREATE TABLE IF NOT EXISTS tiled_parts (name VARCHAR PRIMARY KEY)")
            con.execute(history.HISTORY_DDL)
            found = con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if found is None:
                con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [str(STORE_SCHEMA_VERSION)])
            elif int(found[0]) > STORE_SCHEMA_VERSION:
                raise FeatureStoreError(
                    f"{self.db_path} has store schema {found[0]}; this leadpilot reads up to {STORE_SCHEMA_VERSION}"
                )
            con.execute(
                "INSERT OR REPLACE INTO meta VALUES ('dictionary_fingerprint', ?)",
                [dictionary_fingerprint(self.dictionary)],
            )

    def meta(self) -> dict[str, str]:
        with self._connect() as con:
            return {k: v for k, v in con.execute("SELECT key, value FROM meta").fetchall()}

    def runs(self) -> list[date]:
        with self._connect() as con:
            return [r[0] for r in con.execute("SELECT day FROM runs ORDER BY day").fetchall()]

    # -- tiles ----------------------------------------------------------------------------------------
    def _tile_files(self, base: Path, first: date | None, last: date) -> list[str]:
        out: list[str] = []
        if not base.exists():
            return out
        for folder in sorted(base.glob("day=*")):
            day = date.fromisoformat(folder.name[4:])
            if day <= last and (first is None or day >= first):
                out += [str(p) for p in sorted(folder.glob("*.parquet"))]
        return out

    def update_tiles(self, *, progress: Progress | None = None) -> int:
        """Build tiles for every day touched by lake parts not tiled yet; returns the days rebuilt."""
        parts = self.lake.manifest()["parts"]
        with self._connect() as con:
            done = {r[0] for r in con.execute("SELECT name FROM tiled_parts").fetchall()}
        new_parts = [p for p in parts if p not in done]
        if not new_parts:
            return 0
        all_files = [str(self.lake.events_dir / p) for p in parts]
        first_build = not done
        days: list[date] | None = None
        if not first_build:
            with connect() as con:
                files = file_list([self.lake.events_dir / p for p in new_parts])
                days = sorted(
                    r[0]
                    for r in con.execute(
                        f"SELECT DISTINCT CAST(occurred_at AS DATE) FROM read_parquet({files})"
                    ).fetchall()
                )
        if progress:
            progress("tiles", 0, 1)
        staging = self.root / "staging"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        self.engine.write_tiles(
            self.dictionary,
            event_files=all_files,
            leads_file=str(self.lake.dimension_path("leads")),
            days=days,
            staging=staging,
        )
        rebuilt: set[str] = set()
        for kind, target in (("tiles", self.tiles_dir), ("distinct", self.distinct_dir)):
            target.mkdir(parents=True, exist_ok=True)
            staged = staging / kind
            # A day whose events all stopped matching still has to lose its old tiles.
            for day in days or []:
                old = target / f"day={day.isoformat()}"
                if old.exists() and not (staged / old.name).exists():
                    shutil.rmtree(old)
            if not staged.exists():
                continue
            for folder in staged.glob("day=*"):
                final = target / folder.name
                if final.exists():
                    shutil.rmtree(final)
                folder.rename(final)
                rebuilt.add(folder.name)
        shutil.rmtree(staging, ignore_errors=True)
        with self._connect() as con:
            con.executemany("INSERT OR IGNORE INTO tiled_parts VALUES (?)", [[p] for p in new_parts])
            if rebuilt:
                oldest = min(name[4:] for name in rebuilt)
                found = con.execute("SELECT value FROM meta WHERE key = 'oldest_retiled_day'").fetchone()
                if found is None or oldest < found[0]:
                    con.execute("INSERT OR REPLACE INTO meta VALUES ('oldest_retiled_day', ?)", [oldest])
        if progress:
            progress("tiles", 1, 1)
        return len(rebuilt)

    # -- snapshots ------------------------------------------------------------------------------------
    def values(self, day: date) -> pa.Table:
        """Every non-zero derived value as of the end of ``day``, computed from the tiles (DAYS_SINCE in days)."""
        return present(self._raw_values(day), day, self.dictionary)

    def values_direct(self, day: date) -> pa.Table:
        """Every non-zero derived value as of the end of ``day`` straight from the lake's events, without tiles
        (DAYS_SINCE in days): the table ``values(day)`` gives once the tiles are up to date, for a one-off
        snapshot of a day (no tiles written, nothing stored)."""
        return present(self._direct_raw_values(day), day, self.dictionary)

    def _direct_raw_values(self, day: date) -> pa.Table:
        """The direct path's raw values (DAYS_SINCE as anchors), sorted like the engines'."""
        files = [str(f) for f in self.lake.event_files()]
        tables = {t: str(self.lake.dimension_path(t)) for t in ("leads", "accounts", "users")}
        with self._scratch_connection() as con:
            wanted = pa.array([d.id for d in self.dictionary.derived], pa.int32())
            con.register("wanted", pa.table({"feature_id": wanted}))
            windows = self._direct_windows(con, files, tables["leads"], day) if files else VALUES_SCHEMA.empty_table()
            con.register("lp_windows", windows)
            union = " UNION ALL ".join(
                f"({q})" for q in ["SELECT * FROM lp_windows", *sql.table_values_sql(self.dictionary, tables, day)]
            )
            return (
                con.sql(
                    "SELECT CAST(dim AS TINYINT) AS dim, CAST(k1 AS BIGINT) AS k1, CAST(k2 AS BIGINT) AS k2, "
                    f"CAST(feature_id AS INTEGER) AS feature_id, CAST(value AS DOUBLE) AS value FROM ({union}) u "
                    "ORDER BY dim, k1, k2, feature_id"
                )
                .to_arrow_table()
                .cast(VALUES_SCHEMA)
            )

    def _direct_windows(self, con: Any, files: list[str], leads: str, day: date) -> pa.Table:
        """Event-sourced values of ``day``: the events of the longest window are read, joined and their payloads
        parsed once into a temporary table of age-banded events; one pass of the tile SQL turns them into tiles
        per (entity, base feature, bucket, band), which are merged into windows as the tile path merges daily
        tiles (numpy band merge; LAST and DISTINCT_COUNT in SQL)."""
        first = earliest_tile_day(self.dictionary, day)
        prepared = sql.prepared_events_sql(self.dictionary, sql.event_span_sql(files, leads, first, day))
        banded = sql.banded_events_sql(self.dictionary, f"({prepared}) p", day)
        # Sorted by type, as in a tile pass: each base feature's branch skips other types' row groups.
        con.execute(f"CREATE TEMP TABLE lp_banded AS {banded} ORDER BY type")
        parts, queries = [], []
        tiles = sql.tiles_sql(self.dictionary, "lp_banded")
        if tiles is not None:
            con.execute(f"CREATE TEMP TABLE lp_band_tiles AS {tiles}")
            plan = sql.direct_band_plan(self.dictionary, "lp_band_tiles")
            if plan is not None:
                parts.append(unpivot(con.sql(plan.sql).to_arrow_table(), plan))
            queries.append(sql.direct_last_sql(self.dictionary, "lp_band_tiles"))
        distinct = sql.tiles_sql(self.dictionary, "lp_banded", distinct=True)
        if distinct is not None:
            queries.append(sql.distinct_values_sql(self.dictionary, f"({distinct}) t", day, banded=True))
        parts += [con.sql(q).to_arrow_table() for q in queries if q is not None]
        return pa.concat_tables([p.cast(VALUES_SCHEMA) for p in parts]) if parts else VALUES_SCHEMA.empty_table()

    def _scratch_connection(self) -> Any:
        """An in-memory DuckDB connection under the store's memory cap, spilling to ``spill/``."""
        con = connect(memory_limit=self.memory_limit)
        con.execute("SET preserve_insertion_order = false")
        con.execute(f"SET temp_directory = {quote((self.root / 'spill').as_posix())}")
        return con

    def _raw_values(
        self, day: date, groups: pa.Table | None = None, partition: tuple[int, int] | None = None
    ) -> pa.Table:
        first = earliest_tile_day(self.dictionary, day)
        return self.engine.window_values(
            self.dictionary,
            tile_files=self._tile_files(self.tiles_dir, first, day),
            distinct_files=self._tile_files(self.distinct_dir, first, day),
            table_files={t: str(self.lake.dimension_path(t)) for t in ("leads", "accounts", "users")},
            day=day,
            groups=groups,
            partition=partition,
        )

    def _value_slices(
        self, day: date, groups: pa.Table | None, slices: int
    ) -> Iterator[tuple[tuple[int, int] | None, pa.Table]]:
        """The raw values of ``day`` for a fold: of the affected ``groups`` only (one table), or of every
        entity in ``slices`` entity slices (the engine may share work between them)."""
        if groups is not None:
            yield None, self._raw_values(day, groups=groups)
            return
        first = earliest_tile_day(self.dictionary, day)
        yield from self.engine.window_slices(
            self.dictionary,
            tile_files=self._tile_files(self.tiles_dir, first, day),
            distinct_files=self._tile_files(self.distinct_dir, first, day),
            table_files={t: str(self.lake.dimension_path(t)) for t in ("leads", "accounts", "users")},
            day=day,
            slices=slices,
        )

    def snapshot(self, day: date, dimension: Dimension) -> FeatureMatrix:
        """The feature matrix of one dimension as of the end of ``day`` (computed now, not read from history)."""
        table = self.values(day)
        mask = pa.compute.equal(table.column("dim"), DIMENSION_CODES[dimension])
        return _values_to_matrix(table.filter(mask), dimension, self.feature_ids(dimension))

    def feature_ids(self, dimension: Dimension) -> np.ndarray:
        return np.array([d.id for d in self.dictionary.for_dimension(dimension)], dtype=np.int32)

    def last_event_day(self) -> date | None:
        files = self.lake.event_files()
        if not files:
            return None
        with connect() as con:
            found = con.execute(f"SELECT max(occurred_at) FROM read_parquet({file_list(files)})").fetchone()
        return found[0].date() if found and found[0] else None

    def compute(
        self,
        crm: Engine,
        *,
        day: date | None = None,
        backfill: tuple[date, date] | None = None,
        today: date | None = None,
        progress: Progress | None = None,
    ) -> ComputeReport:
        """Sync the lake, update tiles, and fold the snapshot of ``day`` (or each day of ``backfill``) into history."""
        started = datetime.now(UTC)
        today = today or started.date()
        if backfill is not None:
            first, last = backfill
            if first > last:
                raise FeatureStoreError(f"backfill range is in the wrong order: {first} is after {last}")
            if last > today:
                raise FeatureStoreError(f"backfill end {last} is in the future (today is {today})")
        else:
            _refuse_future(day, today)
        report = ComputeReport()
        report.sync = self.lake.sync(crm)
        report.tile_days_rebuilt = self.update_tiles(progress=progress)
        if backfill is not None:
            days = [backfill[0] + timedelta(days=i) for i in range((backfill[1] - backfill[0]).days + 1)]
        else:
            days = [day or self.default_day(today)]
        for i, d in enumerate(days):
            written, changed = self.fold_day(d)
            report.values_written += written
            report.keys_changed += changed
            report.days.append(d)
            if progress:
                progress("days", i + 1, len(days))
        self.prune(max(days))
        report.seconds = (datetime.now(UTC) - started).total_seconds()
        return report

    def default_day(self, today: date) -> date:
        """The day a run computes when none is given: the last whole day with events, at most yesterday."""
        last_event = self.last_event_day()
        yesterday = today - timedelta(days=1)
        return min(last_event, yesterday) if last_event else yesterday

    def direct_snapshot(
        self, crm: Engine, *, day: date | None = None, today: date | None = None, progress: Progress | None = None
    ) -> tuple[date, pa.Table, SyncReport]:
        """Sync the lake, then compute the snapshot of ``day`` (default: as ``compute``) with ``values_direct``.

        A one-off: tiles, history, runs and the online store are left as they are (a later ``compute`` tiles
        the newly synced events as usual).
        """
        today = today or datetime.now(UTC).date()
        _refuse_future(day, today)
        sync = self.lake.sync(crm)
        day = day or self.default_day(today)
        if progress:
            progress("snapshot", 0, 1)
        table = self.values_direct(day)
        if progress:
            progress("snapshot", 1, 1)
        return day, table, sync

    def _incremental_base(self, day: date) -> date | None:
        """The previous run a fold of ``day`` can start from, or None when it must recompute everything.

        Folding day D after day P (the newest run, P < D) only has to revisit the (entity, feature, bucket)
        groups with tiles that entered a window (days P+1 .. D) or left one (P+1-w .. D-w for each window w),
        provided no tile of a day up to P was rebuilt since P was folded.
        """
        with self._connect() as con:
            newest = con.execute("SELECT max(day) FROM runs").fetchone()
            retiled = con.execute("SELECT value FROM meta WHERE key = 'oldest_retiled_day'").fetchone()
        previous = newest[0] if newest else None
        if previous is None or previous >= day:
            return None
        if retiled is not None and date.fromisoformat(retiled[0]) <= previous:
            return None
        return previous

    def _affected_groups(self, previous: date, day: date, *, entering: bool = True) -> pa.Table:
        """(dim, k1, k2, base_id, bucket) groups whose windows can differ between ``previous`` and ``day``:
        with tiles that entered a window (days previous+1 .. day; skipped when ``entering`` is False) or
        left one.
        """
        spans = {WINDOWS[w][1] for b in self.dictionary.base_features for w in b.windows} - {None}
        touched: set[date] = set()
        offsets = sorted(s for s in spans if s is not None)
        for offset in [0, *offsets] if entering else offsets:
            first, last = previous + timedelta(days=1 - offset), day - timedelta(days=offset)
            touched.update(first + timedelta(days=i) for i in range((last - first).days + 1))
        files = [
            f
            for base in (self.tiles_dir, self.distinct_dir)
            for f in self._tile_files(base, min(touched), max(touched))
            if date.fromisoformat(Path(f).parent.name[4:]) in touched
        ]
        if not files:
            return pa.table(
                {
                    "dim": pa.array([], pa.int8()),
                    "k1": pa.array([], pa.int64()),
                    "k2": pa.array([], pa.int64()),
                    "base_id": pa.array([], pa.int32()),
                    "bucket": pa.array([], pa.int8()),
                }
            )
        with connect() as con:
            return con.sql(
                "SELECT DISTINCT CAST(dim AS TINYINT) AS dim, CAST(k1 AS BIGINT) AS k1, CAST(k2 AS BIGINT) AS k2, "
                "CAST(base_id AS INTEGER) AS base_id, CAST(bucket AS TINYINT) AS bucket "
                f"FROM read_parquet({file_list(files)}, union_by_name = true)"
            ).to_arrow_table()

    def fold_day(self, day: date, *, incremental: bool = True) -> tuple[int, int]:
        """Compute one day's snapshot and apply it to the history in one transaction.

        When the previous day is the newest run (the daily case), only the groups whose windows can have
        changed are recomputed and compared; the rest of the history is left as it is (it cannot differ).
        """
        previous = self._incremental_base(day) if incremental else None
        groups = self._affected_groups(previous, day) if previous is not None else None
        slices = self.slices_for(day) if groups is None else 1
        dims = sorted(DIMENSION_CODES.values())
        table_bases = [b.id for b in self.dictionary.base_features if isinstance(b.source, TableSource)]
        written = changed = 0
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                # Entity slices (k1 mod n) keep the windows' working set bounded on a large full fold.
                for part, table in self._value_slices(day, groups, slices):
                    changed += history.apply_snapshot(
                        con, table, day, dims, groups=groups, always=table_bases, partition=part
                    )
                    written += table.num_rows
                    del table
                con.execute(
                    "INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, ?)",
                    [day, sum(1 << d for d in dims), datetime.now(UTC).replace(tzinfo=None), written, changed],
                )
                newest = con.execute("SELECT max(day) FROM runs").fetchall()[0]
                if newest and newest[0] == day:
                    # Every re-tiled day is now reflected in the newest run.
                    con.execute("DELETE FROM meta WHERE key = 'oldest_retiled_day'")
                con.execute("COMMIT")
            except BaseException:
                con.execute("ROLLBACK")
                raise
        return written, changed

    def slices_for(self, day: date) -> int:
        """How many entity slices a full fold of ``day`` takes: one per ``tile_rows_per_slice`` tile rows."""
        first = earliest_tile_day(self.dictionary, day)
        rows = sum(pq.read_metadata(f).num_rows for f in self._tile_files(self.tiles_dir, first, day))
        return max(1, -(-rows // self.tile_rows_per_slice))

    def prune(self, latest: date) -> int:
        """Drop history and tiles older than the retention period before ``latest``."""
        cutoff = latest - timedelta(days=self.retention_days)
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            removed = history.prune(con, cutoff)
            con.execute("COMMIT")
        for base in (self.tiles_dir, self.distinct_dir):
            for folder in base.glob("day=*"):
                if date.fromisoformat(folder.name[4:]) < cutoff:
                    shutil.rmtree(folder)
        return removed

    # -- retrieval ------------------------------------------------------------------------------------
    def as_of(
        self, dimension: Dimension, keys: Sequence[tuple[int, int]] | np.ndarray, times: Sequence[datetime]
    ) -> FeatureMatrix:
        """Point-in-time rows: for each (key, time) the features from events strictly before ``time``'s day.

        A value computed for day D covers events up to the end of D, so a request at time t reads the
        snapshot of the last whole day before t (D = date(t) - 1): never an event at or after t.
        """
        key_array = np.asarray(keys, dtype=np.int64).reshape(-1, 2)
        if len(key_array) != len(times):
            raise FeatureStoreError(f"{len(key_array)} keys but {len(times)} times")
        as_of_days = [(_utc(t).date() - timedelta(days=1)) for t in times]
        query = pa.table(
            {
                "row": pa.array(np.arange(len(key_array)), pa.int64()),
                "k1": pa.array(key_array[:, 0]),
                "k2": pa.array(key_array[:, 1]),
                "d": pa.array(as_of_days, pa.date32()),
            }
        )
        with self._connect() as con:
            con.register("q", query)
            table = con.sql(
                "SELECT q.row, h.feature_id, h.value FROM q JOIN history h ON h.k1 = q.k1 AND h.k2 = q.k2 "
                f"AND h.dim = {DIMENSION_CODES[dimension]} "
                "AND h.valid_from <= q.d AND (h.valid_to IS NULL OR h.valid_to > q.d)"
            ).to_arrow_table()
        feature_ids = self.feature_ids(dimension)
        rows = table.column("row").to_numpy()
        fid = table.column("feature_id").to_numpy()
        ends = _end_seconds(np.asarray(as_of_days, dtype="datetime64[D]")[rows]) if rows.size else np.empty(0)
        values = anchors_to_days(fid, table.column("value").to_numpy(), ends, self.dictionary)
        cols = np.searchsorted(feature_ids, fid)
        matrix = sparse.csr_matrix((values, (rows, cols)), shape=(len(key_array), len(feature_ids)))
        return FeatureMatrix(dimension, key_array, feature_ids, matrix)

    def values_at(
        self, dimension: Dimension, day: date, keys: Sequence[tuple[int, int]] | None = None, *, anchors: bool = False
    ) -> FeatureMatrix:
        """The stored (history) matrix of one dimension as of the end of ``day``; all entities or the given keys.

        ``anchors=True`` leaves DAYS_SINCE as stored (the last event's epoch seconds), for the online store.
        """
        code = DIMENSION_CODES[dimension]
        with self._connect() as con:
            d = f"DATE '{day.isoformat()}'"
            where = f"dim = {code} AND valid_from <= {d} AND (valid_to IS NULL OR valid_to > {d})"
            if keys is not None:
                con.register("wanted_keys", pa.table({"k1": [k[0] for k in keys], "k2": [k[1] for k in keys]}))
                where += " AND (k1, k2) IN (SELECT (k1, k2) FROM wanted_keys)"
            table = con.sql(f"SELECT dim, k1, k2, feature_id, value FROM history WHERE {where}").to_arrow_table()
        shown = table if anchors else present(table, day, self.dictionary)
        return _values_to_matrix(shown, dimension, self.feature_ids(dimension))

    def feature_history(self, dimension: Dimension, key: tuple[int, int], feature_id: int) -> list[dict[str, Any]]:
        """Every stored value of one feature of one entity, oldest first (DAYS_SINCE: the last event's time)."""
        with self._connect() as con:
            rows = con.execute(
                "SELECT value, valid_from, valid_to FROM history "
                "WHERE dim = ? AND k1 = ? AND k2 = ? AND feature_id = ? ORDER BY valid_from",
                [DIMENSION_CODES[dimension], key[0], key[1], feature_id],
            ).fetchall()
        anchor = self.dictionary.by_id(feature_id).function is Function.DAYS_SINCE
        return [
            {
                "value": datetime.fromtimestamp(v, UTC).isoformat() if anchor else v,
                "valid_from": f.isoformat(),
                "valid_to": t.isoformat() if t else None,
            }
            for v, f, t in rows
        ]

    def history_stats(self) -> dict[str, Any]:
        with self._connect() as con:
            found = con.execute("SELECT count(*), count(*) FILTER (WHERE valid_to IS NULL) FROM history").fetchone()
        rows, current = found if found else (0, 0)
        return {"rows": int(rows), "current_rows": int(current), "runs": len(self.runs())}

    def describe(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "engine": self.engine.name,
            "meta": self.meta(),
            "lake_high_water_mark": self.lake.high_water_mark,
            "history": self.history_stats(),
            "derived_features": len(self.dictionary.derived),
        }


_UNITS = {"KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def history_memory_limit(limit: str) -> str:
    """The history connection's cap: a quarter of the engine's ``limit`` (DuckDB syntax, e.g. ``4GB``), at
    least 256 MB; ``limit`` itself when it is not a plain size."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", limit)
    if not match or match.group(2).upper() not in _UNITS:
        return limit
    size = float(match.group(1)) * _UNITS[match.group(2).upper()]
    return f"{max(256, int(size / 4 / 1000**2))}MB"


def _refuse_future(day: date | None, today: date) -> None:
    """A snapshot of a day that has not ended yet would change: refused."""
    if day is not None and day > today:
        raise FeatureStoreError(f"--date {day} is in the future (today is {today})")


def _utc(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise FeatureStoreError(f"naive timestamp {t.isoformat()}: give times with a time zone (UTC)")
    return t.astimezone(UTC)
