"""Dashboard page time (issue #7): the web page ``/dashboard`` and ``GET /api/v1/dashboard`` on a simulated company.

Target: server time p95 <= 300 ms for the dashboard page on the ``medium`` simulated company (300k leads, 16 M
events), for an admin and for a supervisor.

The script:

  1. takes a CRM store: ``--db PATH`` (an existing SQLite file, e.g. one made once by ``leadpilot simulate
     --scale medium``; it must be at the newest schema), or ``--scale NAME`` to simulate one into a temp dir
     (``--backend postgresql``: into a scratch PostgreSQL database);
  2. makes two benchmark users through the ``people`` service (created once, password reset on later runs): an
     admin, and a supervisor of the team of ``--supervisor-of`` (default ``sup_01``, the first sales team);
  3. baseline, in-process: ``crm.dashboard.summary`` (every figure the page shows) for each user, with the
     page's default window (leads created since UTC midnight ``DASHBOARD_DAYS`` days ago), sequentially;
  4. starts ``leadpilot serve --workers 2`` (``api_latency.Server``), signs in through ``POST
     /api/v1/auth/token`` (the web page takes the same JWT in its session cookie) and requests, sequentially,
     one request at a time on a kept-alive connection, interleaved: the page ``/dashboard`` (default window)
     and ``GET /api/v1/dashboard?since=<the same window start>`` as each user, after a warm-up; then a few
     all-time requests (``?since=all`` / no ``since``) for information.

Server time is the time to the response's headers (the page and the JSON are built completely before the
first byte is sent; on loopback with a kept-alive connection and one request in flight, nothing else waits);
client latency adds reading the body. The ratio is page p95 / in-process service p95.

Prints one JSON document on stdout (progress on stderr).

    flock /tmp/leadpilot-bench.lock .venv/bin/python benchmarks/dashboard_latency.py --db /tmp/lp-medium-dash/crm.db
    .venv/bin/python benchmarks/dashboard_latency.py --scale tiny --requests 20      # quick run
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

sys.path.insert(0, str(Path(__file__).resolve().parent))

from api_latency import Server
from common import DEFAULT_PG_URL, latency_summary, log, machine_info, pg_check, scratch_pg_database

TARGET_P95_MS = 300.0
PASSWORD = "bench-dashboard-123"
USERS = {"admin": "bench_dash_admin", "supervisor": "bench_dash_sup"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark the dashboard page and GET /api/v1/dashboard (leadpilot serve, 2 workers) against "
        "crm.dashboard.summary in-process. Prints JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--db", type=Path, help="an existing SQLite CRM store (at the newest schema)")
    source.add_argument("--scale", help="simulate a company of this scale (tiny, small, medium, large) first")
    parser.add_argument("--seed", type=int, default=7, help="simulation seed (with --scale)")
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite", help="with --scale")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server for --backend postgresql")
    parser.add_argument("--requests", type=int, default=60, help="measured requests per (target, user)")
    parser.add_argument("--warmup", type=int, default=5, help="warm-up requests per (target, user)")
    parser.add_argument("--all-time-requests", type=int, default=5, help="all-time requests per (target, user)")
    parser.add_argument("--server-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--supervisor-of", default="sup_01", help="the benchmark supervisor gets this user's team")
    parser.add_argument("--target-p95-ms", type=float, default=TARGET_P95_MS, help="target page server time p95")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (server log, simulated store)")
    return parser.parse_args(argv)


def window_start() -> datetime:
    """The dashboard page's default window start (``web.routes._since(None)``)."""
    from leadpilot.web.routes import DASHBOARD_DAYS

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today - timedelta(days=DASHBOARD_DAYS)


def simulate(url: str, scale: str, seed: int, data_dir: Path) -> dict[str, Any]:
    """Migrate and simulate a company into ``url``; returns the generation summary."""
    from leadpilot.db import migrate
    from leadpilot.db.engine import make_engine
    from leadpilot.simulate.generate import generate
    from leadpilot.simulate.world import World

    with contextlib.redirect_stdout(sys.stderr):
        migrate.upgrade(url)
    engine = make_engine(url)
    try:
        log(f"simulating a {scale} company (seed {seed}) ...")
        summary = generate(engine, World(scale, seed=seed), data_dir=data_dir)
    finally:
        engine.dispose()
    log(f"  {summary.leads:,} leads, {summary.events:,} events in {summary.seconds:.0f} s")
    return {"leads": summary.leads, "events": summary.events, "seconds": round(summary.seconds, 1)}


