"""The direct path (``FeatureStore.values_direct``, ``features compute --direct``): one day's window values
straight from the lake's events, without tiles, equal to the tile path and to the pandas reference."""

from __future__ import annotations

import json
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine
from typer.testing import CliRunner

from leadpilot.cli.main import app
from leadpilot.features import dictionary as dictionary_module
from leadpilot.features.dictionary import DEFAULT_DICTIONARY, FeatureDictionary, Function, loads
from leadpilot.features.reference import reference_values
from leadpilot.features.store import FeatureStore
from tests.integration.test_cli import cli_env, run  # noqa: F401  (cli_env is a fixture)
from tests.integration.test_features import (
    DAYS,
    START,
    _assert_same_values,
    _days,
    _reference,
    add_events,
    seed_crm,
)

# The default dictionary uses no MIN and no `all` window: two more features cover them (an account feature with
# every function, its `all` bucket merged from product lines; a salesperson one by product line).
EXTRA_FEATURES = """
  - id: 900
    name: quote_amounts
    dimension: account
    explanation: Every function over quote amounts, up to the whole history.
    source: {events: [quote], value: "payload.amount", distinct: "payload.amount"}
    functions: [COUNT, SUM, MAX, MIN, AVG, DISTINCT_COUNT, LAST, DAYS_SINCE]
    windows: [1d, 7d, 30d, all]
  - id: 901
    name: rep_form_budgets
    dimension: salesperson
    explanation: Budgets on forms of the salesperson's leads (some forms have none).
    source: {events: [form_submit], value: "payload.budget"}
    functions: [COUNT, MIN, AVG]
    windows: [7d, 30d]
"""


def _dictionary() -> FeatureDictionary:
    text = (Path(dictionary_module.__file__).parent / DEFAULT_DICTIONARY).read_text()
    return loads(text.rstrip() + "\n" + EXTRA_FEATURES)


def _store(root: Path) -> FeatureStore:
    return FeatureStore(root / "features", _dictionary())


def _exact_ids(store: FeatureStore) -> np.ndarray:
    """Derived ids of COUNT and DISTINCT_COUNT features (compared exactly, not to 1e-9)."""
    exact = (Function.COUNT, Function.DISTINCT_COUNT)
    return np.array([d.id for d in store.dictionary.derived if d.function in exact])


def _assert_same_tables(got_table: pa.Table, want_table: pa.Table, store: FeatureStore) -> None:
    """Same rows in the same order with the same types; counts exact, other values to 1e-9 relative."""
    assert got_table.schema == want_table.schema
    assert got_table.num_rows == want_table.num_rows
    for name in ("dim", "k1", "k2", "feature_id"):
        assert got_table.column(name).equals(want_table.column(name)), name
    got, want = got_table.column("value").to_numpy(), want_table.column("value").to_numpy()
    exact = np.isin(got_table.column("feature_id").to_numpy(), _exact_ids(store))
    assert exact.any() and np.array_equal(got[exact], want[exact])
    assert np.allclose(got, want, rtol=1e-9, atol=0)


def test_the_direct_path_equals_the_tile_path_and_the_reference(sqlite_engine: Engine, tmp_path: Path) -> None:
    seed_crm(sqlite_engine, n_events=1500)
    store = _store(tmp_path)
    store.lake.sync(sqlite_engine)
    store.update_tiles()
    # Before any event, in the middle (later events in the lake must not count), the last day, after the data.
    for offset in (-1, 3, 20, DAYS - 1, DAYS + 30, 400):
        day = _days(offset, 0)[0]
        direct = store.values_direct(day)
        _assert_same_values(direct, _reference(store, day))
        if direct.num_rows:
            _assert_same_tables(direct, store.values(day), store)
    mid = store.values_direct(_days(20, 0)[0])
    assert set(mid.column("dim").to_pylist()) == {1, 2, 3, 4}  # every dimension, table features included
    kinds = {store.dictionary.by_id(f).function for f in set(mid.column("feature_id").to_pylist())}
    assert kinds == set(Function)  # every function, DAYS_SINCE and DISTINCT_COUNT included


def test_the_direct_path_is_point_in_time_and_reads_no_tiles(sqlite_engine: Engine, tmp_path: Path) -> None:
    ids = seed_crm(sqlite_engine)
    store = _store(tmp_path)
    store.lake.sync(sqlite_engine)
    day = _days(20, 0)[0]
    before = store.values_direct(day)
    end = datetime.combine(day + timedelta(days=1), datetime.min.time(), tzinfo=START.tzinfo)
    lead = ids["leads"][0]
    add_events(
        sqlite_engine,
        [
            {"type": "page_view", "lead_id": lead, "occurred_at": end, "payload": {"page": "/x"}},
            {
                "type": "quote",
                "lead_id": lead,
                "actor_id": ids["users"][0],
                "occurred_at": end + timedelta(days=3),
                "payload": {"amount": 100.0},
            },
        ],
    )
    store.lake.sync(sqlite_engine)
    _assert_same_tables(store.values_direct(day), before, store)  # events from the end of the day on do not count
    assert not store.tiles_dir.exists() and store.runs() == []  # no tiles written, nothing folded
    _assert_same_values(store.values_direct(day + timedelta(days=1)), _reference(store, day + timedelta(days=1)))


LAST_DICTIONARY = """
buckets:
  - {code: 0, name: all}
  - {code: 1, name: housing}
features:
  - id: 1
    name: quotes
    dimension: lead
    explanation: Quotes.
    source: {events: [quote], value: "payload.amount"}
    functions: [COUNT, LAST, DAYS_SINCE]
    windows: [1d, 7d]
"""


