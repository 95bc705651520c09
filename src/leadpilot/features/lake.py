"""The event lake: the CRM store's event log and entity tables copied, incrementally, into Parquet for the engines.

Events are append-only, so a sync copies the events past the lake's high-water mark into a new part file
(``events/part-<first id>-<last id>.parquet``, written to a temp name and renamed, then recorded in the
manifest: a crash leaves either the old lake or the new one).  Because a transaction can commit an id lower
than one already copied (PostgreSQL sequences hand ids out before commit), each sync also re-reads a trailing
window of ids and copies any it had not seen.  The small entity tables (leads, accounts, users) are
rewritten whole each time.  Events with a timestamp that does not parse or lies in the future are not copied;
they are reported by id.
"""

from __future__ import annotations

import gc
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from sqlalchemy import Engine, text

EVENT_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("type", pa.string()),
        ("lead_id", pa.int64()),
        ("actor_id", pa.int64()),
        ("occurred_at", pa.timestamp("us")),  # UTC, stored without a zone
        ("payload", pa.string()),
    ]
)
# Entity tables: (table, SQL columns) copied whole on every sync.
DIMENSIONS: dict[str, tuple[str, ...]] = {
    "leads": ("id", "account_id", "product_line", "region", "source", "budget", "created_at"),
    "accounts": ("id", "industry", "region", "size", "created_at"),
    "users": ("id", "role", "team_id", "daily_capacity", "created_at"),
}
LOOKBACK_IDS = 50_000  # ids re-read behind the high-water mark to catch late commits
FUTURE_TOLERANCE = timedelta(minutes=5)  # clock skew allowed before an event counts as "in the future"
MAX_REPORTED = 1_000

Progress = Callable[[int], None]


@dataclass
class RejectedEvent:
    """An event the lake refused, and why."""

    id: int
    reason: str


@dataclass
class SyncReport:
    """What one sync copied."""

    events_copied: int = 0
    late_events_copied: int = 0
    rejected: list[RejectedEvent] = field(default_factory=list)
    rejected_total: int = 0
    high_water_mark: int = 0
    parts: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "events_copied": self.events_copied,
            "late_events_copied": self.late_events_copied,
            "rejected_total": self.rejected_total,
            "rejected": [{"id": r.id, "reason": r.reason} for r in self.rejected[:MAX_REPORTED]],
            "high_water_mark": self.high_water_mark,
            "parts": self.parts,
        }


