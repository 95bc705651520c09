"""``leadpilot demo``: a demo organisation with users and imported leads, then serve the API."""

from __future__ import annotations

import json
import secrets
from importlib import resources
from pathlib import Path
from typing import Any

import typer
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, emit_json, engine, settings
from leadpilot.crm import leads, people, schemas
from leadpilot.crm.access import SYSTEM, actor_for
from leadpilot.crm.models import Lead, Role, Stage, Team, TeamKind, User
from leadpilot.db import migrate
from leadpilot.intake.importer import import_leads

DEMO_TEAMS: list[tuple[str, TeamKind, str | None]] = [
    ("Opportunity group", TeamKind.OPPORTUNITY, None),
    ("Sales", TeamKind.SALES, None),
    ("Sales East", TeamKind.SALES, "Sales"),
    ("Sales West", TeamKind.SALES, "Sales"),
]
# username, role, team, product lines
DEMO_USERS: list[tuple[str, Role, str | None, list[str]]] = [
    ("admin", Role.ADMIN, None, []),
    ("sup_east", Role.SUPERVISOR, "Sales East", []),
    ("sup_sales", Role.SUPERVISOR, "Sales", []),
    ("alice", Role.SALES, "Sales East", ["housing", "used_cars"]),
    ("bob", Role.SALES, "Sales East", ["recruitment"]),
    ("carol", Role.SALES, "Sales West", ["housing", "local_services"]),
    ("dave", Role.SALES, "Sales West", ["used_cars", "recruitment"]),
    ("screener", Role.SCREENER, "Opportunity group", []),
]


def sample_leads_path() -> Path:
    """The sample lead file shipped in the package."""
    return Path(str(resources.files("leadpilot.demo").joinpath("sample_leads.csv")))


def seed_demo(session: Session, logins_file: Path) -> dict[str, str]:
    """Create the demo teams and users (idempotent); returns username → password."""
    logins: dict[str, str] = json.loads(logins_file.read_text()) if logins_file.exists() else {}
    teams = {t.name: t.id for t in session.scalars(select(Team))}
    for name, kind, parent in DEMO_TEAMS:
        if name not in teams:
            team = people.create_team(
                session,
                actor=SYSTEM,
                data=schemas.TeamCreate(name=name, kind=kind, parent_id=teams.get(parent) if parent else None),
            )
            teams[name] = team.id
    existing = set(session.scalars(select(User.username)))
    for username, role, team_name, lines in DEMO_USERS:
        if username in existing:
            continue
        password = logins.get(username) or secrets.token_urlsafe(9)
        people.create_user(
            session,
            actor=SYSTEM,
            data=schemas.UserCreate(
                username=username,
                password=password,
                role=role,
                full_name=username.replace("_", " ").title(),
                team_id=teams.get(team_name) if team_name else None,
                product_lines=lines,
                daily_capacity=20,
            ),
        )
        logins[username] = password
    session.commit()
    logins_file.parent.mkdir(parents=True, exist_ok=True)
    logins_file.write_text(json.dumps(logins, indent=2))
    logins_file.chmod(0o600)
    return logins


def work_demo_leads(session: Session) -> dict[str, int]:
    """Move imported leads along the funnel so every role has something to see (only once)."""
    if session.scalar(select(Lead.id).where(Lead.stage != Stage.NEW.value).limit(1)) is not None:
        return {}
    users = {u.username: u for u in session.scalars(select(User))}
    screener = actor_for(session, users["screener"])
    supervisor = actor_for(session, users["sup_sales"])
    ids = list(session.scalars(select(Lead.id).order_by(Lead.id)))
    counts = {"screening": 0, "qualified": 0, "assigned": 0}
    for n, lead_id in enumerate(ids):
        if n % 5 == 4:
            continue  # leave some new leads for the screener
        leads.change_stage(session, actor=screener, lead_id=lead_id, stage=Stage.SCREENING)
        counts["screening"] += 1
        if n % 5 == 3:
            continue
        leads.change_stage(session, actor=screener, lead_id=lead_id, stage=Stage.QUALIFIED)
        counts["qualified"] += 1
        if n % 5 in (0, 1):
            owner = ["alice", "bob", "carol", "dave"][n % 4]
            leads.assign_lead(
                session, actor=supervisor, lead_id=lead_id, owner_id=users[owner].id, reason="demo assignment"
            )
            counts["assigned"] += 1
    session.commit()
    return counts


def demo_command(
    serve: bool = typer.Option(True, "--serve/--no-serve", help="Serve the API when the data is ready."),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8000, "--port"),
    json_out: bool = typer.Option(False, "--json", help="Print what was set up as JSON."),
) -> None:
    """Set up a demo company (teams, users, sample leads with a few bad rows), print the logins, serve."""
    cfg = settings()
    cfg.resolved_secret_key()
    migrate.upgrade(cfg.resolved_database_url())
    eng = engine()
    logins_file = cfg.data_dir / "demo_logins.json"
    with Session(eng) as session:
        logins = seed_demo(session, logins_file)
    summary = import_leads(eng, sample_leads_path(), default_region=cfg.default_phone_region)
    with Session(eng) as session:
        worked = work_demo_leads(session)
    url = f"http://{host}:{port}"
    data: dict[str, Any] = {
        "url": url,
        "docs": f"{url}/docs",
        "logins": logins,
        "import": summary.to_json(),
        "funnel": worked,
        "logins_file": str(logins_file),
    }
    if json_out:
        emit_json(data)
    else:
        console.print(
            f"sample import: {summary.created} created, {summary.merged} merged, "
            f"{summary.unchanged} unchanged, {summary.rejected} rejected (the bad rows are on purpose):"
        )
        for err in summary.errors:
            console.print(f"  row {err.row}: {err.field}: {err.reason}")
        console.print(f"\n[bold]leadpilot demo[/] at {url}  (API docs: {url}/docs)")
        console.print(f"logins (also in {logins_file}):")
        for username, password in logins.items():
            console.print(f"  {username:10} {password}")
    if serve:
        from leadpilot.cli.main import serve as serve_command

        serve_command(host=host, port=port, workers=1, log_level="warning")
