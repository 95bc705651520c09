"""Capacity-aware assignment: exact equals brute force, greedy stays feasible with an honest gap, explanations."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from leadpilot.distribution.assign import (
    AssignmentError,
    AssignmentProblem,
    lagrangian_bound,
    solve,
    solve_exact,
    solve_greedy,
)


def random_problem(seed: int, n_leads: int = 6, n_reps: int = 3, density: float = 0.7) -> AssignmentProblem:
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(n_leads) for j in range(n_reps) if rng.random() < density]
    lead, rep = (np.array(x) for x in zip(*pairs, strict=True))
    return AssignmentProblem(
        lead=lead, rep=rep, value=rng.gamma(2.0, 1.0, len(pairs)), capacity=rng.integers(1, 3, n_reps), n_leads=n_leads
    )


def brute_force(problem: AssignmentProblem) -> float:
    """Best total over every way to give each lead one eligible salesperson or nobody."""
    options: list[list[tuple[int, float]]] = [[(-1, 0.0)] for _ in range(problem.n_leads)]
    for i, j, v in zip(problem.lead, problem.rep, problem.value, strict=True):
        options[i].append((int(j), float(v)))
    best = 0.0
    for choice in itertools.product(*options):
        load = np.bincount([j for j, _ in choice if j >= 0], minlength=problem.n_reps)
        if (load <= problem.capacity).all():
            if problem.floor is not None and (load < np.minimum(problem.floor, problem.capacity)).any():
                continue
            best = max(best, sum(v for _, v in choice))
    return best


def feasible(problem: AssignmentProblem, lead: np.ndarray, rep: np.ndarray) -> bool:
    eligible = set(zip(problem.lead.tolist(), problem.rep.tolist(), strict=True))
    load = np.bincount(rep, minlength=problem.n_reps)
    return (
        len(set(lead.tolist())) == len(lead)
        and all((i, j) in eligible for i, j in zip(lead.tolist(), rep.tolist(), strict=True))
        and bool((load <= problem.capacity).all())
    )


@pytest.mark.parametrize("seed", range(12))
def test_exact_equals_brute_force_and_greedy_is_feasible_within_its_bound(seed: int) -> None:
    problem = random_problem(seed)
    exact = solve_exact(problem)
    assert exact.total == pytest.approx(brute_force(problem), abs=1e-9)
    assert feasible(problem, exact.lead, exact.rep) and exact.gap == 0
    greedy = solve_greedy(problem)
    assert feasible(problem, greedy.lead, greedy.rep)
    assert greedy.total <= exact.total + 1e-9
    assert greedy.upper_bound >= exact.total - 1e-9  # the bound really bounds the optimum
    assert greedy.gap >= (exact.total - greedy.total) / greedy.upper_bound - 1e-9


def test_floors_and_team_quotas_hold() -> None:
    # Three reps; rep 0 fits every lead best. A floor of 2 for rep 2 and a cap on team 0 (reps 0 and 1).
    lead = np.repeat(np.arange(6), 3)
    rep = np.tile(np.arange(3), 6)
    value = np.tile([3.0, 2.0, 1.0], 6)
    problem = AssignmentProblem(
        lead=lead,
        rep=rep,
        value=value,
        capacity=np.array([6, 6, 6]),
        floor=np.array([0, 0, 2]),
        team=np.array([0, 0, 1]),
        team_max={0: 3},
    )
    for result in (solve_exact(problem), solve_greedy(problem)):
        load = np.bincount(result.rep, minlength=3)
        assert load[2] >= 2 and load[0] + load[1] <= 3, result.method
        assert len(result.lead) == 6
    exact = solve_exact(problem)
    assert exact.total == pytest.approx(3 * 3.0 + 3 * 1.0)  # team 0 takes its 3 best, rep 2 the rest
    minimum = AssignmentProblem(
        lead=lead, rep=rep, value=value, capacity=np.array([6, 6, 6]), team=np.array([0, 0, 1]), team_min={1: 4}
    )
    assert np.bincount(solve_exact(minimum).rep, minlength=3)[2] >= 4
    assert solve_greedy(minimum).team_shortfall == {1: 4}  # greedy reports what it could not guarantee


def test_impossible_constraints_and_bad_input_are_named() -> None:
    with pytest.raises(AssignmentError, match="cannot all hold"):
        solve_exact(
            AssignmentProblem(
                lead=[0, 1], rep=[0, 0], value=[1.0, 1.0], capacity=[2], team=np.array([0]), team_min={0: 3}
            )
        )
    with pytest.raises(AssignmentError, match="negative value"):
        AssignmentProblem(lead=[0], rep=[0], value=[-1.0], capacity=[1])
    with pytest.raises(AssignmentError, match="not a number"):
        AssignmentProblem(lead=[0], rep=[0], value=[np.nan], capacity=[1])
    with pytest.raises(AssignmentError, match="names salesperson 3"):
        AssignmentProblem(lead=[0], rep=[3], value=[1.0], capacity=[1])
    with pytest.raises(AssignmentError, match="team quotas need"):
        AssignmentProblem(lead=[0], rep=[0], value=[1.0], capacity=[1], team_max={0: 1})


def test_explanations_say_why_this_salesperson() -> None:
    problem = AssignmentProblem(
        lead=[0, 0, 1, 1, 2], rep=[0, 1, 0, 1, 1], value=[5.0, 1.0, 4.0, 3.0, 2.0], capacity=[1, 5]
    )
    result = solve_exact(problem)
    reasons = dict(zip(result.lead.tolist(), result.reasons, strict=True))
    assert "the best fit" in reasons[0]
    assert "at capacity" in reasons[1] or "costs more elsewhere" in reasons[1]
    assert "the only eligible salesperson" in reasons[2]


def test_greedy_on_a_large_instance_reports_a_small_gap() -> None:
    rng = np.random.default_rng(4)
    n_leads, n_reps, k = 5_000, 100, 10
    lead = np.repeat(np.arange(n_leads), k)
    rep = rng.integers(0, n_reps, n_leads * k)
    skill = rng.gamma(2.0, 1.0, n_reps)
    value = rng.gamma(2.0, 1.0, n_leads)[lead] * skill[rep]
    problem = AssignmentProblem(lead=lead, rep=rep, value=value, capacity=np.full(n_reps, 40), n_leads=n_leads)
    greedy = solve_greedy(problem)
    exact = solve(problem)
    assert exact.method == "exact"
    assert greedy.total <= exact.total + 1e-6 <= greedy.upper_bound + 1e-6
    assert greedy.gap < 0.1 and (exact.total - greedy.total) / exact.total < 0.05
    assert lagrangian_bound(problem, iterations=1) >= exact.total - 1e-6
