"""The web workspace: server-rendered pages for salespeople, supervisors and admins (docs/web.md).

Every number and every action goes through the same service functions as the REST API (``crm.leads``,
``crm.dashboard``, ``crm.tasks``, ``models.rules`` ...), so audit rows and events are identical. Sign-in
sets an HttpOnly, SameSite=Lax cookie holding the same JWT the API issues; every POST form carries a
CSRF token that must equal the ``leadpilot_csrf`` cookie (double submit), else 403.
"""

from __future__ import annotations

import functools
import hmac
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

import plotly
from fastapi import APIRouter, Form, HTTPException, Query, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.orm import Session

from leadpilot.api.deps import _resolve_actor
from leadpilot.auth.security import authenticate, create_access_token
from leadpilot.crm import dashboard, eventlog, leads, schemas, tasks
from leadpilot.crm.access import SYSTEM, Actor, pool_clause, user_scope
from leadpilot.crm.audit import audit
from leadpilot.crm.errors import DomainError, Invalid
from leadpilot.crm.models import Lead, Role, Stage, User
from leadpilot.crm.stages import OWNED_STAGES, SCREENING_STAGES, TRANSITIONS
from leadpilot.db.engine import read_only_engine
from leadpilot.distribution import recommend
from leadpilot.distribution import search as lead_search
from leadpilot.web import charts
from leadpilot.web.i18n import LANGUAGES, choose, translate

HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
PLOTLY_JS = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
SESSION_COOKIE = "leadpilot_session"
CSRF_COOKIE = "leadpilot_csrf"
LANG_COOKIE = "leadpilot_lang"
FEATURES_PER_PAGE = 50
# The dashboard page's default window: leads created in the last this many days (``?since=all``: all time).
DASHBOARD_DAYS = 30
LIST_LIMIT = 50
ALL_ROLES = frozenset(Role)
# Page name -> (path, roles that may open it). Anyone else gets a 403 page; not signed in: the login page.
PAGES: dict[str, tuple[str, frozenset[Role]]] = {
    "queue": ("/queue", ALL_ROLES),
    "pool": ("/pool", frozenset({Role.SALES, Role.SUPERVISOR, Role.ADMIN})),
    "search": ("/search", ALL_ROLES),
    "contracts": ("/contracts", frozenset({Role.SALES, Role.SUPERVISOR, Role.ADMIN})),
    "dashboard": ("/dashboard", dashboard.VIEWERS),
    "assignments": ("/assignments", dashboard.MANAGERS),
    "users": ("/admin/users", frozenset({Role.ADMIN, Role.SUPERVISOR})),  # pages in web.admin_pages
    "models": ("/admin/models", frozenset({Role.ADMIN, Role.SUPERVISOR})),  # pages in web.admin_pages
    "rules": ("/admin/rules", frozenset({Role.ADMIN, Role.SUPERVISOR})),
    "workflow": ("/admin/workflow", frozenset({Role.ADMIN, Role.SUPERVISOR})),
    "features": ("/admin/features", frozenset({Role.ADMIN, Role.SUPERVISOR})),
}
HOME = {Role.SALES: "/queue", Role.SCREENER: "/queue", Role.SUPERVISOR: "/dashboard", Role.ADMIN: "/dashboard"}

templates = Jinja2Templates(directory=str(HERE / "templates"))
router = APIRouter(include_in_schema=False)


class PageExit(Exception):
    """Stop handling a page and answer with this response (a redirect to the login page, a 403 page...)."""

    def __init__(self, response: Response) -> None:
        super().__init__("page exit")
        self.response = response


