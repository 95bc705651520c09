"""``leadpilot import``: bring leads in from files."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from leadpilot.cli.common import console, domain_errors, emit_json, engine, fail, require_migrated, settings
from leadpilot.intake.importer import import_leads, write_error_report

app = typer.Typer(help="Import data from files.", no_args_is_help=True)


@app.command("leads")
def leads(
    file: Path = typer.Argument(..., help="CSV (UTF-8, UTF-8-BOM or GBK; , ; tab | delimited) or XLSX file."),
    mapping: Path | None = typer.Option(None, "--mapping", help="YAML file naming the columns (see docs/import.md)."),
    report: Path | None = typer.Option(None, "--report", help="Write every rejected row (row, field, reason) as CSV."),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="Rows per transaction."),
    json_out: bool = typer.Option(False, "--json", help="Print the summary as JSON (created, merged, rejected, ...)."),
) -> None:
    """Import leads; valid rows are kept, invalid ones reported; re-running the same file creates nothing new."""
    cfg = settings()
    eng = engine()
    require_migrated(eng)
    if report is not None and not report.parent.resolve().is_dir():
        fail(f"cannot write the report: folder {report.parent} does not exist")
    with Progress(
        TextColumn("importing {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=json_out,
        # No refresh thread: the importer forks validation workers, which is only safe single-threaded.
        auto_refresh=False,
    ) as bar:
        task = bar.add_task(file.name, total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)
            bar.refresh()

        with domain_errors():
            summary = import_leads(
                eng,
                file,
                mapping_file=mapping,
                default_region=cfg.default_phone_region,
                batch_size=batch_size or cfg.import_batch_size,
                workers=cfg.import_workers,
                progress=progress,
            )
    if report is not None:
        with domain_errors():
            write_error_report(summary.errors, report)
    if json_out:
        emit_json(summary.to_json())
        return
    for err in summary.errors[:20]:
        console.print(f"  row {err.row}: {err.field}: {err.reason}" + (f" ({err.value!r})" if err.value else ""))
    if len(summary.errors) > 20:
        console.print(f"  … {len(summary.errors) - 20} more (use --report FILE for all)")
    console.print(
        f"imported {file.name}: {summary.created} created, {summary.merged} merged, {summary.unchanged} unchanged, "
        f"{summary.rejected} rejected of {summary.total_rows} rows in {summary.seconds:.1f}s "
        f"({summary.rows_per_second:,.0f} rows/s)"
    )
