"""Routing policies in the simulator replay (issue #6): CTCVR, CVR and revenue per lead with 95 % intervals.

Each seed is a different `medium` company (World("medium", seed=1000+s)) and its own 30-day future; every
policy faces that seed's luck (common random numbers), so per-seed differences are paired. Model policies
train on the history before the replay. Reported: the table per policy (mean and t-interval over seeds),
V1's CTCVR lift over round robin, V2 against V1 (paired t over seeds, and pooled two-proportion z), and the
best policy's share of the oracle's value, with each target met or not.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from typing import Any

import numpy as np
from scipy import stats

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import log, machine_info

from leadpilot.experiments.analysis import two_proportion_z
from leadpilot.simulate.replay import POLICIES, ReplayEnv
from leadpilot.simulate.world import World

METRICS = ("ctcvr", "cvr", "revenue_per_lead", "expected_cvr")
V2 = ("v2_mmoe", "v2_ple")


def ci(values: list[float]) -> dict[str, float]:
    """Mean and 95 % t-interval over seeds."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": round(mean, 5), "ci95_low": float("nan"), "ci95_high": float("nan")}
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": round(mean, 5), "ci95_low": round(mean - half, 5), "ci95_high": round(mean + half, 5)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policy names")
    args = parser.parse_args()
    names = [n for n in args.policies.split(",") if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        parser.error(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")

    loads = [load_average()]
    started = time.perf_counter()
    rows: dict[str, dict[str, list[float]]] = {n: {m: [] for m in (*METRICS, "converted", "contacted")} for n in names}
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for s in range(args.seeds):
        env = ReplayEnv(World(args.scale, seed=1000 + s), days=args.days)
        for name in names:
            t0 = time.perf_counter()
            result = env.run(POLICIES[name](env, s)).to_json()
            seconds[name].append(time.perf_counter() - t0)
            for m in rows[name]:
                rows[name][m].append(float(result[m]))
            log(f"seed {s + 1}/{args.seeds} {name:18} CTCVR {result['ctcvr']:.4f} ({seconds[name][-1]:.1f} s)")
        loads.append(load_average())

    table = {n: {m: ci(rows[n][m]) for m in METRICS} for n in names}
    out: dict[str, Any] = {
        "benchmark": "distribution_replay",
        "scale": args.scale,
        "days": args.days,
        "seeds": args.seeds,
        "world_seeds": [1000 + s for s in range(args.seeds)],
        "policies": table,
        "seconds_per_seed_train_and_replay": {n: round(float(np.mean(v)), 2) for n, v in seconds.items()},
    }
    targets: dict[str, Any] = {}
    if "v1_xgb" in names and "round_robin" in names:
        lift = {
            m: ci([a / b - 1 for a, b in zip(rows["v1_xgb"][m], rows["round_robin"][m], strict=True)])
            for m in ("ctcvr", "cvr", "revenue_per_lead")
        }
        out["v1_lift_over_round_robin"] = lift
        targets["v1_ctcvr_lift_over_round_robin_at_least_30pct"] = {
            "lift": lift["ctcvr"]["mean"],
            "ratio_to_target": round(lift["ctcvr"]["mean"] / 0.30, 3),
            "met": lift["ctcvr"]["mean"] >= 0.30,
        }
    if "v1_xgb" in names:
        for v2 in (n for n in V2 if n in names):
            diff = [a - b for a, b in zip(rows[v2]["ctcvr"], rows["v1_xgb"]["ctcvr"], strict=True)]
            paired = stats.ttest_rel(rows[v2]["ctcvr"], rows["v1_xgb"]["ctcvr"]) if args.seeds > 1 else None
            paired_expected = (
                stats.ttest_rel(rows[v2]["expected_cvr"], rows["v1_xgb"]["expected_cvr"]) if args.seeds > 1 else None
            )
            z, p_z = two_proportion_z(
                int(sum(rows[v2]["converted"])),
                int(sum(rows[v2]["contacted"])),
                int(sum(rows["v1_xgb"]["converted"])),
                int(sum(rows["v1_xgb"]["contacted"])),
            )
            p_t = float(paired.pvalue) if paired is not None else float("nan")
            out[f"{v2}_vs_v1"] = {
                "ctcvr_difference": ci(diff),
                "paired_t_p": round(p_t, 5),
                "paired_t_p_expected_cvr": round(float(paired_expected.pvalue), 5) if paired_expected else None,
                "pooled_z": round(z, 3),
                "pooled_z_p": round(p_z, 5),
            }
            targets[f"{v2}_better_than_v1_p_below_0.05"] = {
                "difference": round(float(np.mean(diff)), 5),
                "paired_t_p": round(p_t, 5),
                "met": bool(np.mean(diff) > 0 and p_t < 0.05),
            }
    if "oracle" in names:
        others = [n for n in names if n != "oracle"]
        best = max(others, key=lambda n: table[n]["ctcvr"]["mean"])
        share = {
            m: ci([a / b for a, b in zip(rows[best][m], rows["oracle"][m], strict=True)])
            for m in ("ctcvr", "revenue_per_lead")
        }
        out["best_policy"] = best
        out["best_share_of_oracle"] = share
        targets["best_policy_at_least_90pct_of_oracle"] = {
            "policy": best,
            "share_ctcvr": share["ctcvr"]["mean"],
            "share_revenue_per_lead": share["revenue_per_lead"]["mean"],
            "ratio_to_target": round(share["ctcvr"]["mean"] / 0.90, 3),
            "met": share["ctcvr"]["mean"] >= 0.90,
        }
    out["targets"] = targets
    out["wall_seconds"] = round(time.perf_counter() - started, 1)
    out["load_average"] = loads
    out["machine"] = machine_info()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