def page(fn: Callable[..., Response]) -> Callable[..., Response]:
    """Wrap a page handler: a ``PageExit`` becomes its response."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return fn(*args, **kwargs)
        except PageExit as exit_:
            return exit_.response

    return wrapper


# --- request context: language, CSRF token, the signed-in actor --------------------------------------------


def language(request: Request) -> str:
    """The page language: ``?lang=``, then the cookie, then Accept-Language, then English."""
    return choose(
        request.query_params.get("lang"), request.cookies.get(LANG_COOKIE), request.headers.get("accept-language")
    )


def csrf_token(request: Request) -> str:
    """This browser's CSRF token (the cookie's value; a new one when it has none yet)."""
    token = getattr(request.state, "csrf", None) or request.cookies.get(CSRF_COOKIE)
    if not token or len(token) > 100:
        token = secrets.token_urlsafe(32)
    request.state.csrf = token
    return token


# A form's CSRF token field (checked with ``check_csrf``).
CSRF = Annotated[str, Form(max_length=200)]


def check_csrf(request: Request, submitted: str) -> None:
    """Refuse (403) a form whose token is missing or differs from the cookie's."""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    if not cookie or not submitted or not hmac.compare_digest(cookie.encode(), submitted.encode()):
        raise PageExit(error_page(request, None, 403, translate(language(request), "error.csrf")))


def signed_in(request: Request) -> Actor | None:
    """The actor behind the session cookie (cached like API tokens), or None when absent, expired or inactive."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    cache = request.app.state.actor_cache
    actor = cache.get(token)
    if actor is not None:
        return actor
    try:
        actor, expires_at = _resolve_actor(request, token)
    except HTTPException:
        return None
    cache.put(token, actor, expires_at)
    return actor


def require(request: Request, page_name: str | None = None) -> Actor:
    """The signed-in actor allowed on this page; else a redirect to the login page or a 403 page."""
    actor = signed_in(request)
    if actor is None:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        raise PageExit(RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303))
    if page_name is not None and actor.role not in PAGES[page_name][1]:
        message = translate(language(request), "error.forbidden_page")
        raise PageExit(error_page(request, actor, 403, message))
    return actor


@contextmanager
def reading(request: Request) -> Iterator[Session]:
    """A read-only session (SQLite: a deferred transaction)."""
    with Session(bind=read_only_engine(request.app.state.engine), expire_on_commit=False) as session:
        yield session


@contextmanager
def writing(request: Request) -> Iterator[Session]:
    """A session for a write; the caller commits, anything uncommitted rolls back."""
    with Session(bind=request.app.state.engine, expire_on_commit=False) as session:
        yield session


def render(
    request: Request, name: str, actor: Actor | None, context: dict[str, Any], *, status: int = 200
) -> HTMLResponse:
    """A page from ``templates/<name>`` with the layout's context (language, CSRF token, navigation)."""
    lang = language(request)
    token = csrf_token(request)

    def t(key: str, **values: Any) -> str:
        return translate(lang, key, **values)

    nav = []
    if actor is not None:
        nav = [(key, path) for key, (path, roles) in PAGES.items() if actor.role in roles]
    response = templates.TemplateResponse(
        request,
        name,
        {
            "t": t,
            "lang": lang,
            "languages": LANGUAGES,
            "csrf": token,
            "actor": actor,
            "nav": nav,
            "path": request.url.path,
            **context,
        },
        status_code=status,
    )
    secure = request.url.scheme == "https"
    if request.cookies.get(CSRF_COOKIE) != token:
        response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", secure=secure, path="/")
    if request.query_params.get("lang") in LANGUAGES and request.cookies.get(LANG_COOKIE) != lang:
        response.set_cookie(LANG_COOKIE, lang, samesite="lax", secure=secure, path="/", max_age=365 * 86400)
    response.headers["Cache-Control"] = "no-store"
    return response


def error_page(request: Request, actor: Actor | None, status: int, message: str) -> HTMLResponse:
    """A page saying what went wrong, with the status."""
    return render(request, "error.html", actor, {"status": status, "message": message}, status=status)


def redirect(path: str, **params: str) -> RedirectResponse:
    """A 303 to ``path`` (POST → redirect → GET), with a message key in the query string."""
    return RedirectResponse(path + (f"?{urlencode(params)}" if params else ""), status_code=303)


# --- static files: our CSS/JS and Plotly's bundle from the installed package -----------------------------


@router.get("/static/plotly.min.js")
def plotly_js() -> FileResponse:
    """Plotly's JavaScript bundle as shipped inside the plotly Python package (no CDN)."""
    return FileResponse(PLOTLY_JS, media_type="text/javascript", headers={"Cache-Control": "public, max-age=86400"})


