"""Real-time fusion: the newest batch values merged with the events that arrived since, same definitions.

``get_online_features`` answers from the online store when none of the requested entities has an event
after the newest batch day (the common case: one indexed lookup in the CRM database, then the store).
For entities with such events it recomputes their windows exactly: the stored tiles up to the batch day,
plus tiles built on the fly (by the same engine and SQL) from the CRM event log's newer events, merged as
of the request time.  So a lookup at time t equals an offline recompute at t (tested).

A long-lived :class:`OnlineFeatures` also serves single entities fast (:meth:`OnlineFeatures.rows`, used by
the scoring service's online score): the newest batch day is cached until the store's file changes, and
the windows of the entities whose tiles left a window since the batch (the same for every request of a
day) are recomputed once per day for all of them in one engine run and kept (as DAYS_SINCE anchors, turned
into days at each request), so only entities with events since the batch still pay a recompute.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import sparse
from sqlalchemy import Engine, bindparam, or_, select

from leadpilot.crm.models import Event, Lead
from leadpilot.features.dictionary import Dimension, Function
from leadpilot.features.lake import EVENT_SCHEMA
from leadpilot.features.online import OnlineStore, unpack
from leadpilot.features.sql import DIMENSION_CODES, earliest_tile_day
from leadpilot.features.store import FeatureMatrix, FeatureStore, FeatureStoreError, anchors_to_days

# One entity's features: ids and values (DAYS_SINCE as anchors until served).
_Row = tuple[np.ndarray, np.ndarray]


def _naive(t: datetime) -> datetime:
    return t.astimezone(UTC).replace(tzinfo=None)


def _delta_events(
    crm: Engine, dimension: Dimension, keys: Sequence[tuple[int, int]], start: datetime, at: datetime
) -> pa.Table:
    """Events in [start, at) that feed the requested entities."""
    k1s = sorted({k[0] for k in keys})
    query = select(Event.id, Event.type, Event.lead_id, Event.actor_id, Event.occurred_at, Event.payload).where(
        Event.occurred_at >= start, Event.occurred_at < at
    )
    if dimension is Dimension.LEAD:
        query = query.where(Event.lead_id.in_(k1s))
    elif dimension is Dimension.SALESPERSON:
        query = query.where(Event.actor_id.in_(k1s))
    elif dimension is Dimension.ACCOUNT:
        query = query.where(Event.lead_id.in_(select(Lead.id).where(Lead.account_id.in_(k1s))))
    else:
        query = query.where(Event.lead_id.in_(k1s), Event.actor_id.in_(sorted({k[1] for k in keys})))
    with crm.connect() as conn:
        rows = conn.execute(query.order_by(Event.id)).all()
    return pa.table(
        [
            pa.array([r[0] for r in rows], pa.int64()),
            pa.array([r[1] for r in rows], pa.string()),
            pa.array([r[2] for r in rows], pa.int64()),
            pa.array([r[3] for r in rows], pa.int64()),
            pa.array([_naive(r[4]) for r in rows], pa.timestamp("us")),
            pa.array([json.dumps(r[5]) for r in rows], pa.string()),
        ],
        schema=EVENT_SCHEMA,
    )


def _leads_with(crm: Engine, store: FeatureStore, lead_ids: list[int]) -> pa.Table:
    """The lake's leads plus, fresh from the CRM, the leads the new events talk about (some may be new)."""
    lake = pq.read_table(store.lake.dimension_path("leads"))
    with crm.connect() as conn:
        rows = conn.execute(
            select(
                Lead.id, Lead.account_id, Lead.product_line, Lead.region, Lead.source, Lead.budget, Lead.created_at
            ).where(Lead.id.in_(lead_ids))
        ).all()
    fresh = pa.table(
        {
            "id": pa.array([r[0] for r in rows], pa.int64()),
            "account_id": pa.array([r[1] for r in rows], pa.int64()),
            "product_line": pa.array([r[2] for r in rows], pa.string()),
            "region": pa.array([r[3] for r in rows], pa.string()),
            "source": pa.array([r[4] for r in rows], pa.string()),
            "budget": pa.array([r[5] for r in rows], pa.float64()),
            "created_at": pa.array([_naive(r[6]) for r in rows], pa.timestamp("us")),
        }
    )
    keep = pc.invert(pc.is_in(lake.column("id"), value_set=fresh.column("id")))
    return pa.concat_tables([lake.filter(keep).cast(fresh.schema), fresh])


