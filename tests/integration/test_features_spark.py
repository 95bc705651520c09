"""Spark engine parity: the same tiles, window values and stored snapshots as the DuckDB engine.

Needs PySpark (the ``spark`` extra) and Java; without them the tests skip locally and fail under CI=true.
One local[2] Spark session serves the whole module; the CRM is small (25 leads, ~900 events over 40 days).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import Engine

from leadpilot.db.engine import make_engine
from leadpilot.expressions import parse
from leadpilot.features.dictionary import EVENT_NAMES, EventSource, FeatureDictionary, load_default
from leadpilot.features.engines import EngineUnavailable, get_engine
from leadpilot.features.engines.duckdb_engine import DuckDBEngine, connect
from leadpilot.features.lake import EventLake
from leadpilot.features.sql import EVENT_COLUMNS, earliest_tile_day
from leadpilot.features.store import FeatureStore
from tests.conftest import service_missing
from tests.integration.test_features import DAYS, START, TODAY, add_events, seed_crm

if TYPE_CHECKING:
    from leadpilot.features.engines.spark_engine import SparkEngine

pytestmark = pytest.mark.spark

KEYS = ["dim", "k1", "k2", "base_id", "bucket", "day"]
FLOATS = ["total", "sumsq", "vmin", "vmax", "last_value"]


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkEngine]:
    """One local Spark session for the module (skipped locally, failed in CI, without PySpark or Java)."""
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        service_missing('PySpark (pip install -e ".[spark]")', exc)
    from leadpilot.features.engines.spark_engine import SparkEngine, java_available

    if not java_available():
        service_missing("Java (PySpark needs it)", FileNotFoundError("no java on JAVA_HOME or the PATH"))
    # Tiny data: interpreted expressions and no adaptive re-planning start faster than generated code.
    fast = {"spark.sql.codegen.wholeStage": "false", "spark.sql.adaptive.enabled": "false"}
    engine = SparkEngine(master="local[2]", shuffle_partitions=4, conf=fast)
    try:
        engine.spark.sparkContext.setLogLevel("ERROR")
    except EngineUnavailable as exc:
        service_missing("a local Spark session", exc)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def crm(sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """The shared CRM of test_features plus events that pin down the edge cases."""
    path = tmp_path_factory.mktemp("spark-crm") / "crm.db"
    shutil.copy(sqlite_template, path)
    eng = make_engine(f"sqlite:///{path}")
    ids = seed_crm(eng)
    lead, other, rep = ids["leads"][1], ids["leads"][4], ids["users"][0]  # lead 1: used_cars; lead 4: no line
    at = START + timedelta(days=12, hours=15)
    midnight = datetime(2026, 1, 20, tzinfo=UTC)
    add_events(
        eng,
        [
            # LAST ties on time: the higher id wins; a later event without a value does not count for LAST.
            {"type": "quote", "lead_id": lead, "actor_id": rep, "occurred_at": at, "payload": {"amount": 300.0}},
            {"type": "quote", "lead_id": lead, "actor_id": rep, "occurred_at": at, "payload": {"amount": 200.0}},
            {"type": "quote", "lead_id": lead, "actor_id": rep, "occurred_at": at + timedelta(hours=1), "payload": {}},
            # Zero and NULL values: counted, not summed; a sum of zero is not stored.
            {
                "type": "call_completed",
                "lead_id": other,
                "actor_id": rep,
                "occurred_at": at,
                "payload": {"duration_s": 0},
            },
            {"type": "form_submit", "lead_id": other, "occurred_at": at, "payload": {"budget": None}},
            # The day boundary is UTC midnight.
            {"type": "page_view", "lead_id": lead, "occurred_at": midnight, "payload": {"page": "/it's\\cases"}},
            {"type": "page_view", "lead_id": lead, "occurred_at": midnight - timedelta(microseconds=1), "payload": {}},
            {"type": "assign", "lead_id": other, "actor_id": rep, "occurred_at": midnight, "payload": {"to": "x'y"}},
        ],
    )
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def lake(crm: Engine, tmp_path_factory: pytest.TempPathFactory) -> EventLake:
    lake = EventLake(tmp_path_factory.mktemp("spark-lake") / "lake")
    lake.sync(crm, now=datetime(2026, 6, 1, tzinfo=UTC))
    return lake


@pytest.fixture(scope="module")
def staged(spark: SparkEngine, lake: EventLake, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiles of the whole history, written by each engine into its own staging folder."""
    dictionary = load_default()
    out = {}
    for name, engine in (("duckdb", DuckDBEngine()), ("spark", spark)):
        staging = tmp_path_factory.mktemp(f"staging-{name}")
        engine.write_tiles(
            dictionary,
            event_files=[str(f) for f in lake.event_files()],
            leads_file=str(lake.dimension_path("leads")),
            days=None,
            staging=staging,
        )
        out[name] = staging
    return out


