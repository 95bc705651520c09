"""Feature pipeline: lake sync, DuckDB engine vs the pandas reference, zipper history, point-in-time retrieval."""

from __future__ import annotations

import gc
import random
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from leadpilot.crm.events import append_events_bulk
from leadpilot.crm.models import Account, Lead, User
from leadpilot.features import history
from leadpilot.features.dictionary import Dimension, load_default
from leadpilot.features.online import DatabaseOnlineStore, OnlineStore, RedisOnlineStore, materialize
from leadpilot.features.realtime import OnlineFeatures
from leadpilot.features.reference import reference_values
from leadpilot.features.sql import DIMENSION_CODES
from leadpilot.features.store import FeatureStore, FeatureStoreError
from tests.conftest import REDIS_URL, service_missing

START = datetime(2026, 1, 1, tzinfo=UTC)
DAYS = 40
PRODUCTS = ["housing", "used_cars", "recruitment", "local_services", None]
TODAY = date(2026, 6, 1)


def _event(rng: np.random.Generator, lead: int, actors: list[int], at: datetime) -> dict[str, Any]:
    kind = rng.choice(
        ["page_view", "call_attempt", "call_completed", "quote", "assign", "message", "form_submit", "stage_change"]
    )
    actor = int(rng.choice(actors)) if kind != "page_view" else None
    payload: dict[str, Any] = {
        "page_view": lambda: {"page": str(rng.choice(["/housing/pricing", "/cases", "/"]))},
        "call_attempt": lambda: {"purpose": "sales", "outcome": str(rng.choice(["connected", "busy", "no_answer"]))},
        "call_completed": lambda: {"duration_s": int(rng.integers(10, 900))},
        "quote": lambda: {"amount": float(rng.integers(1, 500)) * 100.0},
        "assign": lambda: {"to": int(rng.choice(actors))},
        "message": lambda: {"direction": str(rng.choice(["inbound", "outbound"]))},
        "form_submit": lambda: {"budget": float(rng.integers(0, 9)) * 1e5 if rng.random() < 0.8 else None},
        "stage_change": lambda: {"from": "negotiating", "to": str(rng.choice(["lost", "won", "qualified"]))},
    }[str(kind)]()
    return {"type": str(kind), "lead_id": lead, "actor_id": actor, "occurred_at": at, "payload": payload}


def seed_crm(engine: Engine, *, n_leads: int = 25, n_events: int = 900, seed: int = 7) -> dict[str, list[int]]:
    """Leads over four product lines (and none), salespeople, and events spread over DAYS days."""
    rng = np.random.default_rng(seed)
    with Session(engine) as s:
        users = [User(username=f"rep{i}", password_hash="x", role="sales", daily_capacity=10 + i) for i in range(4)]
        accounts = [Account(name=f"acct{i}", name_key=f"acct{i}", size=["small", "large"][i % 2]) for i in range(6)]
        s.add_all(users + accounts)
        s.flush()
        leads = [
            Lead(
                title=f"lead{i}",
                product_line=PRODUCTS[i % len(PRODUCTS)],
                account_id=accounts[i % len(accounts)].id,
                budget=float(i * 1000) if i % 3 else None,
                created_at=START + timedelta(days=i % 10),
                stage_changed_at=START,
            )
            for i in range(n_leads)
        ]
        s.add_all(leads)
        s.flush()
        actors = [u.id for u in users]
        rows = [
            _event(rng, leads[int(rng.integers(n_leads))].id, actors, START + timedelta(days=rng.uniform(0, DAYS)))
            for _ in range(n_events)
        ]
        append_events_bulk(s, rows)
        s.commit()
        return {"leads": [lead.id for lead in leads], "users": actors}


def add_events(engine: Engine, rows: list[dict[str, Any]]) -> None:
    with Session(engine) as s:
        append_events_bulk(s, rows)
        s.commit()


def _store(tmp_path: Path, name: str = "features") -> FeatureStore:
    return FeatureStore(tmp_path / name, load_default())


def _days(first: int, last: int) -> tuple[date, date]:
    return ((START + timedelta(days=first)).date(), (START + timedelta(days=last)).date())


def _reference(store: FeatureStore, day: date) -> Any:
    return reference_values(
        store.dictionary,
        event_files=[str(f) for f in store.lake.event_files()],
        table_files={t: str(store.lake.dimension_path(t)) for t in ("leads", "accounts", "users")},
        day=day,
    )


