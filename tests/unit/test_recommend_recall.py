"""Rule recall of the distribution run: eligibility by region, product line and capacity, spread evenly."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

import pandas as pd

from leadpilot.distribution.recommend import on_shift, recall


def _reps() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user_id": [10, 11, 12, 13, 14],
            "regions": [["north"], [], ["south"], ["north"], None],
            "product_lines": [[], ["cars"], ["homes"], None, ["homes"]],
            "left": [5, 3, 4, 2, 0],
        }
    )


def test_only_eligible_salespeople_with_capacity_are_recalled() -> None:
    pool = pd.DataFrame(
        {"lead_id": [1, 2, 3, 4], "region": ["north", "south", None, "south"], "product_line": ["cars"] * 3 + ["homes"]}
    )
    pairs = recall(pool, _reps(), per_lead=10)
    got = pairs.groupby("lead_id").user_id.apply(sorted).to_dict()
    assert got == {1: [10, 11, 13], 2: [11], 3: [11], 4: [12]}  # 14 has no capacity left today


def test_a_lead_nobody_covers_falls_back_to_its_product_line_then_to_everyone() -> None:
    pool = pd.DataFrame({"lead_id": [1, 2], "region": ["east", "east"], "product_line": ["homes", "boats"]})
    reps = _reps().assign(
        regions=[["north"], ["west"], ["south"], ["north"], ["south"]],
        product_lines=[["cars"], ["cars"], ["homes"], ["land"], ["homes"]],
    )
    got = recall(pool, reps, per_lead=10).groupby("lead_id").user_id.apply(sorted).to_dict()
    assert got == {1: [12], 2: [10, 11, 12, 13]}  # 14 sells homes but has no capacity left


def test_candidates_are_spread_over_everyone_eligible() -> None:
    pool = pd.DataFrame({"lead_id": range(1, 301), "region": ["north"] * 300, "product_line": ["cars"] * 300})
    pairs = recall(pool, _reps(), per_lead=2)
    assert (pairs.groupby("lead_id").size() == 2).all()
    assert not pairs.duplicated().any()
    per_rep = Counter(pairs.user_id.tolist())
    assert set(per_rep) == {10, 11, 13}
    assert max(per_rep.values()) - min(per_rep.values()) <= 2  # 600 candidates over 3 people: 200 each


def test_empty_inputs_give_no_pairs() -> None:
    empty_pool = pd.DataFrame({"lead_id": [], "region": [], "product_line": []})
    assert recall(empty_pool, _reps()).empty
    pool = pd.DataFrame({"lead_id": [1], "region": ["north"], "product_line": ["cars"]})
    assert recall(pool, _reps(), per_lead=0).empty
    assert list(recall(pool, _reps()[_reps().left == 0]).columns) == ["lead_id", "user_id"]


def test_working_hours_in_the_salespersons_time_zone() -> None:
    noon_utc = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
    assert on_shift("09:00", "18:00", "UTC", noon_utc)
    assert not on_shift("09:00", "18:00", "Asia/Shanghai", noon_utc)  # 20:00 in Shanghai
    assert on_shift("09:00", "18:00", "America/New_York", datetime(2026, 11, 23, 15, 0, tzinfo=UTC))  # 10:00
    assert on_shift("22:00", "06:00", "UTC", datetime(2026, 11, 23, 23, 30, tzinfo=UTC))  # past midnight
    assert on_shift("22:00", "06:00", "UTC", datetime(2026, 11, 23, 5, 59, tzinfo=UTC))
    assert not on_shift("22:00", "06:00", "UTC", noon_utc)
    assert not on_shift("09:00", "12:00", "UTC", noon_utc)  # the end is exclusive
    assert on_shift("00:00", "00:00", "UTC", noon_utc)  # around the clock
    assert on_shift("9am", "5pm", "UTC", noon_utc) and on_shift("09:00", "18:00", "Mars/Olympus", noon_utc)
