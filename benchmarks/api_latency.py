"""API latency: GET /api/v1/leads (filtered pages of 50) against 100,000 leads, served by 2 uvicorn workers.

For SQLite, and for PostgreSQL when reachable (reported separately), the script:

  1. builds the database: a seeded CSV of clean leads imported with ``import_leads``, then - setup only,
     not a code path being measured - bulk SQL UPDATEs that spread ``created_at`` over a year and move
     shares of the leads to screening / the claim pool / owned stages with 20 salespeople as owners
     (these UPDATEs bypass the event log and audit on purpose); users are made with ``create_user``;
  2. captures the exact SQL leadpilot's list service emits for every query of the mix (pages 1-3) and runs it
     directly through the database driver (``sqlite3`` / ``psycopg``, no HTTP, one connection, sequential):
     the baseline, so the ratio shows what the HTTP/API layer adds;
  3. for each phase - open loop at the extra rates (default 50 and 100 requests/s, 8 s each), open loop at the
     target rate (default 200 requests/s for 20 s), closed loop (default 8 concurrent clients for 10 s) -
     starts a fresh ``leadpilot serve --workers 2`` subprocess, and drives it from a second process
     (``--drive``, asyncio + httpx, 16 client connections): 2 s of warm-up at 20 requests/s, then the phase.
     Open loop means a constant arrival rate whatever the server does; latency is counted from each
     request's scheduled send time, so queueing cannot hide (no coordinated omission). Each phase gets its
     own server so a server stalled by one phase cannot spoil the next; admin and salesperson tokens come
     from POST /api/v1/auth/token;
  4. stops the server (its whole process group) and drops scratch databases.

Prints one JSON document on stdout (progress on stderr).

    .venv/bin/python benchmarks/api_latency.py                  # full size
    .venv/bin/python benchmarks/api_latency.py --rows 20000 --duration 5 --closed-duration 3 --no-postgres
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_PG_URL, latency_summary, log, machine_info, pg_check, scratch_pg_database
from leadgen import generate

TARGET_P99_MS = 50.0
PASSWORD = "bench-password-123"
N_SALES = 20
PAGE_SIZE = 50

# The query mix: (name, role, filters). Filters map to both the query string and leadpilot's LeadFilters.
QUERIES: list[tuple[str, str, dict[str, Any]]] = [
    ("admin_stage_qualified_housing", "admin", {"stage": ["qualified"], "product_line": "housing"}),
    ("admin_region_shanghai_cn", "admin", {"region": "上海"}),
    ("admin_in_pool", "admin", {"in_pool": True}),
    ("admin_new_or_screening_referral", "admin", {"stage": ["new", "screening"], "source": "referral"}),
    ("admin_education_min_budget", "admin", {"product_line": "education", "min_budget": 100_000}),
    ("sales_default_view", "sales", {}),
    ("sales_pool_housing", "sales", {"in_pool": True, "product_line": "housing"}),
    ("sales_mine_assigned", "sales", {"stage": ["assigned"]}),
    ("sales_region_pool", "sales", {"region": "Shanghai", "in_pool": True}),
]
PAGE_WEIGHTS = [(1, 0.7), (2, 0.2), (3, 0.1)]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark GET /api/v1/leads latency and throughput (leadpilot serve, 2 workers) against "
        "the same SQL run directly through sqlite3/psycopg. Prints JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000, help="leads in the database")
    parser.add_argument("--seed", type=int, default=42, help="random seed (data and request mix)")
    parser.add_argument("--rate", type=float, default=200.0, help="open-loop arrival rate, requests/s")
    parser.add_argument("--duration", type=float, default=20.0, help="open-loop measured seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of low-rate load before each phase")
    parser.add_argument("--warmup-rate", type=float, default=20.0, help="requests/s of the warm-up")
    parser.add_argument(
        "--extra-rates", default="50,100", help="comma-separated other open-loop rates, run first ('' for none)"
    )
    parser.add_argument("--extra-duration", type=float, default=8.0, help="seconds per extra rate")
    parser.add_argument(
        "--client-timeout", type=float, default=32.0, help="request timeout (just above the server's 30 s pool timeout)"
    )
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections opened before a phase")
    parser.add_argument(
        "--max-connections",
        type=int,
        default=256,
        help="connections the load generator may open when all are busy (beyond: requests wait, and it shows)",
    )
    parser.add_argument("--closed-clients", type=int, default=8, help="closed-loop concurrent clients")
    parser.add_argument("--closed-duration", type=float, default=10.0, help="closed-loop measured seconds")
    parser.add_argument("--server-workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--baseline-queries", type=int, default=1000, help="direct SQL queries in the baseline")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server to create a scratch database on")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite part")
    parser.add_argument("--target-p99-ms", type=float, default=TARGET_P99_MS, help="target open-loop p99")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (database, server log)")
    parser.add_argument("--drive", metavar="CONFIG", help=argparse.SUPPRESS)  # internal: the load process
    return parser.parse_args(argv)


# --- database setup --------------------------------------------------------------------------------


# Setup-only stage distribution by a hash of the id: (stage, lowest bucket, highest bucket) of 100 buckets.
STAGE_BUCKETS = [
    ("screening", 35, 44),
    ("qualified", 45, 59),
    ("recycled", 60, 64),
    ("assigned", 65, 84),
    ("contacted", 85, 89),
    ("won", 90, 94),
    ("lost", 95, 99),
]
STAGE_SQL = "UPDATE leads SET stage = :stage WHERE ((id * 2654435761) % 100) BETWEEN :lo AND :hi"
SPREAD_SQL = {
    "sqlite": "UPDATE leads SET created_at = strftime('%Y-%m-%d %H:%M:%S', '2026-01-01', "
    "'-' || ((id * 7919) % 31536000) || ' seconds') || '.000000'",
    "postgresql": "UPDATE leads SET created_at = TIMESTAMPTZ '2026-01-01 00:00:00+00' "
    "- ((id * 7919) % 31536000) * INTERVAL '1 second'",
}


def _setup_statements(dialect: str) -> list[tuple[str, dict[str, Any]]]:
    """Setup-only bulk UPDATEs: created_at over a year, and a realistic stage distribution."""
    return [
        (SPREAD_SQL[dialect], {}),
        ("UPDATE leads SET updated_at = created_at, stage_changed_at = created_at", {}),
        *((STAGE_SQL, {"stage": st, "lo": lo, "hi": hi}) for st, lo, hi in STAGE_BUCKETS),
        ("UPDATE leads SET lost_reason = 'no budget' WHERE stage = 'lost'", {}),
    ]


def build_database(url: str, csv_path: Path) -> dict[str, Any]:
    """Migrate, import, reshape, create users; returns user ids and setup timings."""
    from sqlalchemy import text
    from sqlalchemy.orm import Session

    from leadpilot.config import Settings
    from leadpilot.crm import people, schemas
    from leadpilot.crm.access import SYSTEM
    from leadpilot.crm.models import Role
    from leadpilot.db import migrate
    from leadpilot.db.engine import make_engine
    from leadpilot.intake.importer import import_leads

    with contextlib.redirect_stdout(sys.stderr):
        migrate.upgrade(url)
    engine = make_engine(url)
    try:
        started = time.perf_counter()
        summary = import_leads(engine, csv_path, default_region="CN", workers=Settings().import_workers)
        import_seconds = time.perf_counter() - started
        log(f"  imported {summary.created:,} leads in {import_seconds:.1f} s")
        with Session(engine) as session:
            admin = people.create_user(
                session,
                actor=SYSTEM,
                data=schemas.UserCreate(username="bench_admin", password=PASSWORD, role=Role.ADMIN),
            )
            sales = [
                people.create_user(
                    session,
                    actor=SYSTEM,
                    data=schemas.UserCreate(username=f"bench_sales{k:02d}", password=PASSWORD, role=Role.SALES),
                )
                for k in range(N_SALES)
            ]
            session.commit()
            admin_id, sales_ids = admin.id, [u.id for u in sales]
        started = time.perf_counter()
        dialect = engine.dialect.name
        with engine.begin() as conn:
            for sql, params in _setup_statements(dialect):
                conn.execute(text(sql), params)
            for k, uid in enumerate(sales_ids):
                conn.execute(
                    text(
                        "UPDATE leads SET owner_id = :uid "
                        "WHERE stage IN ('assigned', 'contacted', 'won') AND (id % :n) = :k"
                    ),
                    {"uid": uid, "n": N_SALES, "k": k},
                )
        if dialect == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM ANALYZE leads"))
        with engine.connect() as conn:
            stages = dict(conn.execute(text("SELECT stage, COUNT(*) FROM leads GROUP BY stage ORDER BY stage")).all())
            pool = conn.execute(
                text("SELECT COUNT(*) FROM leads WHERE owner_id IS NULL AND stage IN ('qualified', 'recycled')")
            ).scalar_one()
            mine = conn.execute(text("SELECT COUNT(*) FROM leads WHERE owner_id = :u"), {"u": sales_ids[0]}).scalar()
        reshape_seconds = time.perf_counter() - started
    finally:
        engine.dispose()
    return {
        "admin_id": admin_id,
        "sales_id": sales_ids[0],
        "leads": summary.created,
        "import_seconds": round(import_seconds, 2),
        "setup_update_seconds": round(reshape_seconds, 2),
        "stages": {k: int(v) for k, v in stages.items()},
        "pool_leads": int(pool),
        "leads_owned_by_bench_salesperson": int(mine or 0),
    }


def capture_queries(url: str, users: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """For each query of the mix: pages 1-3 with their cursor and the exact SQL + parameters leadpilot emits."""
    from sqlalchemy import event
    from sqlalchemy.orm import Session

    from leadpilot.crm import leads
    from leadpilot.crm.access import actor_for
    from leadpilot.crm.models import User
    from leadpilot.db.engine import make_engine, read_only_engine

    engine = make_engine(url)
    captured: list[tuple[str, Any]] = []

    def grab(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if "FROM leads" in statement:
            captured.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", grab)
    out: dict[str, list[dict[str, Any]]] = {}
    try:
        with Session(read_only_engine(engine)) as session:
            actors = {
                "admin": actor_for(session, session.get_one(User, users["admin_id"])),
                "sales": actor_for(session, session.get_one(User, users["sales_id"])),
            }
            for name, role, filters in QUERIES:
                pages: list[dict[str, Any]] = []
                cursor: str | None = None
                for page_no in (1, 2, 3):
                    captured.clear()
                    page = leads.list_leads(
                        session,
                        actor=actors[role],
                        filters=leads.LeadFilters(**filters),
                        sort="-created_at",
                        cursor=cursor,
                        limit=PAGE_SIZE,
                    )
                    statement, parameters = captured[-1]
                    pages.append(
                        {
                            "page": page_no,
                            "cursor": cursor,
                            "sql": statement,
                            "params": parameters,
                            "ids": [lead.id for lead in page.items],
                        }
                    )
                    cursor = page.next_cursor
                    if cursor is None:
                        break
                out[name] = pages
    finally:
        engine.dispose()
    return out


# --- direct SQL baseline ---------------------------------------------------------------------------


def request_mix(captured: dict[str, list[dict[str, Any]]], count: int, seed: int) -> list[tuple[str, int]]:
    """A seeded sequence of (query name, page number) used by both the baseline and the load driver."""
    rng = random.Random(seed)
    names = [name for name, _, _ in QUERIES]
    pages, weights = zip(*PAGE_WEIGHTS, strict=True)
    mix = []
    for _ in range(count):
        name = rng.choice(names)
        page = rng.choices(pages, weights)[0]
        mix.append((name, min(page, len(captured[name]))))
    return mix


def direct_baseline(
    backend: str, url: str, sqlite_path: Path | None, captured: dict[str, list[dict[str, Any]]], mix: list[Any]
) -> dict[str, Any]:
    """Run the captured SQL of the mix sequentially on one plain driver connection, fetching every row."""
    if backend == "sqlite":
        conn: Any = sqlite3.connect(str(sqlite_path))
    else:
        import psycopg
        from sqlalchemy.engine import make_url

        conn = psycopg.connect(make_url(url).set(drivername="postgresql").render_as_string(hide_password=False))
    id_matches = True
    try:
        # Warm up (page cache, prepared statements) with one pass over every query.
        for pages in captured.values():
            for page in pages:
                cur = conn.execute(page["sql"], page["params"])
                rows = cur.fetchall()
                id_col = [d[0] for d in cur.description].index("id")
                id_matches = id_matches and [r[id_col] for r in rows][: len(page["ids"])] == page["ids"]
        latencies: list[float] = []
        per_query: dict[str, list[float]] = {}
        started = time.perf_counter()
        for name, page_no in mix:
            page = captured[name][page_no - 1]
            t0 = time.perf_counter()
            conn.execute(page["sql"], page["params"]).fetchall()
            elapsed = time.perf_counter() - t0
            latencies.append(elapsed)
            per_query.setdefault(name, []).append(elapsed)
        wall = time.perf_counter() - started
    finally:
        conn.close()
    return {
        "how": f"captured leadpilot SQL via {'sqlite3' if backend == 'sqlite' else 'psycopg'}, one connection, "
        "sequential, all rows fetched",
        "queries": len(mix),
        "queries_per_second": round(len(mix) / wall, 1),
        "latency": latency_summary(latencies),
        "p50_ms_by_query": {k: latency_summary(v)["p50_ms"] for k, v in sorted(per_query.items())},
        "same_ids_as_service": id_matches,
    }


# --- server ----------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _leadpilot_command() -> list[str]:
    script = Path(sys.executable).parent / "leadpilot"
    return [str(script)] if script.exists() else [sys.executable, "-m", "leadpilot.cli.main"]


class Server:
    """``leadpilot serve`` in its own process group (so stopping it stops its workers too)."""

    def __init__(self, url: str, data_dir: Path, workers: int, log_path: Path) -> None:
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("LEADPILOT_")}
        env.update({"LEADPILOT_DATABASE_URL": url, "LEADPILOT_DATA_DIR": str(data_dir)})
        self.log_path = log_path
        self._log = log_path.open("wb")
        cmd = [*_leadpilot_command(), "serve", "--port", str(self.port), "--workers", str(workers)]
        # cwd = the data dir, so no stray .env file of the checkout changes the settings.
        self.proc = subprocess.Popen(
            cmd, cwd=data_dir, env=env, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(self.base_url + "/healthz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready after {timeout} s: {self.log_tail()}")

    def log_tail(self, limit: int | None = 2000) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
            return text[-limit:] if limit else text
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        # Workers left behind in the group (should not happen after uvicorn's shutdown) get SIGKILL.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def login(base_url: str, username: str) -> str:
    import httpx

    resp = httpx.post(base_url + "/api/v1/auth/token", data={"username": username, "password": PASSWORD}, timeout=30)
    resp.raise_for_status()
    return str(resp.json()["access_token"])


def _query_string(filters: dict[str, Any], cursor: str | None) -> str:
    params: list[tuple[str, str]] = []
    for key, value in filters.items():
        if isinstance(value, list):
            params.extend((key, v) for v in value)
        elif isinstance(value, bool):
            params.append((key, "true" if value else "false"))
        else:
            params.append((key, str(value)))
    params.append(("limit", str(PAGE_SIZE)))
    if cursor:
        params.append(("cursor", cursor))
    return urlencode(params)


def check_api_pages(base_url: str, tokens: dict[str, str], captured: dict[str, list[dict[str, Any]]]) -> bool:
    """Every page of the mix answers 200 over HTTP with the same lead ids the service returned."""
    import httpx

    ok = True
    roles = {name: role for name, role, _ in QUERIES}
    filters = {name: f for name, _, f in QUERIES}
    with httpx.Client(base_url=base_url, timeout=30) as client:
        for name, pages in captured.items():
            for page in pages:
                path = "/api/v1/leads?" + _query_string(filters[name], page["cursor"])
                resp = client.get(path, headers={"Authorization": f"Bearer {tokens[roles[name]]}"})
                ids = [item["id"] for item in resp.json().get("items", [])] if resp.status_code == 200 else None
                if ids != page["ids"]:
                    log(f"  mismatch on {name} page {page['page']}: HTTP {resp.status_code}")
                    ok = False
    return ok


# --- load driver (runs in its own process: --drive CONFIG) -------------------------------------------


def _group_cpu_seconds(pgid: int) -> float:
    """CPU seconds (user + system) of every live process in the process group (the server and its workers)."""
    total = 0
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[2]) == pgid:  # field 5 (pgrp), after pid and comm
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


def _machine_busy() -> tuple[float, float]:
    """(busy, total) jiffies of all CPUs from /proc/stat: the machine's load, other processes included."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def _own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection to the server: one request at a time, responses framed by
    Content-Length (leadpilot always sends it). Far cheaper per request than a general client, so the load
    generator takes less of the CPU the server shares with it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("server closed the connection"))

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        marker = head.find(b"\r\ncontent-length:")
        if marker < 0:
            self._fail(ConnectionError("response without Content-Length"))
            return
        line_end = head.find(b"\r\n", marker + 2)
        length = int(head[marker + 17 : line_end if line_end >= 0 else len(head)])
        if len(self.buffer) < end + 4 + length:
            return
        del self.buffer[: end + 4 + length]
        waiter.set_result((int(head[9:12]), b"\r\nconnection: close" not in head))

    def _fail(self, exc: Exception) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(exc)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    async def send(self, raw_request: bytes, timeout: float) -> tuple[int, bool]:
        """(status, whether the connection can be reused); raises TimeoutError or ConnectionError."""
        loop = asyncio.get_running_loop()
        self.waiter = loop.create_future()
        timer = loop.call_later(timeout, self._fail, TimeoutError("no response in time"))
        assert self.transport is not None
        self.transport.write(raw_request)
        try:
            return await self.waiter
        finally:
            timer.cancel()


