"""``leadpilot workflow``: workflow rules as YAML (import, export, validate, enable) and the timer worker."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, fail, require_migrated, settings
from leadpilot.crm.access import SYSTEM

app = typer.Typer(help="Workflow rules (events, timers, actions) and the worker that fires them.", no_args_is_help=True)

JSON_OPTION = typer.Option(False, "--json", help="Print JSON on stdout.")
BAD_INPUT = 2  # exit status for a rule file that does not validate


def _config() -> Any:
    from leadpilot.workflow.engine import EngineConfig

    cfg = settings()
    return EngineConfig(
        lease_seconds=cfg.workflow_lease_seconds,
        max_depth=cfg.workflow_max_depth,
        batch_size=cfg.workflow_batch_size,
        webhook_backoff_seconds=cfg.workflow_webhook_backoff_seconds,
    )


def _read(path: Path) -> str:
    if not path.is_file():
        fail(f"no such file: {path}", code=BAD_INPUT)
    return path.read_text(encoding="utf-8")


def _rule_errors(exc: Exception) -> None:
    problems = getattr(exc, "problems", None) or [str(exc)]
    for problem in problems:
        console.print(f"[bold red]error:[/] {escape(problem)}")
    raise typer.Exit(BAD_INPUT)


@app.command("import")
def import_rules(
    file: Path = typer.Argument(..., help="YAML rule file."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Validate a YAML rule file and store its rules (new versions of changed ones); all or nothing."""
    from leadpilot.workflow import service
    from leadpilot.workflow.rules import WorkflowError

    eng = engine()
    require_migrated(eng)
    text = _read(file)
    with Session(eng) as session:
        try:
            out = service.import_yaml(session, actor=SYSTEM, text=text)
        except WorkflowError as exc:
            _rule_errors(exc)
        session.commit()
    if json_out:
        emit_json(out)
    else:
        console.print(", ".join(f"{len(v)} {k}" for k, v in out.items()) + f" (from {file})")


