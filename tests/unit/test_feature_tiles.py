"""Tile SQL: payload keys parsed once per event, `all` tiles from product-line tiles, LAST ordering.

The engine's tiles are checked against a plain per-event computation in Python on a handful of events
chosen for the corner cases: an account whose leads have different product lines (its `all` tile merges
them), ties on ``occurred_at`` (LAST goes by id), events without a value (LAST skips them, COUNT and
DAYS_SINCE do not), filters and values on payload keys, and payload keys that are missing.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import date, datetime
from typing import Any

import pyarrow as pa
import pytest

from leadpilot.features import sql
from leadpilot.features.dictionary import loads
from leadpilot.features.engines.duckdb_engine import connect
from leadpilot.features.store import history_memory_limit

DICTIONARY = """
buckets:
  - {code: 0, name: all}
  - {code: 1, name: housing}
  - {code: 2, name: cars}
features:
  - id: 1
    name: quotes
    dimension: lead
    explanation: Quotes.
    source: {events: [quote], value: "payload.amount"}
    functions: [COUNT, SUM, MAX, LAST]
  - id: 2
    name: big_quotes
    dimension: lead
    explanation: Quotes over 100.
    source: {events: [quote], filter: "payload.amount > 100 and payload['from'] != 'x'"}
    functions: [COUNT]
  - id: 3
    name: account_quotes
    dimension: account
    explanation: Quotes to the account.
    source: {events: [quote], value: "payload.amount"}
    functions: [COUNT, SUM, MIN, LAST, DAYS_SINCE]
  - id: 4
    name: rep_quotes
    dimension: salesperson
    explanation: Quotes by the salesperson, every product line together.
    source: {events: [quote, call], value: "payload.amount"}
    functions: [COUNT, LAST]
    by_product_line: false
  - id: 5
    name: pair_calls
    dimension: lead_salesperson
    explanation: Calls of a pair.
    source: {events: [call], distinct: "payload.to"}
    functions: [COUNT, DISTINCT_COUNT]