class ConnectionPool:
    """Keep-alive connections opened on demand up to ``max_connections``; beyond that requests wait for one
    (their latency still counts from the scheduled send time)."""

    def __init__(self, host: str, port: int, max_connections: int) -> None:
        self.host, self.port, self.max_connections = host, port, max_connections
        self.idle: list[HttpConnection] = []
        self.open = 0
        self.peak_open = 0
        self.waiting: collections.deque[asyncio.Future[HttpConnection]] = collections.deque()

    async def _connect(self) -> HttpConnection:
        self.open += 1
        self.peak_open = max(self.peak_open, self.open)
        try:
            _, conn = await asyncio.get_running_loop().create_connection(HttpConnection, self.host, self.port)
        except OSError:
            self.open -= 1
            raise
        return conn

    async def acquire(self) -> HttpConnection:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
            self.open -= 1
        if self.open < self.max_connections:
            return await self._connect()
        waiter: asyncio.Future[HttpConnection] = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        return await waiter

    def release(self, conn: HttpConnection, reusable: bool) -> None:
        if reusable and not conn.closed:
            while self.waiting:
                waiter = self.waiting.popleft()
                if not waiter.done():
                    waiter.set_result(conn)
                    return
            self.idle.append(conn)
            return
        conn.close()
        self.open -= 1
        if self.waiting:  # a broken connection's place goes to the next waiting request
            asyncio.get_running_loop().create_task(self._replace())

    async def _replace(self) -> None:
        try:
            conn = await self._connect()
        except OSError:
            return
        self.release(conn, True)

    async def prewarm(self, count: int) -> None:
        conns = [await self.acquire() for _ in range(min(count, self.max_connections))]
        for conn in conns:
            self.release(conn, True)

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


