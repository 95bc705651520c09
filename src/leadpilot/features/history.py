"""Zipper-table (SCD type 2) history of feature values in DuckDB: a row per value and the days it held.

A row ``(dim, k1, k2, feature_id, value, valid_from, valid_to)`` says the feature had ``value`` as of the end
of every day in ``[valid_from, valid_to)`` (``valid_to`` NULL: still current).  Applying a day's snapshot only
writes rows for values that changed, so the table grows with change, not with days.  Snapshots may arrive out
of order (backfill): a changed value is written up to the next day already applied, and the value that day
had is kept after it.  Absent means zero (the matrices are sparse).
"""

from __future__ import annotations

from datetime import date
from typing import Any

import duckdb
import pyarrow as pa

HISTORY_DDL = """
CREATE TABLE IF NOT EXISTS history (
    dim TINYINT NOT NULL, k1 BIGINT NOT NULL, k2 BIGINT NOT NULL, feature_id INTEGER NOT NULL,
    value DOUBLE NOT NULL, valid_from DATE NOT NULL, valid_to DATE
);
CREATE TABLE IF NOT EXISTS runs (
    day DATE PRIMARY KEY, dim_mask INTEGER NOT NULL, computed_at TIMESTAMP NOT NULL,
    values_written BIGINT NOT NULL, rows_changed BIGINT NOT NULL
);
"""


def _one(con: duckdb.DuckDBPyConnection, query: str, params: list[object] | None = None) -> tuple[Any, ...] | None:
    """The first row of a query, with the result read to the end (DuckDB refuses new work on the
    connection while a result is only partly fetched)."""
    rows = con.execute(query, params or []).fetchall()
    return rows[0] if rows else None


def apply_snapshot(
    con: duckdb.DuckDBPyConnection,
    snapshot: pa.Table,
    day: date,
    dims: list[int],
    *,
    groups: pa.Table | None = None,
    always: list[int] | None = None,
    partition: tuple[int, int] | None = None,
) -> int:
    """Fold one day's snapshot (for ``dims``) into the history; returns the number of keys that changed.

    The snapshot is complete, or (``groups`` given) complete for those (dim, k1, k2, base_id, bucket) groups
    plus every feature of the base ids in ``always``: history rows outside them are left alone. With
    ``partition`` (p, n) the snapshot covers only entities with ``k1 mod n = p``, and so does the comparison.
    Runs inside the caller's transaction: a failure leaves the history as it was.
    """
    con.register("snap_in", snapshot)
    d = f"DATE '{day.isoformat()}'"
    dim_list = ", ".join(str(x) for x in dims)
    nxt = _one(con, "SELECT min(day) FROM runs WHERE day > ?", [day])
    next_day = nxt[0] if nxt else None
    nd = f"DATE '{next_day.isoformat()}'" if next_day else "NULL"
    con.execute("CREATE OR REPLACE TEMP TABLE snap AS SELECT * FROM snap_in")
    covering = f"h.dim IN ({dim_list}) AND h.valid_from <= {d} AND (h.valid_to IS NULL OR h.valid_to > {d})"
    if partition is not None:
        covering += f" AND h.k1 % {int(partition[1])} = {int(partition[0])}"
    if groups is None:
        con.execute(f"CREATE OR REPLACE TEMP TABLE cur AS SELECT h.* FROM history h WHERE {covering}")
    else:
        con.register("groups_in", groups)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE cur AS SELECT h.* FROM history h SEMI JOIN ("
            "SELECT dim, k1, k2, CAST(base_id AS INTEGER) * 100 + CAST(bucket AS INTEGER) AS grp FROM groups_in) g "
            f"ON h.dim = g.dim AND h.k1 = g.k1 AND h.k2 = g.k2 AND h.feature_id // 100 = g.grp WHERE {covering}"
        )
        if always:
            con.execute(
                f"INSERT INTO cur SELECT h.* FROM history h WHERE {covering} "
                f"AND h.feature_id // 10000 IN ({', '.join(map(str, always))})"
            )
    # Keys whose value on `day` differs from what the history says (appeared, vanished or changed).
    # A history row is identified by its key and valid_from (rowids are not used: they are not stable
    # across the deletes and inserts of one transaction).
    con.execute(
        "CREATE OR REPLACE TEMP TABLE changed AS SELECT "
        "COALESCE(s.dim, c.dim) AS dim, COALESCE(s.k1, c.k1) AS k1, COALESCE(s.k2, c.k2) AS k2, "
        "COALESCE(s.feature_id, c.feature_id) AS feature_id, s.value AS new_value, c.value AS old_value, "
        "c.valid_from AS old_from, c.valid_to AS old_to "
        "FROM snap s FULL OUTER JOIN cur c ON s.dim = c.dim AND s.k1 = c.k1 AND s.k2 = c.k2 "
        "AND s.feature_id = c.feature_id WHERE s.value IS DISTINCT FROM c.value"
    )
    found = _one(con, "SELECT count(*) FROM changed")
    n_changed = int(found[0]) if found else 0
    if not n_changed:
        return 0
    same_row = "h.dim = c.dim AND h.k1 = c.k1 AND h.k2 = c.k2 AND h.feature_id = c.feature_id"
    if next_day is not None:
        # The old value was verified on the next applied day: keep it from there on.
        con.execute(
            "INSERT INTO history SELECT dim, k1, k2, feature_id, old_value, "
            f"{nd}, old_to FROM changed WHERE old_from IS NOT NULL AND (old_to IS NULL OR old_to > {nd})"
        )
    con.execute(
        f"DELETE FROM history h USING changed c WHERE {same_row} AND h.valid_from = c.old_from AND c.old_from = {d}"
    )
    con.execute(
        f"UPDATE history h SET valid_to = {d} FROM changed c "
        f"WHERE {same_row} AND h.valid_from = c.old_from AND c.old_from < {d}"
    )
    con.execute(
        f"INSERT INTO history SELECT dim, k1, k2, feature_id, new_value, {d}, {nd} "
        "FROM changed WHERE new_value IS NOT NULL"
    )
    # The history is kept merged, so after a fold only the row just written, [d, nd), can have a neighbour
    # with its value: a row ending at d or one starting at nd (the clipped and re-opened rows hold the old
    # value, which differs). Only keys with such a neighbour need merging; on a first fold or a plain daily
    # one there are none, and the history is not scanned key by key at all.
    neighbour = f"h.valid_to = {d}" if next_day is None else f"(h.valid_to = {d} OR h.valid_from = {nd})"
    con.execute(
        "CREATE OR REPLACE TEMP TABLE touched_keys AS SELECT DISTINCT c.dim, c.k1, c.k2, c.feature_id "
        f"FROM changed c JOIN (SELECT * FROM history h WHERE {neighbour}) h ON {same_row} "
        "WHERE c.new_value IS NOT NULL AND h.value = c.new_value"
    )
    _coalesce(con)
    return n_changed


