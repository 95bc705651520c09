"""Workflow engine (issue #7): 10,000 timers due at once, processed by the worker in ≤ 10 s; none fired twice,
none lost after a kill -9 of a worker mid-run and a restart.

Setup per database: a supervisor and a salesperson, ``--leads`` assigned leads, the rule "no follow-up within
24 h after a call -> notify the supervisor" (``--with-task`` also gives the supervisor a task through the CRM
service), and ``--timers`` calls made two days ago, so every timer is due at once. Three measurements:

* **batched**: one worker (``run_due``: claim a batch of timers with a lease, fire them in one transaction,
  actions in savepoints, firing records / events / timer updates in bulk) - seconds for all the timers;
* **baseline**: the naive loop on ``--baseline-timers`` of them: claim one due timer, fire it, commit, repeat
  (the same engine with a batch of one) - the ratio compares timers per second;
* **kill -9**: a fresh database, a worker subprocess killed with SIGKILL once about a third of the timers
  fired, a restarted worker (after the lease runs out) finishes; every timer must have exactly one
  ``workflow_fired`` event, one firing record and one notification.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, func, insert, select
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_PG_URL, log, machine_info, pg_check, scratch_pg_database

from leadpilot.crm.access import SYSTEM
from leadpilot.crm.events import append_events_bulk
from leadpilot.crm.models import Event, Lead, Role, Team, TeamKind, User
from leadpilot.db import migrate
from leadpilot.db.base import utcnow
from leadpilot.db.engine import make_engine, read_only_engine
from leadpilot.workflow import engine as wf
from leadpilot.workflow import service
from leadpilot.workflow.tables import WorkflowFiring, WorkflowNotification, WorkflowTimer

RULE = """
rules:
  - name: escalate
    enabled: true
    trigger: call_completed
    condition: "stage in ['assigned', 'contacted']"
    after: 24h
    unless: [call_attempt, message]
    actions:
      - notify: {to: supervisor, message: "Lead {lead_id} ({title}) had no follow-up within 24 h"}
