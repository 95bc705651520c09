"""The direct path's SQL: age bands at window edges, and one JSON parse per event."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from leadpilot.features import sql
from leadpilot.features.dictionary import loads
from leadpilot.features.engines.duckdb_engine import connect

DAY = date(2026, 3, 10)


@pytest.mark.parametrize(
    ("windows", "age_days", "band"),
    [
        ({"1d", "7d"}, 0, 1),  # the day itself: window 1d
        ({"1d", "7d"}, 1, 2),  # the day before: in 7d, not 1d
        ({"1d", "7d"}, 6, 2),  # the first day of 7d
        ({"1d", "7d"}, 7, 0),  # in no window
        ({"1d", "7d", "all"}, 7, 7),  # beyond the largest finite window: `all`
        ({"all"}, 400, 7),
        ({"30d"}, 29, 3),
        ({"30d"}, 30, 0),
    ],
)
def test_band_is_the_smallest_window_holding_the_day(windows: set[str], age_days: int, band: int) -> None:
    expression = sql.band_sql(windows, DAY)
    with connect() as con:
        found = con.execute(f"SELECT {expression} FROM (SELECT DATE '{DAY - timedelta(days=age_days)}' AS day) t")
        assert found.fetchall() == [(band,)]


def test_the_direct_path_parses_each_payload_once() -> None:
    dictionary = loads(
        """
buckets: [{code: 0, name: all}]
features:
  - {id: 1, name: a, dimension: lead, explanation: a, source: {events: [x], value: "payload.n"}, functions: [LAST]}
  - id: 2
    name: b
    dimension: account
    explanation: b
    source: {events: [x, y], filter: "payload.k == 'v'", distinct: "payload.d"}
    functions: [COUNT, DISTINCT_COUNT]
"""
    )
    rows = sql.event_span_sql(["e.parquet"], "l.parquet", None, DAY)
    banded = sql.banded_events_sql(dictionary, f"({sql.prepared_events_sql(dictionary, rows)}) p", DAY)
    assert banded.count("json_extract_string") == 1 and banded.count("read_parquet") == 2
    later = [
        sql.tiles_sql(dictionary, "lp_banded"),
        sql.tiles_sql(dictionary, "lp_banded", distinct=True),
        sql.direct_last_sql(dictionary, "lp_band_tiles"),
        sql.distinct_values_sql(dictionary, "t", DAY, banded=True),
    ]
    plan = sql.direct_band_plan(dictionary, "lp_band_tiles")
    assert plan is not None and all(q is not None for q in later)
    assert not any("json_extract" in q or "read_parquet" in q for q in [plan.sql, *later] if q)
