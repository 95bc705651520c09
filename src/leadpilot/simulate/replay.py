"""Replay: run a routing policy forward day by day in the simulated world and measure what it earns.

The future (leads arriving after the history, their screening and the luck of every outcome) is fixed
by the seed: every lead carries its own uniform draws, so two policies are compared on the same luck
(common random numbers) and differ only in who gets which lead, when. A policy sees only what a CRM
can see (the pool's observable fields, the salespeople's declared skills, region, capacity and today's
load); only the oracle is handed the truth, as the upper bound every model is measured against.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from leadpilot.simulate.world import PRODUCT_LINES, Leads, World, office_time


@dataclass
class PoolView:
    """The claim pool on one morning: parallel arrays over the waiting leads (observable fields only)."""

    lead: np.ndarray  # position in the replay's lead arrays (opaque id)
    product: np.ndarray
    region: np.ndarray
    segment: np.ndarray
    source: np.ndarray
    budget: np.ndarray
    visits: np.ndarray
    waited_days: np.ndarray

    def __len__(self) -> int:
        return int(self.lead.shape[0])


@dataclass
class TeamView:
    """The salespeople on one morning: observable attributes and state."""

    region: np.ndarray
    capacity: np.ndarray
    load: np.ndarray  # leads assigned today so far
    declared: np.ndarray  # (salespeople, products) bool: declared product lines
    assigned_total: np.ndarray

    @property
    def n(self) -> int:
        return int(self.region.shape[0])


class Policy(Protocol):
    """A routing policy: given the pool and the team, the (pool position, salesperson) pairs to assign."""

    name: str

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]: ...


@dataclass
class Metrics:
    """What a policy earned over the replay."""

    policy: str
    days: int
    leads: int = 0
    contacted: int = 0
    transferred: int = 0
    assigned: int = 0
    converted: int = 0
    revenue: float = 0.0
    wait_days: list[float] = field(default_factory=list)
    daily_load: list[np.ndarray] = field(default_factory=list)
    expected_conversions: float = 0.0
    seconds: float = 0.0

    def to_json(self) -> dict[str, Any]:
        loads = np.stack(self.daily_load) if self.daily_load else np.zeros((1, 1))
        per_person = loads.sum(axis=0)
        return {
            "policy": self.policy,
            "days": self.days,
            "leads": self.leads,
            "contacted": self.contacted,
            "transferred": self.transferred,
            "assigned": self.assigned,
            "converted": self.converted,
            "ctcvr": self.converted / self.contacted if self.contacted else 0.0,
            "cvr": self.converted / self.assigned if self.assigned else 0.0,
            "expected_cvr": self.expected_conversions / self.assigned if self.assigned else 0.0,
            "revenue": round(self.revenue, 2),
            "revenue_per_lead": self.revenue / self.leads if self.leads else 0.0,
            "speed_to_lead_hours": float(np.mean(self.wait_days) * 24) if self.wait_days else 0.0,
            "load_per_salesperson_day": float(loads.mean()),
            "load_spread_sd": float(per_person.std() / max(1, len(self.daily_load))),
            "load_cv": float(per_person.std() / per_person.mean()) if per_person.mean() else 0.0,
            "seconds": round(self.seconds, 3),
        }


class ReplayEnv:
    """The simulated future after the history: fixed arrivals, screening and luck for a seed."""

    def __init__(self, world: World, *, days: int = 30, start_day: int | None = None) -> None:
        self.world = world
        self.days = days
        self.start = world.days if start_day is None else start_day
        # stream 1: the future, independent of the history (stream 0) and identical for every policy
        self.leads: Leads = world.leads_for_days(self.start, self.start + days, stream=1)
        p = world.params
        hit = self.leads.u_attempts < self.leads.p_connect[:, None]
        self.reached = hit.any(axis=1)
        rng = np.random.default_rng(np.random.SeedSequence([world.seed, 7]))
        due = self.leads.arrival + rng.exponential(p.screen_delay_days, len(self.leads))
        # As in the history: screeners call in office hours, each attempt retry_gap_days after the last.
        self.connected_day = office_time(due + np.argmax(hit, axis=1) * p.retry_gap_days)
        self.p_transfer = world.p_transfer(self.leads, self.connected_day - self.leads.arrival)
        self.qualified = self.reached & (self.leads.u_transfer < self.p_transfer)
        # A qualified lead enters the pool the morning after screening reached it.
        self.pool_day = np.floor(self.connected_day) + 1.0
        people = world.people
        self.declared = np.zeros((people.n, len(PRODUCT_LINES)), dtype=bool)
        for r, lines in enumerate(people.product_lines):
            self.declared[r, lines] = True

    def run(self, policy: Policy) -> Metrics:
        """Run the policy over every day of the replay; deterministic for the world's seed and the policy's."""
        started = time.perf_counter()
        world, leads, people = self.world, self.leads, self.world.people
        metrics = Metrics(policy.name, self.days)
        in_window = self.leads.arrival < self.start + self.days
        metrics.leads = int(in_window.sum())
        metrics.contacted = int((self.reached & in_window & (self.connected_day < self.start + self.days)).sum())
        waiting = np.zeros(len(leads), dtype=bool)
        done = np.zeros(len(leads), dtype=bool)
        assigned_total = np.zeros(people.n, dtype=np.int64)
        for offset in range(self.days):
            today = self.start + offset
            morning = today + 9 / 24
            arrived = self.qualified & ~done & ~waiting & (self.pool_day <= today)
            waiting |= arrived
            metrics.transferred += int(arrived.sum())
            positions = np.flatnonzero(waiting)
            pool = PoolView(
                positions,
                leads.product[positions],
                leads.region[positions],
                leads.segment[positions],
                leads.source[positions],
                leads.budget[positions],
                leads.visits[positions],
                morning - self.connected_day[positions],
            )
            load = np.zeros(people.n, dtype=np.int64)
            team = TeamView(people.sales_region, people.capacity, load, self.declared, assigned_total)
            pairs = policy.assign(today, pool, team) if len(pool) else []
            seen: set[int] = set()
            for pos, rep in pairs:
                if pos in seen or not 0 <= pos < len(pool) or not 0 <= rep < people.n:
                    raise ValueError(f"policy {policy.name!r} returned an invalid or repeated pair ({pos}, {rep})")
                seen.add(pos)
                i = int(positions[pos])
                load[rep] += 1
                assigned_total[rep] += 1
                wait = float(morning - self.connected_day[i])
                p = float(world.p_convert(leads, np.array([i]), np.array([rep]), load=load[rep], delay_days=wait)[0])
                metrics.expected_conversions += p
                metrics.assigned += 1
                metrics.wait_days.append(wait)
                if leads.u_convert[i] < p:  # the lead's own luck, the same under every policy
                    metrics.converted += 1
                    metrics.revenue += float(leads.value[i])
                waiting[i] = False
                done[i] = True
            metrics.daily_load.append(load.copy())
        metrics.seconds = time.perf_counter() - started
        return metrics


# --- reference policies ------------------------------------------------------------------------


def _has_room(team: TeamView) -> np.ndarray:
    return team.load < team.capacity


class RandomPolicy:
    """Each pool lead to a random salesperson with room today."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.rng = np.random.default_rng(seed)

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        room = team.capacity - team.load
        pairs = []
        for pos in self.rng.permutation(len(pool)):
            free = np.flatnonzero(room > 0)
            if free.size == 0:
                break
            rep = int(self.rng.choice(free))
            room[rep] -= 1
            pairs.append((int(pos), rep))
        return pairs


