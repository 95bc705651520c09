"""Routing policies in the replay: valid pairs within capacity, deterministic, point-in-time training, V1 > random."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from leadpilot.cli.main import app
from leadpilot.simulate.policies import (
    LeastBusyPolicy,
    MultiTaskRoutingPolicy,
    ScoreRoundRobinPolicy,
    XGBRoutingPolicy,
    history_for,
    make_score_round_robin,
    make_v1_xgb,
)
from leadpilot.simulate.replay import POLICIES, Policy, PoolView, ReplayEnv, TeamView, replay
from leadpilot.simulate.world import World

FAST_MODELS: dict[str, Callable[[ReplayEnv, int], Any]] = {
    "v1_xgb": lambda env, seed: XGBRoutingPolicy(n_estimators=60, n_jobs=1, seed=seed),
    "v2_mmoe": lambda env, seed: MultiTaskRoutingPolicy(arch="mmoe", epochs=2, max_exposures=4000, seed=seed),
    "v2_ple": lambda env, seed: MultiTaskRoutingPolicy(arch="ple", epochs=2, max_exposures=4000, seed=seed),
}
HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.fixture(scope="module")
def world() -> World:
    return World("small", seed=11)


class Checked:
    """Wraps a policy and checks every day's answer: distinct pool positions, salespeople with room."""

    def __init__(self, inner: Policy) -> None:
        self.inner = inner
        self.name = inner.name
        self.days: list[list[tuple[int, int]]] = []

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        pairs = self.inner.assign(day, pool, team)
        positions = [p for p, _ in pairs]
        assert len(positions) == len(set(positions)), f"{self.name} repeated a lead on day {day}"
        assert all(0 <= p < len(pool) for p in positions)
        given = np.bincount([r for _, r in pairs], minlength=team.n)
        assert (given <= team.capacity - team.load).all(), f"{self.name} overfilled someone on day {day}"
        # Every waiting lead is placed while anyone has room (small's team has plenty).
        assert len(pairs) == min(len(pool), int((team.capacity - team.load).sum()))
        self.days.append(sorted(pairs))
        return pairs


def make(name: str, env: ReplayEnv, seed: int) -> Policy:
    """The named policy, model policies with fewer trees / epochs than their defaults to stay fast."""
    if name.startswith("v2_") and not HAS_TORCH:
        pytest.skip("PyTorch is not installed: the V2 multi-task policies need it")
    if name in FAST_MODELS:
        model = FAST_MODELS[name](env, seed)
        return model.fit(history_for(env.world, cutoff=env.start))
    return POLICIES[name](env, seed)


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policy_returns_valid_pairs_and_is_deterministic(world: World, name: str) -> None:
    env = ReplayEnv(world, days=8)
    first, second = Checked(make(name, env, 3)), Checked(make(name, env, 3))
    a, b = env.run(first).to_json(), env.run(second).to_json()
    assert a["assigned"] > 0
    assert first.days == second.days
    for key in ("converted", "revenue", "expected_cvr", "load_cv"):
        assert a[key] == b[key]


def test_registered_policies_and_unknown_policy_error(world: World) -> None:
    for name in ("least_busy", "score_round_robin", "v1_xgb", "random", "round_robin", "oracle"):
        assert name in POLICIES
    with pytest.raises(ValueError, match=r"unknown policy 'nope'; choose one of .*least_busy.*v1_xgb"):
        replay(world, "nope", days=1)


def test_least_busy_gives_each_lead_to_the_least_loaded() -> None:
    team = TeamView(
        region=np.zeros(3, dtype=np.int64),
        capacity=np.array([5, 5, 1]),
        load=np.array([0, 0, 1]),
        declared=np.ones((3, 4), dtype=bool),
        assigned_total=np.array([4, 2, 0]),
    )
    zeros = np.zeros(4, dtype=np.int64)
    waited = np.array([0.5, 2.0, 1.0, 0.1])
    pool = PoolView(zeros, zeros, zeros, zeros, zeros, zeros.astype(float), zeros, waited)
    pairs = LeastBusyPolicy().assign(0, pool, team)
    # Oldest lead first; salesperson 2 is full today; then 1 until it has as many as 0, then alternating.
    assert pairs == [(1, 1), (2, 1), (0, 0), (3, 1)]


