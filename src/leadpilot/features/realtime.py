"""Real-time fusion: the newest batch values merged with the events that arrived since, same definitions.

``get_online_features`` answers from the online store when none of the requested entities has an event
after the newest batch day (the common case: one indexed lookup in the CRM database, then the store).
For entities with such events it recomputes their windows exactly: the stored tiles up to the batch day,
plus tiles built on the fly (by the same engine and SQL) from the CRM event log's newer events, merged as
of the request time.  So a lookup at time t equals an offline recompute at t (tested).
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from scipy import sparse
from sqlalchemy import Engine, select

from leadpilot.crm.models import Event, Lead
from leadpilot.features.dictionary import Dimension
from leadpilot.features.lake import EVENT_SCHEMA
from leadpilot.features.online import OnlineStore
from leadpilot.features.sql import DIMENSION_CODES, earliest_tile_day
from leadpilot.features.store import FeatureMatrix, FeatureStore, FeatureStoreError, anchors_to_days


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
        runs = self.store.runs()
        if not runs:
            raise FeatureStoreError("no features computed yet: run `leadpilot features compute`")
        batch = runs[-1]
        start = datetime.combine(batch + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
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
    values = anchors_to_days(fid, raw.column("value").to_numpy(), at.timestamp(), store.dictionary)
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