def prepare_users(url: str, supervisor_of: str) -> dict[str, Any]:
    """The benchmark admin and supervisor (``people`` service), and the store's size."""
    from sqlalchemy import func, select
    from sqlalchemy.orm import Session

    from leadpilot.crm import people, schemas
    from leadpilot.crm.access import SYSTEM
    from leadpilot.crm.models import Event, Lead, Role, User
    from leadpilot.db import migrate
    from leadpilot.db.engine import make_engine

    engine = make_engine(url)
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision()
        if current != head:
            raise SystemExit(f"the store is at schema {current}, not {head}: run `leadpilot db upgrade` on it first")
        with Session(engine) as session:
            model = session.execute(select(User).where(User.username == supervisor_of)).scalar_one_or_none()
            if model is None or model.team_id is None:
                raise SystemExit(f"--supervisor-of {supervisor_of!r}: no such user with a team in this store")
            teams = {"admin": None, "supervisor": model.team_id}
            roles = {"admin": Role.ADMIN, "supervisor": Role.SUPERVISOR}
            for key, username in USERS.items():
                user = session.execute(select(User).where(User.username == username)).scalar_one_or_none()
                if user is None:
                    data = schemas.UserCreate(username=username, password=PASSWORD, role=roles[key], team_id=teams[key])
                    people.create_user(session, actor=SYSTEM, data=data)
                else:
                    update = schemas.UserUpdate(password=PASSWORD, role=roles[key], team_id=teams[key])
                    people.update_user(session, actor=SYSTEM, user_id=user.id, data=update)
            session.commit()
            leads = session.scalar(select(func.count()).select_from(Lead))
            events = session.scalar(select(func.max(Event.id)))
    finally:
        engine.dispose()
    return {"leads": int(leads or 0), "events_max_id": int(events or 0), "supervisor_team_id": teams["supervisor"]}


class InProcess:
    """``crm.dashboard.summary`` per user in this process, one fresh session per call (the baseline)."""

    def __init__(self, url: str, since: datetime) -> None:
        from leadpilot.db.engine import make_engine, read_only_engine

        self.engine = make_engine(url)
        self.reader = read_only_engine(self.engine)
        self.since = since
        self.last: dict[str, dict[str, Any]] = {}

    def call(self, user: str) -> float:
        """Seconds one ``summary`` call took for this user (the actor is resolved outside the timing)."""
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from leadpilot.crm import dashboard
        from leadpilot.crm.access import actor_for
        from leadpilot.crm.models import User

        with Session(self.reader) as session:
            model = session.execute(select(User).where(User.username == USERS[user])).scalar_one()
            actor = actor_for(session, model)
            started = time.perf_counter()
            self.last[user] = dashboard.summary(session, actor=actor, since=self.since)
            return time.perf_counter() - started

    def close(self) -> None:
        self.engine.dispose()


def timed_get(client: Any, path: str) -> tuple[float, float, int, int]:
    """(seconds to the headers, seconds to the whole body, status, body bytes) of one GET."""
    started = time.perf_counter()
    with client.stream("GET", path) as response:
        headers_at = time.perf_counter()
        body = response.read()
        done = time.perf_counter()
    return headers_at - started, done - started, response.status_code, len(body)


@contextlib.contextmanager
def clients(base_url: str) -> Iterator[dict[str, Any]]:
    """One kept-alive HTTP client per user: bearer token for the API, the same JWT as session cookie for the page."""
    import httpx

    out: dict[str, Any] = {}
    try:
        for key, username in USERS.items():
            response = httpx.post(
                base_url + "/api/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=30
            )
            response.raise_for_status()
            token = str(response.json()["access_token"])
            out[key] = httpx.Client(
                base_url=base_url,
                headers={"Authorization": f"Bearer {token}"},
                cookies={"leadpilot_session": token},
                timeout=60,
            )
        yield out
    finally:
        for client in out.values():
            client.close()


def measure(
    base_url: str,
    targets: dict[str, str],
    warmup: int,
    requests: int,
    progress: Callable[[str], None],
    service: InProcess | None = None,
) -> dict[str, Any]:
    """Every (target, user) pair ``warmup + requests`` times, interleaved round-robin, one request in flight;
    with ``service``, each round also times the in-process call per user (same moment, same load)."""
    server: dict[tuple[str, str], list[float]] = {}
    baseline: dict[str, list[float]] = {}
    client_side: dict[tuple[str, str], list[float]] = {}
    sizes: dict[tuple[str, str], int] = {}
    with clients(base_url) as by_user:
        for i in range(warmup + requests):
            for user in by_user:
                if service is not None:
                    elapsed = service.call(user)
                    if i >= warmup:
                        baseline.setdefault(user, []).append(elapsed)
            for target, path in targets.items():
                for user, client in by_user.items():
                    to_headers, total, status, size = timed_get(client, path)
                    if status != 200:
                        raise RuntimeError(f"GET {path} as {user}: HTTP {status}")
                    if i >= warmup:
                        server.setdefault((target, user), []).append(to_headers)
                        client_side.setdefault((target, user), []).append(total)
                        sizes[(target, user)] = size
            if (i + 1) % 10 == 0:
                progress(f"  {i + 1}/{warmup + requests} rounds")
    out: dict[str, Any] = {
        f"{target}:{user}": {
            "path": targets[target],
            "server_time": latency_summary(server[(target, user)]),
            "client_latency": latency_summary(client_side[(target, user)]),
            "p95_ms": _p95(server[(target, user)]),
            "body_bytes": sizes[(target, user)],
        }
        for target, user in server
    }
    for user, times in baseline.items():
        out[f"service:{user}"] = {"latency": latency_summary(times), "p95_ms": _p95(times)}
    return out


