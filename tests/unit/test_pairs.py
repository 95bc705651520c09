"""Point-in-time rates, logged-policy propensities, bootstrap AUC and IPS for pair evaluation (synthetic data)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from leadpilot.distribution.pairs import (
    ConditionalPropensity,
    PairEvaluationError,
    PointInTimeRates,
    bootstrap_auc,
    ips_estimate,
)


def test_point_in_time_counts_match_a_brute_force_count() -> None:
    rng = np.random.default_rng(1)
    agents = rng.choice(["a", "b", "c"], 300)
    products = rng.choice(["x", "y"], 300)
    closed = rng.integers(0, 50, 300).astype(float)  # many ties on purpose
    won = rng.integers(0, 2, 300)
    rates = PointInTimeRates(strength=5.0).fit([agents, products], closed, won)
    q_agents, q_products = rng.choice(["a", "b", "c", "new"], 200), rng.choice(["x", "y"], 200)
    q_times = rng.integers(0, 55, 200).astype(float)
    prior = rng.uniform(0.2, 0.8, 200)
    n, rate = rates.transform([q_agents, q_products], q_times, prior)
    for i in range(200):
        seen = (agents == q_agents[i]) & (products == q_products[i]) & (closed < q_times[i])  # strictly before
        assert n[i] == seen.sum()
        assert rate[i] == pytest.approx((won[seen].sum() + 5.0 * prior[i]) / (seen.sum() + 5.0))


def test_a_row_never_sees_its_own_outcome_or_later_ones() -> None:
    times = np.array(["2017-01-01", "2017-01-05", "2017-01-05", "2017-02-01"], dtype="datetime64[ns]")
    rates = PointInTimeRates(strength=0.0).fit([["a"] * 4], times, [1, 0, 1, 1])
    n, wins = rates.counts([["a"] * 4], times)
    assert n.tolist() == [0, 1, 1, 3]
    assert wins.tolist() == [0, 1, 1, 2]
    n, rate = rates.transform([["a"]], np.array(["2016-12-31"], dtype="datetime64[ns]"), 0.3)
    assert n.tolist() == [0] and rate.tolist() == [0.3]  # no history: the prior


def test_point_in_time_rates_name_bad_input() -> None:
    with pytest.raises(PairEvaluationError, match=r"row 2 is 2\.0"):
        PointInTimeRates().fit([["a", "b", "c"]], [1, 2, 3], [0, 1, 2])
    with pytest.raises(PairEvaluationError, match="time missing at row 1"):
        PointInTimeRates().fit([["a", "b"]], [1.0, np.nan], [0, 1])
    with pytest.raises(PairEvaluationError, match="key column 1 has 1 rows, expected 2"):
        PointInTimeRates().fit([["a", "b"], ["x"]], [1, 2], [0, 1])
    with pytest.raises(PairEvaluationError, match="not fitted"):
        PointInTimeRates().counts([["a"]], [1])
    fitted = PointInTimeRates().fit([["a"], ["x"]], [1], [1])
    with pytest.raises(PairEvaluationError, match="fitted on 2 key columns, queried with 1"):
        fitted.counts([["a"]], [2])


def test_propensities_are_historical_shares_on_the_logged_support() -> None:
    contexts = ["p"] * 6 + ["q"] * 2
    actions = ["a", "a", "a", "b", "b", "c", "a", "d"]
    model = ConditionalPropensity().fit(contexts, actions)
    assert model.actions("p") == ["a", "b", "c"]
    assert model.actions("unseen") == []
    assert model.predict(["p", "p", "p", "q", "q", "unseen"], ["a", "b", "d", "a", "d", "a"]).tolist() == pytest.approx(
        [0.5, 1 / 3, 0.0, 0.5, 0.5, 0.0]
    )
    smoothed = ConditionalPropensity(alpha=1.0).fit(contexts, actions)
    support = smoothed.predict(["p"] * 3, ["a", "b", "c"])
    assert support.sum() == pytest.approx(1.0)
    assert support.tolist() == pytest.approx([4 / 9, 3 / 9, 2 / 9])
    with pytest.raises(PairEvaluationError, match="3 contexts but 2 actions"):
        ConditionalPropensity().fit(["p", "p", "q"], ["a", "b"])


def test_bootstrap_auc_is_the_roc_auc_with_an_interval_around_it() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 500)
    score = y * 0.5 + rng.normal(0, 1, 500)
    score[:50] = np.round(score[:50])  # ties
    estimate = bootstrap_auc(y, score, n_boot=300, seed=1)
    assert estimate.value == pytest.approx(roc_auc_score(y, score))
    assert estimate.low < estimate.value < estimate.high
    assert estimate.high - estimate.low < 0.15
    with pytest.raises(PairEvaluationError, match="both classes"):
        bootstrap_auc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(PairEvaluationError, match="score missing at row 1"):
        bootstrap_auc([0, 1], [0.1, np.nan])


def test_ips_recovers_a_known_policy_value_from_a_skewed_logging_policy() -> None:
    rng = np.random.default_rng(5)
    n = 40_000
    context = rng.integers(0, 2, n)
    win = np.array([[0.2, 0.5, 0.7], [0.6, 0.3, 0.4]])  # P(win | context, action)
    logging = np.array([[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]])  # logged policy P(action | context)
    action = np.array([rng.choice(3, p=logging[c]) for c in context])
    reward = (rng.uniform(size=n) < win[context, action]).astype(float)
    target = np.array([2, 0])  # the policy to evaluate: the best action per context
    propensity = ConditionalPropensity().fit(context.tolist(), action.tolist()).predict(context, action)
    result = ips_estimate(matched=action == target[context], reward=reward, propensity=propensity, n_boot=200)
    truth = win[context, target[context]].mean()
    logged_truth = (logging * win).sum(axis=1)[context].mean()
    assert result["ips"]["value"] == pytest.approx(truth, abs=0.02)
    assert result["snips"]["value"] == pytest.approx(truth, abs=0.02)
    assert result["ips"]["ci_low"] < truth < result["ips"]["ci_high"]
    assert result["logged"]["value"] == pytest.approx(logged_truth, abs=0.01)
    assert result["snips_gain"]["value"] == pytest.approx(truth - logged_truth, abs=0.02)
    assert result["snips_gain"]["ci_low"] > 0
    assert result["sum_weights_over_rows"] == pytest.approx(1.0, abs=0.02)
    assert result["matched_share"] == pytest.approx((logging[context, target[context]]).mean(), abs=0.01)
    assert 0 < result["effective_sample_size"] < result["matched_rows"] + 1


def test_ips_of_the_logged_policy_itself_is_the_logged_rate() -> None:
    reward = np.array([1, 0, 1, 1, 0, 1], dtype=float)
    result = ips_estimate(matched=np.ones(6, bool), reward=reward, propensity=np.ones(6), n_boot=50)
    assert (
        result["ips"]["value"]
        == result["snips"]["value"]
        == result["logged"]["value"]
        == pytest.approx(4 / 6, abs=1e-4)
    )
    assert result["ips_gain"]["value"] == 0.0
    assert result["effective_sample_size"] == 6.0


def test_ips_names_impossible_propensities() -> None:
    with pytest.raises(PairEvaluationError, match=r"row 1 has 0\.0"):
        ips_estimate(matched=[True, True], reward=[1, 0], propensity=[0.5, 0.0])
    with pytest.raises(PairEvaluationError, match=r"row 0 has 1\.5"):
        ips_estimate(matched=[True, False], reward=[1, 0], propensity=[1.5, 0.0])
    # An unmatched row's propensity does not matter (its weight is 0).
    assert ips_estimate(matched=[True, False], reward=[1, 0], propensity=[0.5, 0.0], n_boot=20)["ips"]["value"] == 1.0
    with pytest.raises(PairEvaluationError, match="must agree"):
        ips_estimate(matched=[True], reward=[1, 0], propensity=[0.5, 0.5])
