"""Feature pipeline figures (issue #4), each beside its target or baseline, as one JSON document.

Phases (each can be skipped; ``--help`` lists the flags):

  full         a fresh store computes the default dictionary on a simulated company: lake sync from the
               SQLite CRM, tiles of every day, one day's windows folded into the history (wall, peak RSS);
  pandas       the straightforward pandas implementation (``features.reference``) vs the DuckDB engine, both
               its tiles + windows and its direct path (``values_direct``, no tiles), on the same subset of
               the events (default 5 M), same day, outputs compared (the 10x target is for the direct path);
  incremental  the daily run (new day's events -> tiles of that day -> windows -> history) vs ``full``;
  zipper       N daily runs folded into the zipper history vs N full snapshots (rows and Parquet bytes);
  export       LibSVM vs JSON lines of the lead matrix, raw and gzip;
  online       lookups of one entity (a 1,000-feature vector) and of batches of 100, p50/p99, database + Redis;
  pit          point-in-time retrieval (``as_of``) of 100,000 (lead, time) rows.

The CRM comes from ``--db PATH`` (a simulated SQLite store) or is generated with ``--scale`` (kept with
``--keep-db PATH`` so later runs can reuse it). ``--skip full`` (with every phase but ``pandas`` skipped)
only syncs the lake; with ``--work-dir`` a later run reuses that lake. Progress goes to stderr, the JSON to
stdout.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import random
import resource
import shutil
import sys
import tempfile
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import log, machine_info, percentile

from leadpilot.db import migrate
from leadpilot.db.engine import make_engine
from leadpilot.features.dictionary import Dimension, load_default
from leadpilot.features.engines.duckdb_engine import connect
from leadpilot.features.export import write_json, write_libsvm
from leadpilot.features.online import DatabaseOnlineStore, OnlineStore, RedisOnlineStore, pack
from leadpilot.features.reference import reference_values
from leadpilot.features.sql import DIMENSION_CODES, earliest_tile_day, event_span_sql
from leadpilot.features.store import FeatureStore

TARGETS = {
    "full_compute_seconds": 600,
    "full_compute_peak_bytes": 8 * 1024**3,
    "duckdb_speedup_over_pandas": 10,
    "incremental_share_of_full": 0.10,
    "zipper_share_of_snapshots": 0.20,
    "online_one_p99_ms": 5,
    "online_batch100_p99_ms": 20,
    "pit_100k_seconds": 10,
}


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (the cores are shared: a figure means little without them)."""
    return [round(x, 2) for x in os.getloadavg()]


def crm_database(args: argparse.Namespace, scratch: Path) -> Path:
    """The simulated SQLite CRM: given, kept from an earlier run, or generated now."""
    if args.db:
        return Path(args.db)
    path = Path(args.keep_db) if args.keep_db else scratch / "crm.db"
    if path.exists():
        log(f"reusing {path}")
        return path
    from leadpilot.simulate.generate import generate
    from leadpilot.simulate.world import World

    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    log(f"simulating the {args.scale} company into {path} ...")
    generate(make_engine(url), World(args.scale, seed=args.seed), data_dir=path.parent / "sim-truth")
    return path


def phase_full(crm: Any, root: Path) -> tuple[dict[str, Any], FeatureStore, date]:
    store = FeatureStore(root, load_default())
    started = time.perf_counter()
    sync = store.lake.sync(crm)
    synced = time.perf_counter()
    store.update_tiles()
    tiled = time.perf_counter()
    day = store.last_event_day()
    assert day is not None, "the CRM has no events"
    written, _ = store.fold_day(day)
    done = time.perf_counter()
    result = {
        "events": sync.events_copied,
        "day": day.isoformat(),
        "values": written,
        "sync_seconds": round(synced - started, 1),
        "tiles_seconds": round(tiled - synced, 1),
        "windows_and_history_seconds": round(done - tiled, 1),
        "seconds": round(done - started, 1),
        "peak_rss_bytes": peak_rss(),
        "lake_bytes": sum(p.stat().st_size for p in store.lake.events_dir.glob("*.parquet")),
        "tile_bytes": sum(p.stat().st_size for p in store.tiles_dir.rglob("*.parquet")),
    }
    result["load_average"] = load_average()
    result["time_to_target"] = round(result["seconds"] / TARGETS["full_compute_seconds"], 3)
    result["memory_to_target"] = round(result["peak_rss_bytes"] / TARGETS["full_compute_peak_bytes"], 3)
    return result, store, day