def _day(offset: int) -> date:
    return (START + timedelta(days=offset)).date()


def _read_tiles(folder: Path) -> tuple[list[tuple[str, str]], list[dict[str, Any]]]:
    """(column, DuckDB type) pairs and the rows, read back as the store reads them."""
    with connect() as con:
        rel = con.sql(f"SELECT * FROM read_parquet('{folder}/day=*/*.parquet', hive_partitioning = true)")
        types = sorted(zip(rel.columns, [str(t) for t in rel.types], strict=True))
        rows = rel.order(", ".join(c for c in rel.columns if c not in FLOATS)).to_arrow_table().to_pylist()
    return types, rows


def _close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return bool(np.isclose(a, b, rtol=1e-9, atol=0))


def test_tiles_match_the_duckdb_engine(staged: dict[str, Path]) -> None:
    for kind in ("tiles", "distinct"):
        duck_types, duck = _read_tiles(staged["duckdb"] / kind)
        spark_types, got = _read_tiles(staged["spark"] / kind)
        assert spark_types == duck_types
        assert len(got) == len(duck) > 100
        day_folders = {p.name for p in (staged["duckdb"] / kind).glob("day=*")}
        assert {p.name for p in (staged["spark"] / kind).glob("day=*")} == day_folders
        assert {p.suffix for p in (staged["spark"] / kind).rglob("*") if p.is_file()} == {".parquet"}
        for g, d in zip(got, duck, strict=True):
            assert {k: v for k, v in g.items() if k not in FLOATS} == {k: v for k, v in d.items() if k not in FLOATS}
            assert all(_close(g[c], d[c]) for c in FLOATS if c in g), (g, d)
    # Types as the store expects them.
    types = dict(_read_tiles(staged["spark"] / "tiles")[0])
    assert types == {
        "dim": "TINYINT",
        "k1": "BIGINT",
        "k2": "BIGINT",
        "base_id": "INTEGER",
        "bucket": "TINYINT",
        "day": "DATE",
        "cnt": "BIGINT",
        "total": "DOUBLE",
        "sumsq": "DOUBLE",
        "vmin": "DOUBLE",
        "vmax": "DOUBLE",
        "last_at": "TIMESTAMP",
        "last_value": "DOUBLE",
    }
    assert dict(_read_tiles(staged["spark"] / "distinct")[0])["dvalue"] == "VARCHAR"


def test_tiles_for_some_days_match(spark: SparkEngine, lake: EventLake, tmp_path: Path) -> None:
    days = [_day(12), _day(19), _day(DAYS + 5)]  # the edge-case day, the day before midnight, a day with no events
    for name, engine in (("duckdb", DuckDBEngine()), ("spark", spark)):
        (tmp_path / name).mkdir()
        engine.write_tiles(
            load_default(),
            event_files=[str(f) for f in lake.event_files()],
            leads_file=str(lake.dimension_path("leads")),
            days=days,
            staging=tmp_path / name,
        )
    for kind in ("tiles", "distinct"):
        duck_types, duck = _read_tiles(tmp_path / "duckdb" / kind)
        spark_types, got = _read_tiles(tmp_path / "spark" / kind)
        assert spark_types == duck_types
        assert {str(r["day"]) for r in got} == {str(d) for d in days[:2]}
        assert [{k: v for k, v in r.items() if k not in FLOATS} for r in got] == [
            {k: v for k, v in r.items() if k not in FLOATS} for r in duck
        ]