@app.command("validate")
def validate(
    file: Path = typer.Argument(..., help="YAML rule file."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Check a rule file without storing it (against the stored rules, users and teams when migrated)."""
    from leadpilot.db.migrate import current_revision, head_revision
    from leadpilot.workflow import service
    from leadpilot.workflow.rules import WorkflowError

    text = _read(file)
    eng = engine()
    try:
        if current_revision(eng) == head_revision():
            with Session(eng) as session:
                rules = service.validate_yaml(session, text=text)
        else:
            rules = service.validate_yaml(None, text=text)
    except WorkflowError as exc:
        if json_out:
            emit_json({"valid": False, "problems": exc.problems})
            raise typer.Exit(BAD_INPUT) from None
        _rule_errors(exc)
    if json_out:
        emit_json({"valid": True, "rules": [r.name for r in rules]})
    else:
        console.print(f"{file}: {len(rules)} valid rule(s): {', '.join(r.name for r in rules)}")


@app.command("export")
def export(
    name: list[str] = typer.Option([], "--name", help="Only these rules (repeatable)."),
    out: Path | None = typer.Option(None, "--out", help="Write to this file instead of stdout."),
) -> None:
    """Print the stored rules as a YAML rule file (what import reads)."""
    from leadpilot.workflow import service

    eng = engine()
    require_migrated(eng)
    with Session(eng) as session, domain_errors():
        text = service.export_yaml(session, names=name or None)
    if out is not None:
        out.write_text(text, encoding="utf-8")
        console.print(f"wrote {out}")
    else:
        typer.echo(text, nl=False)


@app.command("list")
def list_rules(json_out: bool = JSON_OPTION) -> None:
    """The stored rules: version, on/off, trigger, delay and actions."""
    from leadpilot.workflow import service

    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        rows = service.list_rules(session)
    if json_out:
        emit_json(rows)
        return
    if not rows:
        console.print("no workflow rules (leadpilot workflow import FILE, or defaults)")
    for r in rows:
        state = "on " if r["enabled"] else "off"
        after = f" after {r['after']}" if r["after"] else ""
        console.print(
            f"{state} {r['name']} v{r['version']}: {'/'.join(r['trigger'])}{after} -> {', '.join(r['actions'])}"
        )


def _switch(name: str, enabled: bool) -> None:
    from leadpilot.workflow import service
    from leadpilot.workflow.rules import WorkflowError

    eng = engine()
    require_migrated(eng)
    with Session(eng) as session, domain_errors():
        try:
            service.set_enabled(session, actor=SYSTEM, name=name, enabled=enabled)
        except WorkflowError as exc:
            _rule_errors(exc)
        session.commit()
    console.print(f"{name}: {'enabled' if enabled else 'disabled'}")


@app.command("enable")
def enable(name: str = typer.Argument(..., help="Rule name.")) -> None:
    """Switch a rule on (its references to users and teams are checked first)."""
    _switch(name, True)


@app.command("disable")
def disable(name: str = typer.Argument(..., help="Rule name.")) -> None:
    """Switch a rule off (its pending timers are skipped when due)."""
    _switch(name, False)


@app.command("defaults")
def defaults(
    enable_them: bool = typer.Option(False, "--enable", help="Store them enabled."),
    json_out: bool = JSON_OPTION,
) -> None:
    """Store the shipped example rules that are missing (disabled unless --enable)."""
    from leadpilot.workflow import service

    eng = engine()
    require_migrated(eng)
    with Session(eng) as session, domain_errors():
        out = service.install_defaults(session, actor=SYSTEM, enable=enable_them)
        session.commit()
    if json_out:
        emit_json(out)
    else:
        console.print(f"default rules: {len(out['created'])} added ({', '.join(out['created']) or 'none'})")


@app.command("run")
def run(
    once: bool = typer.Option(False, "--once", help="One pass (scan, fire every due timer, send webhooks), then exit."),
    batch: int | None = typer.Option(
        None, "--batch", min=1, help="Timers claimed per batch (LEADPILOT_WORKFLOW_BATCH_SIZE)."
    ),
    json_out: bool = JSON_OPTION,
) -> None:
    """The worker: read new events, fire due timers exactly once, deliver webhooks; loops until Ctrl-C."""
    from dataclasses import replace

    from leadpilot.workflow import engine as wf

    eng = engine()
    require_migrated(eng)
    config = _config()
    if batch is not None:
        config = replace(config, batch_size=batch)
    if once:
        summary = wf.run_once(eng, config=config)
        if json_out:
            emit_json(summary)
        else:
            console.print(
                f"scheduled {summary['scheduled']}, fired {summary['fired']}, skipped {summary['skipped']}, "
                f"failed {summary['failed']}, stopped {summary['stopped']}; webhooks {summary['webhooks']}"
            )
        return
    stop = threading.Event()

    def report(summary: dict[str, Any]) -> None:
        if summary["scheduled"] or summary["fired"] or summary["failed"] or summary["stopped"]:
            console.print(
                f"scheduled {summary['scheduled']}, fired {summary['fired']}, skipped {summary['skipped']}, "
                f"failed {summary['failed']}, stopped {summary['stopped']}"
            )

    console.print("workflow worker running (Ctrl-C stops it)")
    try:
        wf.run_forever(eng, poll_seconds=settings().workflow_poll_seconds, config=config, stop=stop, on_pass=report)
    except KeyboardInterrupt:
        stop.set()
        console.print("stopped")


@app.command("timers")
def timers(json_out: bool = JSON_OPTION) -> None:
    """Timers by status: due now, waiting, running, done, skipped, failed, stopped."""
    from leadpilot.workflow.engine import timer_counts

    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        counts = timer_counts(session)
    if json_out:
        emit_json(counts)
    else:
        console.print(", ".join(f"{k} {v}" for k, v in counts.items()))