def _subset_lake(source: FeatureStore, root: Path, limit: int, first_day: date | None = None) -> FeatureStore:
    """A store whose lake holds the first ``limit`` events (by id) of ``source``'s lake."""
    store = FeatureStore(root, source.dictionary)
    store.lake.events_dir.mkdir(parents=True, exist_ok=True)
    table = pq.read_table([str(p) for p in source.lake.event_files()]).slice(0, limit)
    name = "part-000000000001-000000000002.parquet"
    pq.write_table(table, store.lake.events_dir / name, compression="zstd")
    for t in ("leads", "accounts", "users"):
        shutil.copy(source.lake.dimension_path(t), store.lake.dimension_path(t))
    store.lake._write_manifest({"high_water_mark": 0, "parts": [name], "rejected_ids": []})
    return store


def _same(engine_table: pa.Table, reference: Any) -> bool:
    """Whether an engine's values equal the pandas reference's (same keys; values to 1e-9 relative)."""
    got = engine_table.to_pandas()
    merged = got.merge(reference, on=["dim", "k1", "k2", "feature_id"], how="outer", suffixes=("_e", "_r"))
    return len(merged) == len(got) == len(reference) and bool(
        np.allclose(merged["value_e"], merged["value_r"], rtol=1e-9, atol=0)
    )


def phase_pandas(source: FeatureStore, scratch: Path, events: int) -> dict[str, Any]:
    """One day's windows on the first ``events`` events, three ways in one run: the DuckDB engine's tiles of
    every day + windows, its direct path (no tiles), and the pandas reference; outputs compared."""
    subset = _subset_lake(source, scratch / "pandas-subset", events)
    day = subset.last_event_day()
    assert day is not None
    load_before = load_average()
    started = time.perf_counter()
    subset.update_tiles()
    tiles_table = subset.values(day)
    tiles_seconds = time.perf_counter() - started
    log(f"pandas: tiles + windows {tiles_seconds:.1f} s")
    started = time.perf_counter()
    direct_table = subset.values_direct(day)
    direct_seconds = time.perf_counter() - started
    log(f"pandas: direct {direct_seconds:.1f} s")
    files = [str(f) for f in subset.lake.event_files()]
    tables = {t: str(subset.lake.dimension_path(t)) for t in ("leads", "accounts", "users")}
    started = time.perf_counter()
    reference = reference_values(subset.dictionary, event_files=files, table_files=tables, day=day)
    pandas_seconds = time.perf_counter() - started
    log(f"pandas: pandas {pandas_seconds:.1f} s")
    same_tiles, same_direct = _same(tiles_table, reference), _same(direct_table, reference)
    events_used = int(pq.read_metadata(files[0]).num_rows)
    in_windows = _events_in_windows(subset, day)
    shutil.rmtree(scratch / "pandas-subset")
    speedup_direct = pandas_seconds / direct_seconds
    return {
        "events": events_used,
        "events_in_windows": in_windows,
        "day": day.isoformat(),
        "values": direct_table.num_rows,
        "tiles_values": tiles_table.num_rows,
        "tiles_seconds": round(tiles_seconds, 2),
        "direct_seconds": round(direct_seconds, 2),
        "pandas_seconds": round(pandas_seconds, 2),
        "speedup_tiles": round(pandas_seconds / tiles_seconds, 1),
        "speedup_direct": round(speedup_direct, 1),
        "identical_output": same_tiles and same_direct,
        "identical_tiles": same_tiles,
        "identical_direct": same_direct,
        "target_speedup": TARGETS["duckdb_speedup_over_pandas"],
        "target_applies_to": "direct",
        "target_met": speedup_direct >= TARGETS["duckdb_speedup_over_pandas"],
        "load_average_before": load_before,
        "load_average": load_average(),
    }


def _events_in_windows(store: FeatureStore, day: date) -> int:
    """How many of the lake's events the windows of ``day`` cover (what the direct path reads)."""
    files = [str(f) for f in store.lake.event_files()]
    rows = event_span_sql(files, str(store.lake.dimension_path("leads")), earliest_tile_day(store.dictionary, day), day)
    with connect() as con:
        return int(con.sql(rows).aggregate("count(*)").fetchall()[0][0])


def phase_lake(crm: Any, root: Path) -> tuple[dict[str, Any], FeatureStore]:
    """Only the lake sync (when the full compute is skipped: the pandas phase needs nothing else)."""
    store = FeatureStore(root, load_default())
    started = time.perf_counter()
    sync = store.lake.sync(crm)
    events = sum(pq.read_metadata(f).num_rows for f in store.lake.event_files())
    return {
        "events": events,
        "events_copied": sync.events_copied,
        "sync_seconds": round(time.perf_counter() - started, 1),
    }, store