def _files(staging: Path, kind: str, dictionary: FeatureDictionary, day: date) -> list[str]:
    first = earliest_tile_day(dictionary, day)
    out = []
    for folder in sorted((staging / kind).glob("day=*")):
        d = date.fromisoformat(folder.name[4:])
        if d <= day and (first is None or d >= first):
            out += [str(p) for p in sorted(folder.glob("*.parquet"))]
    return out


def _assert_same_table(got: pa.Table, expected: pa.Table) -> None:
    assert got.schema == expected.schema
    keys = ["dim", "k1", "k2", "feature_id"]
    assert got.select(keys).equals(expected.select(keys)), "the engines disagree on which features are non-zero"
    np.testing.assert_allclose(got.column("value").to_numpy(), expected.column("value").to_numpy(), rtol=1e-9, atol=0)


def test_window_values_match_the_duckdb_engine(spark: SparkEngine, staged: dict[str, Path], lake: EventLake) -> None:
    dictionary = load_default()
    tables = {t: str(lake.dimension_path(t)) for t in ("leads", "accounts", "users")}
    duck = DuckDBEngine()
    for offset in (12, 19, DAYS + 20):
        day = _day(offset)

        def values(engine: Any, staging: Path, day: date = day) -> pa.Table:
            return engine.window_values(
                dictionary,
                tile_files=_files(staging, "tiles", dictionary, day),
                distinct_files=_files(staging, "distinct", dictionary, day),
                table_files=tables,
                day=day,
            )

        expected = values(duck, staged["duckdb"])
        assert expected.num_rows > 50
        _assert_same_table(values(spark, staged["spark"]), expected)
        if offset == 12:  # the DuckDB engine reads Spark's tiles as its own
            _assert_same_table(values(duck, staged["spark"]), expected)


def test_a_spark_feature_store_stores_what_a_duckdb_store_does(spark: SparkEngine, crm: Engine, tmp_path: Path) -> None:
    day = _day(25)
    stores = {name: FeatureStore(tmp_path / name, load_default(), engine=name) for name in ("duckdb", "spark")}
    assert stores["spark"].engine.name == "spark"
    for store in stores.values():
        report = store.compute(crm, backfill=(day - timedelta(days=1), day), today=TODAY)  # full, then incremental
        assert report.values_written > 100
    assert stores["spark"].engine.spark is spark.spark  # the module's session, reused
    _assert_same_table(stores["spark"].values(day), stores["duckdb"].values(day))
    with stores["duckdb"]._connect() as a, stores["spark"]._connect() as b:
        query = "SELECT dim, k1, k2, feature_id, value, valid_from, valid_to FROM history ORDER BY ALL"
        duck_history, spark_history = a.sql(query).fetchall(), b.sql(query).fetchall()
    assert [r[:4] + r[5:] for r in spark_history] == [r[:4] + r[5:] for r in duck_history]
    assert all(_close(s[4], d[4]) for s, d in zip(spark_history, duck_history, strict=True))