def _touched(
    dimension: Dimension, events: pa.Table, leads: pa.Table | None, keys: Sequence[tuple[int, int]]
) -> set[tuple[int, int]]:
    lead_ids = events.column("lead_id").to_pylist()
    actors = events.column("actor_id").to_pylist()
    if dimension is Dimension.LEAD:
        found = {(lead, 0) for lead in lead_ids if lead is not None}
    elif dimension is Dimension.SALESPERSON:
        found = {(actor, 0) for actor in actors if actor is not None}
    elif dimension is Dimension.ACCOUNT and leads is not None:
        account_of = dict(zip(leads.column("id").to_pylist(), leads.column("account_id").to_pylist(), strict=True))
        found = {(account_of[lead], 0) for lead in lead_ids if account_of.get(lead) is not None}
    else:
        found = {(lead, actor) for lead, actor in zip(lead_ids, actors, strict=True) if None not in (lead, actor)}
    return found & set(keys)


class OnlineFeatures:
    """Serves fused features; remembers, per batch and request day, which entities' windows slid."""

    def __init__(self, store: FeatureStore, online: OnlineStore, crm: Engine) -> None:
        self.store = store
        self.online = online
        self.crm = crm
        self._sliding: dict[tuple[date, date], set[tuple[int, int, int]]] = {}
        self._batch: tuple[tuple[int, ...], date] | None = None  # (store file stamp, newest run)
        # (batch, day) -> dimension -> key -> (feature ids, values with DAYS_SINCE as anchors)
        self._slid_rows: dict[tuple[date, date], dict[Dimension, dict[tuple[int, int], _Row]]] = {}
        self._lock = threading.Lock()
        self._since_ids: np.ndarray | None = None  # the DAYS_SINCE feature ids, sorted

    def _store_stamp(self) -> tuple[int, ...] | None:
        stamp: list[int] = []
        for path in (self.store.db_path, self.store.db_path.with_name(self.store.db_path.name + ".wal")):
            try:
                st = path.stat()
            except FileNotFoundError:
                stamp += [0, 0]
                continue
            except OSError:
                return None
            stamp += [st.st_mtime_ns, st.st_size, st.st_ino]
        return tuple(stamp)

    def newest_batch(self) -> date:
        """The newest computed day (cached until the store's database file changes)."""
        stamp = self._store_stamp()
        cached = self._batch
        if stamp is not None and cached is not None and cached[0] == stamp:
            return cached[1]
        runs = self.store.runs()
        if not runs:
            raise FeatureStoreError("no features computed yet: run `leadpilot features compute`")
        after = self._store_stamp()
        self._batch = (stamp, runs[-1]) if stamp is not None and after == stamp else None
        return runs[-1]

    def sliding(self, batch: date, day: date) -> set[tuple[int, int, int]]:
        """(dim, k1, k2) of entities with a tile that left a window between the batch day and ``day``."""
        if day <= batch:
            return set()
        cached = self._sliding.get((batch, day))
        if cached is None:
            groups = self.store._affected_groups(batch, day, entering=False)
            cached = set(
                zip(
                    groups.column("dim").to_pylist(),
                    groups.column("k1").to_pylist(),
                    groups.column("k2").to_pylist(),
                    strict=True,
                )
            )
            self._sliding = {(batch, day): cached}  # one day's set is enough
        return cached

    def get(
        self, dimension: Dimension, keys: Sequence[tuple[int, int]], *, at: datetime | None = None
    ) -> FeatureMatrix:
        """Features of ``keys`` at ``at`` (default now): the newest batch plus every event since, fused."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        keys = [(int(k[0]), int(k[1])) for k in keys]
        batch = self.newest_batch()
        start = _batch_end(batch)
        if at < start:
            raise FeatureStoreError(f"{at.isoformat()} is before the end of the newest batch day {batch}: use as_of")
        served = self.online.get_many(dimension, keys, now=at)
        events = _delta_events(self.crm, dimension, keys, start, at)
        lead_ids = sorted({x for x in events.column("lead_id").to_pylist() if x is not None})
        leads = _leads_with(self.crm, self.store, lead_ids) if lead_ids else None
        touched = _touched(dimension, events, leads, keys) if events.num_rows else set()
        code = DIMENSION_CODES[dimension]
        day = (at - timedelta(microseconds=1)).date()
        slid = self.sliding(batch, day)
        touched |= {k for k in keys if (code, k[0], k[1]) in slid}
        if not touched:
            return served
        if leads is None:
            leads = pq.read_table(self.store.lake.dimension_path("leads"))
        fused = _recompute(self.store, dimension, sorted(touched), events, leads, at, batch)
        return _merge(served, fused)

    def rows(
        self, requests: Sequence[tuple[Dimension, tuple[int, int]]], *, at: datetime | None = None
    ) -> list[dict[int, float]]:
        """Fused features of a few single entities, ``{feature id: value}`` per request: the values of :meth:`get`.

        The fast path for one lead's online score: one query for the requested entities' events since the
        batch, one online-store lookup per entity, and the day's windows of entities whose tiles left a
        window from a per-day cache. An entity with events since the batch goes through :meth:`get`.
        """
        return [dict(zip(i.tolist(), v.tolist(), strict=True)) for i, v in self.vectors(requests, at=at)]

    def vectors(
        self, requests: Sequence[tuple[Dimension, tuple[int, int]]], *, at: datetime | None = None
    ) -> list[_Row]:
        """:meth:`rows` as (feature ids, values) arrays (no zeros: an absent id has no value)."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        batch = self.newest_batch()
        start = _batch_end(batch)
        if at < start:
            raise FeatureStoreError(f"{at.isoformat()} is before the end of the newest batch day {batch}: use as_of")
        wanted = [(dimension, (int(k[0]), int(k[1]))) for dimension, k in requests]
        fresh = self._entities_with_events(wanted, start, at)
        day = (at - timedelta(microseconds=1)).date()
        now = at.timestamp()
        out: list[_Row] = []
        for dimension, key in wanted:
            if (dimension, key) in fresh:
                matrix = self.get(dimension, [key], at=at)
                r = matrix.matrix.getrow(0)
                out.append((matrix.feature_ids[r.indices].astype(np.int64), r.data.astype(np.float64)))
                continue
            slid = self.slid_rows(dimension, batch, day).get(key) if day > batch else None
            if slid is None:
                blob = self.online._blobs(dimension, [key])[0]
                slid = unpack(blob) if blob is not None else (np.zeros(0, np.int64), np.zeros(0))
            ids, values = slid
            out.append((ids, self._days_since(ids, values, now)))
        return out

    def _days_since(self, ids: np.ndarray, values: np.ndarray, now: float) -> np.ndarray:
        """``anchors_to_days`` with the DAYS_SINCE ids looked up in a cached mask (same arithmetic)."""
        since_ids = self._since_ids
        if since_ids is None:
            derived = self.store.dictionary.derived
            since_ids = np.array(sorted(d.id for d in derived if d.function is Function.DAYS_SINCE), dtype=np.int64)
            self._since_ids = since_ids
        out = values.astype(np.float64, copy=True)
        if not len(ids) or not len(since_ids):
            return out
        at_id = np.minimum(np.searchsorted(since_ids, ids), len(since_ids) - 1)
        since = since_ids[at_id] == ids
        if since.any():
            out[since] = (now - out[since]) / 86_400.0
        return out

    def slid_rows(self, dimension: Dimension, batch: date, day: date) -> dict[tuple[int, int], _Row]:
        """The windows at ``day`` of every entity of ``dimension`` with a tile that left a window since ``batch``.

        Computed once per (batch, day) for all of them, from the stored tiles only (events since the batch
        are not in it: :meth:`rows` sends entities with events to :meth:`get`); DAYS_SINCE stay anchors.
        """
        cached = self._slid_rows.get((batch, day), {}).get(dimension)
        if cached is not None:
            return cached
        with self._lock:
            per_day = self._slid_rows.get((batch, day))
            if per_day is None:
                per_day = {}
                self._slid_rows = {(batch, day): per_day}  # one day's rows are enough
            if dimension in per_day:
                return per_day[dimension]
            code = DIMENSION_CODES[dimension]
            keys = sorted((k1, k2) for dim, k1, k2 in self.sliding(batch, day) if dim == code)
            rows: dict[tuple[int, int], _Row] = {}
            if keys:
                at = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=12)
                leads = pq.read_table(self.store.lake.dimension_path("leads"))
                matrix = _recompute(self.store, dimension, keys, _no_events(), leads, at, batch, convert_anchors=False)
                csr = matrix.matrix.tocsr()
                csr.sort_indices()
                for i, key in enumerate(keys):
                    lo, hi = csr.indptr[i], csr.indptr[i + 1]
                    rows[key] = (matrix.feature_ids[csr.indices[lo:hi]].astype(np.int64), csr.data[lo:hi].copy())
            per_day[dimension] = rows
            return rows

    def warm(self, at: datetime | None = None, dimensions: Sequence[Dimension] | None = None) -> None:
        """Compute the newest batch, the sliding set and the slid rows of ``at``'s day now (not at a request)."""
        at = (at or datetime.now(UTC)).astimezone(UTC)
        batch = self.newest_batch()
        day = (at - timedelta(microseconds=1)).date()
        if at >= _batch_end(batch) and day > batch:
            for dimension in dimensions or list(Dimension):
                self.slid_rows(dimension, batch, day)

    def _entities_with_events(
        self, requests: list[tuple[Dimension, tuple[int, int]]], start: datetime, at: datetime
    ) -> set[tuple[Dimension, tuple[int, int]]]:
        """The requested entities that events in [start, at) feed (one query for all of them)."""
        params = {
            "start": start,
            "at": at,
            "leads": sorted({k[0] for d, k in requests if d in (Dimension.LEAD, Dimension.LEAD_SALESPERSON)}),
            "actors": sorted({k[0] for d, k in requests if d is Dimension.SALESPERSON}),
            "accounts": sorted({k[0] for d, k in requests if d is Dimension.ACCOUNT}),
        }
        with self.crm.connect() as conn:
            found = conn.execute(_EVENTS_SINCE, params).all()
        if not found:
            return set()
        lead_ids = {r[0] for r in found if r[0] is not None}
        actor_ids = {r[1] for r in found if r[1] is not None}
        account_ids = {r[2] for r in found if r[2] is not None}
        pairs = {(r[0], r[1]) for r in found if r[0] is not None and r[1] is not None}
        hit: set[tuple[Dimension, tuple[int, int]]] = set()
        for dimension, key in requests:
            if (
                (dimension is Dimension.LEAD and key[0] in lead_ids)
                or (dimension is Dimension.SALESPERSON and key[0] in actor_ids)
                or (dimension is Dimension.ACCOUNT and key[0] in account_ids)
                or (dimension is Dimension.LEAD_SALESPERSON and key in pairs)
            ):
                hit.add((dimension, key))
        return hit