def phase_incremental(
    source: FeatureStore, scratch: Path, day: date, full_seconds: float, sync_rate: float
) -> dict[str, Any]:
    """The lake minus ``day``'s events is tiled and folded (setup); then ``day`` arrives and is computed."""
    store = FeatureStore(scratch / "incremental", source.dictionary)
    store.lake.events_dir.mkdir(parents=True, exist_ok=True)
    table = pq.read_table([str(p) for p in source.lake.event_files()])
    at = table.column("occurred_at").cast(pa.timestamp("us"))
    import pyarrow.compute as pc

    cut = pa.scalar(datetime.combine(day, datetime.min.time()), pa.timestamp("us"))
    before, new = table.filter(pc.less(at, cut)), table.filter(pc.greater_equal(at, cut))
    pq.write_table(before, store.lake.events_dir / "part-000000000001-000000000001.parquet")
    for t in ("leads", "accounts", "users"):
        shutil.copy(source.lake.dimension_path(t), store.lake.dimension_path(t))
    manifest = {"high_water_mark": 0, "parts": ["part-000000000001-000000000001.parquet"], "rejected_ids": []}
    store.lake._write_manifest(manifest)
    store.update_tiles()
    store.fold_day(day - timedelta(days=1))
    log(f"incremental: setup done; the new day has {new.num_rows:,} events")
    started = time.perf_counter()
    pq.write_table(new, store.lake.events_dir / "part-000000000002-000000000002.parquet")
    manifest["parts"].append("part-000000000002-000000000002.parquet")
    store.lake._write_manifest(manifest)
    rebuilt = store.update_tiles()
    written, changed = store.fold_day(day)
    seconds = time.perf_counter() - started
    sync_estimate = new.num_rows / sync_rate
    shutil.rmtree(scratch / "incremental")
    total = seconds + sync_estimate
    return {
        "day": day.isoformat(),
        "new_events": new.num_rows,
        "tile_days_rebuilt": rebuilt,
        "values": written,
        "keys_changed": changed,
        "tiles_windows_history_seconds": round(seconds, 2),
        "sync_estimate_seconds": round(sync_estimate, 2),
        "seconds": round(total, 2),
        "share_of_full": round(total / full_seconds, 3),
        "target_share": TARGETS["incremental_share_of_full"],
    }