EXPRESSIONS = [
    'payload.to == "it\'s"',
    "payload.page == 'a\\\\b'",
    'contains(payload.page, "\'")',
    "contains(payload.page, 'cases') or startswith(payload.page, '/h') or endswith(payload.page, 'g')",
    "lower(payload.direction) == 'inbound'",
    "abs(payload.n) > 2",
    "coalesce(payload.a, payload.page)",
    "payload.n / payload.m",
    "payload.n * 2 + 1 - payload.m",
    "-payload.n",
    "payload.n in [1, 2.5]",
    "payload.page not in ['/', '/x']",
    "not (payload.n > 1)",
    "1 < payload.n <= 5",
    "payload['from'] == 'negotiating' and payload.to != None",
    "payload.budget == None",
    "type in ['quote', 'note'] and lead_id >= 2",
    "product_line == 'housing' or region != 'north'",
]
PAYLOADS: list[dict[str, Any] | None] = [
    {"n": 3, "m": 0, "page": "/housing/pricing", "to": "it's", "from": "negotiating"},
    {"n": 2.5, "m": 2, "page": "a\\b", "direction": "INBOUND", "a": "z"},
    {"n": "  -4.5 ", "m": None, "page": "/it's", "budget": None},
    {"n": "abc", "m": "1e2", "page": "/", "to": None, "a": None},
    {"n": 1e-05, "page": "caf\u00e9 /x", "to": 7},
    {"n": True, "m": [1, 2], "page": {"x": 1}},
    {},
    None,
]


def test_expressions_compile_to_the_same_spark_and_duckdb_results(spark: SparkEngine, tmp_path: Path) -> None:
    dictionary = load_default()
    expressions = [parse(text, EVENT_NAMES) for text in EXPRESSIONS]
    for base in dictionary.base_features:
        if isinstance(base.source, EventSource):
            expressions += [e for e in (base.source.filter, base.source.value, base.source.distinct) if e]
    n = len(PAYLOADS)
    rows = pa.table(
        {
            "i": pa.array(range(n), pa.int64()),
            "type": pa.array(["quote", "note", "page_view", "quote", "stage_change", "note", "x", None], pa.string()),
            "lead_id": pa.array([1, 2, 3, None, 5, 6, 7, 8], pa.int64()),
            "actor_id": pa.array([1, None, 2, 2, 1, 1, None, 3], pa.int64()),
            "product_line": pa.array(["housing", None, "used_cars", "housing", None, "x", "y", "z"], pa.string()),
            "region": pa.array(["north", "south", None, "north", "east", "x", "y", "z"], pa.string()),
            "lead_source": pa.array(["web"] * n, pa.string()),
            "payload": pa.array([None if p is None else json.dumps(p) for p in PAYLOADS], pa.string()),
        }
    )
    pq.write_table(rows, tmp_path / "rows.parquet")
    duck_select = ", ".join(f"{e.to_sql(EVENT_COLUMNS)} AS e{j}" for j, e in enumerate(expressions))
    spark_select = ", ".join(f"{e.to_sql(EVENT_COLUMNS, dialect='spark')} AS e{j}" for j, e in enumerate(expressions))
    with connect() as con:
        con.register("t", rows)
        expected = con.sql(f"SELECT {duck_select} FROM t ORDER BY i").fetchall()
    session = spark.spark
    session.read.parquet(str(tmp_path / "rows.parquet")).createOrReplaceTempView("expression_rows")
    got = [tuple(r) for r in session.sql(f"SELECT {spark_select} FROM expression_rows ORDER BY i").collect()]
    for row_got, row_expected, payload in zip(got, expected, PAYLOADS, strict=True):
        for e, g, x in zip(expressions, row_got, row_expected, strict=True):
            same = _close(float(g), float(x)) if isinstance(x, float) and g is not None else g == x
            assert same, f"{e.text!r} on {payload!r}: spark {g!r}, duckdb {x!r}"


def test_missing_pyspark_or_java_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delitem(sys.modules, "leadpilot.features.engines.spark_engine", raising=False)
    monkeypatch.setitem(sys.modules, "pyspark", None)
    monkeypatch.setitem(sys.modules, "pyspark.sql", None)
    with pytest.raises(EngineUnavailable, match=r"Spark engine cannot be loaded.*--engine duckdb"):
        get_engine("spark")
    monkeypatch.undo()
    try:
        from leadpilot.features.engines import spark_engine
    except ImportError:
        return  # no PySpark here: the first half is all there is to check
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setattr(spark_engine.shutil, "which", lambda name: None)
    with pytest.raises(EngineUnavailable, match="needs Java"):
        get_engine("spark")