# Events since the batch of the requested leads, salespeople and accounts (what ``_delta_events`` reads).
_EVENTS_SINCE = (
    select(Event.lead_id, Event.actor_id, Lead.account_id)
    .outerjoin(Lead, Lead.id == Event.lead_id)
    .where(
        Event.occurred_at >= bindparam("start"),
        Event.occurred_at < bindparam("at"),
        or_(
            Event.lead_id.in_(bindparam("leads", expanding=True)),
            Event.actor_id.in_(bindparam("actors", expanding=True)),
            Lead.account_id.in_(bindparam("accounts", expanding=True)),
        ),
    )
)


def _batch_end(batch: date) -> datetime:
    """The end of the batch day: online answers start there."""
    return datetime.combine(batch + timedelta(days=1), datetime.min.time(), tzinfo=UTC)


def _no_events() -> pa.Table:
    return EVENT_SCHEMA.empty_table()


def get_online_features(
    store: FeatureStore,
    online: OnlineStore,
    crm: Engine,
    dimension: Dimension,
    keys: Sequence[tuple[int, int]],
    *,
    at: datetime | None = None,
) -> FeatureMatrix:
    """One-off :meth:`OnlineFeatures.get` (a long-lived ``OnlineFeatures`` caches the sliding set)."""
    return OnlineFeatures(store, online, crm).get(dimension, keys, at=at)


