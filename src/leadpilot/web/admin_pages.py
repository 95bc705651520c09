"""Admin pages that manage (docs/web.md): users and teams, and the model registry's promote/rollback/challenger.

Every form calls the same service functions as the REST API (``crm.people`` as ``/api/v1/users`` and
``/api/v1/teams``; ``models.registry`` as ``/api/v1/scoring/models/...``), so the refusals, audit rows and
events are the API's. Admins manage everything; supervisors change the fields ``crm.people`` lets them change
on users of their team subtree and see the rest read-only.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Form, Request, Response
from pydantic import ValidationError
from sqlalchemy.orm import Session

from leadpilot.crm import people, schemas
from leadpilot.crm.access import Actor, can_manage_user
from leadpilot.crm.errors import DomainError
from leadpilot.crm.models import Role, TeamKind
from leadpilot.web.i18n import translate
from leadpilot.web.routes import (
    CSRF,
    PageExit,
    check_csrf,
    error_page,
    language,
    page,
    reading,
    redirect,
    render,
    require,
    router,
    writing,
)

MODEL_EDITORS = frozenset({Role.ADMIN})  # as POST /api/v1/scoring/models/{name}/{version}/promote and rollback
USER_FIELDS = (
    "password",
    "role",
    "full_name",
    "email",
    "team_id",
    "product_lines",
    "regions",
    "daily_capacity",
    "work_start",
    "work_end",
    "time_zone",
    "is_active",
)
TEXT = Annotated[str | None, Form(max_length=1000)]


def _forget_actors(request: Request) -> None:
    """After a user or team change: this worker's cached actors may be stale (as the API does)."""
    request.app.state.actor_cache.clear()


def _list(value: str) -> list[str]:
    """A comma-separated form field as a list of trimmed, non-empty items."""
    return [part.strip() for part in value.replace("，", ",").split(",") if part.strip()]


def _user_body(form: dict[str, str | None], *, creating: bool) -> dict[str, Any]:
    """The JSON-like body the API would receive for these form fields (only the fields the form sent)."""
    body: dict[str, Any] = {}
    for key, value in form.items():
        if value is None:
            continue
        if key in ("product_lines", "regions"):
            body[key] = _list(value)
        elif key in ("team_id", "email"):
            body[key] = value.strip() or None
        elif key == "is_active":
            body[key] = value in ("1", "true", "on")
        elif key == "password" and not value.strip():
            continue  # blank: keep the current password
        elif key == "daily_capacity" and creating and not value.strip():
            continue  # blank: the default capacity
        else:
            body[key] = value
    if creating:
        body = {k: v for k, v in body.items() if v is not None or k not in ("team_id", "email")}
    return body


def _with_blanks(form: dict[str, str | None], fields: str | None) -> dict[str, str | None]:
    """The form with each field it declares in ``fields`` present ("" when blank: FastAPI reads "" as absent)."""
    listed = {f.strip() for f in (fields or "").split(",")}
    return {k: "" if v is None and k in listed else v for k, v in form.items()}


def _problems(exc: ValidationError | DomainError) -> dict[str, str]:
    """Field -> message for a pydantic error or a service refusal (``_`` when no field is named)."""
    if isinstance(exc, DomainError):
        return {exc.field or "_": exc.message}
    found: dict[str, str] = {}
    for error in exc.errors():
        loc = error.get("loc", ())
        field = str(loc[0]) if loc else "_"
        message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
        found[field] = f"{found[field]}; {message}" if field in found else message
    return found


def _status(exc: ValidationError | DomainError) -> int:
    """The HTTP status of a refusal: the service's, or 422 for a pydantic error."""
    return exc.status_code if isinstance(exc, DomainError) else 422


# --- users and teams ----------------------------------------------------------------------------------------------


def _users_context(request: Request, actor: Actor) -> dict[str, Any]:
    """Users and teams the actor may see, which of them the actor may change, and a blank form state."""
    with reading(request) as db:
        users = people.list_users(db, actor=actor, limit=500).items
        teams = people.list_teams(db, actor=actor, limit=500).items
    return {
        "users": users,
        "teams": teams,
        "team_names": {team.id: team.name for team in teams},
        "is_admin": actor.is_admin,
        "manageable": {u.id for u in users if can_manage_user(actor, u.team_id)},
        "supervisor_fields": people.SUPERVISOR_USER_FIELDS,
        "roles": [r.value for r in Role],
        "kinds": [k.value for k in TeamKind],
        "editing": None,  # which form the errors belong to: "new-user", "user-<id>", "new-team", "team-<id>"
        "form": {},
        "errors": {},
        "done": request.query_params.get("done"),
    }