class EventLake:
    """A folder of Parquet files mirroring the CRM store's events and entities."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.events_dir = self.root / "events"
        self.manifest_path = self.root / "manifest.json"

    # -- manifest ---------------------------------------------------------------------------------------
    def manifest(self) -> dict[str, Any]:
        if not self.manifest_path.exists():
            return {"high_water_mark": 0, "parts": [], "rejected_ids": []}
        data: dict[str, Any] = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        return data

    def _write_manifest(self, data: dict[str, Any]) -> None:
        tmp = self.manifest_path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=1), encoding="utf-8")
        os.replace(tmp, self.manifest_path)

    @property
    def high_water_mark(self) -> int:
        return int(self.manifest()["high_water_mark"])

    def event_files(self) -> list[Path]:
        """Part files recorded in the manifest (a part written but not recorded is ignored)."""
        return [self.events_dir / name for name in self.manifest()["parts"]]

    def events_glob(self) -> str:
        return str(self.events_dir / "part-*.parquet")

    def dimension_path(self, table: str) -> Path:
        return self.root / f"{table}.parquet"

    # -- sync -------------------------------------------------------------------------------------------
    def sync(
        self,
        engine: Engine,
        *,
        now: datetime | None = None,
        chunk_rows: int = 500_000,
        progress: Progress | None = None,
    ) -> SyncReport:
        """Copy new events and the entity tables from the CRM store; safe to re-run at any time."""
        self.events_dir.mkdir(parents=True, exist_ok=True)
        now = now or datetime.now(UTC)
        horizon = (now + FUTURE_TOLERANCE).astimezone(UTC).replace(tzinfo=None)
        manifest = self.manifest()
        self._drop_unrecorded_parts(manifest)
        report = SyncReport(high_water_mark=int(manifest["high_water_mark"]))
        rejected_ids: set[int] = set(manifest.get("rejected_ids", []))
        with engine.connect() as conn:
            late = self._late_ids(conn, manifest, rejected_ids)
            if late:
                table = self._read_events(conn, "id IN (" + ",".join(map(str, late)) + ")", None, report, horizon)
                rejected_ids.update(r.id for r in report.rejected)
                if table.num_rows:
                    report.late_events_copied = table.num_rows
                    self._add_part(manifest, table, report)
            while True:
                table = self._read_events(conn, f"id > {report.high_water_mark}", chunk_rows, report, horizon)
                rejected_ids.update(r.id for r in report.rejected)
                last = self._last_read_id
                if last is None:
                    break
                report.high_water_mark = max(report.high_water_mark, last)
                if table.num_rows:
                    report.events_copied += table.num_rows
                    self._add_part(manifest, table, report)
                manifest["high_water_mark"] = report.high_water_mark
                manifest["rejected_ids"] = sorted(rejected_ids)[-MAX_REPORTED * 10 :]
                self._write_manifest(manifest)
                if progress:
                    progress(table.num_rows)
            for table_name, columns in DIMENSIONS.items():
                self._copy_dimension(conn, table_name, columns)
        manifest["synced_at"] = now.isoformat()
        manifest["rejected_ids"] = sorted(rejected_ids)[-MAX_REPORTED * 10 :]
        self._write_manifest(manifest)
        return report

    _last_read_id: int | None = None

    def _drop_unrecorded_parts(self, manifest: dict[str, Any]) -> None:
        recorded = set(manifest["parts"])
        for path in self.events_dir.glob("part-*"):
            if path.name not in recorded:
                path.unlink()  # left by a sync that crashed before recording it

    def _late_ids(self, conn: Any, manifest: dict[str, Any], rejected: set[int]) -> list[int]:
        """Ids at or below the high-water mark that committed after the last sync read past them."""
        hwm = int(manifest["high_water_mark"])
        if hwm == 0:
            return []
        low = max(0, hwm - LOOKBACK_IDS)
        in_db = np.array(
            [r[0] for r in conn.execute(text(f"SELECT id FROM events WHERE id > {low} AND id <= {hwm}"))],
            dtype=np.int64,
        )
        if not in_db.size:
            return []
        seen = self._copied_ids_above(manifest, low)
        missing = np.setdiff1d(in_db, seen, assume_unique=True)
        return [int(i) for i in missing if int(i) not in rejected]

    def _copied_ids_above(self, manifest: dict[str, Any], low: int) -> np.ndarray:
        chunks = []
        for name in manifest["parts"]:
            last = int(name.split("-")[2].split(".")[0])
            if last > low:
                ids = pq.read_table(self.events_dir / name, columns=["id"]).column("id").to_numpy()
                chunks.append(ids[ids > low])
        return np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)

    def _fetch(self, conn: Any, sql: str) -> pa.Table:
        """Rows as an Arrow table, through the DBAPI.

        The rows are read with the driver's own cursor (plain tuples) and with Python's cyclic garbage
        collector paused: half a million fresh row tuples would otherwise trigger full collections over
        every live object again and again, which cost more than the read itself (4x at 500k rows a chunk).
        (ADBC's SQLite driver would be 5x faster but bundles its own SQLite, which neither sees commits
        still in the WAL nor leaves the -shm file usable by other connections: not safe on a live store.)
        """
        names = ("id", "type", "lead_id", "actor_id", "occurred_at", "payload")
        collecting = gc.isenabled()
        gc.disable()
        try:
            cursor = conn.connection.cursor()
            try:
                cursor.execute(sql)
                rows = cursor.fetchall()
            finally:
                cursor.close()
            columns = list(zip(*rows, strict=True)) if rows else [() for _ in names]
            del rows
            try:
                payload = pa.array(columns[5], pa.string())
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # JSON columns some drivers hand back parsed
                payload = pa.array(
                    [p if isinstance(p, str) or p is None else json.dumps(p) for p in columns[5]], pa.string()
                )
            return pa.table([pa.array(c) for c in columns[:5]] + [payload], names=list(names))
        finally:
            if collecting:
                gc.enable()

    def _read_events(self, conn: Any, where: str, limit: int | None, report: SyncReport, horizon: datetime) -> pa.Table:
        postgres = conn.dialect.name == "postgresql"
        at = "to_char(occurred_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')" if postgres else "occurred_at"
        payload = "payload::text" if postgres else "payload"
        sql = (
            f"SELECT id, type, lead_id, actor_id, {at} AS occurred_at, {payload} AS payload "
            f"FROM events WHERE {where} ORDER BY id"
        )
        if limit:
            sql += f" LIMIT {int(limit)}"
        raw = self._fetch(conn, sql)
        self._last_read_id = int(raw.column("id")[-1].as_py()) if raw.num_rows else None
        if not raw.num_rows:
            return EVENT_SCHEMA.empty_table()
        stamps = raw.column("occurred_at")
        occurred, bad = _parse_timestamps(stamps.to_pylist() if stamps.type != pa.string() else stamps)
        too_late = pc.fill_null(pc.greater(occurred, pa.scalar(horizon, pa.timestamp("us"))), False)
        keep = np.ones(raw.num_rows, dtype=bool)
        ids = raw.column("id")
        for i in bad:
            keep[i] = False
            self._reject(report, ids[i].as_py(), f"occurred_at {stamps[i].as_py()!r} is missing or not a timestamp")
        for late in np.flatnonzero(too_late.to_numpy(zero_copy_only=False)).tolist():
            i = int(late)
            keep[i] = False
            self._reject(report, ids[i].as_py(), f"occurred_at {stamps[i].as_py()} is in the future")
        table = pa.table(
            [
                ids.cast(pa.int64()),
                raw.column("type").cast(pa.string()),
                raw.column("lead_id").cast(pa.int64()),
                raw.column("actor_id").cast(pa.int64()),
                occurred,
                raw.column("payload").cast(pa.string()),
            ],
            schema=EVENT_SCHEMA,
        )
        return table if keep.all() else table.filter(pa.array(keep))

    @staticmethod
    def _reject(report: SyncReport, event_id: int, reason: str) -> None:
        report.rejected_total += 1
        if len(report.rejected) < MAX_REPORTED:
            report.rejected.append(RejectedEvent(int(event_id), reason))

    def _add_part(self, manifest: dict[str, Any], table: pa.Table, report: SyncReport) -> None:
        ids = table.column("id")
        name = f"part-{pc.min(ids).as_py():012d}-{pc.max(ids).as_py():012d}.parquet"
        if name in manifest["parts"]:  # late ids inside an existing part's range get a distinct name
            name = name.replace(".parquet", f"-{len(manifest['parts'])}.parquet")
        tmp = self.events_dir / (name + ".tmp")
        pq.write_table(table, tmp, compression="zstd", row_group_size=256_000)
        os.replace(tmp, self.events_dir / name)
        manifest["parts"].append(name)
        report.parts.append(name)
        self._write_manifest(manifest)

    def _copy_dimension(self, conn: Any, table_name: str, columns: tuple[str, ...]) -> None:
        postgres = conn.dialect.name == "postgresql"
        select = [
            "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
            if postgres and c == "created_at"
            else c
            for c in columns
        ]
        rows = conn.exec_driver_sql(f"SELECT {', '.join(select)} FROM {table_name} ORDER BY id").fetchall()
        cols = list(zip(*rows, strict=True)) if rows else [() for _ in columns]
        arrays: dict[str, pa.Array] = {}
        for name, values in zip(columns, cols, strict=True):
            if name == "created_at":
                arrays[name] = _parse_timestamps(list(values))[0]
            elif name in ("id", "account_id", "team_id", "daily_capacity"):
                arrays[name] = pa.array(values, pa.int64())
            elif name == "budget":
                arrays[name] = pa.array(values, pa.float64())
            else:
                arrays[name] = pa.array(values, pa.string())
        path = self.dimension_path(table_name)
        tmp = path.with_suffix(".parquet.tmp")
        pq.write_table(pa.table(arrays), tmp, compression="zstd")
        os.replace(tmp, path)


def _parse_timestamps(values: Any) -> tuple[pa.Array, list[int]]:
    """Timestamps (ISO text or datetimes, UTC) as an Arrow array; indices of the ones that would not parse."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, list) and values and isinstance(values[0], datetime):
        fixed = [v.astimezone(UTC).replace(tzinfo=None) if v and v.tzinfo else v for v in values]
        return pa.array(fixed, pa.timestamp("us")), [i for i, v in enumerate(values) if v is None]
    raw = values if isinstance(values, pa.Array) else pa.array(values, pa.string())
    try:
        parsed = pc.cast(raw, pa.timestamp("us"))
        bad = np.flatnonzero(pc.is_null(parsed).to_numpy(zero_copy_only=False)).tolist()
        return parsed, bad
    except pa.ArrowInvalid:
        out: list[datetime | None] = []
        bad = []
        for i, v in enumerate(raw.to_pylist()):
            try:
                stamp = datetime.fromisoformat(str(v))
                out.append(stamp.astimezone(UTC).replace(tzinfo=None) if stamp.tzinfo else stamp)
            except (TypeError, ValueError):
                out.append(None)
                bad.append(i)
        return pa.array(out, pa.timestamp("us")), bad
