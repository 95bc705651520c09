"""Recall quality per method (rules, score, FM, two-tower) against random recall, on a simulated company.

The history (round-robin routing within the lead's city) is split by close date: methods are fitted on the
(lead, salesperson, won) pairs closed before the cut-off and asked about the leads closed after it.

* **observed**, lead → salespeople: for each won held-out lead, is the salesperson who won it in the method's
  top-K? One relevant salesperson per lead, so Recall@K = HitRate@K. History routed by city, so this
  mostly measures whether a method reproduces the routing (the city), not whether it finds the right person.
* **observed**, salesperson → leads: for each salesperson, the share of the held-out leads they won that are
  in their top-K of all held-out leads (Recall@K), and the share of salespeople with at least one (HitRate@K).
* **truth**, lead → salespeople (what only a simulator can measure): Recall@K = overlap of the method's top-K
  with the top-K salespeople by the hidden p_convert for that lead; HitRate@K = the lead's truly best
  salesperson is in the method's top-K. Every held-out lead counts, won or lost.

Random recall is scored in the same run; every figure also comes as a ratio to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import OneHotEncoder

from leadpilot.distribution.recall import (
    FMRecall,
    RandomRecall,
    RuleRecall,
    ScoreRecall,
    TwoTowerRecall,
    hit_rate_at_k,
    overlap_at_k,
    simulated_frames,
    top_k,
)
from leadpilot.simulate.generate import _History
from leadpilot.simulate.world import World

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_info


def lead_scores(train: pd.DataFrame, frames: list[pd.DataFrame]) -> list[np.ndarray]:
    """A plain lead score for the score-based method: logistic regression of won on the lead's own fields."""
    cols = ["product_line", "region", "segment", "source"]
    enc = OneHotEncoder(handle_unknown="ignore")

    def design(f: pd.DataFrame) -> Any:
        from scipy.sparse import hstack

        numeric = np.column_stack([np.log1p(f.budget.to_numpy(float)), np.minimum(f.visits.to_numpy(float), 15)])
        return hstack([enc.transform(f[cols]), numeric]).tocsr()

    enc.fit(train[cols])
    model = LogisticRegression(max_iter=500).fit(design(train), train.won.astype(int))
    return [model.predict_proba(design(f))[:, 1] for f in frames]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="medium")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--test-share", type=float, default=0.2, help="share of closed pairs after the cut-off")
    parser.add_argument("--ks", default="5,10,20,50")
    args = parser.parse_args()
    ks = [int(k) for k in args.ks.split(",")]
    load_before = os.getloadavg()

    started = time.perf_counter()
    world = World(args.scale, seed=args.seed)
    leads = world.leads_for_days(0, world.days)
    history = _History(world, leads, np.arange(world.people.n), np.arange(world.scale.screeners))
    history.run()
    closed = np.flatnonzero(~np.isnan(history.closed_day))
    cut = float(np.quantile(history.closed_day[closed], 1 - args.test_share))
    train = closed[history.closed_day[closed] < cut]
    test = closed[history.closed_day[closed] >= cut]
    frame, team = simulated_frames(world, leads)
    pairs = frame.iloc[train].reset_index(drop=True).assign(salesperson=history.rep[train], won=history.won[train])
    test_leads = frame.iloc[test].reset_index(drop=True)
    won = history.won[test]
    winner = history.rep[test]
    m = world.people.n
    truth = world.p_convert(leads, np.repeat(test, m), np.tile(np.arange(m), len(test))).reshape(len(test), m)
    truth_top = {k: top_k(truth, k) for k in ks}
    _, score = lead_scores(pairs, [pairs, test_leads])
    test_leads = test_leads.assign(score=score)
    log(
        f"{args.scale}: {len(leads):,} leads, {m} salespeople, {len(train):,} training pairs "
        f"({int(history.won[train].sum()):,} won), {len(test):,} held-out ({int(won.sum()):,} won), "
        f"cut-off day {cut:.1f}, {time.perf_counter() - started:.1f} s"
    )

    methods: dict[str, Any] = {
        "random": RandomRecall(seed=args.seed),
        "rules": RuleRecall(),
        "rules_relaxed": RuleRecall(strict=False),
        "score": ScoreRecall(),
        "fm": FMRecall(seed=args.seed),
        "fm_exposure": FMRecall(negatives=2, seed=args.seed),
        "two_tower": TwoTowerRecall(seed=args.seed),
        "two_tower_no_logq": TwoTowerRecall(logq_correction=False, seed=args.seed),
    }
    results: dict[str, Any] = {}
    for name, method in methods.items():
        t0 = time.perf_counter()
        method.fit(pairs, team)
        fit_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores = method.score(test_leads)
        score_s = time.perf_counter() - t0
        row: dict[str, Any] = {"fit_seconds": round(fit_s, 2), "score_seconds": round(score_s, 3), "k": {}}
        # Salesperson → leads: every salesperson's top-K of the held-out leads.
        lead_top = {k: top_k(scores.T, k) for k in ks}
        for k in ks:
            top = top_k(scores, k)
            per_rep_recall, per_rep_hit = [], []
            for s in range(m):
                mine = np.flatnonzero(won & (winner == s))
                if mine.size:
                    got = np.isin(mine, lead_top[k][s]).sum()
                    per_rep_recall.append(got / mine.size)
                    per_rep_hit.append(float(got > 0))
            observed = hit_rate_at_k(top[won], winner[won])
            row["k"][k] = {
                "observed_lead_hit_rate": round(observed, 4),
                "observed_salesperson_recall": round(float(np.mean(per_rep_recall)), 4),
                "observed_salesperson_hit_rate": round(float(np.mean(per_rep_hit)), 4),
                "truth_recall": round(overlap_at_k(top, truth_top[k]), 4),
                "truth_hit_rate": round(hit_rate_at_k(top, truth_top[k][:, 0]), 4),
                "truth_mean_p_convert": round(
                    float(np.nanmean(np.where(top >= 0, np.take_along_axis(truth, np.maximum(top, 0), 1), np.nan))), 4
                ),
            }
        results[name] = row
        log(f"{name}: fit {fit_s:.1f} s, K=10 {row['k'].get(10, '')}")
    # Reference, not a method: the truth's own top-K among the lead's city's salespeople only. History
    # routed by city, so a method that learns who won what from it cannot be expected to do better.
    local = np.where(world.people.sales_region[None, :] == leads.region[test][:, None], truth, -np.inf)
    results["truth_in_city_reference"] = {
        "k": {
            k: {
                "truth_recall": round(overlap_at_k(top_k(local, k), truth_top[k]), 4),
                "truth_hit_rate": round(hit_rate_at_k(top_k(local, k), truth_top[k][:, 0]), 4),
            }
            for k in ks
        }
    }
    base = results["random"]["k"]
    for row in results.values():
        for k, figures in row["k"].items():
            figures["ratio_to_random"] = {
                key: (round(value / base[k][key], 3) if base[k][key] else None)
                for key, value in figures.items()
                if key != "truth_mean_p_convert"
            }
    print(
        json.dumps(
            {
                "benchmark": "distribution_recall",
                "scale": args.scale,
                "seed": args.seed,
                "salespeople": m,
                "training_pairs": len(train),
                "training_won": int(history.won[train].sum()),
                "held_out_leads": len(test),
                "held_out_won": int(won.sum()),
                "cut_off_day": round(cut, 1),
                "methods": results,
                "seconds": round(time.perf_counter() - started, 1),
                "load_average_before": [round(x, 2) for x in load_before],
                "load_average_after": [round(x, 2) for x in os.getloadavg()],
                "machine": machine_info(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
