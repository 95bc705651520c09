"""Helpers shared by the benchmark scripts: machine description, logging, scratch PostgreSQL databases."""

from __future__ import annotations

import math
import os
import platform
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

DEFAULT_PG_URL = os.environ.get("LEADPILOT_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REPO = Path(__file__).resolve().parent.parent


def log(message: str) -> None:
    """Progress on stderr (stdout carries only the JSON result)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git_commit() -> str | None:
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "src"], cwd=REPO, capture_output=True, text=True)
        return sha + ("+dirty-src" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import leadpilot

    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "leadpilot": leadpilot.__version__,
        "git_commit": _git_commit(),
    }


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    return None


def pg_check(url: str) -> tuple[str | None, str | None]:
    """(server version, None) when PostgreSQL answers at ``url``, else (None, why not)."""
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=3, autocommit=True) as conn:
            version = conn.execute("SHOW server_version").fetchone()
            return (str(version[0]) if version else "unknown"), None
    except Exception as exc:  # any failure means: skip the PostgreSQL part
        return None, f"PostgreSQL unreachable at {url}: {type(exc).__name__}: {str(exc).strip()[:300]}"


def _with_database(url: str, name: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=name).render_as_string(hide_password=False)


@contextmanager
def scratch_pg_database(admin_url: str, tag: str) -> Iterator[str]:
    """Create an empty database next to ``admin_url``'s, yield its URL, and drop it afterwards."""
    import psycopg

    name = f"leadpilot_bench_{tag}_{os.getpid()}"
    with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    log(f"created scratch database {name}")
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        log(f"dropped scratch database {name}")


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The q-th percentile (0-100) of already sorted values, nearest-rank method."""
    if not sorted_values:
        return None
    rank = max(1, min(len(sorted_values), math.ceil(q / 100 * len(sorted_values))))
    return sorted_values[rank - 1]


def latency_summary(seconds: list[float]) -> dict[str, float | int | None]:
    """p50/p90/p99/max (milliseconds) of latencies given in seconds."""
    values = sorted(seconds)

    def ms(v: float | None) -> float | None:
        return None if v is None else round(v * 1000, 2)

    return {
        "count": len(values),
        "p50_ms": ms(percentile(values, 50)),
        "p90_ms": ms(percentile(values, 90)),
        "p99_ms": ms(percentile(values, 99)),
        "max_ms": ms(values[-1] if values else None),
        "mean_ms": ms(sum(values) / len(values) if values else None),
    }
