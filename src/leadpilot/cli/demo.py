"""``leadpilot demo``: a living simulated company plus a sample import, then serve the API."""

from __future__ import annotations

import json
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, emit_json, engine, settings
from leadpilot.crm.models import Lead
from leadpilot.db import migrate
from leadpilot.intake.importer import import_leads

# One login per role of the simulated company; their passwords are random and printed.
DEMO_LOGINS = ("admin", "sup_all", "sup_01", "sales_0001", "sales_0002", "screener_001")


def sample_leads_path() -> Path:
    """The sample lead file shipped in the package (four bad rows on purpose)."""
    return Path(str(resources.files("leadpilot.demo").joinpath("sample_leads.csv")))


def demo_scoring(eng: Engine, *, quiet: bool) -> dict[str, Any]:
    """Train and promote the first scoring models (once) and score every open lead with them."""
    from leadpilot.cli.scoring_crm import _store
    from leadpilot.models import crm_training
    from leadpilot.models.registry import champion
    from leadpilot.models.service import ScoringService

    store = _store()
    out: dict[str, Any] = {"trained": [], "skipped": []}
    say = None if quiet else (lambda message: console.print(f"[dim]{message}[/]"))
    for name in crm_training.MODEL_NAMES:
        with Session(eng) as session:
            if champion(session, name=name) is not None:
                continue
        try:
            out["trained"].append(
                crm_training.train(eng, store, name, data_dir=settings().data_dir, progress=say).to_json()
            )
        except crm_training.TrainingDataError as exc:
            out["skipped"].append(str(exc))
    if len(out["skipped"]) < len(crm_training.MODEL_NAMES):
        out["rescored"] = ScoringService(eng, store).rescore(progress=say).to_json()
    return out


def demo_distribution(eng: Engine, *, quiet: bool) -> dict[str, Any]:
    """Rank the claim pool for every salesperson (their personalised pool), without assigning it."""
    from leadpilot.cli.scoring_crm import _store
    from leadpilot.distribution.recommend import run_distribution

    say = None if quiet else (lambda message: console.print(f"[dim]{message}[/]"))
    return run_distribution(eng, _store(), progress=say).to_json()


def demo_workflow(eng: Engine) -> dict[str, Any]:
    """Store the shipped workflow rules (the seed's examples), disabled: `leadpilot workflow enable NAME`."""
    from leadpilot.crm.access import SYSTEM
    from leadpilot.workflow.service import install_defaults

    with Session(eng) as session:
        stored = install_defaults(session, actor=SYSTEM, enable=False)
        session.commit()
    return stored


def demo_command(
    scale: str = typer.Option("small", "--scale", help="Size of the simulated company (tiny for a quick look)."),
    seed: int = typer.Option(7, "--seed", help="Seed of the simulated company."),
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the API when the data is ready."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    json_out: bool = typer.Option(False, "--json", help="Print what was set up as JSON."),
) -> None:
    """Simulate a company (18 months of history), import a sample file, compute features, print the logins, serve."""
    from leadpilot.cli.simulate import run_generation

    cfg = settings()
    cfg.resolved_secret_key()
    migrate.upgrade(cfg.resolved_database_url())
    eng = engine()
    logins_file = cfg.data_dir / "demo_logins.json"
    with Session(eng) as session:
        empty = not session.scalar(select(func.count()).select_from(Lead))
    simulation: dict[str, Any] = {}
    if empty:
        logins = {name: secrets.token_urlsafe(9) for name in DEMO_LOGINS}
        simulation = run_generation(scale, seed, 548, logins=logins, quiet=json_out)
        logins_file.parent.mkdir(parents=True, exist_ok=True)
        logins_file.write_text(json.dumps(logins, indent=2))
        logins_file.chmod(0o600)
    logins = json.loads(logins_file.read_text()) if logins_file.exists() else {}
    summary = import_leads(eng, sample_leads_path(), default_region=cfg.default_phone_region)
    from leadpilot.cli.features import run_compute

    features = run_compute(eng, quiet=json_out)
    scoring = demo_scoring(eng, quiet=json_out)
    distribution = demo_distribution(eng, quiet=json_out)
    workflow = demo_workflow(eng)
    url = f"http://{host}:{port}"
    data: dict[str, Any] = {
        "url": url,
        "docs": f"{url}/docs",
        "logins": logins,
        "logins_file": str(logins_file),
        "simulation": simulation,
        "import": summary.to_json(),
        "features": features,
        "scoring": scoring,
        "distribution": distribution,
        "workflow": workflow,
    }
    if json_out:
        emit_json(data)
    else:
        if simulation:
            console.print(
                f"simulated company: {simulation['users']} users, {simulation['leads']:,} leads, "
                f"{simulation['events']:,} events ({simulation['seconds']:.0f}s)"
            )
        console.print(
            f"sample import: {summary.created} created, {summary.merged} merged, "
            f"{summary.unchanged} unchanged, {summary.rejected} rejected (the bad rows are on purpose):"
        )
        for err in summary.errors:
            console.print(f"  row {err.row}: {err.field}: {err.reason}")
        console.print(
            f"features as of {features['days'][-1]}: {features['values_written']:,} values of "
            f"{features['derived_features']:,} derived features (leadpilot features show LEAD_ID)"
        )
        for model in scoring.get("trained", []):
            console.print(
                f"model {model['name']} v{model['version']} ({model['status']}): held-out AUC "
                f"{model['metrics'].get('auc')} on {model['examples']:,} examples"
            )
        if "rescored" in scoring:
            console.print(
                f"scored {sum(scoring['rescored']['scored'].values()):,} open leads (leadpilot scoring explain LEAD_ID)"
            )
        for problem in scoring.get("skipped", []):
            console.print(f"scoring skipped: {problem}")
        console.print(
            f"claim pool of {distribution['pool']:,} leads ranked for {distribution['salespeople']:,} salespeople "
            f"by {distribution['ranker'] or 'nothing (empty pool)'}: {distribution['stored']:,} recommendations "
            "(GET /api/v1/me/recommendations)"
        )
        console.print(f"\n[bold]leadpilot demo[/] at {url}  (API docs: {url}/docs)")
        console.print(f"logins (also in {logins_file}):")
        for username, password in logins.items():
            console.print(f"  {username:14} {password}")
    if serve:
        from leadpilot.cli.main import serve as serve_command

        serve_command(host=host, port=port, workers=1, log_level="warning")
