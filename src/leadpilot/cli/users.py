"""``leadpilot users`` and ``leadpilot teams``: manage people and the org chart."""

from __future__ import annotations

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.cli.common import console, domain_errors, emit_json, engine, fail, require_migrated
from leadpilot.crm import people, schemas
from leadpilot.crm.access import SYSTEM
from leadpilot.crm.models import Role, Team, TeamKind, User

users_app = typer.Typer(help="Create and list users.", no_args_is_help=True)
teams_app = typer.Typer(help="Create and list teams.", no_args_is_help=True)


def _team_id(session: Session, team: str | None) -> int | None:
    if team is None:
        return None
    found = session.scalar(select(Team.id).where(Team.name == team))
    if found is None and team.isdigit():
        found = session.scalar(select(Team.id).where(Team.id == int(team)))
    if found is None:
        fail(f"team {team!r} does not exist (create it with `leadpilot teams create`)")
    return found


@users_app.command("create")
def create(
    username: str = typer.Argument(..., help="Login name."),
    role: Role = typer.Option(..., "--role", help="admin, supervisor, sales or screener."),
    password: str = typer.Option(
        ...,
        "--password",
        prompt=True,
        hide_input=True,
        confirmation_prompt=True,
        help="At least 8 characters (prompted when omitted).",
    ),
    full_name: str = typer.Option("", "--full-name"),
    email: str | None = typer.Option(None, "--email"),
    team: str | None = typer.Option(None, "--team", help="Team name or id."),
    product_line: list[str] = typer.Option([], "--product-line", help="Skill: a product line (repeatable)."),
    region: list[str] = typer.Option([], "--region", help="Skill: a region (repeatable)."),
    capacity: int = typer.Option(20, "--capacity", help="Daily lead capacity."),
    time_zone: str = typer.Option("UTC", "--time-zone"),
    json_out: bool = typer.Option(False, "--json", help="Print the user as JSON."),
) -> None:
    """Create a user."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session, domain_errors():
        try:
            data = schemas.UserCreate(
                username=username,
                role=role,
                password=password,
                full_name=full_name,
                email=email,
                team_id=_team_id(session, team),
                product_lines=product_line,
                regions=region,
                daily_capacity=capacity,
                time_zone=time_zone,
            )
        except ValueError as exc:
            fail(str(exc))
        user = people.create_user(session, actor=SYSTEM, data=data)
        session.commit()
        out = schemas.UserPublic.model_validate(user).model_dump()
    if json_out:
        emit_json(out)
    else:
        console.print(f"created {role.value} [bold]{username}[/] (id {out['id']})")


@users_app.command("list")
def list_(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List users."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        rows = [
            schemas.UserPublic.model_validate(u).model_dump() for u in session.scalars(select(User).order_by(User.id))
        ]
    if json_out:
        emit_json(rows)
        return
    table = Table("id", "username", "role", "team", "capacity", "active")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["username"],
            r["role"],
            str(r["team_id"] or ""),
            str(r["daily_capacity"]),
            "yes" if r["is_active"] else "no",
        )
    console.print(table)


@teams_app.command("create")
def create_team(
    name: str = typer.Argument(..., help="Team name."),
    kind: TeamKind = typer.Option(..., "--kind", help="opportunity (screens leads) or sales (converts them)."),
    parent: str | None = typer.Option(None, "--parent", help="Parent team name or id."),
    json_out: bool = typer.Option(False, "--json", help="Print the team as JSON."),
) -> None:
    """Create a team."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session, domain_errors():
        team = people.create_team(
            session, actor=SYSTEM, data=schemas.TeamCreate(name=name, kind=kind, parent_id=_team_id(session, parent))
        )
        session.commit()
        out = schemas.TeamPublic.model_validate(team).model_dump()
    if json_out:
        emit_json(out)
    else:
        console.print(f"created {kind.value} team [bold]{name}[/] (id {out['id']})")


@teams_app.command("list")
def list_teams(json_out: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """List teams."""
    eng = engine()
    require_migrated(eng)
    with Session(eng) as session:
        rows = [
            schemas.TeamPublic.model_validate(t).model_dump() for t in session.scalars(select(Team).order_by(Team.id))
        ]
    if json_out:
        emit_json(rows)
        return
    table = Table("id", "name", "kind", "parent")
    for r in rows:
        table.add_row(str(r["id"]), r["name"], r["kind"], str(r["parent_id"] or ""))
    console.print(table)
