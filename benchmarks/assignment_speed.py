"""Assignment speed and quality (issue #6): 100,000 leads over 2,000 salespeople with capacities, fairness
floors and team maximums, target ≤ 10 s; the greedy solver's optimality gap beside it.

Pairs are what recall would hand over: ``--per-lead`` eligible salespeople per lead (default 20, so 2 M pairs),
values = lead value × salesperson skill × a pair-fit term (lognormal), capacities 30-70, a floor of 10 each,
teams of 20 salespeople capped at 90 % of their capacity. The exact LP runs on a smaller instance in the same
run (``--exact-leads``) to measure how far greedy is from the true optimum there, beside the gap greedy
reports against its Lagrangian bound.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from leadpilot.distribution.assign import AssignmentProblem, solve_exact, solve_greedy

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_info


def instance(n_leads: int, n_reps: int, per_lead: int, seed: int) -> AssignmentProblem:
    rng = np.random.default_rng(seed)
    lead = np.repeat(np.arange(n_leads), per_lead)
    rep = rng.integers(0, n_reps, n_leads * per_lead)
    value = (
        rng.lognormal(0.0, 0.5, n_leads)[lead]
        * rng.lognormal(0.0, 0.3, n_reps)[rep]
        * rng.lognormal(0.0, 0.4, len(lead))
    )
    # Capacities of 30-70 scaled so that together they are about the number of leads (a full day).
    capacity = np.maximum(1, (rng.integers(30, 71, n_reps) * n_leads / (50 * n_reps)).astype(np.int64))
    team = np.arange(n_reps) // 20
    team_max = {int(t): int(0.9 * capacity[team == t].sum()) for t in np.unique(team)}
    return AssignmentProblem(
        lead=lead,
        rep=rep,
        value=value,
        capacity=capacity,
        floor=np.full(n_reps, 10),
        team=team,
        team_max=team_max,
        n_leads=n_leads,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leads", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=2_000)
    parser.add_argument("--per-lead", type=int, default=20)
    parser.add_argument("--exact-leads", type=int, default=10_000, help="Size of the instance solved exactly too.")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    log(f"building {args.leads:,} leads × {args.reps:,} salespeople, {args.per_lead} pairs per lead")
    big = instance(args.leads, args.reps, args.per_lead, args.seed)
    started, cpu_started = time.perf_counter(), time.process_time()
    greedy = solve_greedy(big)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    log(f"greedy: {seconds:.1f} s, gap ≤ {greedy.gap:.4f}")

    small = instance(args.exact_leads, args.reps // 10, args.per_lead, args.seed)
    small_greedy = solve_greedy(small)
    started = time.perf_counter()
    exact = solve_exact(small)
    exact_seconds = time.perf_counter() - started
    result = {
        "benchmark": "assignment_speed",
        "machine": machine_info(),
        "large": {
            "leads": args.leads,
            "salespeople": args.reps,
            "pairs": len(big.value),
            "greedy_seconds": round(seconds, 3),
            "greedy_cpu_seconds": round(cpu, 3),  # what a quiet machine's wall time would be (one thread)
            "target_seconds": 10.0,
            "ratio_to_target": round(seconds / 10.0, 3),
            "assigned": len(greedy.lead),
            "reported_gap": round(greedy.gap, 5),
            "floor_shortfall_salespeople": len(greedy.floor_shortfall),
        },
        "small": {
            "leads": args.exact_leads,
            "salespeople": args.reps // 10,
            "pairs": len(small.value),
            "exact_seconds": round(exact_seconds, 3),
            "exact_total": round(exact.total, 3),
            "greedy_total": round(small_greedy.total, 3),
            "true_gap": round((exact.total - small_greedy.total) / exact.total, 5),
            "reported_gap": round(small_greedy.gap, 5),
        },
    }
    result["machine"]["loadavg_at_end"] = list(os.getloadavg())
    json.dump(result, sys.stdout, indent=2)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
