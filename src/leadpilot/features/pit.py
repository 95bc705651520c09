"""Point-in-time feature rows straight from the daily tiles, in one pass (training sets without a daily backfill).

:meth:`FeatureStore.as_of` reads the zipper history, which holds only the days that were folded. A training
set needs, for each (entity, time t), the values of the snapshot of ``date(t) - 1``, for thousands of
different days. Folding every one of those days first costs a fold per day; this module computes the same
values from the tiles instead: each request's tiles (those up to its day) are re-keyed to the request row
and shifted in time so that every request's day lands on one common reference day, and the window SQL of
that single day (``sql.window_plan``, the engine's own) then yields every row's windows at once. Windows
are relative to the as-of day and DAYS_SINCE anchors are shifted with the tiles, so the values are the
ones a daily fold of ``date(t) - 1`` stores (a test checks this against ``as_of`` on folded days).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

import numpy as np
import pyarrow as pa
from scipy import sparse

from leadpilot.features import sql
from leadpilot.features.dictionary import FUNCTION_CODES, TABLE_DIMENSION, WINDOWS, Dimension, Function, TableSource
from leadpilot.features.engines.duckdb_engine import connect, unpivot
from leadpilot.features.store import FeatureMatrix, FeatureStore, FeatureStoreError, present


def _as_of_day(t: datetime) -> date:
    if t.tzinfo is None:
        raise FeatureStoreError(f"naive timestamp {t.isoformat()}: give times with a time zone")
    return t.astimezone(UTC).date() - timedelta(days=1)


def _shifted(files: list[str], columns: str, *, with_last_at: bool) -> str:
    """Tiles joined to the requests ``q``: keyed by request row, ``day`` moved by the request's shift."""
    last_at = "t.last_at + to_days(CAST(q.shift AS INTEGER)) AS last_at, " if with_last_at else ""
    return (
        f"(SELECT t.dim, q.row AS k1, CAST(0 AS BIGINT) AS k2, t.base_id, t.bucket, "
        f"CAST(t.day + CAST(q.shift AS INTEGER) AS DATE) AS day, {last_at}{columns} "
        f"FROM read_parquet({sql.file_list(files)}, hive_partitioning = true) t "
        "JOIN q ON t.dim = q.dim AND t.k1 = q.k1 AND t.k2 = q.k2 AND t.day <= q.d)"
    )


def tile_as_of(
    store: FeatureStore,
    dimension: Dimension,
    keys: Sequence[tuple[int, int]] | np.ndarray,
    times: Sequence[datetime],
    *,
    batch_rows: int = 5_000,
) -> FeatureMatrix:
    """Like :meth:`FeatureStore.as_of` (the snapshot of ``date(t) - 1`` per row), computed from the tiles.

    Requests go in batches of ``batch_rows``: each request joins up to a year of its entity's tiles, and a
    busy salesperson has tiles on most days, so one query over tens of thousands of requests would not fit
    the memory limit.
    """
    key_array = np.asarray(keys, dtype=np.int64).reshape(-1, 2)
    if len(key_array) != len(times):
        raise FeatureStoreError(f"{len(key_array)} keys but {len(times)} times")
    if len(key_array) > batch_rows:
        parts = [
            _tile_as_of(store, dimension, key_array[i : i + batch_rows], list(times[i : i + batch_rows]))
            for i in range(0, len(key_array), batch_rows)
        ]
        return FeatureMatrix(
            dimension, key_array, parts[0].feature_ids, sparse.vstack([p.matrix for p in parts]).tocsr()
        )
    return _tile_as_of(store, dimension, key_array, times)


