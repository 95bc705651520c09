"""``leadpilot features``: browse the dictionary, compute, inspect and export features."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy import Engine

from leadpilot.cli.common import console, emit_json, engine, fail, require_migrated, settings
from leadpilot.features.dictionary import (
    BaseFeature,
    DerivedFeature,
    DictionaryError,
    Dimension,
    FeatureDictionary,
    TableSource,
    load,
)
from leadpilot.features.engines import EngineUnavailable
from leadpilot.features.export import (
    FORMATS,
    INDEX_BASES,
    companion_paths,
    write_json,
    write_libsvm,
    write_parquet,
)
from leadpilot.features.online import OnlineStore, get_online_store, materialize
from leadpilot.features.sql import DIMENSION_CODES
from leadpilot.features.store import ComputeReport, FeatureStore, FeatureStoreError

app = typer.Typer(help="The feature pipeline: dictionary, compute, history, export.", no_args_is_help=True)

DICTIONARY_OPTION = typer.Option(None, "--dictionary", help="Dictionary YAML (default: the configured one).")
DIMENSION_OPTION = typer.Option(
    Dimension.LEAD.value, "--dimension", help="lead, account, salesperson or lead_salesperson."
)
JSON_OPTION = typer.Option(False, "--json", help="Print JSON.")


def _dictionary(path: Path | None) -> FeatureDictionary:
    try:
        return load(path or settings().feature_dictionary)
    except DictionaryError as exc:
        fail(str(exc))
        raise  # unreachable: fail exits


def _store(dictionary_path: Path | None, engine_name: str | None = None) -> FeatureStore:
    cfg = settings()
    try:
        return FeatureStore(
            cfg.feature_dir,
            _dictionary(dictionary_path),
            engine=engine_name or cfg.feature_engine,
            retention_days=cfg.feature_retention_days,
            memory_limit=cfg.feature_memory_limit,
        )
    except (EngineUnavailable, FeatureStoreError) as exc:
        fail(str(exc))
        raise


def _dimension(value: str) -> Dimension:
    try:
        return Dimension(value)
    except ValueError:
        fail(f"unknown dimension {value!r} (known: {', '.join(d.value for d in Dimension)})")
        raise


def _date(value: str | None, what: str) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        fail(f"{what} {value!r} is not a date (YYYY-MM-DD)")
        raise


def _key(entity: str) -> tuple[int, int]:
    """``123`` or ``123:45`` (lead:salesperson)."""
    try:
        parts = [int(p) for p in entity.split(":")]
    except ValueError:
        fail(f"entity {entity!r} is not an id (use 123, or lead:salesperson like 123:45)")
        raise
    if len(parts) > 2:
        fail(f"entity {entity!r} has more than two parts")
    return (parts[0], parts[1] if len(parts) == 2 else 0)


def _feature(dictionary: FeatureDictionary, name_or_id: str) -> DerivedFeature | BaseFeature:
    try:
        return dictionary.by_id(int(name_or_id)) if name_or_id.isdigit() else dictionary.by_name(name_or_id)
    except KeyError:
        fail(f"no feature {name_or_id!r} in {dictionary.source_path} (try `leadpilot features list --search ...`)")
        raise


@app.command("list")
def list_features(
    dimension: str | None = typer.Option(None, "--dimension", help="Only this dimension."),
    search: str | None = typer.Option(None, "--search", help="Only features whose name contains this text."),
    derived: bool = typer.Option(False, "--derived", help="List derived features (base × bucket × function × window)."),
    limit: int = typer.Option(100, "--limit", min=1, help="At most this many derived features."),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Browse the feature dictionary: base features with explanations, or the derived features."""
    dictionary = _dictionary(dictionary_path)
    dim = _dimension(dimension) if dimension else None
    rows: list[dict[str, object]]
    if derived:
        rows = [
            {"id": d.id, "name": d.name, "dimension": d.base.dimension.value, "explanation": d.explanation}
            for d in dictionary.derived
            if (dim is None or d.base.dimension == dim) and (not search or search in d.name)
        ]
        total = len(rows)
        rows = rows[:limit]
    else:
        rows = [
            {
                "id": b.id,
                "name": b.name,
                "dimension": b.dimension.value,
                "functions": [f.value for f in b.functions],
                "windows": list(b.windows),
                "by_product_line": b.by_product_line,
                "explanation": b.explanation,
            }
            for b in dictionary.base_features
            if (dim is None or b.dimension == dim) and (not search or search in b.name)
        ]
        total = len(rows)
    if json_out:
        emit_json({"total": total, "derived_total": len(dictionary.derived), "features": rows})
        return
    table = Table("id", "name", "dimension", "explanation", title=f"{dictionary.source_path}")
    for r in rows:
        table.add_row(str(r["id"]), str(r["name"]), str(r["dimension"]), str(r["explanation"]))
    console.print(table)
    console.print(f"{total} shown of {len(dictionary.base_features)} base / {len(dictionary.derived)} derived features")


