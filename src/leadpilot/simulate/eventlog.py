"""Columnar event batches and the fast write path of the simulated event log.

A batch holds one column per event field as numpy arrays (lead position, time in simulated days, type
code, actor, payload JSON text), so a chunk of leads becomes millions of events without one Python dict
per event. ``write_batch`` sorts a batch by (lead, time, emission order), reserves ids through the same
allocator as every bulk path (``allocate_ids``) and inserts pre-built tuples: one ``executemany`` on
SQLite, ``COPY`` on PostgreSQL, in the caller's transaction.

The history is a backfill, not live activity, so these events are not delivered to event-bus
subscribers or published to the Redis stream (50 M historical events would flood both).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from leadpilot.crm.models import Event
from leadpilot.db.bulk import allocate_ids
from leadpilot.simulate.world import START

_START_US = np.datetime64(START.isoformat(), "us")
_INSERT = (
    'INSERT INTO "events" ("id", "type", "lead_id", "actor_id", "occurred_at", "recorded_at", "payload") '
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_COPY = 'COPY "events" ("id", "type", "lead_id", "actor_id", "occurred_at", "recorded_at", "payload") FROM STDIN'


def payload_json(payload: object) -> str:
    """A payload as stored: compact JSON, UTF-8 (the store parses it back into a dict)."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


@dataclass
class EventBatch:
    """The events of one chunk of leads, as column blocks appended in emission order."""

    types: tuple[str, ...]  # type code → event type name
    end_day: float  # events at or after the end of the history are dropped
    _lead: list[np.ndarray] = field(default_factory=list)
    _day: list[np.ndarray] = field(default_factory=list)
    _type: list[np.ndarray] = field(default_factory=list)
    _actor: list[np.ndarray] = field(default_factory=list)
    _payload: list[np.ndarray] = field(default_factory=list)

    def add(
        self, type_: str, lead: np.ndarray, day: np.ndarray, actor: np.ndarray | None, payload: np.ndarray | str
    ) -> None:
        """Append events of one type: per event its lead position, day, actor user id (-1: none) and payload."""
        keep = day < self.end_day
        n = int(keep.sum())
        if n == 0:
            return
        self._lead.append(lead[keep])
        self._day.append(day[keep])
        self._type.append(np.full(n, self.types.index(type_), dtype=np.int8))
        self._actor.append(np.full(n, -1, dtype=np.int64) if actor is None else actor[keep])
        if isinstance(payload, str):
            self._payload.append(np.full(n, payload, dtype=object))
        else:
            self._payload.append(payload[keep].astype(object, copy=False))

    def __len__(self) -> int:
        return sum(int(b.shape[0]) for b in self._lead)

    def counts(self) -> dict[str, int]:
        """Events per type in this batch."""
        codes = np.concatenate(self._type) if self._type else np.zeros(0, dtype=np.int8)
        per_code = np.bincount(codes, minlength=len(self.types))
        return {t: int(c) for t, c in zip(self.types, per_code, strict=True) if c}

    def rows(self, lead_ids: np.ndarray, first_id: list[int], *, postgres: bool) -> list[tuple[Any, ...]]:
        """Rows (id, type, lead_id, actor_id, occurred_at, recorded_at, payload) in (lead, time, emission) order.

        ``lead_ids`` maps a lead position to its id; ``first_id`` are the reserved event ids, one per event.
        """
        lead = np.concatenate(self._lead)
        day = np.concatenate(self._day)
        emitted = np.arange(lead.shape[0])  # ties (a call and its connection) keep their emission order
        order = np.lexsort((emitted, day, lead))
        type_names = np.array(self.types, dtype=object)[np.concatenate(self._type)[order]]
        actor = np.concatenate(self._actor)[order].astype(object)
        actor[actor == -1] = None
        stamps = timestamps(day[order], postgres=postgres)
        payload = np.concatenate(self._payload)[order]
        return list(
            zip(
                first_id,
                type_names.tolist(),
                lead_ids[lead[order]].tolist(),
                actor.tolist(),
                stamps,
                stamps,  # recorded when it happened: the history is a backfill of the log
                payload.tolist(),
                strict=True,
            )
        )


def timestamps(days: np.ndarray, *, postgres: bool) -> list[str]:
    """Simulated days as the store's timestamp text (UTC, microseconds), formatted in bulk by numpy.

    SQLite holds SQLAlchemy's ``YYYY-MM-DD HH:MM:SS.ffffff``; PostgreSQL gets the same with ``+00``.
    """
    micros = np.rint(days * 86_400e6).astype(np.int64)
    text = np.datetime_as_string(_START_US + micros.astype("timedelta64[us]"), unit="us").astype("U26")
    text.view(np.uint32).reshape(-1, 26)[:, 10] = ord(" ")  # ISO 'T' → SQLAlchemy's space
    if postgres:
        text = np.char.add(text, "+00")
    return list(text.tolist())


def write_batch(session: Session, batch: EventBatch, lead_ids: np.ndarray) -> int:
    """Insert a batch into the event log in the session's transaction; returns how many events were written."""
    count = len(batch)
    if not count:
        return 0
    conn = session.connection()
    postgres = conn.dialect.name == "postgresql"
    ids = allocate_ids(session, Event.__table__, count)  # type: ignore[arg-type]
    rows = batch.rows(lead_ids, ids, postgres=postgres)
    driver: Any = conn.connection.driver_connection
    if postgres:
        with driver.cursor() as cursor, cursor.copy(_COPY) as copy:
            for row in rows:
                copy.write_row(row)
    else:
        driver.executemany(_INSERT, rows)
    return count


@contextmanager
def bulk_load(conn: Connection) -> Iterator[None]:
    """Tune a SQLite connection for loading the history, and put everything back afterwards.

    The event log's secondary indexes are dropped for the load and rebuilt once at the end (a sorted
    build is several times faster than 50 M random index inserts); the rebuild also runs when the
    load fails, so the schema is never left without them. Durability is relaxed while loading
    (``synchronous=OFF``: a crash mid-way leaves a half-written simulation either way) and the page
    cache enlarged. PostgreSQL is left as it is (COPY keeps its indexes up to date efficiently).
    """
    if conn.dialect.name != "sqlite":
        yield
        return
    driver: Any = conn.connection.driver_connection
    saved = {name: driver.execute(f"PRAGMA {name}").fetchone()[0] for name in ("synchronous", "cache_size", "threads")}
    indexes = driver.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
    ).fetchall()
    driver.execute("PRAGMA synchronous=OFF")
    driver.execute("PRAGMA cache_size=-524288")  # 512 MiB
    driver.execute("PRAGMA threads=2")  # the index builds sort with a helper thread
    for name, _sql in indexes:
        driver.execute(f'DROP INDEX "{name}"')
    try:
        yield
    finally:
        if conn.in_transaction():
            conn.rollback()
        for _name, sql in indexes:
            driver.execute(sql)
        for name, value in saved.items():
            driver.execute(f"PRAGMA {name}={int(value)}")
