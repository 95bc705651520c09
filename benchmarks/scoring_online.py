"""Online score of one lead (feature lookup + model): p50 / p99 of ``ScoringService.online_score``.

A simulated company (``--scale tiny``, seed 7) is generated into a scratch SQLite database, its features are
computed for yesterday and materialized into the online stores (the database's ``online_features`` table
and Redis), and the two models are trained with ``crm_training.train``. Then ``online_score`` is timed
over ``--calls`` calls cycling through the open leads, at the current time (a day after the batch: windows
slid, so the fusion has work to do), for each online store.

Two model sets are measured, because the one-row fast path can only build columns that come from the CRM
row and the feature store:

* ``crm_training``: the champions ``crm_training.train`` makes today. When they use columns that
  ``build_frame`` computes from the event lake (lead and salesperson history), every call takes the
  DataFrame path (``build_frame`` with the fused online features as its source);
* ``servable``: the same examples and frames, trained without those columns (CRM attributes, rep columns
  and feature-store features only), promoted, and scored by the one-row path.

The baseline, in the same run: the code before this change (``build_frame`` + ``predict_proba`` with
``OnlineFeatures.get`` as the source, which recomputed the slid windows of each lead on each call), on
the servable champions, over ``--baseline-calls`` calls.

    flock /tmp/leadpilot-bench.lock .venv/bin/python benchmarks/scoring_online.py > online.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import latency_summary, log, machine_info
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session

from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Lead
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import load_default
from leadpilot.features.online import DatabaseOnlineStore, OnlineStore, RedisOnlineStore, materialize
from leadpilot.features.realtime import OnlineFeatures
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training, registry
from leadpilot.models.crm_training import TARGET, TIME_COLUMN
from leadpilot.models.leadframe import LEAD_ATTRIBUTES
from leadpilot.models.pipeline import fit_model
from leadpilot.models.service import (
    OWNED_OPEN_STAGES,
    TRANSFER_STAGES,
    ScoringService,
    _plan_and_blockers,
)
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World

TARGET_P99_MS = 10.0
ONLINE_COLUMNS = (*LEAD_ATTRIBUTES, "rep_region_match", "rep_product_match", "rep_daily_capacity", "wait_days")


def train_servable(engine: Engine, store: FeatureStore, name: str, data_dir: Path, rounds: int) -> int:
    """Train and promote ``name`` on the columns the one-row path builds; returns the version."""
    ex = crm_training.examples(store, name).iloc[-200_000:]
    frame, labels = crm_training.build_frame(engine, store, name, ex)
    features = {d.name for d in store.dictionary.derived}
    frame = frame[[c for c in frame.columns if c in ONLINE_COLUMNS or c in features]].copy()
    frame[TIME_COLUMN] = ex[TIME_COLUMN].dt.tz_convert("UTC").dt.tz_localize(None).to_numpy()
    frame[TARGET] = ex[TARGET].to_numpy()
    fit = fit_model(
        frame.reset_index(drop=True),
        target=TARGET,
        time_col=TIME_COLUMN,
        params={"num_boost_round": rounds},
        feature_labels=labels,
    )
    out = data_dir / "servable" / name
    fit.model.save(out)
    with Session(engine) as s:
        row = registry.register(s, actor=SYSTEM, name=name, source=out, data_dir=data_dir, meta=fit.model.meta)
        registry.promote(s, actor=SYSTEM, name=name, version=row.version, reason="benchmark: online-servable")
        s.commit()
        return int(row.version)


def timed(call: Callable[[int], Any], leads: list[int], calls: int) -> tuple[list[float], list[float]]:
    """Wall and CPU seconds of ``calls`` calls cycling through ``leads``."""
    wall, cpu = [], []
    for i in range(calls):
        lead = leads[i % len(leads)]
        w, c = time.perf_counter(), time.process_time()
        call(lead)
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def measure(service: ScoringService, online: OnlineStore, leads: list[int], calls: int) -> dict[str, Any]:
    started = time.perf_counter()
    service.online_score(leads[0], online)  # cold: champion load, plan, the day's sliding set and slid rows
    cold = time.perf_counter() - started
    wall, cpu = timed(lambda lead: service.online_score(lead, online), leads, calls)
    return {
        "cold_first_call_seconds": round(cold, 3),
        "wall": latency_summary(wall),
        "cpu": latency_summary(cpu),
        "met": (latency_summary(wall)["p99_ms"] or 1e9) <= TARGET_P99_MS,
    }


def old_online_score(service: ScoringService, online: OnlineStore) -> Callable[[int], float]:
    """The online score as it was before: build_frame with OnlineFeatures.get, then predict_proba."""
    fused = OnlineFeatures(service.store, online, service.engine)

    def score(lead_id: int) -> float:
        at = datetime.now(UTC)
        leads = service._open_leads([lead_id])
        name = "transfer" if leads.stage.iloc[0] in TRANSFER_STAGES else "convert"
        _, model = service.champion_model(name)

        def source(dimension: Any, keys: Any, times: Any) -> Any:
            return fused.get(dimension, [(int(a), int(b)) for a, b in keys], at=at)

        return float(model.predict_proba(service._frames(name, leads, at, model, source))[0])

    return score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds (default 100)")
    parser.add_argument("--calls", type=int, default=1000, help="timed one-row calls per store (default 1000)")
    parser.add_argument("--frame-calls", type=int, default=100, help="timed DataFrame-path calls (default 100)")
    parser.add_argument("--baseline-calls", type=int, default=50, help="timed calls of the old code (default 50)")
    parser.add_argument("--redis-url", default=os.environ.get("LEADPILOT_BENCH_REDIS_URL", "redis://127.0.0.1:6379/15"))
    parser.add_argument("--no-redis", action="store_true")
    parser.add_argument("--keep-dir", action="store_true")
    args = parser.parse_args()
    loadavg_start = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="leadpilot-bench-online-"))
    redis_store: RedisOnlineStore | None = None
    out: dict[str, Any] = {"benchmark": "scoring_online"}
    try:
        url = f"sqlite:///{work / 'leadpilot.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        data = work / "data"
        started = time.perf_counter()
        summary = generate(engine, World(args.scale, seed=args.seed), data_dir=data)
        log(f"simulated {summary.leads:,} leads, {summary.events:,} events in {time.perf_counter() - started:.1f} s")
        store = FeatureStore(data / "features", load_default())
        batch = datetime.now(UTC).date() - timedelta(days=1)
        store.compute(engine, day=batch)
        stores: dict[str, OnlineStore] = {"database": DatabaseOnlineStore(store.dictionary, engine)}
        redis_note = None
        if not args.no_redis:
            try:
                redis_store = RedisOnlineStore(
                    store.dictionary, args.redis_url, prefix=f"leadpilot:bench:{uuid.uuid4().hex}"
                )
                redis_store.client.ping()
                stores["redis"] = redis_store
            except Exception as exc:  # any failure: measure the database store only
                redis_note = f"Redis unreachable at {args.redis_url}: {type(exc).__name__}: {exc}"
                redis_store = None
                log(redis_note)
        written = {kind: materialize(store, online) for kind, online in stores.items()}
        log(f"features computed for {batch}, materialized: {written['database']}")
        trained = {}
        for name in crm_training.MODEL_NAMES:
            started = time.perf_counter()
            model = crm_training.train(engine, store, name, data_dir=data, params={"num_boost_round": args.rounds})
            trained[name] = {
                "version": model.version.version,
                "examples": model.examples,
                "auc": model.version.metrics.get("auc"),
                "seconds": round(time.perf_counter() - started, 1),
            }
            log(f"trained {name}: {trained[name]}")
        with Session(engine) as s:
            leads = sorted(s.scalars(select(Lead.id).where(Lead.stage.in_([*TRANSFER_STAGES, *OWNED_OPEN_STAGES]))))
        log(f"{len(leads)} open leads")

        results: dict[str, Any] = {}
        service = ScoringService(engine, store)
        paths = {}
        for name in crm_training.MODEL_NAMES:
            _, model = service.champion_model(name)
            plan, blockers = _plan_and_blockers(store, name, model)
            paths[name] = {"path": "one-row" if plan else "DataFrame", "columns_it_cannot_build": blockers[:20]}
        log(f"crm_training champions: {paths}")
        results["crm_training"] = {"paths": paths} | measure(service, stores["database"], leads, args.frame_calls)
        log(f"crm_training, database store: {json.dumps(results['crm_training']['wall'])}")

        servable = {}
        for name in crm_training.MODEL_NAMES:
            started = time.perf_counter()
            servable[name] = {"version": train_servable(engine, store, name, data, args.rounds)}
            servable[name]["seconds"] = round(time.perf_counter() - started, 1)
        for kind, online in stores.items():
            service = ScoringService(engine, store)
            results[f"servable_{kind}"] = measure(service, online, leads, args.calls)
            log(f"servable, {kind} store: {json.dumps(results[f'servable_{kind}']['wall'])}")
        # Same answers: the one-row path vs the DataFrame path, now (windows slid since the batch).
        service = ScoringService(engine, store)
        now = datetime.now(UTC)
        worst = 0.0
        for lead in leads[:20]:
            found = service._online_probability(lead, stores["database"], now)
            assert found is not None
            _, model = service.champion_model(found[0])
            worst = max(worst, abs(found[2] - service._online_score_frames(lead, found[0], model, now)))
        baseline = old_online_score(ScoringService(engine, store), stores["database"])
        wall, cpu = timed(baseline, leads, args.baseline_calls)
        results["baseline_old_code_database"] = {"wall": latency_summary(wall), "cpu": latency_summary(cpu)}
        log(f"baseline (old code): {json.dumps(results['baseline_old_code_database']['wall'])}")
        new_p50 = results["servable_database"]["wall"]["p50_ms"]
        old_p50 = results["baseline_old_code_database"]["wall"]["p50_ms"]
        out |= {
            "machine": machine_info() | {"loadavg_at_start": loadavg_start, "loadavg_at_end": os.getloadavg()},
            "company": {
                "scale": args.scale,
                "seed": args.seed,
                "leads": summary.leads,
                "events": summary.events,
                "open_leads": len(leads),
                "batch_day": batch.isoformat(),
                "online_rows": written["database"],
            },
            "models": {"crm_training": trained, "servable": servable, "rounds": args.rounds},
            "redis": redis_note or args.redis_url,
            "results": results,
            "checks": {"one_row_vs_dataframe_path_max_abs_difference": worst},
            "ratio_old_p50_vs_new_p50": round(old_p50 / new_p50, 1) if new_p50 and old_p50 else None,
            "target": {
                "what": f"p99 <= {TARGET_P99_MS} ms for one lead's online score",
                "servable_database_p99_ms": results["servable_database"]["wall"]["p99_ms"],
                "servable_redis_p99_ms": results.get("servable_redis", {}).get("wall", {}).get("p99_ms"),
                "crm_training_database_p99_ms": results["crm_training"]["wall"]["p99_ms"],
            },
        }
        print(json.dumps(out, indent=2, default=str))
        engine.dispose()
    finally:
        if redis_store is not None:
            for key in redis_store.client.scan_iter(f"{redis_store.prefix}:*"):
                redis_store.client.delete(key)
        if args.keep_dir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