def _assert_same_values(engine_table: Any, reference: Any) -> None:
    got = engine_table.to_pandas() if hasattr(engine_table, "to_pandas") else engine_table
    merged = got.merge(reference, on=["dim", "k1", "k2", "feature_id"], how="outer", suffixes=("_e", "_r"))
    assert len(merged) == len(got) == len(reference), "engine and reference disagree on which features are non-zero"
    assert np.allclose(merged["value_e"], merged["value_r"], rtol=1e-9, atol=0)


def test_duckdb_engine_matches_the_pandas_reference(engine: Engine, tmp_path: Path) -> None:
    seed_crm(engine)
    store = _store(tmp_path)
    report = store.compute(engine, backfill=_days(5, 7), today=TODAY)
    assert report.sync is not None and report.sync.events_copied == 900
    for day in [*report.days, _days(DAYS + 30, 0)[0]]:
        values = store.values(day)
        assert values.num_rows > 100
        _assert_same_values(values, _reference(store, day))
    dims = set(store.values(report.days[-1]).column("dim").to_pylist())
    assert dims == {1, 2, 3, 4}  # every dimension is populated


def test_history_keeps_only_changes_and_reruns_are_idempotent(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine)
    store = _store(tmp_path)
    report = store.compute(sqlite_engine, backfill=_days(0, 44), today=TODAY)
    snapshot_rows = sum(store.values(day).num_rows for day in report.days)
    stats = store.history_stats()
    assert stats["runs"] == 45
    assert stats["rows"] < 0.2 * snapshot_rows  # a zipper, not 45 snapshots
    before = _history_rows(store)
    again = store.compute(sqlite_engine, day=_days(20, 0)[0], today=TODAY)
    assert again.keys_changed == 0
    assert _history_rows(store) == before
    # Each stored day reads back exactly as computed.
    for offset in (3, 20, 44):
        day = _days(offset, 0)[0]
        matrix = store.values_at(Dimension.LEAD, day)
        direct = store.snapshot(day, Dimension.LEAD)
        assert (matrix.keys == direct.keys).all()
        assert abs(matrix.matrix - direct.matrix).max() == 0


def _history_rows(store: FeatureStore) -> list[tuple[Any, ...]]:
    with store._connect() as con:
        return sorted(con.execute("SELECT * FROM history").fetchall(), key=lambda r: tuple(str(x) for x in r))


