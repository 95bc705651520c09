"""Experiment arithmetic: stable bucketing, intervals and tests that agree with textbook values, SRM."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from leadpilot.experiments.analysis import (
    ArmData,
    ExperimentError,
    analyse,
    assign_arm,
    bootstrap_difference,
    bucket,
    check_arms,
    plot,
    sample_ratio_mismatch,
    two_proportion_z,
    wilson,
)


def test_bucketing_is_stable_independent_and_follows_the_shares() -> None:
    arms = [("control", 0.5), ("v1", 0.3), ("v2", 0.2)]
    assert bucket("exp-1", 42) == bucket("exp-1", 42) and bucket("exp-1", 42) != bucket("exp-2", 42)
    counts = Counter(assign_arm("exp-1", unit, arms) for unit in range(20_000))
    assert counts["control"] / 20_000 == pytest.approx(0.5, abs=0.015)
    assert counts["v2"] / 20_000 == pytest.approx(0.2, abs=0.015)
    # Two experiments split the same units independently (about half of control-1 is control-2).
    both = sum(assign_arm("a", u, arms) == "control" and assign_arm("b", u, arms) == "control" for u in range(20_000))
    assert both / 20_000 == pytest.approx(0.25, abs=0.015)


@pytest.mark.parametrize(
    ("arms", "message"),
    [
        ([("a", 1.0)], "at least two arms"),
        ([("a", 0.5), ("a", 0.5)], "repeat"),
        ([("a", 0.5), ("b", 0.6)], "add up to 1.1"),
        ([("a", 0.0), ("b", 1.0)], "must be in"),
    ],
)
def test_bad_arms_are_refused(arms: list[tuple[str, float]], message: str) -> None:
    with pytest.raises(ExperimentError, match=message):
        check_arms(arms)


def test_intervals_and_tests_match_textbook_values() -> None:
    low, high = wilson(50, 100)
    assert (low, high) == pytest.approx((0.4038, 0.5962), abs=1e-4)  # Wilson 95 % for 50/100
    z, p = two_proportion_z(60, 100, 45, 100)
    assert z == pytest.approx(2.1234, abs=1e-3) and p == pytest.approx(0.0337, abs=1e-3)
    assert two_proportion_z(5, 0, 1, 10) == (0.0, 1.0)
    rng = np.random.default_rng(1)
    a, b = rng.binomial(1, 0.30, 4_000), rng.binomial(1, 0.25, 4_000)
    lo, hi, p_boot = bootstrap_difference(a, b, seed=3)
    assert lo < a.mean() - b.mean() < hi and lo > 0 and p_boot < 0.01


def test_sample_ratio_mismatch_flags_a_broken_split() -> None:
    fine = sample_ratio_mismatch({"a": 5_020, "b": 4_980}, {"a": 0.5, "b": 0.5})
    broken = sample_ratio_mismatch({"a": 5_400, "b": 4_600}, {"a": 0.5, "b": 0.5})
    assert not fine["mismatch"] and broken["mismatch"] and broken["p_value"] < 1e-10


def test_analyse_reports_each_arm_against_control(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)

    def arm(name: str, p_transfer: float, p_convert: float, n: int) -> ArmData:
        transferred = rng.binomial(1, p_transfer, n)
        converted = transferred * rng.binomial(1, p_convert, n)
        return ArmData(name, transferred, converted, converted * rng.gamma(2.0, 100.0, n), units=n // 10)

    report = analyse(
        [arm("round_robin", 0.3, 0.3, 6_000), arm("v1_xgb", 0.3, 0.45, 6_000)],
        control="round_robin",
        shares={"round_robin": 0.5, "v1_xgb": 0.5},
    )
    v1 = report["vs_control"]["v1_xgb"]
    assert (
        v1["ctcvr_lift"] == pytest.approx(0.5, abs=0.15) and v1["ctcvr_p_z"] < 1e-6 and v1["ctcvr_p_bootstrap"] < 0.01
    )
    assert v1["ctcvr_diff_ci"][0] > 0 and v1["revenue_lift"] > 0
    assert not report["sample_ratio"]["mismatch"]
    png = plot(report, tmp_path / "report.png")
    assert png.stat().st_size > 5_000
    with pytest.raises(ExperimentError, match="conversion without a transfer"):
        ArmData("x", [0], [1], [1.0])
    with pytest.raises(ExperimentError, match="control arm 'nope'"):
        analyse([arm("a", 0.3, 0.3, 10)], control="nope")
