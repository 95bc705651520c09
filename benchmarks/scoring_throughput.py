"""Batch scoring throughput: XGBoost ``inplace_predict`` vs the same booster exported to ONNX Runtime.

A model shaped like the CRM's (default: ~500 numeric feature-store-like columns plus five categorical CRM
attributes, depth-5 trees, 400 boosting rounds without early stopping) is trained with
``leadpilot.models.pipeline.fit_model`` on synthetic data, exported with ``export_onnx``, and both
backends score the same float32 matrix in the same run, for batch sizes 1k / 10k / 100k. The encoder's
DataFrame -> float32 matrix cost is measured apart (end-to-end scoring pays it too).

    flock /tmp/leadpilot-bench.lock .venv/bin/python benchmarks/scoring_throughput.py > throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine_info

from leadpilot.models.onnx_export import OnnxScorer, export_onnx
from leadpilot.models.pipeline import fit_model

TARGET_LEADS_PER_SECOND = 100_000


def synthetic(n: int, features: int, seed: int) -> pd.DataFrame:
    """Rows shaped like build_frame's: windowed counts and sums (mostly 0), DAYS_SINCE (NaN when never),
    latest values, and the CRM's categorical attributes; the label depends on a few of them."""
    rng = np.random.default_rng(seed)
    kinds = np.arange(features) % 4
    data = np.zeros((n, features), dtype=np.float32)
    activity = rng.gamma(0.6, 1.0, n)  # how active a lead is: drives every count
    for j in range(features):
        rate = activity * (0.05 + 0.4 * ((j * 7919) % 13) / 13)
        if kinds[j] == 0:  # count
            data[:, j] = rng.poisson(rate)
        elif kinds[j] == 1:  # sum of amounts
            data[:, j] = rng.poisson(rate) * rng.lognormal(3, 1, n)
        elif kinds[j] == 2:  # days since the last event: missing when never
            col = rng.exponential(30 / (rate + 0.05))
            col[rng.random(n) < np.exp(-rate)] = np.nan
            data[:, j] = col
        else:  # a latest value, sometimes missing
            col = rng.normal(activity, 1.0)
            col[rng.random(n) < 0.3] = np.nan
            data[:, j] = col
    frame = pd.DataFrame(
        data, columns=[f"f{j:04d}__{('count', 'sum', 'days_since', 'last')[k]}" for j, k in enumerate(kinds)]
    )
    frame["budget"] = rng.lognormal(11, 1.2, n)
    frame["region"] = rng.choice(["Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Wuhan"], n)
    frame["source"] = rng.choice(["web_form", "app", "phone_in", "partner", "ad_campaign"], n)
    frame["product_line"] = rng.choice(["housing", "used_cars", "recruitment", "local_services"], n)
    frame["company_size"] = rng.choice(["micro", "small", "medium", None], n)
    z = (
        0.8 * np.log1p(np.nan_to_num(data[:, 0]))
        + 0.5 * np.log1p(np.nan_to_num(data[:, 5]))
        - 0.02 * np.nan_to_num(data[:, 2], nan=60)
        + 0.3 * (frame["source"] == "phone_in")
        + rng.normal(0, 1.0, n)
        - 1.0
    )
    frame["won"] = np.where(z > 0, "yes", "no")
    return frame


