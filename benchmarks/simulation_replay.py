"""Replay speed and how much routing can matter in the simulated world.

1. One simulated day of `medium` under round robin (target: at most 2 s), timed over a 30-day replay.
2. The oracle's CTCVR lift over random and over round robin on `medium`, with a 95 % confidence
   interval over seeds (each seed is a different company and future; policies share each seed's luck).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np

from leadpilot.simulate.replay import POLICIES, ReplayEnv
from leadpilot.simulate.world import World


def ci(values: list[float]) -> dict[str, float]:
    mean = float(np.mean(values))
    half = 1.96 * float(np.std(values, ddof=1)) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return {"mean": round(mean, 4), "ci95_low": round(mean - half, 4), "ci95_high": round(mean + half, 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()

    world = World(args.scale, seed=7)
    env = ReplayEnv(world, days=args.days)
    started = time.perf_counter()
    result = env.run(POLICIES["round_robin"](env, 0)).to_json()
    per_day = (time.perf_counter() - started) / args.days

    rows: dict[str, dict[str, list[float]]] = {p: {"ctcvr": [], "cvr": [], "revenue_per_lead": []} for p in POLICIES}
    for seed in range(args.seeds):
        env = ReplayEnv(World(args.scale, seed=1000 + seed), days=args.days)
        for name in POLICIES:
            metrics = env.run(POLICIES[name](env, seed)).to_json()
            for key in rows[name]:
                rows[name][key].append(metrics[key])
        print(f"seed {seed + 1}/{args.seeds}", file=sys.stderr)
    lift = {}
    for base in ("random", "round_robin"):
        lift[base] = {
            key: ci([o / b - 1 for o, b in zip(rows["oracle"][key], rows[base][key], strict=True)])
            for key in ("ctcvr", "cvr", "revenue_per_lead")
        }
    print(
        json.dumps(
            {
                "benchmark": "simulation_replay",
                "scale": args.scale,
                "days": args.days,
                "seeds": args.seeds,
                "round_robin_seconds_per_day": round(per_day, 4),
                "target_seconds_per_day": 2.0,
                "per_day_to_target": round(per_day / 2.0, 4),
                "round_robin_30_days": result,
                "policies": {name: {k: ci(v) for k, v in m.items()} for name, m in rows.items()},
                "oracle_lift_over": lift,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
