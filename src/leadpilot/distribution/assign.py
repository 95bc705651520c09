"""Capacity-aware assignment: give each lead to at most one salesperson, maximising total expected value.

The problem is a bipartite b-matching over the *eligible* (lead, salesperson) pairs (the recall step has
already removed pairs that break skills, region, product line or working hours): each pair has a value
(CTCVR × deal value), each salesperson a capacity (today's remaining leads) and optionally a fairness
floor (at least this many leads when there are enough eligible ones), each team optionally a quota (at most /
at least this many leads across its members).

* :func:`solve_exact` solves the linear program with HiGHS. Lead, salesperson and team constraints form
  two laminar families over the pairs' incidence matrix, which is totally unimodular, so the LP optimum is
  integral: the LP *is* the exact assignment (checked at run time).
* :func:`solve_greedy` takes pairs best-first under the capacities and team maximums, then repairs floors
  with the cheapest moves; it scales to millions of pairs. Team minimums are guaranteed by the exact solver
  only; the greedy result reports any team or floor it left short. Its optimality gap is reported against an upper bound
  (the LP optimum when it was solved, else a Lagrangian dual bound from salesperson prices).
* :func:`solve` picks exact up to ``exact_limit`` pairs, greedy beyond.

Every assignment carries its explanation: the value of the chosen salesperson and of the runner-up, and why
the runner-up (or the best one) did not get the lead.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse
from scipy.optimize import linprog

EXACT_LIMIT = 400_000


class AssignmentError(ValueError):
    """An assignment problem that is malformed or cannot be satisfied; the message says which part."""


@dataclass
class AssignmentProblem:
    """Eligible pairs and the constraints on them (indices are positions in the lead and salesperson lists)."""

    lead: np.ndarray  # pair -> lead index
    rep: np.ndarray  # pair -> salesperson index
    value: np.ndarray  # pair -> expected value (>= 0)
    capacity: np.ndarray  # salesperson -> leads they may still take
    floor: np.ndarray | None = None  # salesperson -> at least this many (fairness), where eligible pairs allow
    team: np.ndarray | None = None  # salesperson -> team index
    team_max: dict[int, int] = field(default_factory=dict)  # team -> at most this many leads
    team_min: dict[int, int] = field(default_factory=dict)  # team -> at least this many leads
    n_leads: int = 0

    def __post_init__(self) -> None:
        self.lead = np.asarray(self.lead, dtype=np.int64)
        self.rep = np.asarray(self.rep, dtype=np.int64)
        self.value = np.asarray(self.value, dtype=np.float64)
        self.capacity = np.asarray(self.capacity, dtype=np.int64)
        if not (len(self.lead) == len(self.rep) == len(self.value)):
            raise AssignmentError(
                f"pairs disagree: {len(self.lead)} leads, {len(self.rep)} reps, {len(self.value)} values"
            )
        if len(self.value) and not np.isfinite(self.value).all():
            raise AssignmentError(
                f"pair {int(np.flatnonzero(~np.isfinite(self.value))[0])} has a value that is not a number"
            )
        if len(self.value) and (self.value < 0).any():
            raise AssignmentError(f"pair {int(np.flatnonzero(self.value < 0)[0])} has a negative value")
        if (self.capacity < 0).any():
            raise AssignmentError(f"salesperson {int(np.flatnonzero(self.capacity < 0)[0])} has a negative capacity")
        if len(self.rep) and (self.rep.min() < 0 or self.rep.max() >= len(self.capacity)):
            raise AssignmentError(f"a pair names salesperson {int(self.rep.max())}, but there are {len(self.capacity)}")
        self.n_leads = max(self.n_leads, int(self.lead.max()) + 1 if len(self.lead) else 0)
        if self.floor is not None:
            self.floor = np.minimum(np.asarray(self.floor, dtype=np.int64), self.capacity)
        if (self.team_max or self.team_min) and self.team is None:
            raise AssignmentError("team quotas need each salesperson's team")
        if self.team is not None:
            self.team = np.asarray(self.team, dtype=np.int64)
        # Duplicate pairs would let a lead count twice; keep the best value of each.
        key = self.lead * len(self.capacity) + self.rep
        order = np.lexsort((-self.value, key))
        first = np.ones(len(order), dtype=bool)
        first[1:] = key[order][1:] != key[order][:-1]
        keep = np.sort(order[first])
        self.lead, self.rep, self.value = self.lead[keep], self.rep[keep], self.value[keep]

    @property
    def n_reps(self) -> int:
        return len(self.capacity)


@dataclass
class Assignment:
    """The chosen pairs, their total value, how good that is, and each lead's explanation."""

    lead: np.ndarray
    rep: np.ndarray
    value: np.ndarray
    method: str
    total: float
    upper_bound: float
    seconds: float
    reasons: list[str] = field(default_factory=list)
    floor_shortfall: dict[int, int] = field(default_factory=dict)
    team_shortfall: dict[int, int] = field(default_factory=dict)

    @property
    def gap(self) -> float:
        """Relative optimality gap: how far the total can be from the best possible (0 = optimal)."""
        return 0.0 if self.upper_bound <= 0 else max(0.0, (self.upper_bound - self.total) / self.upper_bound)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "assigned": len(self.lead),
            "total_value": round(self.total, 6),
            "upper_bound": round(self.upper_bound, 6),
            "gap": round(self.gap, 6),
            "seconds": round(self.seconds, 3),
            "floor_shortfall": self.floor_shortfall,
            "team_shortfall": self.team_shortfall,
        }