@app.command("describe")
def describe(
    feature: str = typer.Argument(..., help="A base or derived feature name, or a derived id."),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """One feature's definition: source, functions, windows and what it means."""
    dictionary = _dictionary(dictionary_path)
    found = _feature(dictionary, feature)
    base = found.base if isinstance(found, DerivedFeature) else found
    source = base.source
    source_data: dict[str, object]
    if isinstance(source, TableSource):
        source_data = {"table": source.table, "value": source.value.text}
    else:
        source_data = {
            "events": list(source.events),
            "filter": source.filter.text if source.filter else None,
            "value": source.value.text if source.value else None,
            "distinct": source.distinct.text if source.distinct else None,
        }
    data: dict[str, object] = {
        "name": found.name,
        "id": found.id,
        "dimension": base.dimension.value,
        "explanation": found.explanation,
        "source": source_data,
        "derived": [d.name for d in dictionary.derived if d.base is base][:50] if found is base else None,
    }
    if json_out:
        emit_json(data)
    else:
        for k, v in data.items():
            if v is not None:
                console.print(f"[bold]{k}[/]: {v}")


@app.command("compute")
def compute(
    on_date: str | None = typer.Option(
        None, "--date", help="Compute the features as of the end of this day (YYYY-MM-DD)."
    ),
    backfill: tuple[str, str] | None = typer.Option(None, "--backfill", help="Compute every day FROM TO (inclusive)."),
    engine_name: str | None = typer.Option(None, "--engine", help="duckdb or spark (default: the configured one)."),
    direct: bool = typer.Option(
        False,
        "--direct",
        help="One-off: compute the snapshot of --date straight from the events with DuckDB, without tiles; "
        "tiles, history and the online store are left as they are.",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="With --direct: write the snapshot as Parquet (dim, k1, k2, feature_id, value)."
    ),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Sync the event lake, update tiles and fold the day's snapshot into the history (the daily job)."""
    eng = engine()
    require_migrated(eng)
    day = _date(on_date, "--date")
    span = (_date(backfill[0], "--backfill FROM"), _date(backfill[1], "--backfill TO")) if backfill else None
    if out is not None and not direct:
        fail("--out needs --direct (stored days are written with `leadpilot features export`)")
    if direct:
        _compute_direct(eng, day, span is not None, engine_name, out, dictionary_path, json_out)
        return
    store = _store(dictionary_path, engine_name)
    with _progress_bar() as progress:
        try:
            report = store.compute(eng, day=day, backfill=span, progress=progress)  # type: ignore[arg-type]
        except FeatureStoreError as exc:
            fail(str(exc))
            return
    data = report.to_json() | {"online": _publish(store, eng, report)}
    if json_out:
        emit_json(data)
        return
    sync = report.sync
    rejected = f", {sync.rejected_total} events rejected" if sync and sync.rejected_total else ""
    console.print(
        f"computed {len(report.days)} day(s) up to {report.days[-1]}: {report.values_written:,} values, "
        f"{report.keys_changed:,} changed, {report.tile_days_rebuilt} tile days rebuilt, "
        f"{sync.events_copied if sync else 0:,} new events{rejected} in {report.seconds:.1f} s"
    )
    for r in sync.rejected[:10] if sync else []:
        console.print(f"  event {r.id}: {r.reason}")


@contextmanager
def _progress_bar() -> Iterator[Callable[[str, int, int], None]]:
    """A Rich progress bar with one task per stage the store reports."""
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield progress


def _compute_direct(
    eng: Engine,
    day: date | None,
    backfill: bool,
    engine_name: str | None,
    out: Path | None,
    dictionary_path: Path | None,
    json_out: bool,
) -> None:
    """``compute --direct``: one day's snapshot straight from the events, printed or written, never stored."""
    if backfill:
        fail("--direct computes one day: give --date, not --backfill")
    if engine_name not in (None, "duckdb"):
        fail("--direct runs in DuckDB: leave out --engine")
    store = _store(dictionary_path, "duckdb")
    started = time.perf_counter()
    with _progress_bar() as progress:
        try:
            day, table, sync = store.direct_snapshot(eng, day=day, progress=progress)
        except FeatureStoreError as exc:
            fail(str(exc))
            return
    if out is not None:
        tmp = out.with_name(out.name + ".tmp")
        pq.write_table(table, tmp, compression="zstd")
        tmp.replace(out)
    entities = table.group_by(["dim", "k1", "k2"]).aggregate([]).column("dim").to_pylist()
    names = {code: d.value for d, code in DIMENSION_CODES.items()}
    data = {
        "direct": True,
        "day": day.isoformat(),
        "values": table.num_rows,
        "entities": {names[code]: entities.count(code) for code in sorted(set(entities))},
        "out": str(out) if out else None,
        "sync": sync.to_json(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    if json_out:
        emit_json(data)
        return
    where = f", written to {out}" if out else ""
    console.print(
        f"snapshot of {day} computed from the events (no tiles; not stored in the history): {table.num_rows:,} "
        f"values for {len(entities):,} entities{where}; {sync.events_copied:,} new events in {data['seconds']:.1f} s"
    )


def run_compute(eng: Engine, *, quiet: bool = False, day: date | None = None) -> dict[str, Any]:
    """Compute the configured features with progress bars (unless quiet); returns the report as JSON data."""
    store = _store(None)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def progress(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(f"features: {stage}", total=total)
            bar.update(tasks[stage], completed=done, total=total)

        report = store.compute(eng, day=day, progress=progress)
    return report.to_json() | {
        "derived_features": len(store.dictionary.derived),
        "online": _publish(store, eng, report),
    }


def _online(store: FeatureStore, eng: Engine) -> OnlineStore:
    cfg = settings()
    try:
        return get_online_store(cfg.online_store, store.dictionary, engine=eng, redis_url=cfg.redis_url)
    except ValueError as exc:
        fail(str(exc))
        raise


def _publish(store: FeatureStore, eng: Engine, report: ComputeReport) -> dict[str, int]:
    """Refresh the online store when the newest stored day was (re)computed; backfills of older days do not."""
    runs = store.runs()
    if not report.days or not runs or runs[-1] not in report.days:
        return {}
    return materialize(store, _online(store, eng), runs[-1])


def _latest_run(store: FeatureStore, on_date: str | None) -> date:
    day = _date(on_date, "--date")
    if day is not None:
        return day
    runs = store.runs()
    if not runs:
        fail("no features computed yet: run `leadpilot features compute`")
    return runs[-1]


@app.command("show")
def show(
    entity: str = typer.Argument(..., help="Entity id (lead, account or user id; lead:user for pairs)."),
    dimension: str = DIMENSION_OPTION,
    on_date: str | None = typer.Option(None, "--date", help="As of the end of this day (default: the latest run)."),
    limit: int = typer.Option(50, "--limit", min=1, help="At most this many features."),
    online: bool = typer.Option(False, "--online", help="Read the online store (what serving sees) instead."),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """An entity's stored feature values with their explanations."""
    store = _store(dictionary_path)
    dim = _dimension(dimension)
    key = _key(entity)
    day = _latest_run(store, on_date)
    if online:
        eng = engine()
        require_migrated(eng)
        values = _online(store, eng).get(dim, key)
    else:
        values = store.values_at(dim, day, [key]).row(*key)
    rows = [
        {
            "id": fid,
            "name": store.dictionary.by_id(fid).name,
            "value": v,
            "explanation": store.dictionary.by_id(fid).explanation,
        }
        for fid, v in sorted(values.items())
    ]
    if json_out:
        emit_json(
            {
                "entity": entity,
                "dimension": dim.value,
                "as_of": day.isoformat(),
                "total": len(rows),
                "features": rows[:limit],
            }
        )
        return
    table = Table("name", "value", "explanation", title=f"{dim.value} {entity} as of {day}")
    for r in rows[:limit]:
        table.add_row(str(r["name"]), f"{r['value']:g}", str(r["explanation"]))
    console.print(table)
    console.print(f"{len(rows)} non-zero features (absent = 0)")


@app.command("history")
def feature_history(
    entity: str = typer.Argument(..., help="Entity id (lead:user for pairs)."),
    feature: str = typer.Argument(..., help="Derived feature name or id."),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Every value one feature of one entity has had, with the days it held (the zipper rows)."""
    store = _store(dictionary_path)
    found = _feature(store.dictionary, feature)
    if not isinstance(found, DerivedFeature):
        fail(f"{feature!r} is a base feature; give a derived one, e.g. {store.dictionary.derived[0].name}")
        return
    rows = store.feature_history(found.base.dimension, _key(entity), found.id)
    if json_out:
        emit_json({"entity": entity, "feature": found.name, "history": rows})
        return
    for r in rows:
        console.print(f"{r['valid_from']} .. {r['valid_to'] or 'now':10}  {r['value']:g}")
    if not rows:
        console.print(f"{found.name} has always been 0 (or absent) for {entity}")


@app.command("export")
def export(
    fmt: str = typer.Option("libsvm", "--format", help=f"One of {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., "--out", help="Output file."),
    dimension: str = DIMENSION_OPTION,
    on_date: str | None = typer.Option(None, "--date", help="As of the end of this day (default: the latest run)."),
    index_base: int = typer.Option(
        0, "--index-base", help="LibSVM: number the columns from 0 or 1 (stated in PATH.featmap.tsv)."
    ),
    dictionary_path: Path | None = DICTIONARY_OPTION,
    json_out: bool = JSON_OPTION,
) -> None:
    """Write one dimension's stored feature matrix (LibSVM with its keys and feature map, JSON lines or Parquet)."""
    if fmt not in FORMATS:
        fail(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if index_base not in INDEX_BASES:
        fail(f"--index-base must be 0 or 1, not {index_base}")
    store = _store(dictionary_path)
    dim = _dimension(dimension)
    day = _latest_run(store, on_date)
    matrix = store.values_at(dim, day)
    companions: dict[str, str] = {}
    if fmt == "libsvm":
        size = write_libsvm(matrix, out, index_base=index_base, dictionary=store.dictionary)
        keys_path, map_path, fmap_path = companion_paths(out)
        companions = {"keys": str(keys_path), "feature_map": str(map_path), "xgboost_feature_map": str(fmap_path)}
    elif fmt == "json":
        size = write_json(matrix, out, store.dictionary)
    else:
        size = write_parquet(matrix, out)
    data: dict[str, Any] = {
        "out": str(out),
        "format": fmt,
        "rows": matrix.shape[0],
        "columns": matrix.shape[1],
        "nnz": int(matrix.matrix.nnz),
        "bytes": size,
        "as_of": day.isoformat(),
    }
    if fmt == "libsvm":
        data |= {"index_base": index_base} | companions
    if json_out:
        emit_json(data)
    else:
        console.print(
            f"wrote {data['rows']:,} {dim.value} rows × {data['columns']} features "
            f"({data['nnz']:,} values, {size:,} bytes) to {out}"
        )
        if companions:
            console.print(
                f"keys: {companions['keys']}; feature map (index base {index_base}): {companions['feature_map']}; "
                f"XGBoost feature map: {companions['xgboost_feature_map']}"
            )


@app.command("status")
def status(dictionary_path: Path | None = DICTIONARY_OPTION, json_out: bool = JSON_OPTION) -> None:
    """What the feature store holds: lake high-water mark, runs, history size."""
    store = _store(dictionary_path)
    runs = store.runs()
    data = store.describe() | {
        "first_run": runs[0].isoformat() if runs else None,
        "last_run": runs[-1].isoformat() if runs else None,
        "next_daily_run": (runs[-1] + timedelta(days=1)).isoformat() if runs else None,
    }
    if json_out:
        emit_json(data)
    else:
        for k, v in data.items():
            console.print(f"[bold]{k}[/]: {v}")