def _coalesce(con: duckdb.DuckDBPyConnection) -> None:
    """Merge back-to-back rows with the same value for the keys in ``touched_keys`` (one row per run of a value)."""
    same_row = "h.dim = c.dim AND h.k1 = c.k1 AND h.k2 = c.k2 AND h.feature_id = c.feature_id"
    found = _one(con, "SELECT count(*) FROM touched_keys")
    if not found or not found[0]:
        return
    con.execute(
        "CREATE OR REPLACE TEMP TABLE islands AS SELECT dim, k1, k2, feature_id, value, min(valid_from) AS valid_from, "
        "CASE WHEN bool_or(valid_to IS NULL) THEN NULL ELSE max(valid_to) END AS valid_to, count(*) AS n FROM ("
        "SELECT *, sum(starts) OVER (PARTITION BY dim, k1, k2, feature_id ORDER BY valid_from) AS island FROM ("
        "SELECT *, CASE WHEN lag(valid_to) OVER w = valid_from AND lag(value) OVER w = value THEN 0 ELSE 1 END "
        "AS starts FROM (SELECT h.* FROM history h SEMI JOIN touched_keys c ON "
        f"{same_row}) t WINDOW w AS (PARTITION BY dim, k1, k2, feature_id ORDER BY valid_from))) "
        "GROUP BY dim, k1, k2, feature_id, value, island"
    )
    merged = _one(con, "SELECT count(*) FROM islands WHERE n > 1")
    if not merged or not merged[0]:
        return
    con.execute(f"DELETE FROM history h USING touched_keys c WHERE {same_row}")
    con.execute("INSERT INTO history SELECT dim, k1, k2, feature_id, value, valid_from, valid_to FROM islands")


def prune(con: duckdb.DuckDBPyConnection, cutoff: date) -> int:
    """Drop what ended before ``cutoff`` and clip what spans it; returns the rows removed."""
    c = f"DATE '{cutoff.isoformat()}'"
    found = _one(con, f"SELECT count(*) FROM history WHERE valid_to IS NOT NULL AND valid_to <= {c}")
    removed = int(found[0]) if found else 0
    con.execute(f"DELETE FROM history WHERE valid_to IS NOT NULL AND valid_to <= {c}")
    con.execute(f"UPDATE history SET valid_from = {c} WHERE valid_from < {c}")
    con.execute(f"DELETE FROM runs WHERE day < {c}")
    return removed
