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
    experiment: str | None = typer.Option(
        None, "--experiment", help="Route the pool by this running experiment's arms (needs --assign)."
    ),
    ranker: str = typer.Option(
        "convert", "--ranker", help="Champion that ranks the pairs: convert (V1), mmoe or ple (V2, ONNX Runtime)."
    ),
    ignore_working_hours: bool = typer.Option(
        False, "--ignore-working-hours", help="With --assign: assign to salespeople off shift now too."
    ),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Recall pool leads for each salesperson, rank them with the convert model, store the ranked pools."""
    if ranker not in ("convert", "mmoe", "ple"):
        from leadpilot.cli.common import fail

        fail(f"--ranker must be convert, mmoe or ple, not {ranker!r}")
    if ranker != "convert":
        from leadpilot.cli.common import fail
        from leadpilot.distribution.ranking_v2 import multitask_champion

        if multitask_champion(engine(), ranker) is None:
            fail(f"no promoted {ranker} model: run `leadpilot distribute train-v2 --arch {ranker}` first", code=2)
    from leadpilot.cli.scoring_crm import _store
    from leadpilot.distribution.recommend import run_distribution

    eng = engine()
    require_migrated(eng)
    say = None if json_out else (lambda message: console.print(f"[dim]{message}[/]"))
    if experiment is not None:
        from leadpilot.cli.common import fail
        from leadpilot.experiments.service import run_experiment

        if not assign:
            fail("--experiment routes and assigns the pool: add --assign")
        with domain_errors():
            routed = run_experiment(eng, _store(), key=experiment, per_lead=per_lead, progress=say)
        if json_out:
            emit_json(routed.to_json())
            return
        arms = ", ".join(f"{name} {n:,}" for name, n in routed.routed.items())
        console.print(
            f"experiment {experiment}: {routed.pool:,} pool leads, {routed.assigned:,} assigned ({arms}); "
            f"{routed.exposures:,} exposures written, {routed.already_exposed:,} leads already exposed"
        )
        return
    with domain_errors():
        report = run_distribution(
            eng,
            _store(),
            per_lead=per_lead,
            top_n=top_n,
            assign=assign,
            progress=say,
            ranker=ranker,
            working_hours=not ignore_working_hours,
        )
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


@app.command("train-v2")
def train_v2(
    arch: str = typer.Option(..., "--arch", help="mmoe or ple."),
    max_rows: int = typer.Option(60_000, "--max-rows", min=100, help="Train on at most the newest N exposures."),
    epochs: int | None = typer.Option(None, "--epochs", min=1, max=200, help="Training epochs at most (default 20)."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Train the V2 ranker (MMoE or PLE, ESMM) on the event log, export it to ONNX and register it."""
    from leadpilot.cli.common import fail
    from leadpilot.cli.scoring_crm import _errors, _store
    from leadpilot.distribution.ranking_v2 import ARCHES, train_v2

    if arch not in ARCHES:
        fail(f"--arch must be one of {', '.join(ARCHES)}, not {arch!r}")
    eng = engine()
    require_migrated(eng)
    say = None if json_out else (lambda message: console.print(f"[dim]{message}[/]"))
    with _errors():
        trained = train_v2(
            eng,
            _store(),
            arch=arch,
            data_dir=settings().data_dir,
            max_rows=max_rows,
            params={"epochs": epochs} if epochs else None,
            progress=say,
        )
    data = trained.to_json()
    if json_out:
        emit_json(data)
        return
    m, base = data["metrics"], data["baseline_metrics"]
    v1 = base.get("convert_v1", {})
    console.print(
        f"{data['name']} v{data['version']} ({data['status']}): {data['exposures']:,} exposures "
        f"({data['test_exposures']:,} held out); held-out AUC p(convert | transfer) {m.get('auc')} "
        f"(V1 convert {v1.get('auc', 'n/a')} vs V2 {v1.get('v2_auc_same_rows', 'n/a')} on {v1.get('n', 0):,} "
        f"shared rows; lead prior {base.get('lead_prior', {}).get('auc')}), p(transfer) {m.get('auc_transfer')}; "
        f"{data['epochs']} epochs in {data['seconds']} s"
    )