def _teams(problem: AssignmentProblem) -> list[tuple[np.ndarray, int | None, int | None]]:
    """(pair mask, max, min) per team with a quota."""
    if problem.team is None:
        return []
    pair_team = problem.team[problem.rep]
    return [
        (pair_team == t, problem.team_max.get(t), problem.team_min.get(t))
        for t in sorted(set(problem.team_max) | set(problem.team_min))
    ]


def solve_exact(problem: AssignmentProblem) -> Assignment:
    """The optimal assignment by linear programming (integral here; verified)."""
    started = time.perf_counter()
    n_pairs = len(problem.value)
    if n_pairs == 0:
        return _result(problem, np.zeros(0, dtype=bool), "exact", 0.0, started)
    cols = np.arange(n_pairs)
    blocks = [
        sparse.csr_matrix((np.ones(n_pairs), (problem.lead, cols)), shape=(problem.n_leads, n_pairs)),
        sparse.csr_matrix((np.ones(n_pairs), (problem.rep, cols)), shape=(problem.n_reps, n_pairs)),
    ]
    bounds = [np.ones(problem.n_leads), problem.capacity.astype(np.float64)]
    if problem.floor is not None and problem.floor.any():
        reachable = _reachable_floor(problem)
        blocks.append(-sparse.csr_matrix((np.ones(n_pairs), (problem.rep, cols)), shape=(problem.n_reps, n_pairs)))
        bounds.append(-reachable.astype(np.float64))
    for mask, most, least in _teams(problem):
        row = sparse.csr_matrix(mask.astype(np.float64)[None, :])
        if most is not None:
            blocks.append(row)
            bounds.append(np.array([float(most)]))
        if least is not None:
            blocks.append(-row)
            bounds.append(np.array([-float(least)]))
    result = linprog(
        -problem.value, A_ub=sparse.vstack(blocks).tocsc(), b_ub=np.concatenate(bounds), bounds=(0, 1), method="highs"
    )
    if result.status == 2:
        raise AssignmentError(
            "the constraints cannot all hold: team minimums or fairness floors exceed what the pairs allow"
        )
    if result.status != 0:
        raise AssignmentError(f"the solver stopped: {result.message}")
    x = result.x
    fractional = (x > 1e-6) & (x < 1 - 1e-6)
    if fractional.any():  # cannot happen for these constraint families; guard against a solver tolerance issue
        raise AssignmentError(f"{int(fractional.sum())} pairs came out fractional; use solve_greedy")
    return _result(problem, x > 0.5, "exact", float(-result.fun), started)


def _reachable_floor(problem: AssignmentProblem) -> np.ndarray:
    """Each floor, lowered to the number of leads the salesperson is eligible for (a floor can't exceed that)."""
    assert problem.floor is not None
    eligible = np.bincount(problem.rep, minlength=problem.n_reps)
    return np.minimum(problem.floor, eligible)