def test_history_is_point_in_time(world: World) -> None:
    cutoff = world.days - 120.0
    past, full = history_for(world, cutoff=cutoff), history_for(world)
    assert len(past.rep) < len(full.rep)
    assert (past.arrival < cutoff).all()
    assert np.nanmax(past.closed_day) < cutoff
    assert past.closed.sum() < full.closed.sum()
    assert not past.won[~past.closed].any() and np.isnan(past.contract_value[~past.won]).all()
    with pytest.raises(ValueError, match="outside the history"):
        history_for(world, cutoff=world.days + 5)


def test_model_policies_train_only_on_outcomes_before_the_replay(world: World) -> None:
    env = ReplayEnv(world, days=5, start_day=world.days - 90)
    full = history_for(world)
    for policy in (make_v1_xgb(env, 0), make_score_round_robin(env, 0)):
        assert isinstance(policy, XGBRoutingPolicy | ScoreRoundRobinPolicy)
        assert policy.trained_until_ < env.start
        assert policy.trained_rows_ < int((full.closed & (full.rep >= 0)).sum())
    v1 = make_v1_xgb(env, 0)
    assert v1.cutoff_ == env.start
    # The salesperson records count only deals closed before the cutoff.
    past = history_for(world, cutoff=env.start)
    assert v1.record_.n.sum() == int((past.closed & (past.rep >= 0)).sum())


def test_too_little_history_is_a_clear_error() -> None:
    world = World("tiny", seed=2, days=60)
    with pytest.raises(ValueError, match=r"holds \d+ closed deals; need 20"):
        XGBRoutingPolicy().fit(history_for(world, cutoff=10))


def test_v1_beats_random_and_round_robin_on_expected_conversions(world: World) -> None:
    env = ReplayEnv(world, days=20)
    v1 = env.run(make("v1_xgb", env, 0)).to_json()
    rand = env.run(POLICIES["random"](env, 0)).to_json()
    robin = env.run(POLICIES["round_robin"](env, 0)).to_json()
    assert v1["assigned"] == rand["assigned"] == robin["assigned"]
    assert v1["expected_cvr"] > 1.1 * rand["expected_cvr"]
    assert v1["expected_cvr"] > 1.1 * robin["expected_cvr"]


def test_cli_replay_runs_a_model_policy() -> None:
    result = CliRunner().invoke(
        app,
        [
            "simulate",
            "replay",
            "--policy",
            "score_round_robin",
            "--scale",
            "tiny",
            "--seed",
            "3",
            "--days",
            "3",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["policy"] == "score_round_robin" and data["days"] == 3
    bad = CliRunner().invoke(app, ["simulate", "replay", "--policy", "nope", "--scale", "tiny", "--days", "1"])
    assert bad.exit_code != 0 and "v1_xgb" in bad.output


def test_cli_replay_over_several_seeds_reports_intervals() -> None:
    args = ["simulate", "replay", "--policy", "least_busy", "--scale", "tiny", "--seed", "5", "--days", "6"]
    result = CliRunner().invoke(app, [*args, "--seeds", "3", "--json"])
    assert result.exit_code == 0, result.output
    row = json.loads(result.output)
    assert row["policy"] == "least_busy"
    assert row["seeds"] == [5, 6, 7]
    low, high = row["ctcvr_ci95"]
    assert low <= row["ctcvr"] <= high and row["days"] == 6


def test_v2_trains_on_contacted_exposures_before_the_replay(world: World) -> None:
    if not HAS_TORCH:
        pytest.skip("PyTorch is not installed: the V2 multi-task policies need it")
    env = ReplayEnv(world, days=5, start_day=world.days - 90)
    policy = FAST_MODELS["v2_mmoe"](env, 0).fit(history_for(world, cutoff=env.start))
    past = history_for(world, cutoff=env.start)
    assert policy.name == "v2_mmoe"
    assert policy.trained_until_ < env.start and policy.cutoff_ == env.start
    # Every worked lead is an exposure, plus sampled contacted leads that were never transferred.
    assert int((past.contacted & past.qualified).sum()) < policy.exposures_ <= 4000
    n_num = policy.model_.n_features_in_
    probs = policy.model_.predict_proba(np.zeros((1, n_num), dtype=np.float32), X_cat=np.zeros((1, 6), dtype=np.int64))
    assert probs.shape == (1, 2) and ((probs > 0) & (probs < 1)).all()