class RoundRobinPolicy:
    """Pool leads oldest first, to salespeople in turn, skipping anyone at capacity (what most CRMs do)."""

    name = "round_robin"

    def __init__(self) -> None:
        self.next = 0

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        room = team.capacity - team.load
        pairs = []
        for pos in np.argsort(-pool.waited_days, kind="stable"):
            for _ in range(team.n):
                rep = self.next % team.n
                self.next += 1
                if room[rep] > 0:
                    room[rep] -= 1
                    pairs.append((int(pos), rep))
                    break
            else:
                break
        return pairs


class OraclePolicy:
    """Knows the true conversion probabilities: greedy on expected value, within capacity (the upper bound)."""

    name = "oracle"

    def __init__(self, env: ReplayEnv) -> None:
        self.env = env

    def assign(self, day: int, pool: PoolView, team: TeamView) -> list[tuple[int, int]]:
        env, world = self.env, self.env.world
        n_pool, n_team = len(pool), team.n
        idx = np.repeat(pool.lead, n_team)
        reps = np.tile(np.arange(n_team), n_pool)
        prob = world.p_convert(env.leads, idx, reps, load=1, delay_days=np.repeat(pool.waited_days, n_team))
        value = (prob * env.leads.value[idx]).reshape(n_pool, n_team)
        room = team.capacity - team.load
        pairs = []
        # Most valuable leads choose first; each takes the best salesperson who still has room.
        for pos in np.argsort(-value.max(axis=1), kind="stable"):
            candidates = np.flatnonzero(room > 0)
            if candidates.size == 0:
                break
            rep = int(candidates[np.argmax(value[pos, candidates])])
            room[rep] -= 1
            pairs.append((int(pos), rep))
        return pairs


from leadpilot.simulate import policies as _policies  # noqa: E402  (they build on the views above)

POLICIES: dict[str, Callable[[ReplayEnv, int], Policy]] = {
    "random": lambda env, seed: RandomPolicy(seed),
    "round_robin": lambda env, seed: RoundRobinPolicy(),
    "least_busy": lambda env, seed: _policies.make_least_busy(env, seed),
    "score_round_robin": lambda env, seed: _policies.make_score_round_robin(env, seed),
    "v1_xgb": lambda env, seed: _policies.make_v1_xgb(env, seed),
    "v2_mmoe": lambda env, seed: _policies.make_v2_mmoe(env, seed),
    "v2_ple": lambda env, seed: _policies.make_v2_ple(env, seed),
    "oracle": lambda env, seed: OraclePolicy(env),
}


def replay(world: World, policy: str, *, days: int = 30, policy_seed: int = 0) -> dict[str, Any]:
    """Replay one named policy and return its metrics as JSON-ready data."""
    if policy not in POLICIES:
        raise ValueError(f"unknown policy {policy!r}; choose one of {', '.join(sorted(POLICIES))}")
    env = ReplayEnv(world, days=days)
    return env.run(POLICIES[policy](env, policy_seed)).to_json()