def solve_greedy(problem: AssignmentProblem, *, bound_iterations: int = 30) -> Assignment:
    """Value-ordered deferred acceptance under capacities and team maximums, then floors repaired by the
    cheapest moves; the gap is measured against a Lagrangian upper bound.

    Leads propose to their salespeople best pair first; each salesperson (and each capped team) keeps its
    best proposals so far and turns the rest down, who propose to their next choice. With both sides ranking
    by the same pair value this ends in the same assignment as taking the best remaining pair over and over
    (the unique stable matching), but every round is a few vectorised sorts instead of a Python loop per pair.
    """
    started = time.perf_counter()
    chosen = _deferred_acceptance(problem)
    if problem.floor is not None and problem.floor.any():
        load = np.bincount(problem.rep[chosen], minlength=problem.n_reps)
        _repair_floors(problem, chosen, load)
    total = float(problem.value[chosen].sum())
    bound = lagrangian_bound(problem, iterations=bound_iterations, start_total=total)
    return _result(problem, chosen, "greedy", total, started, upper_bound=bound)


def _deferred_acceptance(problem: AssignmentProblem) -> np.ndarray:
    """The held pairs when no lead has a proposal left to make (see :func:`solve_greedy`)."""
    order = np.lexsort((-problem.value, problem.lead))  # each lead's pairs, best first
    starts = np.searchsorted(problem.lead[order], np.arange(problem.n_leads + 1))
    pointer, end = starts[:-1].copy(), starts[1:]
    held = np.zeros(len(problem.value), dtype=bool)
    team_cap = None
    if problem.team is not None and problem.team_max:
        team_cap = np.full(int(problem.team.max()) + 1, np.iinfo(np.int64).max, dtype=np.int64)
        for t, most in problem.team_max.items():
            if t < len(team_cap):
                team_cap[t] = most
    active = np.flatnonzero(pointer < end)
    while active.size:
        held[order[pointer[active]]] = True
        pairs = np.flatnonzero(held)
        reject = _over(pairs, problem.rep[pairs], problem.value[pairs], problem.capacity)
        if team_cap is not None:
            kept = np.setdiff1d(pairs, reject, assume_unique=True)
            teams = problem.team[problem.rep[kept]]  # type: ignore[index]
            reject = np.concatenate([reject, _over(kept, teams, problem.value[kept], team_cap)])
        held[reject] = False
        losers = problem.lead[reject]
        pointer[losers] += 1
        active = losers[pointer[losers] < end[losers]]
    return held


def _over(pairs: np.ndarray, group: np.ndarray, value: np.ndarray, limit: np.ndarray) -> np.ndarray:
    """The pairs beyond each group's limit when every group keeps its highest values."""
    if len(pairs) == 0:
        return pairs
    o = np.lexsort((-value, group))
    group_sorted = group[o]
    rank = np.arange(len(o)) - np.searchsorted(group_sorted, group_sorted)
    return pairs[o[rank >= limit[group_sorted]]]


def _repair_floors(problem: AssignmentProblem, chosen: np.ndarray, load: np.ndarray) -> None:
    """Give salespeople below their floor leads, cheapest first: an unassigned eligible lead, or one moved
    from a salesperson above their own floor (losing the least value)."""
    assert problem.floor is not None
    floor = _reachable_floor(problem)
    owner_pair = np.full(problem.n_leads, -1, dtype=np.int64)
    owner_pair[problem.lead[chosen]] = np.flatnonzero(chosen)
    by_rep = np.argsort(problem.rep, kind="stable")
    starts = np.searchsorted(problem.rep[by_rep], np.arange(problem.n_reps + 1))
    for j in np.flatnonzero(load < floor).tolist():
        pairs = by_rep[starts[j] : starts[j + 1]]
        while load[j] < floor[j]:
            best, best_loss = -1, np.inf
            for p in pairs.tolist():
                if chosen[p]:
                    continue
                current = owner_pair[problem.lead[p]]
                if current < 0:
                    loss = -problem.value[p]
                else:
                    k = problem.rep[current]
                    if load[k] <= floor[k]:
                        continue
                    loss = problem.value[current] - problem.value[p]
                if loss < best_loss:
                    best, best_loss = p, loss
            if best < 0:
                break  # nothing left to give: reported as a shortfall
            current = owner_pair[problem.lead[best]]
            if current >= 0:
                chosen[current] = False
                load[problem.rep[current]] -= 1
            chosen[best] = True
            owner_pair[problem.lead[best]] = best
            load[j] += 1


