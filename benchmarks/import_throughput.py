"""Import throughput: leadpilot's importer vs a naive pandas.read_csv + DataFrame.to_sql load of the same file.

Generates a seeded lead CSV (default 100,000 rows, 5% invalid, 5% duplicates of earlier rows) into a temp
dir, then, on SQLite and on PostgreSQL (skipped with a note when unreachable):

  1. leadpilot ``import_leads`` into a freshly migrated database (validation, normalisation, de-duplication,
     events, audit, fingerprints), timed from the call to its return;
  2. the same import again (idempotent re-run: nothing may be created);
  3. the naive baseline: ``pandas.read_csv(path)`` + ``df.to_sql(...)`` into a fresh database, no
     validation or de-duplication at all.

Prints one JSON document on stdout (progress on stderr). Run it as a script: the importer forks worker
processes, so this module does its work only under ``if __name__ == "__main__":``.

    .venv/bin/python benchmarks/import_throughput.py            # full size
    .venv/bin/python benchmarks/import_throughput.py --rows 20000 --no-postgres
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import DEFAULT_PG_URL, log, machine_info, pg_check, scratch_pg_database
from leadgen import generate

TARGET_ROWS_PER_SECOND = 20_000
WRITER_PROCESS_NAME = "leadpilot-import-writer"


def _default_workers() -> int:
    from leadpilot.config import Settings

    return Settings().import_workers


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark leadpilot's lead import (rows/s) against a naive pandas read_csv + to_sql load, "
        "on SQLite and PostgreSQL. Prints JSON on stdout.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--rows", type=int, default=100_000, help="data rows in the generated CSV")
    parser.add_argument("--seed", type=int, default=42, help="random seed of the data generator")
    parser.add_argument("--bad-share", type=float, default=0.05, help="share of invalid rows")
    parser.add_argument("--dup-share", type=float, default=0.05, help="share of duplicates of earlier rows")
    parser.add_argument("--batch-size", type=int, default=10_000, help="importer rows per transaction")
    parser.add_argument(
        "--workers", type=int, default=None, help="importer validation processes (default: leadpilot's setting)"
    )
    parser.add_argument(
        "--writer",
        choices=("auto", "thread"),
        default="auto",
        help="auto: leadpilot's choice (a writer process for files of more than two batches); thread: the writer "
        "thread of earlier versions, to compare",
    )
    parser.add_argument("--region", default="CN", help="default phone region for numbers without +country code")
    parser.add_argument("--pg-url", default=DEFAULT_PG_URL, help="PostgreSQL server to create scratch databases on")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL part")
    parser.add_argument("--no-naive", action="store_true", help="skip the pandas baseline")
    parser.add_argument("--target", type=float, default=TARGET_ROWS_PER_SECOND, help="target rows/s on SQLite")
    parser.add_argument("--keep-dir", action="store_true", help="keep the temp dir (CSV, SQLite files) for a look")
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("--rows must be at least 1")
    return args


def _counts(engine: Any) -> dict[str, int]:
    from sqlalchemy import text

    with engine.connect() as conn:
        out = {
            table: int(conn.execute(text(f"SELECT COUNT(*) FROM {table}")).scalar_one())  # noqa: S608
            for table in ("leads", "contacts", "accounts", "imported_rows", "events", "audit_log")
        }
        for kind in ("lead_created", "lead_merged"):
            out[f"events_{kind}"] = int(
                conn.execute(text("SELECT COUNT(*) FROM events WHERE type = :t"), {"t": kind}).scalar_one()
            )
    return out


def run_leadpilot(engine: Any, path: Path, args: argparse.Namespace, workers: int, label: str) -> dict[str, Any]:
    """One timed import_leads call; also records how many worker processes were alive."""
    from leadpilot.intake.importer import import_leads

    children_seen = 0
    writer_process_seen = False
    last_report = [0.0]

    def progress(done: int, total: int) -> None:
        nonlocal children_seen, writer_process_seen
        children = multiprocessing.active_children()
        validators = [c for c in children if c.name != WRITER_PROCESS_NAME]
        children_seen = max(children_seen, len(validators))
        writer_process_seen = writer_process_seen or len(validators) < len(children)
        now = time.perf_counter()
        if now - last_report[0] > 2:
            last_report[0] = now
            log(f"  {label}: {done:,}/{total:,} rows")

    threads = threading.active_count()
    started = time.perf_counter()
    summary = import_leads(
        engine, path, default_region=args.region, batch_size=args.batch_size, workers=workers, progress=progress
    )
    seconds = time.perf_counter() - started
    result = {
        "seconds": round(seconds, 3),
        "rows_per_second": round(summary.total_rows / seconds, 1),
        "importer_reported_rows_per_second": round(summary.rows_per_second, 1),
        "total_rows": summary.total_rows,
        "created": summary.created,
        "merged": summary.merged,
        "unchanged": summary.unchanged,
        "rejected": summary.rejected,
        "errors": len(summary.errors),
        "workers_requested": workers,
        "worker_processes_seen": children_seen,
        "writer": "process" if writer_process_seen else "thread",
        # import_leads forks only when the process has a single thread, else uses forkserver.
        "start_method": "fork" if threads == 1 else "forkserver",
    }
    log(
        f"  {label}: {result['rows_per_second']:,.0f} rows/s ({seconds:.2f} s): created {summary.created}, "
        f"merged {summary.merged}, unchanged {summary.unchanged}, rejected {summary.rejected}"
    )
    return result


def run_naive(url: str, path: Path, label: str) -> dict[str, Any]:
    """pandas.read_csv + DataFrame.to_sql with default options into an empty database."""
    import pandas as pd
    from sqlalchemy import create_engine, text

    from leadpilot.db.engine import normalise_url

    engine = create_engine(normalise_url(url))
    try:
        started = time.perf_counter()
        frame = pd.read_csv(path)
        read_seconds = time.perf_counter() - started
        frame.to_sql("leads_naive", engine, index=False)
        seconds = time.perf_counter() - started
        with engine.connect() as conn:
            stored = int(conn.execute(text("SELECT COUNT(*) FROM leads_naive")).scalar_one())
    finally:
        engine.dispose()
    result = {
        "seconds": round(seconds, 3),
        "read_csv_seconds": round(read_seconds, 3),
        "to_sql_seconds": round(seconds - read_seconds, 3),
        "rows_per_second": round(len(frame) / seconds, 1),
        "rows_stored": stored,
        "pandas": pd.__version__,
    }
    log(f"  {label}: {result['rows_per_second']:,.0f} rows/s ({seconds:.2f} s)")
    return result


def _checks(first: dict[str, Any], rerun: dict[str, Any], counts: dict[str, int], spec: Any) -> dict[str, bool]:
    return {
        "rejected_matches_planted_bad_rows": first["rejected"] == spec.bad,
        "merged_matches_planted_duplicates": first["merged"] == spec.duplicates,
        "created_matches_clean_rows": first["created"] == spec.clean,
        "leads_in_database_match_created": counts["leads"] == first["created"],
        "rerun_created_nothing": rerun["created"] == 0 and rerun["merged"] == 0,
        "rerun_all_valid_rows_unchanged": rerun["unchanged"] == spec.clean + spec.duplicates,
        "rerun_left_database_unchanged": counts["leads"] == counts.get("leads_after_rerun", counts["leads"]),
    }


def bench_backend(
    backend: str, lp_url: str, naive_url: str | None, path: Path, args: argparse.Namespace, workers: int, spec: Any
) -> dict[str, Any]:
    from leadpilot.db import migrate
    from leadpilot.db.engine import make_engine

    log(f"{backend}: migrating a fresh database")
    with contextlib.redirect_stdout(sys.stderr):
        migrate.upgrade(lp_url)
    engine = make_engine(lp_url)
    try:
        first = run_leadpilot(engine, path, args, workers, f"{backend} leadpilot import")
        counts = _counts(engine)
        rerun = run_leadpilot(engine, path, args, workers, f"{backend} leadpilot re-run")
        counts["leads_after_rerun"] = _counts(engine)["leads"]
    finally:
        engine.dispose()
    out: dict[str, Any] = {
        "leadpilot": first,
        "leadpilot_rerun": rerun,
        "database_counts_after_first_import": counts,
        "checks": _checks(first, rerun, counts, spec),
    }
    out["merged_share"] = round(first["merged"] / first["total_rows"], 4)
    out["rejected_share"] = round(first["rejected"] / first["total_rows"], 4)
    if naive_url is not None:
        naive = run_naive(naive_url, path, f"{backend} naive pandas")
        out["naive_pandas"] = naive
        out["ratio_leadpilot_vs_naive"] = round(first["rows_per_second"] / naive["rows_per_second"], 3)
        out["ratio_rerun_vs_naive"] = round(rerun["rows_per_second"] / naive["rows_per_second"], 3)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workers = _default_workers() if args.workers is None else args.workers
    if args.writer == "thread":
        from leadpilot.intake import importer

        importer._process_writer_url = lambda engine: None  # no URL for a process: the importer writes on a thread
    tmp = Path(tempfile.mkdtemp(prefix="leadpilot-bench-import-"))
    result: dict[str, Any] = {
        "benchmark": "import_throughput",
        "machine": {**machine_info(), "loadavg_at_start": [round(x, 2) for x in os.getloadavg()]},
        "params": {
            "rows": args.rows,
            "seed": args.seed,
            "bad_share": args.bad_share,
            "dup_share": args.dup_share,
            "batch_size": args.batch_size,
            "workers": workers,
            "writer": args.writer,
            "default_region": args.region,
        },
    }
    try:
        path = tmp / "leads.csv"
        log(f"generating {args.rows:,} rows into {path}")
        started = time.perf_counter()
        spec = generate(path, args.rows, seed=args.seed, bad_share=args.bad_share, dup_share=args.dup_share)
        result["data"] = {
            **spec.to_json(),
            "file_bytes": path.stat().st_size,
            "generate_seconds": round(time.perf_counter() - started, 2),
        }
        naive_sqlite = None if args.no_naive else f"sqlite:///{tmp / 'naive.db'}"
        result["sqlite"] = bench_backend(
            "sqlite", f"sqlite:///{tmp / 'leadpilot.db'}", naive_sqlite, path, args, workers, spec
        )
        if args.no_postgres:
            result["postgresql"] = {"skipped": "--no-postgres given"}
        else:
            version, problem = pg_check(args.pg_url)
            if problem:
                log(f"skipping PostgreSQL: {problem}")
                result["postgresql"] = {"skipped": problem}
            else:
                with contextlib.ExitStack() as stack:
                    lp_url = stack.enter_context(scratch_pg_database(args.pg_url, "import"))
                    naive_url = (
                        None if args.no_naive else stack.enter_context(scratch_pg_database(args.pg_url, "naive"))
                    )
                    result["postgresql"] = {
                        "server_version": version,
                        **bench_backend("postgresql", lp_url, naive_url, path, args, workers, spec),
                    }
        result["machine"]["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
        sqlite_rate = result["sqlite"]["leadpilot"]["rows_per_second"]
        result["target"] = {
            "what": f">= {args.target:,.0f} rows/s on SQLite (first import)",
            "rows_per_second": sqlite_rate,
            "met": sqlite_rate >= args.target,
        }
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
