"""``leadpilot distribute``: distribution runs (ranked pools, assignment) and the claim pool's upkeep."""

from __future__ import annotations

import typer
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, require_migrated, settings
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.leads import recycle_unworked
from leadpilot.distribution.search import sync_index

app = typer.Typer(help="Distribution: ranked pools, assignment, the claim pool's upkeep.", no_args_is_help=True)


@app.command("recycle")
def recycle(
    days: float | None = typer.Option(
        None, "--days", min=0.01, help="Days without work (default: LEADPILOT_RECYCLE_AFTER_DAYS)."
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the leads, change nothing."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Send owned leads their owner has not worked for N days back to the claim pool (stage recycled)."""
    eng = engine()
    require_migrated(eng)
    wait = days if days is not None else settings().recycle_after_days
    with domain_errors(), Session(eng) as session:
        recycled = recycle_unworked(session, actor=SYSTEM, days=wait)
        if dry_run:
            session.rollback()
        else:
            session.commit()
    if json_out:
        emit_json({"days": wait, "recycled": recycled, "dry_run": dry_run})
    else:
        verb = "would go" if dry_run else "went"
        console.print(f"{len(recycled):,} leads unworked for {wait:g} days {verb} back to the pool")


@app.command("reindex")
def reindex(
    full: bool = typer.Option(False, "--full", help="Rebuild every lead's entry, not only the changed ones."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Bring the lead search index up to date (after bulk imports or account / contact renames)."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        indexed = sync_index(session, full=full)
        session.commit()
    emit_json({"indexed": indexed}) if json_out else console.print(f"{indexed:,} leads indexed")


@app.command("run")
def run(
    assign: bool = typer.Option(False, "--assign", help="Also assign the pool under capacity (exact or greedy)."),
    per_lead: int = typer.Option(10, "--per-lead", min=1, max=200, help="Salespeople recalled per lead."),
    top_n: int = typer.Option(50, "--top", min=1, max=1000, help="Ranked pool leads kept per salesperson."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recall pool leads for each salesperson, rank them with the convert model, store the ranked pools."""
    from leadpilot.cli.scoring_crm import _store
    from leadpilot.distribution.recommend import run_distribution

    eng = engine()
    require_migrated(eng)
    say = None if json_out else (lambda message: console.print(f"[dim]{message}[/]"))
    with domain_errors():
        report = run_distribution(eng, _store(), per_lead=per_lead, top_n=top_n, assign=assign, progress=say)
    if json_out:
        emit_json(report.to_json())
        return
    console.print(
        f"{report.pool:,} pool leads × {report.salespeople:,} salespeople: {report.pairs:,} pairs ranked by "
        f"{report.ranker}; {report.stored:,} recommendations stored"
        + (
            f"; {report.assigned:,} assigned ({report.assignment.get('method')}, gap {report.assignment.get('gap')})"
            if assign
            else ""
        )
    )