def _users_refused(
    request: Request, actor: Actor, exc: ValidationError | DomainError, editing: str, form: dict[str, str | None]
) -> Response:
    """The users page again with the problems beside their fields and the values as typed."""
    context = _users_context(request, actor)
    typed = {k: v for k, v in form.items() if v is not None and k != "password"}
    context.update(editing=editing, form=typed, errors=_problems(exc))
    return render(request, "users.html", actor, context, status=_status(exc))


@router.get("/admin/users")
@page
def users_page(request: Request) -> Response:
    """Users and teams, with forms to create and change them (by role)."""
    actor = require(request, "users")
    return render(request, "users.html", actor, _users_context(request, actor))


@router.post("/admin/users")
@page
def create_user(
    request: Request,
    username: TEXT = None,
    password: TEXT = None,
    role: TEXT = None,
    full_name: TEXT = None,
    email: TEXT = None,
    team_id: TEXT = None,
    product_lines: TEXT = None,
    regions: TEXT = None,
    daily_capacity: TEXT = None,
    work_start: TEXT = None,
    work_end: TEXT = None,
    time_zone: TEXT = None,
    csrf_token: CSRF = "",
) -> Response:
    """Create a user (``crm.people.create_user``, as ``POST /api/v1/users``; admins)."""
    actor = require(request, "users")
    check_csrf(request, csrf_token)
    form = {
        "username": username or "",
        "password": password or "",
        "role": role or "",
        "full_name": full_name,
        "email": email,
        "team_id": team_id,
        "product_lines": product_lines,
        "regions": regions,
        "daily_capacity": daily_capacity,
        "work_start": work_start,
        "work_end": work_end,
        "time_zone": time_zone,
    }
    try:
        data = schemas.UserCreate.model_validate(_user_body(form, creating=True))
        with writing(request) as db:
            user = people.create_user(db, actor=actor, data=data)
            db.commit()
    except (ValidationError, DomainError) as exc:
        return _users_refused(request, actor, exc, "new-user", form)
    return redirect("/admin/users", done="user_created", name=user.username)


@router.post("/admin/users/{user_id}")
@page
def update_user(
    request: Request,
    user_id: int,
    password: TEXT = None,
    role: TEXT = None,
    full_name: TEXT = None,
    email: TEXT = None,
    team_id: TEXT = None,
    product_lines: TEXT = None,
    regions: TEXT = None,
    daily_capacity: TEXT = None,
    work_start: TEXT = None,
    work_end: TEXT = None,
    time_zone: TEXT = None,
    is_active: TEXT = None,
    fields: TEXT = None,
    csrf_token: CSRF = "",
) -> Response:
    """Change the fields the form sent (``crm.people.update_user``, as ``PATCH /api/v1/users/{id}``)."""
    actor = require(request, "users")
    check_csrf(request, csrf_token)
    values = [password, role, full_name, email, team_id, product_lines, regions, daily_capacity]
    values += [work_start, work_end, time_zone, is_active]
    form = _with_blanks(dict(zip(USER_FIELDS, values, strict=True)), fields)
    try:
        data = schemas.UserUpdate.model_validate(_user_body(form, creating=False))
        with writing(request) as db:
            user = people.update_user(db, actor=actor, user_id=user_id, data=data)
            db.commit()
    except (ValidationError, DomainError) as exc:
        if isinstance(exc, DomainError) and exc.status_code == 404:
            return error_page(request, actor, 404, exc.message)
        return _users_refused(request, actor, exc, f"user-{user_id}", form)
    _forget_actors(request)
    return redirect("/admin/users", done="user_updated", name=user.username)


@router.post("/admin/users/{user_id}/deactivate")
@page
def deactivate_user(request: Request, user_id: int, csrf_token: CSRF = "") -> Response:
    """Deactivate a user (``crm.people.deactivate_user``, as ``DELETE /api/v1/users/{id}``; admins)."""
    actor = require(request, "users")
    check_csrf(request, csrf_token)
    try:
        with writing(request) as db:
            user = people.deactivate_user(db, actor=actor, user_id=user_id)
            db.commit()
    except DomainError as exc:
        if exc.status_code == 404:
            return error_page(request, actor, 404, exc.message)
        return _users_refused(request, actor, exc, f"user-{user_id}", {})
    _forget_actors(request)
    return redirect("/admin/users", done="user_deactivated", name=user.username)


def _team_body(name: str | None, kind: str | None, parent_id: str | None) -> dict[str, Any]:
    """The API body for a team form (a blank parent means none)."""
    body: dict[str, Any] = {}
    if name is not None:
        body["name"] = name
    if kind is not None:
        body["kind"] = kind
    if parent_id is not None:
        body["parent_id"] = parent_id.strip() or None
    return body