async def _drive(cfg: dict[str, Any]) -> dict[str, Any]:
    """One phase against a fresh server: a short low-rate warm-up, then an open-loop or a closed-loop run."""
    host, port = cfg["base_url"].removeprefix("http://").rsplit(":", 1)
    # Every request of the mix as the exact bytes sent: no per-request header building or URL parsing.
    raw: dict[str, bytes] = {}
    for _name, role, path in cfg["requests"]:
        raw.setdefault(
            f"{role} {path}",
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {cfg['tokens'][role]}\r\n"
            "Accept: application/json\r\n\r\n".encode("ascii"),
        )
    requests: list[tuple[str, bytes]] = [(name, raw[f"{role} {path}"]) for name, role, path in cfg["requests"]]
    timeout = cfg["client_timeout"]
    loop = asyncio.get_running_loop()
    # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
    now = time.perf_counter

    async def one(pool: ConnectionPool, req: tuple[str, bytes], scheduled: float, sink: list[Any]) -> None:
        name, raw_request = req
        status: int | str = 0
        start = now()
        conn: HttpConnection | None = None
        reusable = False
        try:
            conn = await pool.acquire()
            start = now()
            status, reusable = await conn.send(raw_request, timeout)
        except (OSError, TimeoutError) as exc:
            status = type(exc).__name__
        finally:
            if conn is not None:
                pool.release(conn, reusable)
        end = now()
        sink.append((name, status, end - scheduled, end - start, end))

    def new_pool() -> ConnectionPool:
        return ConnectionPool(host, int(port), cfg["max_connections"])

    async def open_loop(rate: float, seconds: float, offset: int) -> dict[str, Any]:
        pool = new_pool()
        await pool.prewarm(cfg["connections"])
        sink: list[Any] = []
        count = int(rate * seconds)
        cpu0, own0, busy0 = _group_cpu_seconds(cfg["pgid"]), _own_cpu_seconds(), _machine_busy()
        t0 = now() + 0.05
        tasks = []
        max_lag = 0.0
        sampler = loop.create_task(_sample_cpu_every_second(cfg["pgid"], samples := []))
        for i in range(count):
            scheduled = t0 + i / rate  # constant arrival rate, whatever the server does
            delay = scheduled - now()
            if delay > 0:
                await asyncio.sleep(delay)
            else:
                max_lag = max(max_lag, -delay)
            tasks.append(loop.create_task(one(pool, requests[(offset + i) % len(requests)], scheduled, sink)))
        await asyncio.gather(*tasks)
        sampler.cancel()
        wall = max(x[4] for x in sink) - t0 if sink else 0.0
        cpu1, own1, busy1 = _group_cpu_seconds(cfg["pgid"]), _own_cpu_seconds(), _machine_busy()
        pool.close()
        extra = {
            "offered_rate": rate,
            "scheduler_max_lag_ms": max_lag,
            "machine_cpu_busy": _busy(busy0, busy1),
            "peak_client_connections": pool.peak_open,
            # Per second: (machine CPU busy share, leadpilot server cores). The machine has os.cpu_count()
            # CPUs; what is busy beyond the server and the load generator is other processes.
            "cpu_by_second": samples,
        }
        return _summarise(sink, wall, cpu1 - cpu0, own1 - own0, extra)

    async def closed_loop(n_clients: int, seconds: float) -> dict[str, Any]:
        pool = new_pool()
        await pool.prewarm(n_clients)
        sink: list[Any] = []
        stop_at = now() + seconds
        cpu0, own0, busy0 = _group_cpu_seconds(cfg["pgid"]), _own_cpu_seconds(), _machine_busy()
        t0 = now()

        async def worker(k: int) -> None:
            i = k * 7919
            while now() < stop_at:
                await one(pool, requests[i % len(requests)], now(), sink)
                i += 1

        await asyncio.gather(*(worker(k) for k in range(n_clients)))
        wall = now() - t0
        cpu1, own1, busy1 = _group_cpu_seconds(cfg["pgid"]), _own_cpu_seconds(), _machine_busy()
        pool.close()
        extra = {"clients": n_clients, "machine_cpu_busy": _busy(busy0, busy1)}
        return _summarise(sink, wall, cpu1 - cpu0, own1 - own0, extra)

    out: dict[str, Any] = {}
    if cfg["warmup"] > 0:
        out["warmup"] = await open_loop(cfg["warmup_rate"], cfg["warmup"], offset=len(requests) // 2)
        out["warmup"].pop("by_query", None)
    phase = cfg["phase"]
    if phase["kind"] == "open":
        out["run"] = await open_loop(phase["rate"], phase["duration"], offset=phase["offset"])
    else:
        out["run"] = await closed_loop(phase["clients"], phase["duration"])
    return out


async def _sample_cpu_every_second(pgid: int, samples: list[tuple[float | None, float]]) -> None:
    """Append (machine busy share, server cores) for each second until cancelled."""
    busy, server, at = _machine_busy(), _group_cpu_seconds(pgid), time.perf_counter()
    while True:
        await asyncio.sleep(1.0)
        busy1, server1, at1 = _machine_busy(), _group_cpu_seconds(pgid), time.perf_counter()
        samples.append((_busy(busy, busy1), round((server1 - server) / (at1 - at), 2)))
        busy, server, at = busy1, server1, at1


def _busy(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    total = after[1] - before[1]
    return round((after[0] - before[0]) / total, 3) if total else None


def _summarise(sink: list[Any], wall: float, server_cpu: float, client_cpu: float, extra: dict[str, Any]) -> dict:
    ok = [x for x in sink if x[1] == 200]
    statuses = Counter(str(x[1]) for x in sink)
    by_query: dict[str, list[float]] = {}
    for name, _status, latency, _service, _end in ok:
        by_query.setdefault(name, []).append(latency)
    extra = {k: (round(v * 1000, 2) if k.endswith("_ms") else v) for k, v in extra.items()}
    # The slowest request of each second (by scheduled send time): shows whether a high p99 is one stall
    # (a few bad seconds, e.g. another process taking the CPUs) or a server that is slow throughout.
    first = min((end - latency for _n, _s, latency, _v, end in sink), default=0.0)
    worst: dict[int, float] = {}
    for _name, _status, latency, _service, end in sink:
        second = int(end - latency - first)
        worst[second] = max(worst.get(second, 0.0), latency)
    return {
        **extra,
        "requests": len(sink),
        "errors": len(sink) - len(ok),
        "status_codes": dict(sorted(statuses.items())),
        "seconds": round(wall, 3),
        "throughput_rps": round(len(ok) / wall, 1) if wall else None,
        "latency": latency_summary([x[2] for x in ok]),
        "service_time": latency_summary([x[3] for x in ok]),
        "by_query": {
            k: {"p50_ms": s["p50_ms"], "p99_ms": s["p99_ms"], "count": s["count"]}
            for k, s in ((k, latency_summary(v)) for k, v in sorted(by_query.items()))
        },
        "max_latency_ms_by_second": [round(worst.get(k, 0.0) * 1000, 1) for k in range(max(worst, default=-1) + 1)],
        "server_cpu_cores": round(server_cpu / wall, 2) if wall else None,
        # leadpilot processes only (uvicorn supervisor + workers); PostgreSQL backends are not counted here.
        "server_cpu_ms_per_ok_request": round(server_cpu / len(ok) * 1000, 2) if ok else None,
        "load_generator_cpu_cores": round(client_cpu / wall, 2) if wall else None,
    }


def drive_main(config_path: str) -> int:
    cfg = json.loads(Path(config_path).read_text())
    try:
        import uvloop  # the event loop the server runs on too; cheaper per request than asyncio's default

        result = uvloop.run(_drive(cfg))
    except ImportError:
        result = asyncio.run(_drive(cfg))
    json.dump(result, sys.stdout)
    return 0


# --- orchestration ---------------------------------------------------------------------------------


def _run_phase(
    name: str, phase: dict[str, Any], url: str, data_dir: Path, tmp: Path, args: argparse.Namespace, base: dict
) -> dict[str, Any]:
    """Start a fresh server, drive one phase from a second process, stop the server (and its queue)."""
    log_path = tmp / f"server-{name}.log"
    server = Server(url, data_dir, args.server_workers, log_path)
    try:
        server.wait_ready()
        if "tokens" not in base:
            base["tokens"] = {
                "admin": login(server.base_url, "bench_admin"),
                "sales": login(server.base_url, "bench_sales00"),
            }
            base["api_pages_match_service"] = check_api_pages(server.base_url, base["tokens"], base["captured"])
        cfg = {
            "base_url": server.base_url,
            "tokens": base["tokens"],
            "requests": base["requests"],
            "warmup": args.warmup,
            "warmup_rate": args.warmup_rate,
            "connections": args.connections,
            "max_connections": args.max_connections,
            "client_timeout": args.client_timeout,
            "pgid": server.proc.pid,
            "phase": phase,
        }
        cfg_path = tmp / f"drive-{name}.json"
        cfg_path.write_text(json.dumps(cfg, ensure_ascii=False))
        proc = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--drive", str(cfg_path)],
            stdout=subprocess.PIPE,
            check=True,
        )
        driven = json.loads(proc.stdout)
    finally:
        server.stop()
    text = server.log_tail(limit=None)
    run = driven["run"]
    run["server_log"] = {
        "tracebacks": text.count("Traceback (most recent call last)"),
        "connection_pool_timeouts": text.count("QueuePool limit of size"),
    }
    if "warmup" in driven:
        run["warmup"] = {k: driven["warmup"][k] for k in ("requests", "errors", "throughput_rps", "latency")}
    lat = run["latency"]
    log(
        f"  {name}: {run['throughput_rps']} req/s, p50 {lat['p50_ms']} ms, p99 {lat['p99_ms']} ms, "
        f"errors {run['errors']} {run['status_codes']}"
    )
    return run


def bench_backend(backend: str, url: str, tmp: Path, csv_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    log(f"{backend}: building a database of {args.rows:,} leads")
    users = build_database(url, csv_path)
    log(f"{backend}: capturing the SQL of {len(QUERIES)} queries x 3 pages")
    captured = capture_queries(url, users)
    mix = request_mix(captured, max(args.baseline_queries, 4000), args.seed)
    sqlite_path = Path(url.removeprefix("sqlite:///")) if backend == "sqlite" else None
    log(f"{backend}: direct SQL baseline ({args.baseline_queries} queries)")
    baseline = direct_baseline(backend, url, sqlite_path, captured, mix[: args.baseline_queries])
    log(f"  direct p50 {baseline['latency']['p50_ms']} ms, {baseline['queries_per_second']} queries/s")
    what_if = None
    if sqlite_path is not None:
        # Informational: leadpilot never runs ANALYZE on SQLite; how the same SQL does on a copy that has statistics.
        analyzed = tmp / "analyzed.db"
        with sqlite3.connect(str(sqlite_path)) as src, sqlite3.connect(str(analyzed)) as dst:
            src.backup(dst)
            dst.execute("ANALYZE")
        what_if = direct_baseline(backend, url, analyzed, captured, mix[: args.baseline_queries])
        analyzed.unlink()
        log(f"  direct p50 after ANALYZE (what-if, on a copy) {what_if['latency']['p50_ms']} ms")

    roles = {name: role for name, role, _ in QUERIES}
    filters = {name: f for name, _, f in QUERIES}
    base: dict[str, Any] = {
        "captured": captured,
        "requests": [
            (name, roles[name], "/api/v1/leads?" + _query_string(filters[name], captured[name][page_no - 1]["cursor"]))
            for name, page_no in mix
        ],
    }
    data_dir = tmp / f"server-{backend}"
    data_dir.mkdir()
    extra_rates = [float(x) for x in args.extra_rates.split(",") if x.strip()]
    others: dict[str, Any] = {}
    log(f"{backend}: driving leadpilot serve --workers {args.server_workers} from a second process")
    for k, rate in enumerate(extra_rates):
        phase = {"kind": "open", "rate": rate, "duration": args.extra_duration, "offset": (k + 1) * 1000}
        run = _run_phase(f"{backend}-open-{rate:g}", phase, url, data_dir, tmp, args, base)
        run.pop("by_query", None)
        others[f"{rate:g}"] = run
    phase = {"kind": "open", "rate": args.rate, "duration": args.duration, "offset": 0}
    open_loop = _run_phase(f"{backend}-open-{args.rate:g}", phase, url, data_dir, tmp, args, base)
    phase = {"kind": "closed", "clients": args.closed_clients, "duration": args.closed_duration}
    closed = _run_phase(f"{backend}-closed-{args.closed_clients}", phase, url, data_dir, tmp, args, base)
    direct = baseline["latency"]

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 1) if a and b else None

    return {
        "setup": users,
        "api_pages_match_service": base.get("api_pages_match_service"),
        "server_workers": args.server_workers,
        "open_loop": open_loop,
        "open_loop_other_rates": others,
        "closed_loop": closed,
        "direct_sql_baseline": baseline,
        "direct_sql_baseline_after_analyze_what_if": what_if,
        "ratios_api_vs_direct": {
            "open_loop_p50": ratio(open_loop["latency"]["p50_ms"], direct["p50_ms"]),
            "open_loop_p99": ratio(open_loop["latency"]["p99_ms"], direct["p99_ms"]),
            "closed_loop_p50": ratio(closed["latency"]["p50_ms"], direct["p50_ms"]),
            "closed_loop_throughput": round((closed["throughput_rps"] or 0) / baseline["queries_per_second"], 3),
            "other_rates": {
                rate: {
                    "p50": ratio(run["latency"]["p50_ms"], direct["p50_ms"]),
                    "p99": ratio(run["latency"]["p99_ms"], direct["p99_ms"]),
                }
                for rate, run in others.items()
            },
        },
        "target": {
            "what": f"open-loop p99 <= {args.target_p99_ms:g} ms at {args.rate:g} requests/s, no errors",
            "p99_ms": open_loop["latency"]["p99_ms"],
            "achieved_rps": open_loop["throughput_rps"],
            "errors": open_loop["errors"],
            "met": bool(
                open_loop["errors"] == 0
                and open_loop["latency"]["p99_ms"] is not None
                and open_loop["latency"]["p99_ms"] <= args.target_p99_ms
                and (open_loop["throughput_rps"] or 0) >= 0.98 * args.rate
            ),
        },
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.drive:
        return drive_main(args.drive)
    tmp = Path(tempfile.mkdtemp(prefix="leadpilot-bench-api-"))
    result: dict[str, Any] = {
        "benchmark": "api_latency",
        "machine": {**machine_info(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "params": {
            k: getattr(args, k)
            for k in (
                "rows",
                "seed",
                "rate",
                "duration",
                "warmup",
                "warmup_rate",
                "client_timeout",
                "extra_rates",
                "extra_duration",
                "connections",
                "max_connections",
                "closed_clients",
                "closed_duration",
                "server_workers",
                "baseline_queries",
            )
        },
        "queries": [{"name": n, "role": r, "query": _query_string(f, None)} for n, r, f in QUERIES],
    }
    try:
        csv_path = tmp / "leads.csv"
        log(f"generating {args.rows:,} clean leads")
        generate(csv_path, args.rows, seed=args.seed, bad_share=0.0, dup_share=0.0)
        if args.no_sqlite:
            result["sqlite"] = {"skipped": "--no-sqlite given"}
        else:
            result["sqlite"] = bench_backend("sqlite", f"sqlite:///{tmp / 'leadpilot.db'}", tmp, csv_path, args)
        if args.no_postgres:
            result["postgresql"] = {"skipped": "--no-postgres given"}
        else:
            version, problem = pg_check(args.pg_url)
            if problem:
                log(f"skipping PostgreSQL: {problem}")
                result["postgresql"] = {"skipped": problem}
            else:
                with scratch_pg_database(args.pg_url, "api") as url:
                    result["postgresql"] = {
                        "server_version": version,
                        **bench_backend("postgresql", url, tmp, csv_path, args),
                    }
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        if args.keep_dir:
            log(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    json.dump(result, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