def _small_lake(root: Path, events: list[tuple[int, datetime, dict[str, Any]]]) -> FeatureStore:
    """A store whose lake holds quotes of lead 10 (housing) written straight to Parquet."""
    store = FeatureStore(root, loads(LAST_DICTIONARY))
    store.lake.events_dir.mkdir(parents=True)
    ts = pa.timestamp("us")
    pq.write_table(
        pa.table(
            {
                "id": pa.array([e[0] for e in events], pa.int64()),
                "type": ["quote"] * len(events),
                "lead_id": pa.array([10] * len(events), pa.int64()),
                "actor_id": pa.array([None] * len(events), pa.int64()),
                "occurred_at": pa.array([e[1] for e in events], ts),
                "payload": [json.dumps(e[2]) for e in events],
            }
        ),
        store.lake.events_dir / "part-1.parquet",
    )
    created = pa.array([datetime(2026, 1, 1)], ts)
    one = pa.array([1], pa.int64())
    tables = {
        "leads": {"id": pa.array([10], pa.int64()), "account_id": one, "product_line": ["housing"], "region": ["n"]},
        "accounts": {"id": one, "industry": ["x"], "region": ["n"], "size": ["small"]},
        "users": {"id": one, "role": ["sales"], "team_id": one, "daily_capacity": one},
    }
    tables["leads"] |= {"source": ["web"], "budget": pa.array([None], pa.float64())}
    for name, columns in tables.items():
        pq.write_table(pa.table(columns | {"created_at": created}), store.lake.dimension_path(name))
    store.lake._write_manifest({"high_water_mark": 0, "parts": ["part-1.parquet"], "rejected_ids": []})
    return store


def _by_id(table: Any) -> dict[int, float]:
    frame = table.to_pandas() if hasattr(table, "to_pandas") else table
    return dict(zip(frame["feature_id"].tolist(), frame["value"].tolist(), strict=True))


# An event without a value in the newest band, one with a value in an older band of the 7d window.
NEWEST_WITHOUT_VALUE = [(1, datetime(2026, 3, 1, 9), {"amount": 50}), (2, datetime(2026, 3, 5, 9), {})]


def test_last_skips_newer_events_without_a_value_and_days_since_counts_every_event(tmp_path: Path) -> None:
    store = _small_lake(tmp_path / "s", NEWEST_WITHOUT_VALUE)
    day = date(2026, 3, 5)
    got = _by_id(store.values_direct(day))
    tables = {t: str(store.lake.dimension_path(t)) for t in ("leads", "accounts", "users")}
    files = [str(f) for f in store.lake.event_files()]
    assert got == pytest.approx(
        _by_id(reference_values(store.dictionary, event_files=files, table_files=tables, day=day))
    )
    # bucket 0 and housing (1): COUNT 1d 1, 7d 2; LAST 7d 50 (event 2 has no amount); DAYS_SINCE 15 h = 0.625 d
    for bucket in (0, 1):
        prefix = 10_000 + bucket * 100
        assert got[prefix + 11] == 1 and got[prefix + 12] == 2 and got[prefix + 72] == 50.0
        assert prefix + 71 not in got and got[prefix + 81] == got[prefix + 82] == 0.625


def test_the_tile_path_agrees_on_last_when_the_newest_band_has_no_value(tmp_path: Path) -> None:
    """LAST comes from the newest band with a value, not from the newest band (a bug the direct path found)."""
    store = _small_lake(tmp_path / "s", NEWEST_WITHOUT_VALUE)
    store.update_tiles()
    day = date(2026, 3, 5)
    assert _by_id(store.values(day)) == pytest.approx(_by_id(store.values_direct(day)))


def test_compute_direct_from_the_command_line(cli_env: Path) -> None:  # noqa: F811
    run("init")
    run("simulate", "--scale", "tiny", "--days", "30", "--json")
    out = cli_env / "snapshot.parquet"
    direct = run("features", "compute", "--direct", "--out", str(out), "--json")
    day = date.fromisoformat(direct["day"])
    assert direct["direct"] is True and direct["values"] > 0 and direct["sync"]["events_copied"] > 0
    assert direct["entities"]["lead"] > 0 and direct["out"] == str(out)
    status = run("features", "status", "--json")
    assert status["last_run"] is None and status["history"]["rows"] == 0  # nothing folded into the history
    computed = run("features", "compute", "--date", day.isoformat(), "--json")
    assert computed["values_written"] == direct["values"]  # the daily job's snapshot has the same values
    store_values = pq.read_table(out)
    assert store_values.num_rows == direct["values"] and store_values.column_names[:4] == [
        "dim",
        "k1",
        "k2",
        "feature_id",
    ]
    mid = run("features", "compute", "--direct", "--date", (day - timedelta(days=10)).isoformat(), "--json")
    assert mid["values"] > 0 and mid["sync"]["events_copied"] == 0
    runner = CliRunner()
    for args, message in (
        (["--out", str(out)], "--out needs --direct"),
        (["--direct", "--backfill", "2026-01-01", "2026-01-02"], "give --date, not --backfill"),
        (["--direct", "--engine", "spark"], "--direct runs in DuckDB"),
        (["--direct", "--date", "2999-01-01"], "is in the future"),
    ):
        result = runner.invoke(app, ["features", "compute", *args])
        assert result.exit_code == 1 and message in result.output, (args, result.output)