@router.post("/admin/teams")
@page
def create_team(
    request: Request, name: TEXT = None, kind: TEXT = None, parent_id: TEXT = None, csrf_token: CSRF = ""
) -> Response:
    """Create a team (``crm.people.create_team``, as ``POST /api/v1/teams``; admins)."""
    actor = require(request, "users")
    check_csrf(request, csrf_token)
    form = {"name": name or "", "kind": kind or "", "parent_id": parent_id}
    try:
        data = schemas.TeamCreate.model_validate(_team_body(name or "", kind or "", parent_id))
        with writing(request) as db:
            team = people.create_team(db, actor=actor, data=data)
            db.commit()
    except (ValidationError, DomainError) as exc:
        return _users_refused(request, actor, exc, "new-team", form)
    _forget_actors(request)
    return redirect("/admin/users", done="team_created", name=team.name)


@router.post("/admin/teams/{team_id}")
@page
def update_team(
    request: Request,
    team_id: int,
    name: TEXT = None,
    kind: TEXT = None,
    parent_id: TEXT = None,
    fields: TEXT = None,
    csrf_token: CSRF = "",
) -> Response:
    """Rename, re-kind or move a team (``crm.people.update_team``, as ``PATCH /api/v1/teams/{id}``; admins)."""
    actor = require(request, "users")
    check_csrf(request, csrf_token)
    form = _with_blanks({"name": name, "kind": kind, "parent_id": parent_id}, fields)
    try:
        data = schemas.TeamUpdate.model_validate(_team_body(form["name"], form["kind"], form["parent_id"]))
        with writing(request) as db:
            team = people.update_team(db, actor=actor, team_id=team_id, data=data)
            db.commit()
    except (ValidationError, DomainError) as exc:
        if isinstance(exc, DomainError) and exc.status_code == 404:
            return error_page(request, actor, 404, exc.message)
        return _users_refused(request, actor, exc, f"team-{team_id}", form)
    _forget_actors(request)
    return redirect("/admin/users", done="team_updated", name=team.name)


# --- model registry ---------------------------------------------------------------------------------------------


def _models_context(request: Request, actor: Actor) -> dict[str, Any]:
    """Every registered version, whether the actor may act on them, and the page's message state."""
    from leadpilot.models import registry

    with reading(request) as db:
        versions = [registry.version_json(v) for v in registry.list_versions(db)]
    return {
        "versions": versions,
        "names": sorted({v["name"] for v in versions}),
        "can_manage": actor.role in MODEL_EDITORS,
        "error": None,
        "done": request.query_params.get("done"),
    }


@router.get("/admin/models")
@page
def models_page(request: Request) -> Response:
    """The model registry: every version with its status and held-out metrics, and the actions allowed."""
    actor = require(request, "models")
    return render(request, "models.html", actor, _models_context(request, actor))


def _model_action(request: Request, csrf_token: str, op: str, name: str, version: int | None) -> Response:
    """Run one registry action for an admin; a refusal shows the registry with the service's message."""

    actor = require(request, "models")
    check_csrf(request, csrf_token)
    if actor.role not in MODEL_EDITORS:
        raise PageExit(error_page(request, actor, 403, translate(language(request), "models.read_only")))
    try:
        with writing(request) as db:
            row = _run_model_op(db, actor, op, name, version)
            db.commit()
    except DomainError as exc:
        context = _models_context(request, actor)
        context["error"] = exc.message
        return render(request, "models.html", actor, context, status=exc.status_code)
    return redirect("/admin/models", done=op, name=row.name, version=str(row.version))


def _run_model_op(db: Session, actor: Actor, op: str, name: str, version: int | None) -> Any:
    """Call ``models.registry``'s promote, rollback or mark_challenger."""
    from leadpilot.models import registry

    if op == "rollback":
        return registry.rollback(db, actor=actor, name=name)
    assert version is not None
    if op == "promote":
        return registry.promote(db, actor=actor, name=name, version=version)
    return registry.mark_challenger(db, actor=actor, name=name, version=version)


@router.post("/admin/models/{name}/{version}/promote")
@page
def promote_model(request: Request, name: str, version: int, csrf_token: CSRF = "") -> Response:
    """Make a version the champion (``models.registry.promote``, as the API's promote route; admins)."""
    return _model_action(request, csrf_token, "promote", name, version)


@router.post("/admin/models/{name}/{version}/challenger")
@page
def challenge_model(request: Request, name: str, version: int, csrf_token: CSRF = "") -> Response:
    """Mark a version as the challenger (``models.registry.mark_challenger``; admins)."""
    return _model_action(request, csrf_token, "challenger", name, version)


@router.post("/admin/models/{name}/rollback")
@page
def rollback_model(request: Request, name: str, csrf_token: CSRF = "") -> Response:
    """Give the champion role back to the previous champion (``models.registry.rollback``; admins)."""
    return _model_action(request, csrf_token, "rollback", name, None)