def phase_zipper(source: FeatureStore, last: date, days: int, scratch: Path) -> dict[str, Any]:
    """N daily runs, in order, into a fresh history (sharing the full phase's lake and tiles)."""
    root = scratch / "zipper"
    root.mkdir()
    for name in ("lake", "tiles", "distinct"):
        (root / name).symlink_to(source.root / name)
    store = FeatureStore(root, source.dictionary)
    with store._connect() as con:
        con.executemany("INSERT INTO tiled_parts VALUES (?)", [[p] for p in source.lake.manifest()["parts"]])
    first = last - timedelta(days=days - 1)
    snapshot_rows = 0
    started = time.perf_counter()
    for i in range(days):
        d = first + timedelta(days=i)
        store.fold_day(d)
        if (i + 1) % 10 == 0:
            log(f"zipper: {i + 1}/{days} days")
    seconds = time.perf_counter() - started
    for i in range(days):  # what N full snapshots would have held
        snapshot_rows += store.values_at(Dimension.LEAD, first + timedelta(days=i)).matrix.nnz
        for dim in (Dimension.ACCOUNT, Dimension.SALESPERSON, Dimension.LEAD_SALESPERSON):
            snapshot_rows += store.values_at(dim, first + timedelta(days=i)).matrix.nnz
    stats = store.history_stats()
    with store._connect() as con:
        con.execute(f"COPY history TO '{store.root / 'history.parquet'}' (FORMAT parquet, COMPRESSION zstd)")
    history_bytes = (store.root / "history.parquet").stat().st_size
    # The same N snapshots written as Parquet (one per day), to compare bytes on disk like for like.
    snapshot_bytes = 0
    for i in range(0, days, max(1, days // 9)):
        table = store.values(first + timedelta(days=i))
        path = store.root / "snapshot.parquet"
        pq.write_table(table, path, compression="zstd")
        snapshot_bytes += path.stat().st_size
    sampled = len(range(0, days, max(1, days // 9)))
    snapshot_bytes = int(snapshot_bytes * days / sampled)
    return {
        "days": days,
        "seconds": round(seconds, 1),
        "seconds_per_day": round(seconds / days, 2),
        "history_rows": stats["rows"],
        "snapshot_rows": snapshot_rows,
        "row_share": round(stats["rows"] / snapshot_rows, 3),
        "history_parquet_bytes": history_bytes,
        "snapshots_parquet_bytes_estimate": snapshot_bytes,
        "byte_share": round(history_bytes / snapshot_bytes, 3),
        "target_share": TARGETS["zipper_share_of_snapshots"],
    }


def phase_export(store: FeatureStore, day: date, scratch: Path) -> dict[str, Any]:
    matrix = store.values_at(Dimension.LEAD, day)
    svm, js = scratch / "leads.svm", scratch / "leads.jsonl"
    svm_bytes, json_bytes = write_libsvm(matrix, svm), write_json(matrix, js, store.dictionary)
    svm_gz, json_gz = len(gzip.compress(svm.read_bytes())), len(gzip.compress(js.read_bytes()))
    return {
        "rows": matrix.shape[0],
        "values": int(matrix.matrix.nnz),
        "libsvm_bytes": svm_bytes,
        "json_bytes": json_bytes,
        "libsvm_gzip_bytes": svm_gz,
        "json_gzip_bytes": json_gz,
        "raw_reduction": round(1 - svm_bytes / json_bytes, 3),
        "gzip_reduction": round(1 - svm_gz / json_gz, 3),
        "seed_reduction": 0.70,
    }


def _lookups(online: OnlineStore, keys: list[tuple[int, int]], batch: int, rounds: int) -> dict[str, float]:
    timings = []
    rng = random.Random(1)
    for _ in range(rounds):
        chosen = rng.sample(keys, batch) if batch > 1 else [rng.choice(keys)]
        started = time.perf_counter()
        if batch == 1:
            online.get(Dimension.LEAD, chosen[0])
        else:
            online.get_many(Dimension.LEAD, chosen)
        timings.append((time.perf_counter() - started) * 1000)
    timings.sort()
    return {"p50_ms": round(percentile(timings, 50) or 0.0, 3), "p99_ms": round(percentile(timings, 99) or 0.0, 3)}


def phase_online(store: FeatureStore, crm: Any, day: date, redis_url: str | None) -> dict[str, Any]:
    lead_ids = [d.id for d in store.dictionary.for_dimension(Dimension.LEAD)]
    wide = np.array(sorted(random.Random(2).sample(lead_ids, 1000)), dtype=np.int32)
    matrix = store.values_at(Dimension.LEAD, day, anchors=True)
    out: dict[str, Any] = {
        "entities": matrix.shape[0],
        "mean_features": round(matrix.matrix.nnz / max(1, matrix.shape[0]), 1),
    }
    backends: list[tuple[str, OnlineStore]] = [("database_sqlite", DatabaseOnlineStore(store.dictionary, crm))]
    if redis_url:
        backends.append(("redis", RedisOnlineStore(store.dictionary, redis_url, prefix="leadpilot:bench")))
    keys = [(int(k1), int(k2)) for k1, k2 in matrix.keys]
    for name, online in backends:
        started = time.perf_counter()
        online.write(matrix, day)
        write_seconds = time.perf_counter() - started
        # Give 1,000 of the entities a full 1,000-feature vector (the lookup size).
        wide_keys = keys[:1000]
        if isinstance(online, DatabaseOnlineStore):
            with crm.begin() as conn:
                from sqlalchemy import text

                conn.execute(
                    text("UPDATE online_features SET vector = :v WHERE dim = :d AND k1 = :k1 AND k2 = :k2"),
                    [
                        {"v": pack(wide, np.ones(1000)), "d": DIMENSION_CODES[Dimension.LEAD], "k1": a, "k2": b}
                        for a, b in wide_keys
                    ],
                )
        else:
            name_hash = online._hash(DIMENSION_CODES[Dimension.LEAD])
            online.client.hset(name_hash, mapping={f"{a}:{b}": pack(wide, np.ones(1000)) for a, b in wide_keys})
        out[name] = {
            "write_seconds": round(write_seconds, 1),
            "one_1000_features": _lookups(online, wide_keys, 1, 3000),
            "batch_100_of_1000_features": _lookups(online, wide_keys, 100, 500),
            "one_real_entity": _lookups(online, keys, 1, 3000),
            "targets_ms": {"one_p99": TARGETS["online_one_p99_ms"], "batch100_p99": TARGETS["online_batch100_p99_ms"]},
        }
    return out


def phase_pit(store: FeatureStore, first: date, last: date, rows: int) -> dict[str, Any]:
    leads = store.values_at(Dimension.LEAD, last).keys
    rng = np.random.default_rng(3)
    picks = leads[rng.integers(0, len(leads), rows)]
    span = (last - first).days + 1
    base = datetime.combine(first + timedelta(days=1), datetime.min.time(), tzinfo=UTC)
    times = [base + timedelta(seconds=float(s)) for s in rng.uniform(0, span * 86400, rows)]
    started = time.perf_counter()
    matrix = store.as_of(Dimension.LEAD, picks, times)
    seconds = time.perf_counter() - started
    return {
        "rows": rows,
        "values": int(matrix.matrix.nnz),
        "seconds": round(seconds, 2),
        "target_seconds": TARGETS["pit_100k_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", help="an existing simulated SQLite CRM (migrated to the newest schema if needed)")
    parser.add_argument("--scale", default="small", choices=["tiny", "small", "medium", "large"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep-db", help="where to keep the generated CRM for later runs")
    parser.add_argument("--work-dir", help="scratch folder (default: a temp dir, deleted)")
    parser.add_argument(
        "--skip", nargs="*", default=[], help="phases to skip: full pandas incremental zipper export online pit"
    )
    parser.add_argument("--pandas-events", type=int, default=5_000_000)
    parser.add_argument("--zipper-days", type=int, default=90)
    parser.add_argument("--pit-rows", type=int, default=100_000)
    parser.add_argument("--redis-url", default=os.environ.get("LEADPILOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15"))
    args = parser.parse_args()
    needs_full = {"incremental", "zipper", "export", "online", "pit"} - set(args.skip)
    if "full" in args.skip and needs_full:
        parser.error(f"--skip full also needs --skip {' '.join(sorted(needs_full))} (they use the full compute)")
    scratch = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lp-featbench-"))
    scratch.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "benchmark": "feature_pipeline",
        "machine": machine_info(),
        "targets": TARGETS,
        "load_average_at_start": load_average(),
    }
    try:
        db = crm_database(args, scratch)
        crm = make_engine(f"sqlite:///{db}")
        migrate.upgrade(f"sqlite:///{db}")  # the online store's table
        result["crm"] = {"path": str(db), "bytes": db.stat().st_size}
        if "full" in args.skip:
            log("lake sync only (full compute skipped) ...")
            result["lake"], store = phase_lake(crm, scratch / "store")
            log(json.dumps(result["lake"]))
        else:
            log("full compute ...")
            result["full"], store, day = phase_full(crm, scratch / "store")
            log(json.dumps(result["full"]))
            sync_rate = result["full"]["events"] / max(result["full"]["sync_seconds"], 1e-9)
        if "pandas" not in args.skip:
            log("pandas vs DuckDB ...")
            result["pandas"] = phase_pandas(store, scratch, args.pandas_events)
            log(json.dumps(result["pandas"]))
        if "incremental" not in args.skip:
            log("incremental ...")
            result["incremental"] = phase_incremental(store, scratch, day, result["full"]["seconds"], sync_rate)
            log(json.dumps(result["incremental"]))
        if "zipper" not in args.skip:
            log("zipper ...")
            result["zipper"] = phase_zipper(store, day, args.zipper_days, scratch)
            log(json.dumps(result["zipper"]))
        if "export" not in args.skip:
            result["export"] = phase_export(store, day, scratch)
            log(json.dumps(result["export"]))
        if "online" not in args.skip:
            redis_url = args.redis_url
            try:
                import redis

                redis.Redis.from_url(redis_url).ping()
            except Exception as exc:  # the Redis part is skipped, with the reason, when no server answers
                result["online_redis_skipped"] = str(exc)
                redis_url = None
            result["online"] = phase_online(store, crm, day, redis_url)
            log(json.dumps(result["online"]))
        if "pit" not in args.skip:
            zipper = FeatureStore(scratch / "zipper", store.dictionary) if "zipper" not in args.skip else store
            first = day - timedelta(days=args.zipper_days - 1) if "zipper" not in args.skip else day
            result["pit"] = phase_pit(zipper, first, day, args.pit_rows)
            log(json.dumps(result["pit"]))
        result["load_average_at_end"] = load_average()
    finally:
        if not args.work_dir:
            shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
