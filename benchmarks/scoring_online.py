"""Online score of one lead (feature lookup + model): p50 / p99 of ``ScoringService.online_score``.

A simulated company (``--scale tiny``, seed 7) is generated into a scratch SQLite database, its features are
computed for yesterday and materialized into the online stores (the database's ``online_features`` table
and Redis), and the two models are trained with ``crm_training.train``. Then ``online_score`` is timed
over ``--calls`` calls cycling through the open leads, at the current time (a day after the batch: windows
slid, so the fusion has work to do), for each online store.

Both champions take the one-row path: the CRM row, the fused online features and, for ``convert``, the
salesperson's record (``crm_training.rep_record``: computed for every salesperson, product line and
company size once per lake sync and day, then looked up). ``paths`` in the JSON shows it per model.

The baseline, in the same run: the DataFrame path (``build_frame`` with the fused online features as its
source, then ``predict_proba``), which is how these champions were served before the salesperson's record
was served online; ``--frame-calls`` calls.

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
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.crm.models import Lead
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import load_default
from leadpilot.features.online import DatabaseOnlineStore, OnlineStore, RedisOnlineStore, materialize
from leadpilot.features.store import FeatureStore
from leadpilot.models import crm_training
from leadpilot.models.service import (
    OWNED_OPEN_STAGES,
    TRANSFER_STAGES,
    ScoringService,
    _plan_and_blockers,
)
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World

TARGET_P99_MS = 10.0


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="tiny")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds (default 100)")
    parser.add_argument("--calls", type=int, default=1000, help="timed one-row calls per store (default 1000)")
    parser.add_argument("--frame-calls", type=int, default=100, help="baseline calls (default 100)")
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
            made = crm_training.train(engine, store, name, data_dir=data, params={"num_boost_round": args.rounds})
            trained[name] = {
                "version": made.version.version,
                "examples": made.examples,
                "auc": made.version.metrics.get("auc"),
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
            paths[name] = {
                "path": "one-row" if plan else "DataFrame",
                "columns_it_cannot_build": blockers[:20],
                "salesperson_record_columns": len(plan.rep_record) if plan else None,
            }
        log(f"champions: {paths}")
        for kind, online in stores.items():
            service = ScoringService(engine, store)
            results[f"champions_{kind}"] = {"paths": paths} | measure(service, online, leads, args.calls)
            log(f"champions, {kind} store: {json.dumps(results[f'champions_{kind}']['wall'])}")
        # Same answers: the one-row path vs the DataFrame path, now (windows slid since the batch).
        service = ScoringService(engine, store)
        now = datetime.now(UTC)
        worst = 0.0
        for lead in leads[:20]:
            found = service._online_probability(lead, stores["database"], now)
            assert found is not None
            _, model = service.champion_model(found[0])
            worst = max(worst, abs(found[2] - service._online_score_frames(lead, found[0], model, now)))

        def frame_path(lead_id: int) -> float:
            at = datetime.now(UTC)
            name = "transfer" if service._open_leads([lead_id]).stage.iloc[0] in TRANSFER_STAGES else "convert"
            return service._online_score_frames(lead_id, name, service.champion_model(name)[1], at)

        wall, cpu = timed(frame_path, leads, args.frame_calls)
        results["baseline_dataframe_path_database"] = {"wall": latency_summary(wall), "cpu": latency_summary(cpu)}
        log(f"baseline (DataFrame path): {json.dumps(results['baseline_dataframe_path_database']['wall'])}")
        new_p50 = results["champions_database"]["wall"]["p50_ms"]
        old_p50 = results["baseline_dataframe_path_database"]["wall"]["p50_ms"]
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
            "models": {"crm_training": trained, "rounds": args.rounds},
            "redis": redis_note or args.redis_url,
            "results": results,
            "checks": {"one_row_vs_dataframe_path_max_abs_difference": worst},
            "ratio_dataframe_p50_vs_one_row_p50": round(old_p50 / new_p50, 1) if new_p50 and old_p50 else None,
            "target": {
                "what": f"p99 <= {TARGET_P99_MS} ms for one lead's online score",
                "database_p99_ms": results["champions_database"]["wall"]["p99_ms"],
                "redis_p99_ms": results.get("champions_redis", {}).get("wall", {}).get("p99_ms"),
                "met": all(r["met"] for k, r in results.items() if k.startswith("champions_")),
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