"""

LEADS = {10: ("housing", 100), 11: ("cars", 100), 12: (None, 101)}  # lead -> (product line, account)
T = datetime(2026, 3, 2, 9, 0, 0)
EVENTS: list[tuple[int, str, int | None, int | None, datetime, dict[str, Any] | None]] = [
    (1, "quote", 10, 7, T, {"amount": 50, "from": "a"}),
    (2, "quote", 11, 7, T, {"amount": 300, "from": "a"}),  # same instant as 1, other product line: id decides
    (3, "quote", 10, 7, datetime(2026, 3, 2, 8), {"amount": 500, "from": "x"}),
    (4, "quote", 11, 8, datetime(2026, 3, 2, 10), {"from": "n/a"}),  # no amount: no value, still counted
    (5, "quote", 12, 8, datetime(2026, 3, 3, 1), {"amount": 120}),
    (6, "call", 10, 7, datetime(2026, 3, 2, 11), {"to": "a"}),
    (7, "call", 10, 7, datetime(2026, 3, 2, 12), {"to": "a"}),
    (8, "call", 10, 8, datetime(2026, 3, 2, 12), None),
    (9, "note", 10, 7, datetime(2026, 3, 2, 12), {"amount": 1}),  # no feature reads notes
]
CODES = {"housing": 1, "cars": 2}


def _number(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _expected() -> dict[tuple[int, int, int, int, int, date], dict[str, Any]]:
    """Tiles computed event by event: key (dim, k1, k2, base, bucket, day)."""
    rows: dict[tuple[int, int, int, int, int, date], list[tuple[datetime, int, float | None]]] = defaultdict(list)
    for eid, kind, lead, actor, at, payload in EVENTS:
        pl, account = LEADS[lead] if lead is not None else (None, None)
        p = payload or {}
        amount = _number(p.get("amount"))
        feeds: list[tuple[int, int, int, int, float | None, bool]] = []  # dim, k1, k2, base, value, by_pl
        if kind == "quote":
            feeds.append((1, lead, 0, 1, amount, True))
            if amount is not None and amount > 100 and p.get("from") not in (None, "x"):  # SQL NULL logic
                feeds.append((1, lead, 0, 2, 1.0, True))
            feeds.append((2, account, 0, 3, amount, True))
        if kind in ("quote", "call"):
            feeds.append((3, actor, 0, 4, amount, False))
        if kind == "call":
            feeds.append((4, lead, actor, 5, 1.0, True))
        for dim, k1, k2, base, value, by_pl in feeds:
            buckets = [0] + ([CODES[pl]] if by_pl and pl in CODES else [])
            for bucket in buckets:
                rows[(dim, k1, k2, base, bucket, at.date())].append((at, eid, value))
    out = {}
    for key, events in rows.items():
        values = [v for _, _, v in events if v is not None]
        with_value = [(at, eid, v) for at, eid, v in events if v is not None]
        out[key] = {
            "cnt": len(events),
            "total": sum(values) if values else None,
            "vmin": min(values) if values else None,
            "vmax": max(values) if values else None,
            "last_at": max(at for at, _, _ in events),
            "last_value": max(with_value)[2] if with_value else None,
        }
    return out


def _tiles(distinct: bool = False) -> list[dict[str, Any]]:
    dictionary = loads(DICTIONARY)
    con = connect()
    con.register(
        "ev",
        pa.table(
            {
                "id": [e[0] for e in EVENTS],
                "type": [e[1] for e in EVENTS],
                "lead_id": [e[2] for e in EVENTS],
                "actor_id": [e[3] for e in EVENTS],
                "occurred_at": pa.array([e[4] for e in EVENTS], pa.timestamp("us")),
                "payload": [json.dumps(e[5]) if e[5] is not None else None for e in EVENTS],
            }
        ),
    )
    con.register(
        "leads",
        pa.table(
            {
                "id": list(LEADS),
                "product_line": [v[0] for v in LEADS.values()],
                "account_id": [v[1] for v in LEADS.values()],
                "region": ["n"] * len(LEADS),
                "source": ["web"] * len(LEADS),
            }
        ),
    )
    rows = (
        "SELECT e.*, CAST(e.occurred_at AS DATE) AS day, l.product_line, l.region, l.source AS lead_source, "
        "l.account_id FROM ev e LEFT JOIN leads l ON l.id = e.lead_id"
    )
    con.execute(f"CREATE TEMP TABLE prepared AS {sql.prepared_events_sql(dictionary, rows)}")
    query = sql.tiles_sql(dictionary, "prepared", distinct=distinct)
    assert query is not None
    result = con.sql(query)
    return [dict(zip(result.columns, r, strict=True)) for r in result.fetchall()]


def test_tiles_match_an_event_by_event_computation() -> None:
    expected = _expected()
    got = {(r["dim"], r["k1"], r["k2"], r["base_id"], r["bucket"], r["day"]): r for r in _tiles()}
    assert set(got) == set(expected)
    for key, want in expected.items():
        row = got[key]
        assert row["cnt"] == want["cnt"], key
        for name in ("total", "vmin", "vmax", "last_value"):
            assert row[name] == pytest.approx(want[name]) if want[name] is not None else row[name] is None, (key, name)
        assert row["last_at"] == want["last_at"], key


def test_the_account_all_tile_merges_product_lines_and_last_breaks_ties_by_id() -> None:
    got = {(r["k1"], r["bucket"], r["day"]): r for r in _tiles() if r["base_id"] == 3}
    merged = got[(100, 0, date(2026, 3, 2))]
    assert merged["cnt"] == 4 and merged["total"] == pytest.approx(850.0)
    assert merged["last_value"] == 300.0  # events 1 and 2 share the latest valued time; id 2 is later
    assert merged["last_at"] == datetime(2026, 3, 2, 10)  # event 4 has no value but is the latest
    assert got[(100, 1, date(2026, 3, 2))]["cnt"] == 2 and got[(100, 2, date(2026, 3, 2))]["cnt"] == 2


def test_distinct_tiles_keep_each_value_once_per_bucket() -> None:
    got = sorted((r["k1"], r["k2"], r["bucket"], r["dvalue"]) for r in _tiles(distinct=True))
    assert got == [(10, 7, 0, "a"), (10, 7, 1, "a")]


def test_payload_keys_are_parsed_once() -> None:
    dictionary = loads(DICTIONARY)
    assert sql.payload_keys(dictionary) == ["amount", "from", "to"]
    prepared = sql.prepared_events_sql(dictionary, "SELECT * FROM ev")
    assert prepared.count("json_extract_string") == 1
    assert "json_extract_string" not in (sql.tiles_sql(dictionary, "prepared") or "")


@pytest.mark.parametrize(
    ("limit", "expected"), [("4GB", "1000MB"), ("2 GiB", "536MB"), ("512MB", "256MB"), ("80%", "80%")]
)
def test_the_history_connection_gets_a_quarter_of_the_memory_limit(limit: str, expected: str) -> None:
    assert history_memory_limit(limit) == expected


def test_payload_keys_differing_only_in_case_stay_apart_and_all_merges_without_lead_features() -> None:
    dictionary = loads(
        """
buckets:
  - {code: 0, name: all}
  - {code: 1, name: housing}
  - {code: 2, name: cars}
features:
  - id: 1
    name: upper
    dimension: account
    explanation: Amount.
    source: {events: [quote], value: "payload.Amount"}
    functions: [SUM]
  - id: 2
    name: lower
    dimension: account
    explanation: amount.
    source: {events: [quote], value: "payload.amount"}
    functions: [SUM]
"""
    )
    con = connect()
    con.execute(
        "CREATE TABLE ev AS SELECT * FROM (VALUES "
        "(1, 'quote', 10, 7, TIMESTAMP '2026-03-02 09:00:00', '{\"Amount\": 1, \"amount\": 10}', "
        "CAST('2026-03-02' AS DATE), 'housing', 'n', 'web', 100), "
        "(2, 'quote', 11, 7, TIMESTAMP '2026-03-02 10:00:00', '{\"Amount\": 2, \"amount\": 20}', "
        "CAST('2026-03-02' AS DATE), 'cars', 'n', 'web', 100)"
        ") t(id, type, lead_id, actor_id, occurred_at, payload, day, product_line, region, lead_source, account_id)"
    )
    con.execute(f"CREATE TABLE prepared AS {sql.prepared_events_sql(dictionary, 'SELECT * FROM ev')}")
    query = sql.tiles_sql(dictionary, "prepared")
    assert query is not None
    got = {(r[0], r[1]): (r[2], r[3]) for r in con.sql(f"SELECT base_id, bucket, cnt, total FROM ({query})").fetchall()}
    assert got == {
        (1, 0): (2, 3.0), (1, 1): (1, 1.0), (1, 2): (1, 2.0),
        (2, 0): (2, 30.0), (2, 1): (1, 10.0), (2, 2): (1, 20.0),
    }  # fmt: skip