def _recompute(
    store: FeatureStore,
    dimension: Dimension,
    touched: list[tuple[int, int]],
    events: pa.Table,
    leads: pa.Table,
    at: datetime,
    batch: date,
    *,
    convert_anchors: bool = True,
) -> FeatureMatrix:
    scratch = Path(tempfile.mkdtemp(prefix="leadpilot-fusion-"))
    try:
        pq.write_table(leads, scratch / "leads.parquet")
        if events.num_rows:
            pq.write_table(events, scratch / "events.parquet")
            store.engine.write_tiles(
                store.dictionary,
                event_files=[str(scratch / "events.parquet")],
                leads_file=str(scratch / "leads.parquet"),
                days=None,
                staging=scratch,
            )
        day = (at - timedelta(microseconds=1)).date()
        first = earliest_tile_day(store.dictionary, day)
        tables = {t: str(store.lake.dimension_path(t)) for t in ("accounts", "users")}
        tables["leads"] = str(scratch / "leads.parquet")
        code = DIMENSION_CODES[dimension]
        groups = pa.table(
            {
                "dim": pa.array([code] * len(touched), pa.int8()),
                "k1": pa.array([k[0] for k in touched], pa.int64()),
                "k2": pa.array([k[1] for k in touched], pa.int64()),
            }
        )
        raw = store.engine.window_values(
            store.dictionary,
            tile_files=store._tile_files(store.tiles_dir, first, batch) + _files(scratch / "tiles"),
            distinct_files=store._tile_files(store.distinct_dir, first, batch) + _files(scratch / "distinct"),
            table_files=tables,
            day=day,
            groups=groups,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wanted = set(touched)
    k1, k2 = raw.column("k1").to_numpy(), raw.column("k2").to_numpy()
    mask = (raw.column("dim").to_numpy() == code) & np.array(
        [(int(a), int(b)) in wanted for a, b in zip(k1, k2, strict=True)], dtype=bool
    )
    raw = raw.filter(pa.array(mask))
    feature_ids = store.feature_ids(dimension)
    index = {key: i for i, key in enumerate(touched)}
    rows = np.array(
        [
            index[(int(a), int(b))]
            for a, b in zip(raw.column("k1").to_numpy(), raw.column("k2").to_numpy(), strict=True)
        ],
        dtype=np.int64,
    )
    fid = raw.column("feature_id").to_numpy()
    values = raw.column("value").to_numpy()
    if convert_anchors:
        values = anchors_to_days(fid, values, at.timestamp(), store.dictionary)
    matrix = sparse.csr_matrix(
        (values, (rows, np.searchsorted(feature_ids, fid))), shape=(len(touched), len(feature_ids))
    )
    return FeatureMatrix(dimension, np.array(touched, dtype=np.int64).reshape(-1, 2), feature_ids, matrix)


def _files(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("day=*/*.parquet"))] if folder.exists() else []


def _merge(served: FeatureMatrix, fused: FeatureMatrix) -> FeatureMatrix:
    """``served`` with the rows of ``fused`` replacing those of the same keys."""
    position = {(int(a), int(b)): i for i, (a, b) in enumerate(fused.keys)}
    rows = []
    for a, b in served.keys:
        i = position.get((int(a), int(b)))
        rows.append(fused.matrix.getrow(i) if i is not None else None)
    out = [r if r is not None else served.matrix.getrow(n) for n, r in enumerate(rows)]
    matrix = sparse.vstack(out, format="csr") if out else served.matrix
    return FeatureMatrix(served.dimension, served.keys, served.feature_ids, matrix)
