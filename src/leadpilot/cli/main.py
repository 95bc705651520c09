"""The ``leadpilot`` console script."""

from __future__ import annotations

import typer

from leadpilot import __version__
from leadpilot.cli import contracts as contracts_cli
from leadpilot.cli import db, distribute, events, experiments, features, imports, scoring, scoring_crm, simulate, users
from leadpilot.cli import workflow as workflow_cli
from leadpilot.cli.common import console, emit_json, engine, require_migrated, settings
from leadpilot.cli.demo import demo_command
from leadpilot.db import migrate

app = typer.Typer(
    help="leadpilot: a self-hosted, AI-native sales CRM engine.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(users.users_app, name="users")
app.add_typer(users.teams_app, name="teams")
app.add_typer(imports.app, name="import")
app.add_typer(db.app, name="db")
app.add_typer(events.app, name="events")
app.add_typer(simulate.app, name="simulate")
app.add_typer(features.app, name="features")
scoring_crm.register(scoring.app)  # the CRM models' commands beside fit / evaluate
app.add_typer(scoring.app, name="scoring")
app.add_typer(distribute.app, name="distribute")
app.add_typer(workflow_cli.app, name="workflow")
app.add_typer(experiments.app, name="experiments")
app.add_typer(contracts_cli.app, name="contracts")
app.command("demo")(demo_command)


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


@app.command()
def init(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Create the data directory and signing key, and migrate the database to the newest schema."""
    cfg = settings()
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    cfg.resolved_secret_key()
    url = cfg.resolved_database_url()
    migrate.upgrade(url)
    data = {
        "data_dir": str(cfg.data_dir.resolve()),
        "database": engine().dialect.name,
        "revision": migrate.current_revision(engine()),
    }
    if json_out:
        emit_json(data)
    else:
        console.print(f"ready: {data['database']} database at revision {data['revision']}, data in {data['data_dir']}")


@app.command()
def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
    port: int = typer.Option(8000, "--port", help="TCP port."),
    workers: int = typer.Option(1, "--workers", min=1, help="Uvicorn worker processes."),
    log_level: str = typer.Option("warning", "--log-level", help="Uvicorn log level."),
) -> None:
    """Serve the REST API (and OpenAPI docs at /docs)."""
    import uvicorn

    require_migrated(engine())
    settings().resolved_secret_key()  # create it before workers race to
    console.print(f"leadpilot API on http://{host}:{port}  (docs: http://{host}:{port}/docs)")
    uvicorn.run(
        "leadpilot.api.app:app_from_env", factory=True, host=host, port=port, workers=workers, log_level=log_level
    )


if __name__ == "__main__":  # pragma: no cover
    app()
