"""``leadpilot db``: schema migrations."""

from __future__ import annotations

import typer

from leadpilot.cli.common import console, emit_json, engine, settings
from leadpilot.db import migrate

app = typer.Typer(help="Database schema migrations (Alembic).", no_args_is_help=True)


@app.command("upgrade")
def upgrade(revision: str = typer.Argument("head", help="Target revision.")) -> None:
    """Migrate the database up (default: to the newest schema)."""
    migrate.upgrade(settings().resolved_database_url(), revision)
    console.print(f"database at {migrate.current_revision(engine())}")


@app.command("downgrade")
def downgrade(
    revision: str = typer.Argument("base", help="Target revision ('base' = empty)."),
    yes: bool = typer.Option(False, "--yes", help="Confirm that data in dropped tables may be lost."),
) -> None:
    """Migrate the database down (default: to empty, dropping every table)."""
    if not yes:
        typer.confirm(f"downgrade to {revision}? Tables dropped on the way lose their data", abort=True)
    migrate.downgrade(settings().resolved_database_url(), revision)
    console.print(f"database at {migrate.current_revision(engine()) or 'base (empty)'}")


@app.command("current")
def current(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Show the schema revision of the database and the newest one shipped."""
    data = {
        "current": migrate.current_revision(engine()),
        "head": migrate.head_revision(),
        "database": engine().dialect.name,
    }
    if json_out:
        emit_json(data)
    else:
        console.print(f"{data['database']}: at {data['current'] or 'nothing'}, newest {data['head']}")