"""
TASK_ACTION = '      - create_task: {assignee: supervisor, title: "Escalation: lead {lead_id}", due_in: 4h}\n'

_WORKER = """
import sys
from leadpilot.db.engine import make_engine
from leadpilot.workflow import engine as wf
eng = make_engine(sys.argv[1])
config = wf.EngineConfig(batch_size=int(sys.argv[2]), lease_seconds=float(sys.argv[4]))
wf.run_due(eng, worker=sys.argv[3], config=config)
"""


def prepare(url: str, *, timers: int, leads: int, with_task: bool) -> Engine:
    """A migrated database with the org, the rule and ``timers`` due timers."""
    migrate.upgrade(url)
    eng = make_engine(url)
    now = utcnow()
    with Session(eng) as s:
        team = Team(name="east", kind=TeamKind.SALES.value)
        s.add(team)
        s.flush()
        sup = User(username="sup", password_hash="x", role=Role.SUPERVISOR.value, team_id=team.id)
        rep = User(username="rep", password_hash="x", role=Role.SALES.value, team_id=team.id)
        s.add_all([sup, rep])
        s.flush()
        s.execute(
            insert(Lead),
            [
                {
                    "title": f"lead {i}",
                    "owner_id": rep.id,
                    "team_id": team.id,
                    "stage": "assigned",
                    "stage_changed_at": now,
                    "created_at": now,
                    "updated_at": now,
                    "notes": "",
                    "version": 1,
                }
                for i in range(leads)
            ],
        )
        s.commit()
        service.import_yaml(s, actor=SYSTEM, text=RULE + (TASK_ACTION if with_task else ""))
        s.commit()
        lead_ids = list(s.scalars(select(Lead.id).order_by(Lead.id)))
    t0 = now - timedelta(days=2)
    with Session(eng) as s:
        append_events_bulk(
            s,
            [
                {
                    "type": "call_completed",
                    "lead_id": lead_ids[i % len(lead_ids)],
                    "actor_id": None,
                    "occurred_at": t0 + timedelta(seconds=i),
                    "payload": {"call": i},
                }
                for i in range(timers)
            ],
        )
        s.commit()
    scheduled = wf.scan_events(eng, settle_seconds=0)
    assert scheduled == timers, (scheduled, timers)
    return eng


def verify(eng: Engine, timers: int) -> dict[str, Any]:
    """Firings per timer from the event log (not from the unique-keyed table alone)."""
    with Session(eng) as s:
        keys = Counter(p["trigger_key"] for p in s.scalars(select(Event.payload).where(Event.type == "workflow_fired")))
        firings = s.scalar(select(func.count()).select_from(WorkflowFiring)) or 0
        notes = s.scalar(select(func.count()).select_from(WorkflowNotification)) or 0
        counts = wf.timer_counts(s)
    return {
        "timers": timers,
        "fired_once": sum(1 for v in keys.values() if v == 1),
        "fired_twice_or_more": sum(1 for v in keys.values() if v > 1),
        "never_fired": timers - len(keys),
        "firing_records": firings,
        "notifications": notes,
        "timers_done": counts["done"],
        "ok": len(keys) == timers and set(keys.values()) == {1} and notes == timers and counts["done"] == timers,
    }


def batched(url: str, args: argparse.Namespace) -> dict[str, Any]:
    eng = prepare(url, timers=args.timers, leads=args.leads, with_task=args.with_task)
    start = time.perf_counter()
    result = wf.run_due(eng, config=wf.EngineConfig(batch_size=args.batch))
    seconds = time.perf_counter() - start
    out = {"seconds": round(seconds, 3), "timers_per_second": round(args.timers / seconds, 1), **result.as_dict()}
    out["check"] = verify(eng, args.timers)
    eng.dispose()
    return out


def baseline(url: str, args: argparse.Namespace) -> dict[str, Any]:
    eng = prepare(url, timers=args.baseline_timers, leads=args.leads, with_task=args.with_task)
    start = time.perf_counter()
    result = wf.run_due(eng, config=wf.EngineConfig(batch_size=1))
    seconds = time.perf_counter() - start
    out = {
        "timers": args.baseline_timers,
        "seconds": round(seconds, 3),
        "timers_per_second": round(args.baseline_timers / seconds, 1),
        "fired": result.fired,
    }
    out["check"] = verify(eng, args.baseline_timers)
    eng.dispose()
    return out


def kill_and_restart(url: str, args: argparse.Namespace) -> dict[str, Any]:
    eng = prepare(url, timers=args.timers, leads=args.leads, with_task=args.with_task)
    reader = read_only_engine(eng)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    lease = args.lease
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, url, str(args.batch), "doomed", str(lease)], env=env)
    start = time.perf_counter()
    target = args.timers // 3
    fired_at_kill = 0
    while proc.poll() is None:
        with Session(reader) as s:
            fired_at_kill = s.scalar(select(func.count()).select_from(WorkflowFiring)) or 0
            in_flight = s.scalar(select(func.count()).where(WorkflowTimer.status == "running")) or 0
        if fired_at_kill >= target and in_flight > 0:  # mid-batch: a claimed batch is being fired
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the worker finished before it could be killed; use more --timers"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_after = time.perf_counter() - start
    with Session(eng) as s:
        fired_at_kill = s.scalar(select(func.count()).select_from(WorkflowFiring)) or 0
        running = s.scalar(select(func.count()).where(WorkflowTimer.status == "running")) or 0
    log(f"killed the worker after {killed_after:.1f} s: {fired_at_kill} fired, {running} claimed in flight")
    time.sleep(lease + 0.5)  # the killed worker's lease runs out
    restart = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", _WORKER, url, str(args.batch), "restarted", str(lease)], env=env)
    proc.wait()
    out = {
        "killed_with": "SIGKILL",
        "restarted_worker_returncode": proc.returncode,
        "fired_before_kill": fired_at_kill,
        "claimed_in_flight_at_kill": running,
        "killed_after_seconds": round(killed_after, 2),
        "lease_seconds": lease,
        "restart_seconds": round(time.perf_counter() - restart, 2),
        "check": verify(eng, args.timers),
    }
    eng.dispose()
    return out


def run_backend(name: str, make_url: Any, args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for part, fn in (("batched", batched), ("baseline", baseline), ("kill_restart", kill_and_restart)):
        if part == "kill_restart" and name != "sqlite" and not args.pg_kill:
            continue
        with make_url(part) as url:
            log(f"{name}: {part} ...")
            out[part] = fn(url, args)
            out[part]["loadavg"] = [round(x, 2) for x in os.getloadavg()]
            log(f"{name}: {part}: {json.dumps(out[part])[:300]}")
    b, n = out["batched"], out["baseline"]
    out["speedup_vs_one_at_a_time"] = round(b["timers_per_second"] / n["timers_per_second"], 2)
    out["target_10s_met"] = b["seconds"] <= 10.0 and b["check"]["ok"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timers", type=int, default=10_000)
    parser.add_argument("--baseline-timers", type=int, default=1_000, help="Timers for the one-at-a-time loop.")
    parser.add_argument("--leads", type=int, default=1_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--lease", type=float, default=5.0, help="Lease of the worker killed in the kill -9 run.")
    parser.add_argument("--with-task", action="store_true", help="Also create a task per firing (CRM service).")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--pg-kill", action="store_true", help="Run the kill -9 part on PostgreSQL too.")
    parser.add_argument("--postgres-url", default=DEFAULT_PG_URL)
    args = parser.parse_args()
    result: dict[str, Any] = {
        "benchmark": "workflow_timers",
        "machine": machine_info(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "params": {k: v for k, v in vars(args).items() if k != "postgres_url"},
    }
    with tempfile.TemporaryDirectory(prefix="lp-wf-bench-") as tmp:

        class _Sqlite:
            def __init__(self, part: str) -> None:
                self.url = f"sqlite:///{Path(tmp) / part}.db"

            def __enter__(self) -> str:
                return self.url

            def __exit__(self, *exc: object) -> None:
                return None

        result["sqlite"] = run_backend("sqlite", _Sqlite, args)
    if not args.no_postgres:
        version, why = pg_check(args.postgres_url)
        if version is None:
            result["postgresql"] = {"skipped": why}
        else:
            result["postgresql_version"] = version

            def pg(part: str) -> Any:
                stack = ExitStack()
                url = stack.enter_context(scratch_pg_database(args.postgres_url, f"wf_{part}"))

                class _Ctx:
                    def __enter__(self) -> str:
                        return url

                    def __exit__(self, *exc: object) -> None:
                        stack.close()

                return _Ctx()

            result["postgresql"] = run_backend("postgresql", pg, args)
    result["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