@router.get("/static/{name}")
def static_file(name: str) -> FileResponse:
    """The workspace's own CSS and JavaScript."""
    path = STATIC_DIR / name
    if "/" in name or name.startswith(".") or not path.is_file():
        raise HTTPException(404, detail=f"no static file {name!r}")
    media = {".css": "text/css", ".js": "text/javascript"}.get(path.suffix, "application/octet-stream")
    return FileResponse(path, media_type=media, headers={"Cache-Control": "public, max-age=3600"})


# --- sign in and out -----------------------------------------------------------------------------------------


def _safe_next(value: str | None) -> str | None:
    """A local path to go to after signing in (never another site)."""
    if value and value.startswith("/") and not value.startswith("//") and "\\" not in value:
        return value
    return None


@router.get("/login")
def login_form(request: Request, next: Annotated[str | None, Query(max_length=500)] = None) -> HTMLResponse:
    """The sign-in form."""
    return render(request, "login.html", None, {"next": _safe_next(next) or "", "username": "", "error": None})


@router.post("/login")
def login(
    request: Request,
    username: Annotated[str, Form(max_length=200)] = "",
    password: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: CSRF = "",
    next: Annotated[str, Form(max_length=500)] = "",
) -> Response:
    """Check the password like ``POST /api/v1/auth/token`` (same throttling and audit) and set the cookie."""
    try:
        check_csrf(request, csrf_token)
    except PageExit as exit_:
        return exit_.response
    settings = request.app.state.settings
    lang = language(request)
    with writing(request) as db:
        result = authenticate(
            db,
            username,
            password,
            free_failures=settings.login_free_failures,
            max_delay=settings.login_max_delay_seconds,
        )
        error: str | None = None
        status = 200
        if result.retry_after:
            db.commit()
            error, status = translate(lang, "login.throttled", seconds=result.retry_after), 429
        elif result.user is None:
            audit(db, SYSTEM, "login_failed", "user", None, {"username": username[:80], "via": "web"})
            db.commit()
            error, status = translate(lang, "login.wrong"), 401
        if error is not None:
            context = {"next": _safe_next(next) or "", "username": username, "error": error}
            page_response = render(request, "login.html", None, context, status=status)
            if status == 429:
                page_response.headers["Retry-After"] = str(result.retry_after)
            return page_response
        user = result.user
        assert user is not None
        audit(db, Actor(id=user.id, role=SYSTEM.role), "login", "user", user.id, {"via": "web"})
        db.commit()
        minutes = settings.access_token_minutes
        token = create_access_token(user, secret=request.app.state.secret_key, minutes=minutes)
        home = HOME.get(Role(user.role), "/queue")
    response = RedirectResponse(_safe_next(next) or home, status_code=303)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        httponly=True,
        samesite="lax",
        secure=request.url.scheme == "https",
        max_age=minutes * 60,
        path="/",
    )
    return response


@router.post("/logout")
@page
def logout(request: Request, csrf_token: CSRF = "") -> Response:
    """Forget the session cookie."""
    check_csrf(request, csrf_token)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/")
@page
def home(request: Request) -> Response:
    """The signed-in user's start page (by role)."""
    actor = require(request)
    return RedirectResponse(HOME.get(actor.role, "/queue"), status_code=303)


# --- salesperson pages -----------------------------------------------------------------------------------------


def _queue_filters(actor: Actor) -> leads.LeadFilters:
    if actor.role in (Role.SALES, Role.SUPERVISOR) and actor.id is not None:
        return leads.LeadFilters(owner_id=actor.id, stage=[s.value for s in sorted(OWNED_STAGES)])
    if actor.role is Role.SCREENER:
        return leads.LeadFilters(stage=[s.value for s in sorted(SCREENING_STAGES)])
    return leads.LeadFilters(in_pool=False, stage=[s.value for s in sorted(OWNED_STAGES)])


