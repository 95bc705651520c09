"""The CRM's own scoring models (issue #5) against the simulator's ground truth, as one JSON document.

On a simulated company (default ``medium``, seed 7) the feature store computes the newest day (training
reads point-in-time rows from the tiles, so no backfill is needed), then ``crm_training.train`` fits
``convert`` (and ``transfer``) exactly as ``leadpilot scoring train-crm`` does: examples from the event log,
point-in-time features, the newest 20 % of examples by time held out. On the same held-out leads:

* the model's ROC-AUC and the naive-Bayes and logistic-regression baselines' (from the fit's report, and the
  model's recomputed here from its predictions as a check that the held-out rows are the same);
* the ceiling: the ROC-AUC of the true probability from ``truth.npz`` (never read by features or models).
  ``convert``: ``p_convert_at_decision``, the probability of a win for the salesperson the lead was assigned
  to, at the assignment — the same decision and population as the model's (assigned leads, won vs lost).
  ``transfer``: the model decides when screening starts (label: qualified vs lost in screening, unreachable
  leads included), while ``p_transfer_at_decision`` is the probability once the call connected (NaN for
  leads never reached). Two ceilings are reported: on all held-out leads, the true probability at the
  start of screening (Σ_k p_connect·(1-p_connect)^(k-1)·σ(a_t + q − 0.25·delay_k) over the six attempts,
  delay_k from the observed first call plus the 0.8-day retry gaps, office hours ignored); and,
  on the held-out leads that connected, ``p_transfer_at_decision`` beside the model's AUC on that subset.

The headline is ``ratio`` = model AUC / ceiling AUC (target ≥ 0.95 for ``convert``).

The CRM comes from ``--db PATH`` (with its truth in ``--data-dir``/simulation/truth.npz) or is generated
(about 3 min and 4.3 GB for ``medium``); ``--keep DIR`` keeps the generated CRM, its truth and the feature
store in DIR so later runs reuse them. Progress goes to stderr, the JSON to stdout.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_info

from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import load_default
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training
from leadpilot.models.crm_training import TARGET, TIME_COLUMN
from leadpilot.models.tabular import split_rows

TARGET_SHARE_OF_CEILING = 0.95
BOOSTER_KEYS = ("max_depth", "learning_rate", "colsample_bytree", "min_child_weight", "num_boost_round")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def auc(y: np.ndarray, score: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, score))


def crm_database(args: argparse.Namespace, work: Path) -> tuple[Path, Path, dict[str, Any]]:
    """(CRM file, data dir holding simulation/truth.npz, generation info): given, kept earlier, or generated now."""
    if args.db:
        db = Path(args.db)
        data_dir = Path(args.data_dir) if args.data_dir else db.parent / "data"
        migrate.upgrade(f"sqlite:///{db}")  # the model registry's tables and newer columns
        return db, data_dir, {"generated": False}
    db, data_dir = work / "crm.db", work / "data"
    if db.exists() and (data_dir / "simulation" / "truth.npz").exists():
        log(f"reusing {db}")
        return db, data_dir, {"generated": False, "reused": True}
    from leadpilot.simulate.generate import generate
    from leadpilot.simulate.world import World

    db.unlink(missing_ok=True)
    url = f"sqlite:///{db}"
    migrate.upgrade(url)
    log(f"simulating the {args.scale} company (seed {args.seed}) into {db} ...")
    started = time.perf_counter()
    summary = generate(make_engine(url), World(args.scale, seed=args.seed), data_dir=data_dir)
    return db, data_dir, {"generated": True, "seconds": round(time.perf_counter() - started, 1), "leads": summary.leads}


def feature_store(engine: Any, root: Path) -> tuple[FeatureStore, dict[str, Any]]:
    store = FeatureStore(root, load_default())
    if store.runs():
        log(f"reusing the feature store in {root} (days {', '.join(str(d) for d in store.runs())})")
        return store, {"reused": True, "days": [str(d) for d in store.runs()]}
    log("computing features (lake sync, tiles of every day, the newest day's windows) ...")
    started = time.perf_counter()
    report = store.compute(engine)
    seconds = time.perf_counter() - started
    log(f"features computed in {seconds:.0f} s")
    return store, {
        "reused": False,
        "seconds": round(seconds, 1),
        "events": report.sync.events_copied if report.sync else None,
        "days": [str(d) for d in report.days],
    }


def held_out(store: FeatureStore, name: str, max_rows: int | None) -> pd.DataFrame:
    """The held-out examples of ``train`` (same examples, same cut to max_rows, same time split)."""
    ex = crm_training.examples(store, name)
    if max_rows is not None and len(ex) > max_rows:
        ex = ex.iloc[-max_rows:]
    times = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    split = split_rows(ex[TARGET].to_numpy().astype(np.int8), times=times, seed=0)
    return ex.iloc[split.test]


class Truth:
    """truth.npz indexed by CRM lead id (read by the benchmark only)."""

    def __init__(self, path: Path) -> None:
        data = np.load(path)
        self.arrays = {k: data[k] for k in data.files}
        self.position = pd.Series(np.arange(len(self.arrays["lead_id"])), index=self.arrays["lead_id"])
        self.params = ast.literal_eval(str(self.arrays["params"]))
        self.meta = ast.literal_eval(str(self.arrays["meta"]))

    def __call__(self, key: str, lead_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.arrays[key][self.position.reindex(lead_ids).to_numpy()], dtype=np.float64)

    def p_transfer_at_screening(self, lead_ids: np.ndarray, start_delay: np.ndarray) -> np.ndarray:
        """P(qualified) when screening starts: a connection at attempt k, then σ(a_t + q − b·delay_k)."""
        p = self.params
        p_connect, quality = self("p_connect", lead_ids), self("quality", lead_ids)
        out = np.zeros(len(lead_ids))
        miss = np.ones(len(lead_ids))
        for k in range(int(p["max_attempts"])):
            delay = start_delay + k * float(p["retry_gap_days"])
            qualify = 1.0 / (1.0 + np.exp(-(p["a_transfer"] + quality - p["delay_transfer"] * delay)))
            out += miss * p_connect * qualify
            miss *= 1.0 - p_connect
        return out


def evaluate(
    engine: Any,
    store: FeatureStore,
    name: str,
    trained: crm_training.TrainedModel,
    test: pd.DataFrame,
    truth: Truth,
) -> dict[str, Any]:
    report = trained.result.report
    model = trained.result.model
    lead_ids = test.index.to_numpy(np.int64)
    y = test[TARGET].to_numpy()
    assert len(test) == report["split"]["test_rows"], "the held-out rows differ from the fit's"
    log(f"{name}: scoring the {len(test):,} held-out leads again")
    frame, _ = crm_training.build_frame(engine, store, name, test, keep_features=model.meta["input_columns"])
    frame[TIME_COLUMN] = test[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    score = model.predict_proba(frame.reset_index(drop=True))
    model_auc = float(report["metrics"]["auc"])
    out: dict[str, Any] = {
        "examples": trained.examples,
        "positives": trained.positives,
        "columns": report["features"],
        "split": report["split"],
        "data_range": report["data_range"],
        "fit_seconds": report["fit_seconds"],
        "trees": report["params"]["trees"],
        "params": {k: v for k, v in report["params"].items() if k in BOOSTER_KEYS},
        "held_out": {"rows": len(test), "positive_share": round(float(y.mean()), 4)},
        "model_auc": round(model_auc, 4),
        "model_auc_recomputed": round(auc(y, score), 4),
        "model_pr_auc": report["metrics"].get("pr_auc"),
        "model_brier": report["metrics"].get("brier"),
        "baselines_auc": {k: round(float(v["auc"]), 4) for k, v in report["baselines"].items()},
        "top_columns": report["top_columns"][:10],
    }
    if name == "convert":
        truth_p = truth("p_convert_at_decision", lead_ids)
        assert not np.isnan(truth_p).any(), "a held-out convert example has no true probability"
        ceiling = auc(y, truth_p)
        out["ceiling"] = {"what": "p_convert_at_decision (assigned salesperson, at the assignment)"}
    else:
        created = pd.to_datetime(
            pd.read_sql_table("leads", engine, columns=["id", "created_at"]).set_index("id")["created_at"], utc=True
        )
        start = test[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy("datetime64[us]")
        arrived = created.reindex(lead_ids).dt.tz_localize(None).to_numpy("datetime64[us]")
        delay = (start - arrived) / np.timedelta64(1, "s") / 86_400.0
        truth_p = truth.p_transfer_at_screening(lead_ids, delay)
        ceiling = auc(y, truth_p)
        connected = ~np.isnan(truth("p_transfer_at_decision", lead_ids))
        both = connected & (np.bincount(y[connected], minlength=2).min() > 0)
        out["ceiling"] = {
            "what": "P(qualified) at the start of screening from p_connect, quality and the attempt delays",
        }
        if both.any():
            at_decision = auc(y[connected], truth("p_transfer_at_decision", lead_ids)[connected])
            model_connected = auc(y[connected], score[connected])
            out["connected_subset"] = {
                "rows": int(connected.sum()),
                "model_auc": round(model_connected, 4),
                "ceiling_auc_p_transfer_at_decision": round(at_decision, 4),
                "ratio": round(model_connected / at_decision, 4),
            }
    out["ceiling"]["auc"] = round(ceiling, 4)
    out["ratio"] = round(model_auc / ceiling, 4)
    out["baseline_ratios"] = {k: round(v / ceiling, 4) for k, v in out["baselines_auc"].items()}
    out["target_ratio"] = TARGET_SHARE_OF_CEILING
    out["target_met"] = bool(out["ratio"] >= TARGET_SHARE_OF_CEILING)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="an existing simulated SQLite CRM (its truth: --data-dir/simulation/truth.npz)")
    parser.add_argument("--data-dir", help="with --db: the folder of simulation/truth.npz (default: DB folder/data)")
    parser.add_argument("--scale", default="medium", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", help="keep the generated CRM, truth and feature store here (reused when present)")
    parser.add_argument("--models", nargs="+", default=["convert", "transfer"], choices=crm_training.MODEL_NAMES)
    parser.add_argument("--max-rows", type=int, default=200_000, help="newest examples to train on (0: all)")
    parser.add_argument("--params", default="{}", help="XGBoost parameters as JSON (e.g. '{\"max_depth\": 4}')")
    args = parser.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="lp-scoringbench-"))
    work.mkdir(parents=True, exist_ok=True)
    max_rows = args.max_rows or None
    result: dict[str, Any] = {
        "benchmark": "scoring_crm",
        "machine": machine_info(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "target_share_of_ceiling": TARGET_SHARE_OF_CEILING,
    }
    try:
        db, data_dir, generation = crm_database(args, work)
        engine = make_engine(f"sqlite:///{db}")
        truth = Truth(data_dir / "simulation" / "truth.npz")
        result["crm"] = {"path": str(db), "bytes": db.stat().st_size, **generation, "world": truth.meta}
        store, result["features"] = feature_store(engine, work / "features")
        models_dir = work / "models"
        shutil.rmtree(models_dir, ignore_errors=True)
        for name in args.models:
            log(f"training {name} ...")
            started = time.perf_counter()
            trained = crm_training.train(
                engine,
                store,
                name,
                data_dir=models_dir,
                max_rows=max_rows,
                params=json.loads(args.params) or None,
                promote_if_first=False,
                progress=log,
            )
            seconds = time.perf_counter() - started
            test = held_out(store, name, max_rows)
            result[name] = {"train_seconds": round(seconds, 1)} | evaluate(engine, store, name, trained, test, truth)
            log(json.dumps({k: v for k, v in result[name].items() if k not in ("top_columns", "data_range")}))
        result["peak_rss_bytes"] = peak_rss()
        result["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