def test_incremental_folds_give_the_same_history_as_full_ones(sqlite_engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(sqlite_engine)
    incremental, full = _store(tmp_path, "inc"), _store(tmp_path, "full")
    for store in (incremental, full):
        store.lake.sync(sqlite_engine)
        store.update_tiles()
    rng = np.random.default_rng(5)
    recomputed, everything = [], []
    for offset in range(26):
        if offset == 20:  # late events for days already folded force a full fold, then increments resume
            add_events(
                sqlite_engine,
                [_event(rng, ids["leads"][0], ids["users"], START + timedelta(days=d + 0.5)) for d in (3, 15, 19)],
            )
            for store in (incremental, full):
                store.lake.sync(sqlite_engine)
                store.update_tiles()
        day = _days(offset, 0)[0]
        recomputed.append(incremental.fold_day(day)[0])
        everything.append(full.fold_day(day, incremental=False)[0])
    assert _history_rows(incremental) == _history_rows(full)
    assert recomputed[20] == everything[20]  # the late events forced a full fold
    assert sum(recomputed) < 0.8 * sum(everything)  # the other days only revisited what could change


def test_out_of_order_backfill_gives_the_same_history(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine)
    in_order = _store(tmp_path, "a")
    in_order.compute(sqlite_engine, backfill=_days(0, 15), today=TODAY)
    shuffled = _store(tmp_path, "b")
    days = list(range(16))
    random.Random(3).shuffle(days)
    for offset in days:
        shuffled.compute(sqlite_engine, day=_days(offset, 0)[0], today=TODAY)
    assert _history_rows(shuffled) == _history_rows(in_order)


def test_as_of_never_sees_an_event_at_or_after_the_request_time(engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(engine)
    store = _store(tmp_path)
    rng = random.Random(5)
    request_days = [rng.randint(1, DAYS) for _ in range(5)]  # few distinct days: the reference is slow
    for offset in sorted(request_days):
        store.compute(engine, day=_days(offset - 1, 0)[0], today=TODAY)
    requests = [
        (rng.choice(ids["leads"]), START + timedelta(days=rng.choice(request_days), seconds=rng.randint(0, 86399)))
        for _ in range(40)
    ]
    keys = [(lead, 0) for lead, _ in requests]
    got = store.as_of(Dimension.LEAD, keys, [t for _, t in requests])
    references = {d: _reference(store, d) for d in {t.date() - timedelta(days=1) for _, t in requests}}
    for i, (lead, t) in enumerate(requests):
        expected = references[t.date() - timedelta(days=1)]
        expected = expected[(expected["dim"] == 1) & (expected["k1"] == lead)]
        row = got.matrix.getrow(i)
        assert dict(zip(got.feature_ids[row.indices].tolist(), row.data.tolist(), strict=True)) == pytest.approx(
            dict(zip(expected["feature_id"].tolist(), expected["value"].tolist(), strict=True)), rel=1e-9
        )
    # New events at exactly t, and later, change nothing that as_of(t) returns.
    lead, t = requests[0]
    add_events(
        engine,
        [
            {"type": "page_view", "lead_id": lead, "occurred_at": t, "payload": {"page": "/x"}},
            {"type": "call_attempt", "lead_id": lead, "actor_id": ids["users"][0], "occurred_at": t, "payload": {}},
            {"type": "page_view", "lead_id": lead, "occurred_at": t + timedelta(days=2), "payload": {}},
        ],
    )
    for day in {t.date() - timedelta(days=1) for _, t in requests}:
        store.compute(engine, day=day, today=TODAY)  # the new events re-tile their days
    again = store.as_of(Dimension.LEAD, [keys[0]], [t])
    assert abs(again.matrix - got.matrix.getrow(0)).max() == 0
    with pytest.raises(FeatureStoreError, match="naive timestamp"):
        store.as_of(Dimension.LEAD, [keys[0]], [t.replace(tzinfo=None)])


def test_incremental_run_equals_a_full_rebuild(sqlite_engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(sqlite_engine, n_events=600)
    incremental = _store(tmp_path, "inc")
    incremental.compute(sqlite_engine, day=_days(DAYS, 0)[0], today=TODAY)
    rng = np.random.default_rng(11)
    # Late arrivals: new events for days already tiled, and for new days.
    late = [
        _event(rng, ids["leads"][i % 25], ids["users"], START + timedelta(days=float(rng.uniform(0, DAYS + 5))))
        for i in range(200)
    ]
    add_events(sqlite_engine, late)
    report = incremental.compute(sqlite_engine, day=_days(DAYS + 5, 0)[0], today=TODAY)
    assert report.sync is not None and report.sync.events_copied == 200
    assert 0 < report.tile_days_rebuilt < DAYS + 6
    full = _store(tmp_path, "full")
    full.compute(sqlite_engine, day=_days(DAYS + 5, 0)[0], today=TODAY)
    for offset in (10, DAYS + 5):
        day = _days(offset, 0)[0]
        _assert_same_values(incremental.values(day), full.values(day).to_pandas())
        _assert_same_values(incremental.values(day), _reference(incremental, day))


def test_a_failed_run_leaves_the_history_as_it_was(
    sqlite_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed_crm(sqlite_engine)
    store = _store(tmp_path)
    store.compute(sqlite_engine, backfill=_days(0, 10), today=TODAY)
    before, runs = _history_rows(store), store.runs()

    def broken(con: Any) -> None:
        raise RuntimeError("disk full")

    monkeypatch.setattr(history, "_coalesce", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        store.compute(sqlite_engine, day=_days(30, 0)[0], today=TODAY)
    assert _history_rows(store) == before
    assert store.runs() == runs


def test_bad_ranges_and_future_dates_are_refused(sqlite_engine: Engine, tmp_path: Path) -> None:
    store = _store(tmp_path)
    with pytest.raises(FeatureStoreError, match="wrong order"):
        store.compute(sqlite_engine, backfill=(date(2026, 2, 1), date(2026, 1, 1)), today=TODAY)
    with pytest.raises(FeatureStoreError, match="in the future"):
        store.compute(sqlite_engine, day=TODAY + timedelta(days=1), today=TODAY)
    with pytest.raises(FeatureStoreError, match="in the future"):
        store.compute(sqlite_engine, backfill=(date(2026, 1, 1), TODAY + timedelta(days=3)), today=TODAY)


def test_lake_rejects_future_events_and_catches_late_commits(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine, n_events=50)
    store = _store(tmp_path)
    future = datetime.now(UTC) + timedelta(days=3)
    add_events(sqlite_engine, [{"type": "page_view", "lead_id": 1, "occurred_at": future, "payload": {}}])
    report = store.lake.sync(sqlite_engine)
    assert report.events_copied == 50
    assert len(report.rejected) == 1 and "in the future" in report.rejected[0].reason
    again = store.lake.sync(sqlite_engine)
    assert again.events_copied == 0 and again.rejected_total == 0  # reported once, not copied

    def insert_with_id(event_id: int) -> None:
        with sqlite_engine.begin() as conn:
            conn.exec_driver_sql(
                "INSERT INTO events (id, type, lead_id, actor_id, occurred_at, recorded_at, payload) VALUES "
                "(?, 'note', 1, NULL, '2026-01-05 10:00:00.000000', '2026-01-05 10:00:00.000000', '{}')",
                (event_id,),
            )

    # An id below the high-water mark that commits late (as PostgreSQL sequences allow) is still copied.
    insert_with_id(1_000)
    assert store.lake.sync(sqlite_engine).events_copied == 1
    insert_with_id(500)
    late = store.lake.sync(sqlite_engine)
    assert late.late_events_copied == 1 and late.events_copied == 0
    assert len(store.lake.event_files()) == 3
    assert store.lake.sync(sqlite_engine).late_events_copied == 0


def test_lake_sync_pauses_the_garbage_collector_only_while_reading(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine, n_events=50)
    store = _store(tmp_path)
    states: list[bool] = []
    fetch = store.lake._fetch

    def spy(conn: Any, query: str) -> Any:
        table = fetch(conn, query)
        states.append(gc.isenabled())
        return table

    store.lake._fetch = spy  # type: ignore[method-assign]
    assert gc.isenabled()
    assert store.lake.sync(sqlite_engine).events_copied == 50
    assert gc.isenabled() and states and all(states)  # re-enabled after every read
    table = pq.read_table(store.lake.event_files()[0])
    assert table.num_rows == 50 and table.column("payload").type == pa.string()


def test_retention_prunes_old_history_and_tiles(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine)
    store = FeatureStore(tmp_path / "f", load_default(), retention_days=10)
    store.compute(sqlite_engine, backfill=_days(0, 30), today=TODAY)
    cutoff = _days(30, 0)[0] - timedelta(days=10)
    assert min(store.runs()) >= cutoff
    with store._connect() as con:
        assert con.execute("SELECT min(valid_from) FROM history").fetchone()[0] >= cutoff
    assert all(date.fromisoformat(p.name[4:]) >= cutoff for p in store.tiles_dir.glob("day=*"))


def _online_stores(kind: str, engine: Engine, dictionary: Any) -> Iterator[OnlineStore]:
    if kind == "database":
        yield DatabaseOnlineStore(dictionary, engine)
        return
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        service_missing("Redis at LEADPILOT_TEST_REDIS_URL", exc)
    store = RedisOnlineStore(dictionary, REDIS_URL, prefix=f"leadpilot:test:{uuid.uuid4().hex}")
    yield store
    for key in client.scan_iter(f"{store.prefix}:*"):
        client.delete(key)


@pytest.mark.parametrize("kind", ["database", pytest.param("redis", marks=pytest.mark.redis)])
def test_online_store_serves_each_entitys_latest_vector(engine: Engine, tmp_path: Path, kind: str) -> None:
    ids = seed_crm(engine)
    store = _store(tmp_path)
    first, second = _days(20, 0)[0], _days(DAYS + 370, 0)[0]  # a year later: the windows have emptied
    store.compute(engine, day=first, today=TODAY)
    for online in _online_stores(kind, engine, store.dictionary):
        written = materialize(store, online)
        assert written["lead"] > 0 and set(written) == {d.value for d in Dimension}
        end_of_day = datetime.combine(first + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
        expected = store.values_at(Dimension.LEAD, first)
        keys = [(lead, 0) for lead in ids["leads"]] + [(10**9, 0)]
        got = online.get_many(Dimension.LEAD, keys, now=end_of_day)
        for row, key in enumerate(keys):
            want = expected.row(*key)
            assert online.get(Dimension.LEAD, key, now=end_of_day) == pytest.approx(want, rel=1e-12)
            r = got.matrix.getrow(row)
            assert dict(zip(got.feature_ids[r.indices].tolist(), r.data.tolist(), strict=True)) == pytest.approx(want)
        assert online.get(Dimension.LEAD, (10**9, 0)) == {}
        # DAYS_SINCE is exact at lookup time: a day later it is one more.
        since = next(d.id for d in store.dictionary.derived if d.name == "page_views__all__days_since__365d")
        lead = next(k for k in keys if since in expected.row(*k))
        later = online.get(Dimension.LEAD, lead, now=end_of_day + timedelta(days=1))
        assert later[since] == pytest.approx(expected.row(*lead)[since] + 1)
        # A newer snapshot replaces the old one: entities without features any more disappear.
        store.compute(engine, day=second, today=second)
        materialize(store, online)
        assert online.get(Dimension.LEAD, lead).get(since) is None
        pair = online.get_many(Dimension.LEAD_SALESPERSON, [(ids["leads"][0], ids["users"][0])])
        assert pair.matrix.nnz == 0


@pytest.mark.parametrize("dimension", [Dimension.LEAD, Dimension.SALESPERSON, Dimension.LEAD_SALESPERSON])
def test_online_features_at_t_equal_an_offline_recompute_at_t(
    engine: Engine, tmp_path: Path, dimension: Dimension
) -> None:
    ids = seed_crm(engine)
    store = _store(tmp_path)
    batch = _days(25, 0)[0]
    store.compute(engine, day=batch, today=TODAY)
    online = DatabaseOnlineStore(store.dictionary, engine)
    materialize(store, online)
    # A lead created after the batch, with events: its product line and budget come from the CRM.
    with Session(engine) as s:
        new = Lead(title="new", product_line="housing", budget=5e5, created_at=START + timedelta(days=26, hours=9))
        s.add(new)
        s.commit()
        new_id = new.id
    at = START + timedelta(days=26, hours=15, minutes=30)
    add_events(
        engine,
        [
            {"type": "page_view", "lead_id": new_id, "occurred_at": at - timedelta(hours=5), "payload": {"page": "/p"}},
            {
                "type": "call_attempt",
                "lead_id": new_id,
                "actor_id": ids["users"][1],
                "occurred_at": at - timedelta(hours=1),
                "payload": {"outcome": "connected"},
            },
            {"type": "page_view", "lead_id": new_id, "occurred_at": at + timedelta(minutes=1), "payload": {}},
        ],
    )
    leads = [*ids["leads"], new_id]
    keys = {
        Dimension.LEAD: [(lead, 0) for lead in leads],
        Dimension.SALESPERSON: [(user, 0) for user in ids["users"]],
        Dimension.LEAD_SALESPERSON: [(lead, user) for lead in leads for user in ids["users"]],
    }[dimension]
    got = OnlineFeatures(store, online, engine).get(dimension, keys, at=at)
    store.lake.sync(engine)  # the offline side reads the lake: give it every event
    expected = reference_values(
        store.dictionary,
        event_files=[str(f) for f in store.lake.event_files()],
        table_files={t: str(store.lake.dimension_path(t)) for t in ("leads", "accounts", "users")},
        day=at.date(),
        at=at,
    )
    expected = expected[expected["dim"] == DIMENSION_CODES[dimension]]
    by_key: dict[tuple[int, int], dict[int, float]] = {}
    for k1, k2, fid, value in expected[["k1", "k2", "feature_id", "value"]].itertuples(index=False):
        by_key.setdefault((int(k1), int(k2)), {})[int(fid)] = float(value)
    for row, key in enumerate(keys):
        r = got.matrix.getrow(row)
        have = dict(zip(got.feature_ids[r.indices].tolist(), r.data.tolist(), strict=True))
        want = by_key.get(key, {})
        assert have == pytest.approx(want, rel=1e-9), (
            key,
            sorted(set(have) ^ set(want)),
            {f: (have.get(f), want.get(f)) for f in have if f in want and abs(have[f] - want[f]) > 1e-6 * abs(want[f])},
        )
    if dimension is not Dimension.SALESPERSON:  # the new lead has features only through fusion
        fresh = keys.index((new_id, ids["users"][1] if dimension is Dimension.LEAD_SALESPERSON else 0))
        assert got.matrix.getrow(fresh).nnz > 0


def test_a_fold_in_entity_slices_equals_one_in_a_piece(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine)
    whole = _store(tmp_path, "whole")
    sliced = FeatureStore(tmp_path / "sliced", load_default(), tile_rows_per_slice=400)
    for store in (whole, sliced):
        store.lake.sync(sqlite_engine)
        store.update_tiles()
    assert sliced.slices_for(_days(30, 0)[0]) > 3
    for offset in (30, 10, 31):  # out of order too: every fold is a full one
        day = _days(offset, 0)[0]
        assert whole.fold_day(day, incremental=False) == sliced.fold_day(day, incremental=False)
    assert _history_rows(whole) == _history_rows(sliced)