@router.get("/queue")
@page
def queue(request: Request) -> Response:
    """My ranked queue: the leads I work (screeners: leads to screen), best score first."""
    actor = require(request, "queue")
    with reading(request) as db:
        rows = leads.list_leads(db, actor=actor, filters=_queue_filters(actor), sort="-score", limit=LIST_LIMIT).items
    return render(request, "queue.html", actor, {"leads": rows})


def _pool_context(request: Request, actor: Actor) -> dict[str, Any]:
    with reading(request) as db:
        recommended: list[dict[str, Any]] = []
        if actor.role in (Role.SALES, Role.SUPERVISOR):
            recommended = recommend.recommendations_for(db, actor=actor, limit=LIST_LIMIT)
        pool = leads.list_leads(
            db, actor=actor, filters=leads.LeadFilters(in_pool=True), sort="-score", limit=LIST_LIMIT
        ).items
    can_claim = actor.role in leads.CLAIMER_ROLES
    return {"recommended": recommended, "pool": pool, "can_claim": can_claim, "error": None}


@router.get("/pool")
@page
def pool(request: Request) -> Response:
    """The personalised claim pool (last distribution run's ranking for me) and the whole pool, one-click claim."""
    actor = require(request, "pool")
    return render(request, "pool.html", actor, _pool_context(request, actor))


@router.post("/leads/{lead_id}/claim")
@page
def claim(request: Request, lead_id: int, csrf_token: CSRF = "") -> Response:
    """Claim a pool lead (``crm.leads.claim_lead``, as ``POST /api/v1/leads/{id}/claim``)."""
    actor = require(request, "pool")
    check_csrf(request, csrf_token)
    try:
        with writing(request) as db:
            leads.claim_lead(db, actor=actor, lead_id=lead_id, policy=request.app.state.settings.claim_policy())
            db.commit()
    except DomainError as exc:
        context = _pool_context(request, actor)
        context["error"] = exc.message
        return render(request, "pool.html", actor, context, status=exc.status_code)
    return redirect(f"/leads/{lead_id}", done="claimed")


def _next_stages(actor: Actor, lead: Lead) -> list[str]:
    """Stage buttons to offer: the legal next stages this actor may choose (assigned comes by claim or assign)."""
    if actor.role is Role.SALES and lead.owner_id != actor.id:
        return []
    if actor.role is Role.SCREENER and Stage(lead.stage) not in SCREENING_STAGES:
        return []
    options = [s for s in TRANSITIONS[Stage(lead.stage)] if s is not Stage.ASSIGNED]
    if actor.role is Role.SCREENER:
        options = [s for s in options if s in leads.SCREENER_TARGETS]
    if lead.owner_id is None:
        options = [s for s in options if s not in OWNED_STAGES and s is not Stage.RECYCLED]
    order = list(Stage)
    return [s.value for s in sorted(options, key=order.index)]


def _lead_context(request: Request, actor: Actor, lead_id: int) -> dict[str, Any]:
    from leadpilot.api.routes.scoring import lead_score
    from leadpilot.web.contract_pages import contracts_of_lead

    with reading(request) as db:
        lead = leads.get_lead(db, actor=actor, lead_id=lead_id)
        timeline = eventlog.list_events(db, actor=actor, lead_id=lead_id, sort="-id", limit=100).items
        lead_tasks = tasks.list_tasks(db, actor=actor, lead_id=lead_id, sort="due_at", limit=100).items
        in_pool = db.scalar(select(Lead.id).where(Lead.id == lead_id, pool_clause()))
        people_ids = {lead.owner_id, *(e.actor_id for e in timeline)} - {None}
        found = db.execute(select(User.id, User.username).where(User.id.in_(people_ids), user_scope(actor)))
        names = {int(uid): str(username) for uid, username in found}
        contracts_panel = contracts_of_lead(db, actor, lead)
    with reading(request) as db:
        score = lead_score(lead_id=lead_id, actor=actor, db=db, request=request)
    calls = [e for e in timeline if e.type.startswith("call_")]
    return {
        "lead": lead,
        "timeline": timeline,
        "calls": calls,
        "tasks": lead_tasks,
        "score": score,
        "names": names,
        "next_stages": _next_stages(actor, lead),
        "can_claim": in_pool is not None and actor.role in leads.CLAIMER_ROLES,
        "can_release": lead.owner_id is not None
        and Stage(lead.stage) in OWNED_STAGES
        and (actor.role in (Role.ADMIN, Role.SUPERVISOR) or lead.owner_id == actor.id),
        "error": None,
        "form": {},
        "done": request.query_params.get("done"),
        **contracts_panel,
        "contract_error": None,
        "contract_problems": {},
        "contract_form": {},
    }


