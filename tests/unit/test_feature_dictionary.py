"""Feature dictionary and expression language: validation errors name the bad part; ids are stable."""

from __future__ import annotations

import json

import duckdb
import pandas as pd
import pytest

from leadpilot.expressions import ExpressionError, parse, to_pandas
from leadpilot.features.dictionary import (
    DictionaryError,
    Dimension,
    Function,
    derived_id,
    load_default,
    loads,
)

HEADER = "buckets:\n  - {code: 0, name: all}\n  - {code: 1, name: housing}\nfeatures:\n"


def one(feature: str) -> str:
    return HEADER + feature


GOOD = """  - id: 1
    name: calls
    dimension: lead
    explanation: Calls.
    source: {events: [call_attempt]}
    functions: [COUNT]
"""


def test_default_dictionary_is_large_and_covers_every_dimension() -> None:
    d = load_default()
    assert len(d.derived) >= 1_000
    assert {b.dimension for b in d.base_features} == set(Dimension)
    assert len({x.id for x in d.derived}) == len(d.derived)
    assert len({x.name for x in d.derived}) == len(d.derived)
    assert all(0 < x.id < 2**31 for x in d.derived)


def test_derived_ids_and_names_are_stable() -> None:
    d = load_default()
    feature = d.by_name("calls_connected__housing__count__30d")
    assert feature.id == derived_id(9, 1, Function.COUNT, "30d") == 90_113
    assert d.by_id(90_113).name == "calls_connected__housing__count__30d"
    assert "housing" in feature.explanation and "30d" in feature.explanation


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (one(GOOD.replace("[COUNT]", "[MEDIAN]")), r"features\[0\] \(calls\): unknown function 'MEDIAN'"),
        (one(GOOD + "    windows: [2w]\n"), r"\(calls\): unknown window '2w'"),
        (one(GOOD.replace("dimension: lead", "dimension: planet")), r"unknown dimension 'planet'"),
        (one(GOOD.replace("{events: [call_attempt]}", "{table: invoices, value: x}")), r"unknown source table"),
        (
            one(GOOD.replace("{events: [call_attempt]}", '{events: [call_attempt], filter: "payload.x =="}')),
            r"\(calls\): source.filter: syntax error",
        ),
        (
            one(GOOD.replace("{events: [call_attempt]}", '{events: [call_attempt], filter: "owner == 1"}')),
            r"source.filter: unknown name 'owner'",
        ),
        (
            one(GOOD.replace("{events: [call_attempt]}", "{events: [call_attempt], value: \"__import__('os')\"}")),
            r"source.value: unknown function",
        ),
        (one(GOOD + GOOD.replace("name: calls", "name: other")), r"features\[1\] \(other\): id 1 is already used"),
        (one(GOOD.replace("    explanation: Calls.\n", "")), r"'explanation' is required"),
        (one(GOOD.replace("[COUNT]", "[DISTINCT_COUNT]")), r"DISTINCT_COUNT needs source.distinct"),
        (one(GOOD + "    colour: red\n"), r"unknown key 'colour'"),
        (one(GOOD.replace("id: 1", "id: 0")), r"'id' must be an integer 1..200000"),
        ("buckets: [{code: 1, name: housing}]\nfeatures: [x]", r"buckets\[0\] must be \{code: 0, name: all\}"),
        ("features: [", r"not valid YAML"),
        ("schema_version: 9\n" + one(GOOD), r"schema_version 9 is not supported"),
    ],
)
def test_bad_dictionaries_name_the_entry_and_the_problem(text: str, message: str) -> None:
    with pytest.raises(DictionaryError, match=message):
        loads(text, source="test.yaml")


@pytest.mark.parametrize(
    "text",
    [
        "payload.x.y",
        "open('f')",
        "[x for x in y]",
        "lambda: 1",
        "payload['a' + 'b']",
        "type.__class__",
        "a if b else c",
    ],
)
def test_expressions_refuse_anything_outside_the_grammar(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse(text, {"type", "a", "b", "c", "y"})


CASES = [
    "payload.outcome == 'connected'",
    "payload.outcome != 'connected'",
    "not (payload.outcome == 'busy')",
    "payload.amount > 100 and payload.amount <= 400",
    "payload.amount * 2 - 1 > 300 or payload['from'] in ['a', 'b']",
    "payload['from'] not in ['a']",
    "contains(payload.page, 'pricing')",
    "startswith(payload.page, '/housing') or endswith(payload.page, 'cases')",
    "payload.amount == None",
    "payload.amount != None",
    "lower(payload.outcome) == 'busy'",
    "abs(payload.amount - 250) < 100",
    "coalesce(payload.outcome, 'none') == 'none'",
    "payload.amount / 0 > 1",
    "type == 'call'",
]


@pytest.mark.parametrize("text", CASES)
def test_sql_and_pandas_evaluations_agree_with_sql_null_logic(text: str) -> None:
    rows = [
        {"type": "call", "payload": '{"outcome": "connected", "amount": 120, "page": "/housing/pricing", "from": "a"}'},
        {"type": "call", "payload": '{"outcome": "Busy", "amount": 500, "page": "/cases"}'},
        {"type": "visit", "payload": '{"amount": "n/a", "from": "c"}'},
        {"type": "visit", "payload": "{}"},
        {"type": "call", "payload": '{"outcome": null, "amount": 300.5, "from": "b"}'},
    ]
    expr = parse(text, {"type"})
    frame = pd.DataFrame(rows)
    parsed = [json.loads(r["payload"]) for r in rows]
    for key in expr.payload_keys:
        frame["payload." + key] = pd.Series([p.get(key) for p in parsed], dtype=object)
    con = duckdb.connect()
    con.register("t", pd.DataFrame(rows).assign(n=range(len(rows))))
    sql = expr.to_sql({"type": "type"})
    from_sql = [bool(r[0]) for r in con.execute(f"SELECT COALESCE({sql}, FALSE) FROM t ORDER BY n").fetchall()]
    from_pandas = to_pandas(expr, frame, {"type": "type"}).fillna(False).astype(bool).tolist()
    assert from_sql == from_pandas
