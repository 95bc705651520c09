"""Ranker speed: (lead, salesperson) pairs per second of the V2 MMoE / PLE ranker, ONNX Runtime vs PyTorch eager.

Each model is shaped like the lead x salesperson ranker (default: 20 numeric pair features and 6 categorical
ones: salesperson, team, region, product line, source, company size), trained for one short epoch on synthetic
pairs with ``leadpilot.distribution.multitask.MultiTaskRanker`` (default hyper-parameters: 4 experts of 64
units for MMoE, 2 levels of 2 task + 2 shared experts for PLE, towers of 32, embeddings of 8, ESMM heads),
exported with ``export_onnx``, and both backends score the same inputs in the same run: PyTorch eager
(``predict_proba``: ``torch.inference_mode``, 2 threads) and ONNX Runtime (``OnnxRanker``, 2 intra-op
threads), batches of 1k / 10k / 100k pairs. The figure is the median over repeats.

    flock /tmp/leadpilot-bench.lock .venv/bin/python benchmarks/ranker_speed.py > ranker_speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import log, machine_info

TARGET_PAIRS_PER_SECOND = 50_000
CARDINALITIES = (2_000, 100, 30, 4, 6, 4)  # salesperson, team, region, product line, source, company size


def synthetic_pairs(n: int, n_num: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pair features (numeric, categorical codes) and ESMM labels (transferred, converted) with some signal."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, n_num)).astype(np.float32)
    x[rng.random(x.shape) < 0.05] = np.nan  # missing pair statistics
    c = np.stack([rng.integers(0, k, n) for k in CARDINALITIES], axis=1).astype(np.int64)
    fit = rng.normal(0, 0.5, CARDINALITIES[0])[c[:, 0]]
    z0 = np.nan_to_num(x[:, 0]) + 0.5 * np.nan_to_num(x[:, 1]) + fit - 0.5
    z1 = np.nan_to_num(x[:, 2]) - 0.5 * np.nan_to_num(x[:, 0]) + fit - 1.0
    transferred = rng.random(n) < 1 / (1 + np.exp(-z0))
    converted = transferred & (rng.random(n) < 1 / (1 + np.exp(-z1)))
    return x, c, np.stack([transferred, converted], axis=1).astype(np.float64)


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall seconds of ``repeats`` calls, after two warm-up calls."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    """Train, export, time both backends per architecture and batch size, print the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--numeric", type=int, default=20)
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--batches", default="1000,10000,100000")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()

    import torch

    from leadpilot.distribution.multitask import MultiTaskRanker, OnnxRanker

    torch.set_num_threads(args.threads)
    x_train, c_train, y_train = synthetic_pairs(args.train_rows, args.numeric, 0)
    sizes = [int(b) for b in args.batches.split(",")]
    x_all, c_all, _ = synthetic_pairs(max(sizes), args.numeric, 1)
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arch in ("mmoe", "ple"):
            t0 = time.perf_counter()
            model = MultiTaskRanker(arch=arch, esmm=True, epochs=1, validation_fraction=0.0, threads=args.threads)
            model.fit(x_train, y_train, X_cat=c_train, cat_cardinalities=CARDINALITIES)
            train_s = time.perf_counter() - t0
            path = model.export_onnx(Path(tmp) / f"{arch}.onnx")
            onnx_ranker = OnnxRanker(path, threads=args.threads)
            n_params = sum(p.numel() for p in model.network_.parameters())
            rows: dict[str, Any] = {}
            for size in sizes:
                xn, xc = x_all[:size], c_all[:size]
                diff = float(np.abs(model.predict_proba(xn, X_cat=xc) - onnx_ranker.predict_proba(xn, X_cat=xc)).max())
                repeats = max(3, args.repeats if size <= 10_000 else args.repeats // 3)
                eager_s = median_seconds(partial(model.predict_proba, xn, X_cat=xc), repeats)
                ort_s = median_seconds(partial(onnx_ranker.predict_proba, xn, X_cat=xc), repeats)
                rows[str(size)] = {
                    "eager_pairs_per_s": round(size / eager_s),
                    "onnx_pairs_per_s": round(size / ort_s),
                    "ratio_onnx_over_eager": round(eager_s / ort_s, 2),
                    "eager_ms": round(eager_s * 1000, 2),
                    "onnx_ms": round(ort_s * 1000, 2),
                    "max_abs_diff": diff,
                    "repeats": repeats,
                }
                log(f"{arch} batch {size}: eager {size / eager_s:,.0f} pairs/s, ORT {size / ort_s:,.0f} pairs/s")
            results[arch] = {"parameters": n_params, "train_seconds": round(train_s, 1), "batches": rows}
    headline = {
        arch: results[arch]["batches"].get("10000", next(iter(results[arch]["batches"].values()))) for arch in results
    }
    report = {
        "benchmark": "ranker_speed",
        "inputs": {"numeric": args.numeric, "categorical": len(CARDINALITIES), "cardinalities": list(CARDINALITIES)},
        "threads": args.threads,
        "results": results,
        "target_pairs_per_s": TARGET_PAIRS_PER_SECOND,
        "target_met_at_10k": {arch: h["onnx_pairs_per_s"] >= TARGET_PAIRS_PER_SECOND for arch, h in headline.items()},
        "versions": {"torch": torch.__version__, "onnxruntime": __import__("onnxruntime").__version__},
        "load_average": list(os.getloadavg()),
        "machine": machine_info(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