def lagrangian_bound(problem: AssignmentProblem, *, iterations: int = 30, start_total: float | None = None) -> float:
    """An upper bound on the best total: with a price λ_j per salesperson, every lead takes its best
    (value − λ_j) if positive, plus Σ λ_j·capacity_j; prices follow a subgradient on the capacity excess.
    (Floors and team quotas only shrink the feasible set, so the bound holds for them too.)"""
    if len(problem.value) == 0:
        return 0.0
    order = np.argsort(problem.lead, kind="stable")
    lead_sorted, rep_sorted, value_sorted = problem.lead[order], problem.rep[order], problem.value[order]
    starts = np.flatnonzero(np.r_[True, lead_sorted[1:] != lead_sorted[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(order)]))
    price = np.zeros(problem.n_reps)
    best = np.inf
    step0 = float(np.mean(problem.value)) or 1.0
    for k in range(max(iterations, 1)):
        reduced = value_sorted - price[rep_sorted]
        top = np.maximum.reduceat(reduced, starts)
        bound = float(np.maximum(top, 0.0).sum() + (price * problem.capacity).sum())
        best = min(best, bound)
        winners = (reduced == top[group]) & (reduced > 0)
        demand = np.bincount(rep_sorted[winners], minlength=problem.n_reps)
        excess = demand - problem.capacity
        norm = float((excess.astype(np.float64) ** 2).sum())
        if norm == 0:
            break
        # A Polyak step towards the known feasible total when there is one, else a diminishing step.
        step = (best - start_total) / norm if start_total is not None and best > start_total else step0 / (k + 1)
        price = np.maximum(0.0, price + step * excess)
    return best


def _result(
    problem: AssignmentProblem,
    chosen: np.ndarray,
    method: str,
    total: float,
    started: float,
    *,
    upper_bound: float | None = None,
) -> Assignment:
    idx = np.flatnonzero(chosen)
    shortfall: dict[int, int] = {}
    if problem.floor is not None:
        load = np.bincount(problem.rep[idx], minlength=problem.n_reps)
        short = problem.floor - load
        shortfall = {int(j): int(short[j]) for j in np.flatnonzero(short > 0)}
    team_short: dict[int, int] = {}
    if problem.team is not None and problem.team_min:
        team_load = np.bincount(problem.team[problem.rep[idx]], minlength=max(problem.team_min) + 1)
        team_short = {t: int(m - team_load[t]) for t, m in problem.team_min.items() if team_load[t] < m}
    result = Assignment(
        lead=problem.lead[idx],
        rep=problem.rep[idx],
        value=problem.value[idx],
        method=method,
        total=total,
        upper_bound=total if upper_bound is None else max(upper_bound, total),
        seconds=time.perf_counter() - started,
        floor_shortfall=shortfall,
        team_shortfall=team_short,
    )
    result.reasons = explain(problem, result)
    return result


def explain(problem: AssignmentProblem, result: Assignment, names: list[str] | None = None) -> list[str]:
    """Per assigned lead, in the order of ``result.lead``: why this salesperson and not the runner-up."""
    if len(result.lead) == 0:
        return []
    load = np.bincount(result.rep, minlength=problem.n_reps)
    order = np.lexsort((-problem.value, problem.lead))
    starts = np.searchsorted(problem.lead[order], np.arange(problem.n_leads + 1))
    first = order[starts[result.lead]]  # each assigned lead's best pair
    has_second = starts[result.lead] + 1 < starts[result.lead + 1]
    second = order[np.minimum(starts[result.lead] + 1, len(order) - 1)]
    # The runner-up: the best pair that is not the chosen salesperson's.
    runner = np.where(problem.rep[first] != result.rep, first, second)
    alone = (problem.rep[first] == result.rep) & ~has_second

    def who(j: int) -> str:
        return names[j] if names else f"salesperson #{j}"

    out = []
    for j, v, k, w, only in zip(
        result.rep.tolist(),
        result.value.tolist(),
        problem.rep[runner].tolist(),
        problem.value[runner].tolist(),
        alone.tolist(),
        strict=True,
    ):
        text = f"{who(j)}: expected value {v:.4g}"
        if only:
            out.append(text + "; the only eligible salesperson")
        elif w <= v:
            out.append(text + f", the best fit (next: {who(k)} at {w:.4g})")
        elif load[k] >= problem.capacity[k]:
            out.append(text + f"; {who(k)} fits better ({w:.4g}) but is at capacity ({int(problem.capacity[k])})")
        else:
            out.append(text + f"; {who(k)} fits better ({w:.4g}) but giving it to them costs more elsewhere")
    return out


def solve(problem: AssignmentProblem, *, exact_limit: int = EXACT_LIMIT) -> Assignment:
    """Exact up to ``exact_limit`` pairs, greedy (with its gap) beyond."""
    if len(problem.value) <= exact_limit:
        return solve_exact(problem)
    return solve_greedy(problem)
