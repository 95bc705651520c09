"""Simulated-company generation throughput (events/s) and peak memory, against the issue's budget.

Target (issue #3): `large` (≥ 50 M events) in at most 15 minutes on 2 cores and at most 8 GB. The script
generates the chosen scale into a fresh SQLite file (or PostgreSQL with --postgres URL) and prints JSON with events/s,
wall time, peak resident memory and the ratios to the budget (time / 15 min, memory / 8 GB).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.simulate.generate import generate
from leadpilot.simulate.world import World

BUDGET_SECONDS = 15 * 60
BUDGET_BYTES = 8 * 1024**3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", default="medium", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--days", type=int, default=548)
    parser.add_argument("--postgres", default=None, help="PostgreSQL URL of an EMPTY migrated database to use")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = args.postgres or f"sqlite:///{Path(tmp) / 'sim.db'}"
        migrate.upgrade(url)
        engine = make_engine(url)
        started = time.perf_counter()
        world = World(args.scale, seed=args.seed, days=args.days)
        summary = generate(
            engine,
            world,
            data_dir=Path(tmp),
            progress=lambda done, total: print(f"{done}/{total} leads", file=sys.stderr),
        )
        seconds = time.perf_counter() - started
        db_bytes = os.path.getsize(Path(tmp) / "sim.db") if not args.postgres else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        json.dumps(
            {
                "benchmark": "simulation_generation",
                "scale": args.scale,
                "seed": args.seed,
                "days": args.days,
                "backend": "postgresql" if args.postgres else "sqlite",
                "cores": os.cpu_count(),
                "leads": summary.leads,
                "events": summary.events,
                "events_per_lead": round(summary.events / summary.leads, 1),
                "users": summary.users,
                "seconds": round(seconds, 1),
                "events_per_second": round(summary.events / seconds, 1),
                "peak_memory_bytes": peak,
                "database_bytes": db_bytes,
                "budget_seconds": BUDGET_SECONDS,
                "time_to_budget": round(seconds / BUDGET_SECONDS, 3),
                "memory_to_budget": round(peak / BUDGET_BYTES, 3),
                "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
                "stages": summary.stages,
                "event_types": summary.event_types,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