@router.get("/leads/{lead_id}")
@page
def lead_page(request: Request, lead_id: int) -> Response:
    """One lead: details, score and why, stage actions, tasks, notes, calls and the timeline of events."""
    actor = require(request, "queue")
    try:
        context = _lead_context(request, actor, lead_id)
    except DomainError as exc:
        return error_page(request, actor, exc.status_code, exc.message)
    return render(request, "lead.html", actor, context)


def _lead_action(
    request: Request, actor: Actor, lead_id: int, action: Callable[[Session], None], done: str, form: dict[str, str]
) -> Response:
    """Run a service call on a lead in one transaction; on refusal show the lead page with the reason and the
    values typed (nothing lost)."""
    try:
        with writing(request) as db:
            action(db)
            db.commit()
    except (DomainError, ValidationError) as exc:
        message = exc.message if isinstance(exc, DomainError) else _validation_message(exc)
        status = exc.status_code if isinstance(exc, DomainError) else 422
        try:
            context = _lead_context(request, actor, lead_id)
        except DomainError as missing:
            return error_page(request, actor, missing.status_code, missing.message)
        context.update(error=message, form=form)
        return render(request, "lead.html", actor, context, status=status)
    return redirect(f"/leads/{lead_id}", done=done)


def _validation_message(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors():
        field = ".".join(str(p) for p in error.get("loc", ()))
        parts.append(f"{field}: {error.get('msg', 'invalid')}" if field else str(error.get("msg", "invalid")))
    return "; ".join(parts)


@router.post("/leads/{lead_id}/stage")
@page
def change_stage(
    request: Request,
    lead_id: int,
    stage: Annotated[str, Form(max_length=40)] = "",
    reason: Annotated[str, Form(max_length=1000)] = "",
    csrf_token: CSRF = "",
) -> Response:
    """Move the lead (``crm.leads.change_stage``; ``recycled`` is a release, as the API's release route)."""
    actor = require(request, "queue")
    check_csrf(request, csrf_token)
    form = {"stage": stage, "reason": reason}
    if len(reason) > 300:
        return _lead_action(
            request, actor, lead_id, _fail(f"reason: at most 300 characters (got {len(reason)})"), "", form
        )
    if stage not in {s.value for s in Stage}:
        known = ", ".join(s.value for s in Stage)
        return _lead_action(request, actor, lead_id, _fail(f"stage: unknown stage {stage!r}; one of {known}"), "", form)

    def act(db: Session) -> None:
        if stage == Stage.RECYCLED.value:
            leads.release_lead(db, actor=actor, lead_id=lead_id, reason=reason or None)
        else:
            leads.change_stage(db, actor=actor, lead_id=lead_id, stage=Stage(stage), reason=reason or None)

    return _lead_action(request, actor, lead_id, act, "stage", form)


def _fail(message: str) -> Callable[[Session], None]:
    """An action that refuses with ``message`` (422), so bad form input shows like a refused service call."""

    def act(_db: Session) -> None:
        raise Invalid(message)

    return act


@router.post("/leads/{lead_id}/notes")
@page
def add_note(
    request: Request,
    lead_id: int,
    text: Annotated[str, Form(max_length=20_000)] = "",
    csrf_token: CSRF = "",
) -> Response:
    """Add a note (a ``note`` event, as ``POST /api/v1/events``)."""
    actor = require(request, "queue")
    check_csrf(request, csrf_token)
    form = {"note": text}
    if not text.strip():
        return _lead_action(request, actor, lead_id, _fail(translate(language(request), "lead.note_empty")), "", form)
    if len(text) > 5000:
        message = f"note: at most 5000 characters (got {len(text)})"
        return _lead_action(request, actor, lead_id, _fail(message), "", form)

    def act(db: Session) -> None:
        data = schemas.EventCreate(type="note", lead_id=lead_id, payload={"text": text.strip()})
        eventlog.record_activity(db, actor=actor, data=data)

    return _lead_action(request, actor, lead_id, act, "note", form)


@router.post("/leads/{lead_id}/tasks")
@page
def add_task(
    request: Request,
    lead_id: int,
    title: Annotated[str, Form(max_length=1000)] = "",
    due_at: Annotated[str, Form(max_length=40)] = "",
    kind: Annotated[str, Form(max_length=20)] = "follow_up",
    csrf_token: CSRF = "",
) -> Response:
    """Add a task about the lead for myself (``crm.tasks.create_task``, as ``POST /api/v1/tasks``)."""
    actor = require(request, "queue")
    check_csrf(request, csrf_token)
    form = {"title": title, "due_at": due_at, "kind": kind}
    due: datetime | None = None
    if due_at.strip():
        try:
            due = datetime.fromisoformat(due_at.strip())
        except ValueError:
            message = f"due_at: {due_at!r} is not a date and time (e.g. 2026-12-01T09:00)"
            return _lead_action(request, actor, lead_id, _fail(message), "", form)
        if due.tzinfo is None:
            due = due.replace(tzinfo=UTC)

    def act(db: Session) -> None:
        data = schemas.TaskCreate(title=title.strip(), lead_id=lead_id, due_at=due, kind=kind)
        tasks.create_task(db, actor=actor, data=data)

    return _lead_action(request, actor, lead_id, act, "task", form)


@router.get("/search")
@page
def search_page(request: Request, q: Annotated[str, Query(max_length=200)] = "") -> Response:
    """Full-text lead search (English and Chinese) within what I may see."""
    actor = require(request, "search")
    hits: list[lead_search.SearchHit] = []
    error = None
    status = 200
    if q.strip():
        try:
            with writing(request) as db:  # the search brings its index up to date first
                hits = lead_search.search(db, actor=actor, q=q, limit=LIST_LIMIT)
                db.commit()
        except DomainError as exc:
            error, status = exc.message, exc.status_code
    return render(request, "search.html", actor, {"q": q, "hits": hits, "error": error}, status=status)


# --- supervisor pages -------------------------------------------------------------------------------------------


def _since(value: str | None) -> datetime | None:
    """The dashboard window's start: absent → the last ``DASHBOARD_DAYS`` days (from UTC midnight);
    ``all`` or empty → all time; else an ISO date or time (UTC when no zone is given)."""
    if value is None:
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        return today - timedelta(days=DASHBOARD_DAYS)
    if value.strip() in ("", "all"):
        return None
    parsed = datetime.fromisoformat(value.strip())
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@router.get("/dashboard")
@page
def dashboard_page(request: Request, since: Annotated[str | None, Query(max_length=40)] = None) -> Response:
    """The team dashboard: the same figures as ``GET /api/v1/dashboard?since=...``, as tables and Plotly charts.

    It covers leads created in the last ``DASHBOARD_DAYS`` days unless ``since`` says otherwise (``all``:
    everything), so that it stays fast on large stores.
    """
    actor = require(request, "dashboard")
    lang = language(request)
    try:
        start = _since(since)
    except ValueError:
        return error_page(request, actor, 422, f"since: {since!r} is not a date (e.g. 2026-01-31, or 'all')")
    with reading(request) as db:
        summary = dashboard.summary(db, actor=actor, since=start)
        experiments: list[dict[str, Any]] = []
        if actor.role in dashboard.MANAGERS:
            from leadpilot.experiments import service as experiment_service

            experiments = [
                experiment_service.experiment_json(e) for e in experiment_service.list_experiments(db, actor=actor)
            ]

    def t(key: str) -> str:
        return translate(lang, key)

    shown_since = start.isoformat() if start is not None else "all"
    context: dict[str, Any] = {"summary": summary, "charts": charts.dashboard_charts(summary, t), "since": shown_since}
    context["experiments"] = experiments
    return render(request, "dashboard.html", actor, context)


@router.get("/assignments")
@page
def assignments_page(request: Request) -> Response:
    """Today's claims and assignments per salesperson, capacity left and pending recommendations."""
    actor = require(request, "assignments")
    with reading(request) as db:
        rows = dashboard.assignment_overview(db, actor=actor)
        recent = eventlog.list_events(db, actor=actor, type=["assign", "claim"], sort="-id", limit=LIST_LIMIT).items
    return render(request, "assignments.html", actor, {"rows": rows, "recent": recent})


@router.get("/experiments/{key}")
@page
def experiment_page(request: Request, key: str) -> Response:
    """One experiment's results (``experiments.service.report``, as ``GET /api/v1/experiments/{key}/report``)."""
    from leadpilot.experiments import service as experiment_service

    actor = require(request, "assignments")  # supervisors and admins, like the API
    try:
        with reading(request) as db:
            result = experiment_service.report(db, actor=actor, key=key)
    except DomainError as exc:
        return error_page(request, actor, exc.status_code, exc.message)
    return render(request, "experiment.html", actor, {"report": result})


# --- admin pages ------------------------------------------------------------------------------------------------


def _rules_context(request: Request) -> dict[str, Any]:
    from leadpilot.models import rules

    with reading(request) as db:
        return {"rules": [rules.rule_json(r) for r in rules.list_rules(db)], "error": None, "form": {}}


@router.get("/admin/rules")
@page
def rules_page(request: Request) -> Response:
    """Cold-start scoring rules, and a form to add one."""
    actor = require(request, "rules")
    return render(request, "rules.html", actor, _rules_context(request))


@router.post("/admin/rules")
@page
def save_rule(
    request: Request,
    name: Annotated[str, Form(max_length=1000)] = "",
    text: Annotated[str, Form(max_length=10_000)] = "",
    enabled: Annotated[str, Form(max_length=10)] = "",
    csrf_token: CSRF = "",
) -> Response:
    """Validate and save a rule (``models.rules.save_rule``, as ``POST /api/v1/scoring/rules``)."""
    from leadpilot.features.dictionary import load
    from leadpilot.models import rules

    actor = require(request, "rules")
    check_csrf(request, csrf_token)
    form = {"name": name, "text": text, "enabled": enabled}
    try:
        if len(text) > 4000:
            raise rules.RuleError(f"a rule is at most 4000 characters (got {len(text)})", field="text")
        catalogue = rules.RuleCatalogue.build(load(request.app.state.settings.feature_dictionary))
        with writing(request) as db:
            rules.save_rule(db, actor=actor, name=name.strip(), text=text, catalogue=catalogue, enabled=bool(enabled))
            db.commit()
    except DomainError as exc:
        context = _rules_context(request)
        context.update(error=exc.message, form=form)
        return render(request, "rules.html", actor, context, status=exc.status_code)
    return redirect("/admin/rules", done="saved")


@router.get("/admin/features")
@page
def features_page(
    request: Request,
    q: Annotated[str, Query(max_length=200)] = "",
    page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
) -> Response:
    """The feature dictionary: every derived feature with its id and explanation, filtered and paginated."""
    from leadpilot.features.dictionary import load

    actor = require(request, "features")
    dictionary = load(request.app.state.settings.feature_dictionary)
    needle = q.strip().lower()
    found = [d for d in dictionary.derived if not needle or needle in d.name.lower() or needle in d.explanation.lower()]
    pages = max(1, -(-len(found) // FEATURES_PER_PAGE))
    current = min(page_number, pages)
    start = (current - 1) * FEATURES_PER_PAGE
    context = {
        "features": found[start : start + FEATURES_PER_PAGE],
        "total": len(found),
        "bases": len(dictionary.base_features),
        "page": current,
        "pages": pages,
        "q": q,
    }
    return render(request, "features.html", actor, context)


# Pages in their own modules register on this router when imported (after everything above exists).
from leadpilot.web import admin_pages, contract_pages, workflow_pages  # noqa: E402, F401