def _time(fn: Any, repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", type=int, default=500, help="numeric feature columns (default 500)")
    parser.add_argument("--trees", type=int, default=400, help="boosting rounds, no early stopping (default 400)")
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument(
        "--learning-rate",
        type=float,
        default=0.01,
        help="small enough that validation loss still improves at the last round, so fit_model keeps every "
        "tree (default 0.01; at 0.05 early stopping keeps about 110 of 400)",
    )
    parser.add_argument("--train-rows", type=int, default=20_000)
    parser.add_argument("--batches", default="1000,10000,100000", help="batch sizes (default 1000,10000,100000)")
    parser.add_argument("--repeats", type=int, default=7, help="timed calls per batch size (median; default 7)")
    parser.add_argument("--threads", type=int, default=2, help="threads for both backends (default 2)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--keep-dir", action="store_true", help="keep the model directory and the .onnx file")
    args = parser.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    loadavg_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="leadpilot-bench-throughput-"))
    try:
        log(f"training on {args.train_rows:,} synthetic rows × {args.features} features, {args.trees} trees")
        started = time.perf_counter()
        params = {
            "num_boost_round": args.trees,
            "early_stopping_rounds": args.trees,
            "max_depth": args.depth,
            "learning_rate": args.learning_rate,
            "nthread": args.threads,
        }
        fit = fit_model(synthetic(args.train_rows, args.features, args.seed), target="won", params=params)
        model = fit.model
        train_seconds = time.perf_counter() - started
        model.booster.set_param({"nthread": args.threads})
        trees = int(model.booster.num_boosted_rounds())
        log(f"trained in {train_seconds:.1f} s: {trees} trees, {len(model.feature_names)} encoded features")
        onnx_path = export_onnx(model, work / "model.onnx")
        scorer = OnnxScorer.for_model(model, onnx_path, threads=args.threads)

        frame = synthetic(max(batches), args.features, args.seed + 1).drop(columns=["won"])
        results: dict[str, Any] = {}
        for size in batches:
            part = frame.iloc[:size]
            log(f"batch {size:,}: encoder, XGBoost, ONNX Runtime")
            encode_s = _time(lambda part=part: model.transform(part), args.repeats)
            matrix = model.transform(part)
            xgb_s = _time(lambda m=matrix: model.predict_raw(m), args.repeats)
            onnx_s = _time(lambda m=matrix: scorer.predict_raw(m), args.repeats)
            diff = float(np.abs(model.predict_raw(matrix) - scorer.predict_raw(matrix)).max())
            results[str(size)] = {
                "rows": size,
                "encoder_seconds": round(encode_s, 5),
                "encoder_leads_per_second": round(size / encode_s),
                "xgboost_seconds": round(xgb_s, 5),
                "xgboost_leads_per_second": round(size / xgb_s),
                "onnx_seconds": round(onnx_s, 5),
                "onnx_leads_per_second": round(size / onnx_s),
                "ratio_onnx_vs_xgboost": round(xgb_s / onnx_s, 3),
                "end_to_end_xgboost_leads_per_second": round(size / (encode_s + xgb_s)),
                "end_to_end_onnx_leads_per_second": round(size / (encode_s + onnx_s)),
                "max_abs_difference": diff,
            }
            log(json.dumps(results[str(size)]))
        largest = results[str(max(batches))]
        best_model = max(largest["xgboost_leads_per_second"], largest["onnx_leads_per_second"])
        best_end = max(largest["end_to_end_xgboost_leads_per_second"], largest["end_to_end_onnx_leads_per_second"])
        out = {
            "benchmark": "scoring_throughput",
            "machine": machine_info() | {"loadavg_at_start": loadavg_start, "loadavg_at_end": os.getloadavg()},
            "model": {
                "data": "synthetic, shaped like build_frame's feature-store columns (seeded)",
                "train_rows": args.train_rows,
                "numeric_columns": args.features,
                "encoded_features": len(model.feature_names),
                "trees": trees,
                "max_depth": args.depth,
                "learning_rate": args.learning_rate,
                "train_seconds": round(train_seconds, 1),
                "test_auc": fit.report["metrics"]["auc"],
                "onnx_bytes": onnx_path.stat().st_size,
            },
            "threads": args.threads,
            "repeats": args.repeats,
            "batches": results,
            "target": {
                "what": f">= {TARGET_LEADS_PER_SECOND:,} leads/s on 2 cores (batch {max(batches):,})",
                "model_only_leads_per_second": best_model,
                "model_only_met": best_model >= TARGET_LEADS_PER_SECOND,
                "end_to_end_leads_per_second": best_end,
                "end_to_end_met": best_end >= TARGET_LEADS_PER_SECOND,
            },
        }
        print(json.dumps(out, indent=2))
    finally:
        if args.keep_dir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