def _tile_as_of(
    store: FeatureStore, dimension: Dimension, key_array: np.ndarray, times: Sequence[datetime]
) -> FeatureMatrix:
    feature_ids = store.feature_ids(dimension)
    if len(key_array) == 0:
        return FeatureMatrix(dimension, key_array, feature_ids, sparse.csr_matrix((0, len(feature_ids))))
    days = np.array([_as_of_day(t) for t in times], dtype="datetime64[D]")
    reference = days.max()
    shift = (reference - days).astype(np.int64)
    ref_day = reference.astype(date)
    code = sql.DIMENSION_CODES[dimension]
    requests = pa.table(
        {
            "row": pa.array(np.arange(len(key_array)), pa.int64()),
            "dim": pa.array(np.full(len(key_array), code), pa.int8()),
            "k1": pa.array(key_array[:, 0]),
            "k2": pa.array(key_array[:, 1]),
            "d": pa.array(days.astype(date), pa.date32()),
            "shift": pa.array(shift, pa.int32()),
            "end_at": pa.array(((days.astype(np.int64) + 1) * 86_400_000_000).astype("datetime64[us]")),
        }
    )
    dictionary = store.dictionary
    parts: list[pa.Table] = []
    with connect(memory_limit=store.memory_limit) as con:
        con.register("q", requests)
        con.register("wanted", pa.table({"feature_id": pa.array([d.id for d in dictionary.derived], pa.int32())}))
        tile_files = store._tile_files(store.tiles_dir, None, ref_day)
        if tile_files:
            columns = "t.cnt, t.total, t.sumsq, t.vmin, t.vmax, t.last_value"
            plan = sql.window_plan(dictionary, _shifted(tile_files, columns, with_last_at=True), ref_day)
            if plan is not None:
                parts.append(unpivot(con.sql(plan.sql).to_arrow_table(), plan))
        distinct_files = store._tile_files(store.distinct_dir, None, ref_day)
        queries: list[str] = []
        if distinct_files:
            query = sql.distinct_values_sql(
                dictionary, _shifted(distinct_files, "t.dvalue", with_last_at=False), ref_day
            )
            if query:
                queries.append(query)
        queries += _table_queries(store, dimension)
        if queries:
            union = " UNION ALL ".join(f"({q})" for q in queries)
            parts.append(
                con.sql(
                    "SELECT CAST(dim AS TINYINT) AS dim, CAST(k1 AS BIGINT) AS k1, CAST(k2 AS BIGINT) AS k2, "
                    f"CAST(feature_id AS INTEGER) AS feature_id, CAST(value AS DOUBLE) AS value FROM ({union}) u"
                ).to_arrow_table()
            )
    if not parts:
        return FeatureMatrix(dimension, key_array, feature_ids, sparse.csr_matrix((len(key_array), len(feature_ids))))
    table = pa.concat_tables(
        [p.select(["dim", "k1", "k2", "feature_id", "value"]).cast(parts[0].schema) for p in parts]
    )
    table = table.filter(pa.compute.equal(table.column("dim"), code))
    table = present(table, ref_day, dictionary)
    rows = table.column("k1").to_numpy()
    fid = table.column("feature_id").to_numpy()
    cols = np.searchsorted(feature_ids, fid)
    keep = (cols < len(feature_ids)) & (feature_ids[np.minimum(cols, len(feature_ids) - 1)] == fid)
    matrix = sparse.csr_matrix(
        (table.column("value").to_numpy()[keep], (rows[keep], cols[keep])),
        shape=(len(key_array), len(feature_ids)),
        dtype=np.float64,
    )
    return FeatureMatrix(dimension, key_array, feature_ids, matrix)


def _table_queries(store: FeatureStore, dimension: Dimension) -> list[str]:
    """Table-sourced features per request row: the row's current value when it existed by the as-of day's end."""
    out = []
    for base in store.dictionary.base_features:
        source = base.source
        if not isinstance(source, TableSource) or TABLE_DIMENSION[source.table] != dimension:
            continue
        path = store.lake.dimension_path(source.table)
        if not path.exists():
            continue
        columns = {c: f"t.{c}" for c in source.value.names}
        fid = base.id * 10_000 + FUNCTION_CODES[Function.LAST] * 10 + WINDOWS["all"][0]
        value = f"CAST({source.value.to_sql(columns, dialect='duckdb')} AS DOUBLE)"
        out.append(
            f"SELECT q.dim, q.row AS k1, 0 AS k2, {fid} AS feature_id, v AS value FROM ("
            f"SELECT q.row, q.dim, {value} AS v FROM q JOIN read_parquet({sql.quote(str(path))}) t "
            "ON t.id = q.k1 AND t.created_at < q.end_at) q WHERE v IS NOT NULL AND v <> 0"
        )
    return out