def _p95(seconds: list[float]) -> float | None:
    from common import percentile

    value = percentile(sorted(seconds), 95)
    return None if value is None else round(value * 1000, 2)


def run(args: argparse.Namespace, url: str, data_dir: Path, work: Path) -> dict[str, Any]:
    """Users, baseline, server, HTTP measurements; the result document's body."""
    store = prepare_users(url, args.supervisor_of)
    since = window_start()
    log(f"store: {store['leads']:,} leads; window from {since.isoformat()}")
    service = InProcess(url, since)
    log(f"starting leadpilot serve --workers {args.server_workers} ...")
    server = Server(url, data_dir, args.server_workers, work / "server.log")
    try:
        server.wait_ready()
        targets = {"page": "/dashboard", "api": f"/api/v1/dashboard?since={quote(since.isoformat())}"}
        log(f"measuring {args.requests} rounds (after {args.warmup} warm-up): service, page, API per user ...")
        http = measure(server.base_url, targets, args.warmup, args.requests, log, service)
        all_time: dict[str, Any] = {}
        if args.all_time_requests > 0:
            log("all-time requests (for information) ...")
            all_time = measure(
                server.base_url,
                {"page_all": "/dashboard?since=all", "api_all": "/api/v1/dashboard"},
                1,
                args.all_time_requests,
                log,
            )
    finally:
        server.stop()
        service.close()
    baseline = {
        user: http.pop(f"service:{user}")
        | {
            "qualified_leads": service.last[user]["conversion"]["qualified_leads"],
            "leads_in_window": sum(row["leads"] for row in service.last[user]["funnel"]),
        }
        for user in USERS
    }
    pages = {user: http[f"page:{user}"]["p95_ms"] for user in USERS}
    ratios = {
        f"{target}:{user}_p95_over_service_p95": round(http[f"{target}:{user}"]["p95_ms"] / baseline[user]["p95_ms"], 2)
        for target in ("page", "api")
        for user in USERS
    } | {
        f"{target}:{user}_p50_over_service_p50": round(
            http[f"{target}:{user}"]["server_time"]["p50_ms"] / baseline[user]["latency"]["p50_ms"], 2
        )
        for target in ("page", "api")
        for user in USERS
    }
    return {
        "store": store,
        "window_since": since.isoformat(),
        "baseline_in_process_summary": baseline,
        "http": http,
        "all_time_http": all_time,
        "ratios": ratios,
        "target": {
            "what": "dashboard page server time p95 (time to headers), admin and supervisor, default window",
            "p95_ms_limit": args.target_p95_ms,
            "page_p95_ms": pages,
            "met": all(v is not None and v <= args.target_p95_ms for v in pages.values()),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.time()
    result: dict[str, Any] = {
        "benchmark": "dashboard_latency",
        "machine": machine_info() | {"loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    work = Path(tempfile.mkdtemp(prefix="leadpilot-dash-bench-"))
    try:
        data_dir = work / "data"
        data_dir.mkdir()
        if args.db is not None:
            if not args.db.exists():
                raise SystemExit(f"--db {args.db}: no such file")
            url = f"sqlite:///{args.db.resolve()}"
            result["backend"] = "sqlite"
            result.update(run(args, url, data_dir, work))
        elif args.backend == "sqlite":
            url = f"sqlite:///{work / 'crm.db'}"
            result["backend"] = "sqlite"
            result["simulation"] = simulate(url, args.scale, args.seed, data_dir)
            result.update(run(args, url, data_dir, work))
        else:
            version, why = pg_check(args.pg_url)
            if version is None:
                raise SystemExit(why)
            result["backend"] = f"postgresql {version}"
            with scratch_pg_database(args.pg_url, "dashboard") as url:
                result["simulation"] = simulate(url, args.scale, args.seed, data_dir)
                result.update(run(args, url, data_dir, work))
    finally:
        if args.keep_dir:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
