"""Every API route for every role: the status each role gets, what each list shows, and what is audited.

The heart of this module is ``MATRIX``: one row per (route, target, body) giving the expected status for
each of the six callers: anonymous, screener, alice (salesperson in east), sup_east (supervisor of east),
sup_all (supervisor of sales, so east and west) and admin. ``test_matrix_covers_every_route`` fails when
the OpenAPI schema has a route without a row, so a new route cannot ship without its access rules.

The rules under test (docs/api.md, "Roles"):

* a row outside the caller's view answers 404 (its existence is not revealed); an action on a visible
  row that the role may not take answers 403; an illegal stage move 409 with the reason; no token 401;
* admins see and do everything (they do not own leads, so they assign rather than claim);
* supervisors see their team subtree's leads plus the claim pool and assign within their subtree;
* salespeople see their own leads plus the pool, change only their own, claim and release;
* screeners see leads in new/screening only and move them through screening.

Every test starts from the same freshly built organisation (conftest's org plus accounts, contacts and
tasks): it is built once per backend and restored before each test, and before each role of an
``isolated`` row (rows whose successful writes would change what the next role sees). Besides the
status, each row checks that a refused request (4xx) leaves the database unchanged, byte for byte, and
that a successful write adds an audit row.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, Integer, func, select, text
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.auth.security import create_access_token
from leadpilot.config import Settings
from leadpilot.crm import customers, leads, people, schemas, tasks
from leadpilot.crm.access import SYSTEM, actor_for
from leadpilot.crm.models import AuditEntry, Base, Event, TeamKind, User
from leadpilot.db.engine import make_engine
from tests.conftest import PASSWORD, Org, build_org

API = "/api/v1"
ROLES: tuple[str, ...] = ("anonymous", "screener", "alice", "sup_east", "sup_all", "admin")
SIGNED_IN: tuple[str, ...] = ROLES[1:]
MISSING_ID = 999_999

# --- the test world: the conftest organisation plus accounts, contacts, tasks and a spare team ----------

# lead key -> (account, contact) linked to that lead; olga and orphan belong to no lead
LEAD_LINKS = {
    "alice": ("acme", "carol"),
    "bob": ("bobco", "bert"),
    "wendy": ("westco", "walt"),
    "new": ("newco", "nina"),
    "pool": ("poolco", "pete"),
}
# task title -> (assignee, lead key or None, created by)
TASKS = {
    "t_alice": ("alice", "alice", "alice"),
    "t_bob": ("bob", "bob", "sup_east"),
    "t_wendy": ("wendy", "wendy", "sup_all"),
    "t_pool": ("bob", "pool", "sup_east"),
    "t_screener": ("screener", "new", "screener"),
    "t_free_bob": ("bob", None, "bob"),
    "t_free_wendy": ("wendy", None, "wendy"),
}


@dataclass
class World:
    """Ids of everything the tests refer to by name."""

    org: Org
    accounts: dict[str, int] = field(default_factory=dict)
    contacts: dict[str, int] = field(default_factory=dict)
    tasks: dict[str, int] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # lead key -> id of its lead_created event

    def ref(self, kind: str, key: str) -> int:
        """The id behind a reference such as ``lead:wendy``; ``<kind>:missing`` is an id that does not exist."""
        if key == "missing":
            return MISSING_ID
        table: dict[str, int] = {
            "lead": self.org.leads,
            "user": {name: u.id for name, u in self.org.users.items()},
            "team": self.org.teams,
            "account": self.accounts,
            "contact": self.contacts,
            "task": self.tasks,
            "event": self.events,
        }[kind]
        return table[key]

    def uid(self, name: str) -> int:
        return self.org.users[name].id


def extend_org(org: Org) -> World:
    """Add accounts and contacts (one per linked lead, plus orphans), tasks and an empty team."""
    world = World(org)
    with Session(org.engine, expire_on_commit=False) as s:
        for n, (lead_key, (account, contact)) in enumerate(LEAD_LINKS.items()):
            a = customers.create_account(s, actor=SYSTEM, data=schemas.AccountCreate(name=account))
            c = customers.create_contact(
                s,
                actor=SYSTEM,
                data=schemas.ContactCreate(
                    name=contact, account_id=a.id, phone=f"+1415555010{n}", email=f"{contact}@example.com"
                ),
            )
            leads.update_lead(
                s, actor=SYSTEM, lead_id=org.leads[lead_key], data=schemas.LeadUpdate(account_id=a.id, contact_id=c.id)
            )
            world.accounts[account], world.contacts[contact] = a.id, c.id
        orphan = customers.create_account(s, actor=SYSTEM, data=schemas.AccountCreate(name="orphan"))
        olga = customers.create_contact(
            s, actor=SYSTEM, data=schemas.ContactCreate(name="olga", phone="+14155550109", email="olga@example.com")
        )
        world.accounts["orphan"], world.contacts["olga"] = orphan.id, olga.id
        spare = people.create_team(s, actor=SYSTEM, data=schemas.TeamCreate(name="spare", kind=TeamKind.SALES))
        org.teams["spare"] = spare.id
        actors = {name: actor_for(s, s.get_one(User, u.id)) for name, u in org.users.items()}
        for title, (assignee, lead_key, creator) in TASKS.items():
            task = tasks.create_task(
                s,
                actor=actors[creator],
                data=schemas.TaskCreate(
                    title=title,
                    assignee_id=org.users[assignee].id,
                    lead_id=org.leads[lead_key] if lead_key else None,
                    due_at=datetime(2030, 1, 1, tzinfo=UTC),
                ),
            )
            world.tasks[title] = task.id
        s.commit()
        for key, lead_id in org.leads.items():
            world.events[key] = s.scalar(
                select(func.min(Event.id)).where(Event.lead_id == lead_id, Event.type == "lead_created")
            )
    return world


class Snapshot:
    """The database contents after the world was built, restored in milliseconds before each test."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.tables = Base.metadata.sorted_tables
        if engine.dialect.name == "sqlite":
            self.path = str(engine.url.database)
            self.copy = sqlite3.connect(":memory:", check_same_thread=False)
            with closing(sqlite3.connect(self.path)) as live:
                live.backup(self.copy)
        else:
            with engine.connect() as conn:
                self.rows = {
                    t.name: [dict(r._mapping) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
                    for t in self.tables
                }

    def restore(self) -> None:
        if self.engine.dialect.name == "sqlite":
            # The backup API copies page by page into the live file, safe with pooled connections open.
            with closing(sqlite3.connect(self.path)) as live:
                self.copy.backup(live)
            return
        names = ", ".join(f'"{t.name}"' for t in self.tables)
        with self.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            for table in self.tables:
                if self.rows[table.name]:
                    conn.execute(table.insert(), self.rows[table.name])
            for table in self.tables:
                if "id" in table.c and isinstance(table.c.id.type, Integer) and self.rows[table.name]:
                    conn.execute(
                        text(f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), max(id)) FROM {table.name}")
                    )


@dataclass
class Env:
    """One backend: engine, app client, the world's ids and its snapshot, and a token per user."""

    engine: Engine
    client: TestClient
    settings: Settings
    world: World
    snapshot: Snapshot
    tokens: dict[str, dict[str, str]]
    pristine: tuple[str, int] = ("", 0)

    def as_(self, role: str) -> dict[str, str]:
        """Bearer headers for a user; none for ``anonymous``."""
        return self.tokens.get(role, {})

    def state(self) -> tuple[str, int]:
        """A digest of every row of every table (equal digests: nothing was written) and the audit row count."""
        digest = hashlib.sha256()
        audits = 0
        with self.engine.connect() as conn:
            for table in self.snapshot.tables:
                for row in conn.execute(select(table).order_by(*table.primary_key.columns)):
                    digest.update(repr(tuple(row)).encode())
                    audits += table is AuditEntry.__table__
                digest.update(b"|")
        return digest.hexdigest(), audits

    def fingerprint(self) -> str:
        return self.state()[0]

    def reset(self) -> None:
        """Back to the freshly built world (PostgreSQL: only when something was written, TRUNCATE is slow)."""
        if self.engine.dialect.name == "sqlite" or self.state() != self.pristine:
            self.snapshot.restore()
            self.forget_cached_actors()

    def forget_cached_actors(self) -> None:
        """A restore changes users behind the API's back; the app's token cache must not outlive it."""
        self.client.app.state.actor_cache.clear()  # type: ignore[attr-defined]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """The world built once per backend (a fresh migrated database, like conftest's ``engine``)."""
    tmp = tmp_path_factory.mktemp(f"roles-{request.param}")
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        shutil.copy(template, tmp / "leadpilot.db")
        engine = make_engine(f"sqlite:///{tmp / 'leadpilot.db'}")
    else:
        engine = make_engine(request.getfixturevalue("pg_database_url"))
        names = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
    world = extend_org(build_org(engine))
    settings = Settings(environment="test", data_dir=tmp / "data", secret_key="test-secret-key-" + "x" * 32)
    secret = settings.resolved_secret_key()
    tokens = {
        name: {"Authorization": f"Bearer {create_access_token(user, secret=secret, minutes=30)}"}
        for name, user in world.org.users.items()
    }
    with TestClient(create_app(settings, engine=engine)) as client:
        env = Env(engine, client, settings, world, Snapshot(engine), tokens)
        env.pristine = env.state()
        yield env
    engine.dispose()


@pytest.fixture
def env(backend: Env) -> Env:
    """The backend with the freshly built world restored: every test starts from the same state."""
    backend.reset()
    return backend


# --- the matrix ---------------------------------------------------------------------------------------

_REF = re.compile(r"\{(lead|user|team|account|contact|task|event):(\w+)\}")
# A path parameter given literally: ``{name=transfer}`` is ``{name}`` in the schema and ``transfer`` in the URL.
_LITERAL = re.compile(r"\{(\w+)=([\w.]+)\}")


@dataclass(frozen=True)
class Row:
    """One route with one target and body, and the status expected for each role in ``ROLES`` order.

    ``path`` names its targets inline (``/leads/{lead:wendy}``); string values of ``body`` may be a
    whole reference (``"{user:bob}"`` becomes bob's id) or contain ``{role}`` (the caller's name).
    """

    method: str
    path: str
    expect: tuple[int, ...]
    body: dict[str, Any] | None = None
    form: bool = False  # send ``body`` form-encoded without a token (the login route)
    isolated: bool = False  # restore the world before a role when the previous role wrote
    label: str = ""
    query: dict[str, Any] | None = None  # query-string parameters

    @property
    def template(self) -> str:
        """The route's path in the OpenAPI schema (``/api/v1/leads/{lead_id}``)."""
        return _LITERAL.sub(lambda m: "{" + m.group(1) + "}", _REF.sub(lambda m: "{" + m.group(1) + "_id}", self.path))

    @property
    def id(self) -> str:
        return f"{self.method} {self.path.removeprefix(API)}" + (f" [{self.label}]" if self.label else "")

    def url(self, world: World) -> str:
        return _LITERAL.sub(lambda m: m.group(2), _REF.sub(lambda m: str(world.ref(m.group(1), m.group(2))), self.path))

    def payload(self, world: World, role: str) -> dict[str, Any] | None:
        def resolve(value: Any) -> Any:
            if not isinstance(value, str):
                return value
            whole = _REF.fullmatch(value)
            if whole:
                return world.ref(whole.group(1), whole.group(2))
            return value.replace("{role}", role)

        return None if self.body is None else {k: resolve(v) for k, v in self.body.items()}


def R(  # a short name keeps the table readable
    method: str,
    path: str,
    anonymous: int,
    screener: int,
    alice: int,
    sup_east: int,
    sup_all: int,
    admin: int,
    body: dict[str, Any] | None = None,
    **options: Any,
) -> Row:
    full = path if path == "/healthz" else API + path
    return Row(method, full, (anonymous, screener, alice, sup_east, sup_all, admin), body, **options)


OK, CREATED, GONE = 200, 201, 204
NOAUTH, DENIED, HIDDEN, CLASH, BAD = 401, 403, 404, 409, 422

# fmt: off
MATRIX: list[Row] = [
    # method    path                                anon    scr     alice   s_east  s_all   admin
    # --- health and login: no token needed ---
    R("GET",    "/healthz",                         OK,     OK,     OK,     OK,     OK,     OK),
    R("POST",   "/auth/token",                      NOAUTH, OK,     OK,     OK,     OK,     OK,
      {"username": "{role}", "password": PASSWORD}, form=True),
    R("GET",    "/auth/me",                         NOAUTH, OK,     OK,     OK,     OK,     OK),

    # --- users: admins all; supervisors their subtree; others their own team ---
    R("GET",    "/users",                           NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/users",                           NOAUTH, DENIED, DENIED, DENIED, DENIED, CREATED,
      {"username": "newbie", "password": "long-enough-pw", "role": "sales", "team_id": "{team:east}"}),
    R("GET",    "/users/{user:bob}",                NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/users/{user:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("PATCH",  "/users/{user:bob}",                NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"full_name": "Bob by {role}"}, label="supervisor field"),
    R("PATCH",  "/users/{user:bob}",                NOAUTH, HIDDEN, DENIED, DENIED, DENIED, OK,
      {"role": "supervisor"}, label="admin-only field"),
    R("PATCH",  "/users/{user:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"full_name": "Wendy by {role}"}),
    R("PATCH",  "/users/{user:alice}",              NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"full_name": "Alice by {role}"}, label="self"),
    R("DELETE", "/users/{user:bob}",                NOAUTH, HIDDEN, DENIED, DENIED, DENIED, OK),
    R("DELETE", "/users/{user:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, DENIED, OK),

    # --- teams: everyone signed in reads the org chart; admins change it ---
    R("GET",    "/teams",                           NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/teams",                           NOAUTH, DENIED, DENIED, DENIED, DENIED, CREATED,
      {"name": "north", "kind": "sales", "parent_id": "{team:sales}"}),
    R("GET",    "/teams/{team:west}",               NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("PATCH",  "/teams/{team:west}",               NOAUTH, DENIED, DENIED, DENIED, DENIED, OK,
      {"name": "west-{role}"}),
    R("DELETE", "/teams/{team:spare}",              NOAUTH, DENIED, DENIED, DENIED, DENIED, GONE),
    R("DELETE", "/teams/{team:east}",               NOAUTH, DENIED, DENIED, DENIED, DENIED, CLASH,
      label="has members"),

    # --- accounts: those of visible leads; admins delete ---
    R("GET",    "/accounts",                        NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/accounts",                        NOAUTH, CREATED, CREATED, CREATED, CREATED, CREATED,
      {"name": "Fresh {role} Ltd"}),
    R("GET",    "/accounts/{account:acme}",         NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/accounts/{account:westco}",       NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("GET",    "/accounts/{account:newco}",        NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("GET",    "/accounts/{account:orphan}",       NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, OK),
    R("PATCH",  "/accounts/{account:acme}",         NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      {"industry": "by {role}"}),
    R("PATCH",  "/accounts/{account:westco}",       NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"industry": "by {role}"}),
    R("DELETE", "/accounts/{account:acme}",         NOAUTH, HIDDEN, DENIED, DENIED, DENIED, GONE),
    R("DELETE", "/accounts/{account:westco}",       NOAUTH, HIDDEN, HIDDEN, HIDDEN, DENIED, GONE),

    # --- contacts: those of visible leads; every read of phone/email is audited ---
    R("GET",    "/contacts",                        NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/contacts",                        NOAUTH, CREATED, CREATED, CREATED, CREATED, CREATED,
      {"name": "new {role}", "phone": "+14155550199", "email": "new@example.com"}),
    R("GET",    "/contacts/{contact:carol}",        NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/contacts/{contact:bert}",         NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK),
    R("GET",    "/contacts/{contact:walt}",         NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("GET",    "/contacts/{contact:nina}",         NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("GET",    "/contacts/{contact:olga}",         NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, OK),
    R("PATCH",  "/contacts/{contact:carol}",        NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      {"name": "Carol by {role}"}),
    R("PATCH",  "/contacts/{contact:walt}",         NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"name": "Walt by {role}"}),
    R("DELETE", "/contacts/{contact:carol}",        NOAUTH, HIDDEN, DENIED, DENIED, DENIED, GONE),
    R("DELETE", "/contacts/{contact:walt}",         NOAUTH, HIDDEN, HIDDEN, HIDDEN, DENIED, GONE),

    # --- leads: reads ---
    R("GET",    "/leads",                           NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("GET",    "/leads/{lead:new}",                NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("GET",    "/leads/{lead:screening}",          NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("GET",    "/leads/{lead:pool}",               NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/leads/{lead:alice}",              NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/leads/{lead:bob}",                NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK),
    R("GET",    "/leads/{lead:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("GET",    "/leads/{lead:missing}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    # --- leads: writes ---
    R("POST",   "/leads",                           NOAUTH, CREATED, CREATED, CREATED, CREATED, CREATED,
      {"title": "fresh by {role}", "product_line": "housing"}),
    R("PATCH",  "/leads/{lead:alice}",              NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      {"notes": "by {role}"}),
    R("PATCH",  "/leads/{lead:bob}",                NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK,
      {"notes": "by {role}"}),
    R("PATCH",  "/leads/{lead:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"notes": "by {role}"}),
    R("PATCH",  "/leads/{lead:pool}",               NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"notes": "by {role}"}),
    R("PATCH",  "/leads/{lead:new}",                NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK,
      {"notes": "by {role}"}),
    R("PATCH",  "/leads/{lead:missing}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN,
      {"notes": "by {role}"}),
    R("DELETE", "/leads/{lead:alice}",              NOAUTH, HIDDEN, DENIED, DENIED, DENIED, GONE),
    R("DELETE", "/leads/{lead:wendy}",              NOAUTH, HIDDEN, HIDDEN, HIDDEN, DENIED, GONE),
    R("DELETE", "/leads/{lead:missing}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    # --- leads: stage moves (the life cycle is in crm/stages.py) ---
    R("POST",   "/leads/{lead:new}/stage",          NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK,
      {"stage": "screening"}, isolated=True),
    R("POST",   "/leads/{lead:screening}/stage",    NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK,
      {"stage": "qualified"}, isolated=True),
    R("POST",   "/leads/{lead:screening}/stage",    NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK,
      {"stage": "lost", "reason": "no budget"}, isolated=True, label="lost"),
    R("POST",   "/leads/{lead:alice}/stage",        NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      {"stage": "contacted"}, isolated=True),
    R("POST",   "/leads/{lead:wendy}/stage",        NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"stage": "contacted"}, isolated=True),
    R("POST",   "/leads/{lead:pool}/stage",         NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"stage": "lost"}, isolated=True),
    R("POST",   "/leads/{lead:alice}/stage",        NOAUTH, HIDDEN, CLASH,  CLASH,  CLASH,  CLASH,
      {"stage": "won"}, label="illegal move"),
    R("POST",   "/leads/{lead:pool}/stage",         NOAUTH, HIDDEN, DENIED, CLASH,  CLASH,  CLASH,
      {"stage": "assigned"}, label="assigned only by claim or assign"),
    # --- leads: the claim pool. Only salespeople and supervisors claim; any existing lead outside the
    # pool answers 409, visible or not, so that a lost claim race always reads as a conflict ---
    R("POST",   "/leads/{lead:pool}/claim",         NOAUTH, DENIED, OK,     OK,     OK,     DENIED,
      isolated=True),
    R("POST",   "/leads/{lead:alice}/claim",        NOAUTH, DENIED, CLASH,  CLASH,  CLASH,  DENIED),
    R("POST",   "/leads/{lead:wendy}/claim",        NOAUTH, DENIED, CLASH,  CLASH,  CLASH,  DENIED),
    R("POST",   "/leads/{lead:new}/claim",          NOAUTH, DENIED, CLASH,  CLASH,  CLASH,  DENIED),
    R("POST",   "/leads/{lead:missing}/claim",      NOAUTH, DENIED, HIDDEN, HIDDEN, HIDDEN, DENIED),
    R("POST",   "/leads/{lead:alice}/release",      NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      isolated=True),
    R("POST",   "/leads/{lead:bob}/release",        NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK,
      isolated=True),
    R("POST",   "/leads/{lead:wendy}/release",      NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      isolated=True),
    R("POST",   "/leads/{lead:pool}/release",       NOAUTH, HIDDEN, CLASH,  CLASH,  CLASH,  CLASH),
    # --- leads: assignment (supervisors within their subtree, admins anyone) ---
    R("POST",   "/leads/{lead:pool}/assign",        NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"owner_id": "{user:bob}"}, isolated=True),
    R("POST",   "/leads/{lead:pool}/assign",        NOAUTH, HIDDEN, DENIED, DENIED, OK,     OK,
      {"owner_id": "{user:wendy}"}, isolated=True, label="to west"),
    R("POST",   "/leads/{lead:alice}/assign",       NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"owner_id": "{user:bob}"}, isolated=True, label="reassign"),
    R("POST",   "/leads/{lead:wendy}/assign",       NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"owner_id": "{user:bob}"}, isolated=True),
    R("POST",   "/leads/{lead:new}/assign",         NOAUTH, DENIED, HIDDEN, HIDDEN, HIDDEN, CLASH,
      {"owner_id": "{user:bob}"}, label="not qualified yet"),

    # --- tasks: own, about visible leads, or (supervisors) their subtree's ---
    R("GET",    "/tasks",                           NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/tasks",                           NOAUTH, CREATED, CREATED, CREATED, CREATED, CREATED,
      {"title": "call back ({role})"}, label="for oneself"),
    R("POST",   "/tasks",                           NOAUTH, DENIED, DENIED, CREATED, CREATED, CREATED,
      {"title": "for bob ({role})", "assignee_id": "{user:bob}"}, label="for bob"),
    R("POST",   "/tasks",                           NOAUTH, DENIED, DENIED, DENIED, CREATED, CREATED,
      {"title": "for wendy ({role})", "assignee_id": "{user:wendy}"}, label="for wendy"),
    R("POST",   "/tasks",                           NOAUTH, HIDDEN, HIDDEN, HIDDEN, CREATED, CREATED,
      {"title": "about wendy's lead ({role})", "lead_id": "{lead:wendy}"}, label="about wendy's lead"),
    R("GET",    "/tasks/{task:t_alice}",            NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/tasks/{task:t_free_bob}",         NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK),
    R("GET",    "/tasks/{task:t_wendy}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("GET",    "/tasks/{task:t_screener}",         NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("PATCH",  "/tasks/{task:t_alice}",            NOAUTH, HIDDEN, OK,     OK,     OK,     OK,
      {"title": "edited by {role}"}),
    R("PATCH",  "/tasks/{task:t_pool}",             NOAUTH, HIDDEN, DENIED, OK,     OK,     OK,
      {"title": "edited by {role}"}, label="bob's task on a pool lead"),
    R("PATCH",  "/tasks/{task:t_wendy}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK,
      {"title": "edited by {role}"}),
    R("DELETE", "/tasks/{task:t_alice}",            NOAUTH, HIDDEN, GONE,   GONE,   GONE,   GONE,
      isolated=True),
    R("DELETE", "/tasks/{task:t_pool}",             NOAUTH, HIDDEN, DENIED, GONE,   GONE,   GONE,
      isolated=True),

    # --- events: those about visible leads; activities on leads one may work ---
    R("GET",    "/events",                          NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/events",                          NOAUTH, HIDDEN, CREATED, CREATED, CREATED, CREATED,
      {"type": "note", "lead_id": "{lead:alice}", "payload": {"text": "hi"}}),
    R("POST",   "/events",                          NOAUTH, HIDDEN, DENIED, CREATED, CREATED, CREATED,
      {"type": "call_attempt", "lead_id": "{lead:pool}"}, label="on a pool lead"),
    R("POST",   "/events",                          NOAUTH, CREATED, HIDDEN, HIDDEN, HIDDEN, CREATED,
      {"type": "note", "lead_id": "{lead:screening}"}, label="on a lead in screening"),
    R("POST",   "/events",                          NOAUTH, BAD,    BAD,    BAD,    BAD,    BAD,
      {"type": "claim", "lead_id": "{lead:alice}"}, label="not an activity type"),
    R("GET",    "/events/{event:alice}",            NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/events/{event:bob}",              NOAUTH, HIDDEN, HIDDEN, OK,     OK,     OK),
    R("GET",    "/events/{event:wendy}",            NOAUTH, HIDDEN, HIDDEN, HIDDEN, OK,     OK),
    R("GET",    "/events/{event:new}",              NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),

    # --- scoring: a lead's score as its lead; registry and rules for supervisors and admins (promote and
    # roll back: admins); the review queue for reviewers (screeners, supervisors, admins) ---
    R("GET",    "/leads/{lead:alice}/score",        NOAUTH, HIDDEN, OK,     OK,     OK,     OK),
    R("GET",    "/leads/{lead:new}/score",          NOAUTH, OK,     HIDDEN, HIDDEN, HIDDEN, OK),
    R("GET",    "/scoring/models",                  NOAUTH, DENIED, DENIED, OK,     OK,     OK),
    R("POST",   "/scoring/models/{name=transfer}/{version=1}/promote",
                                                    NOAUTH, DENIED, DENIED, DENIED, DENIED, HIDDEN),
    R("POST",   "/scoring/models/{name=transfer}/rollback",
                                                    NOAUTH, DENIED, DENIED, DENIED, DENIED, HIDDEN),
    R("POST",   "/scoring/models/{name=transfer}/{version=1}/challenger",
                                                    NOAUTH, DENIED, DENIED, DENIED, DENIED, HIDDEN),
    R("GET",    "/scoring/rules",                   NOAUTH, DENIED, DENIED, OK,     OK,     OK),
    R("POST",   "/scoring/rules",                   NOAUTH, DENIED, DENIED, CREATED, CREATED, CREATED,
      {"name": "big by {role}", "text": "budget > 500000 -> priority: high, review"}),
    R("POST",   "/scoring/rules",                   NOAUTH, DENIED, DENIED, BAD,    BAD,    BAD,
      {"name": "typo", "text": "budgt > 5 -> priority: high"}, label="unknown field"),
    R("POST",   "/scoring/rules/run",               NOAUTH, DENIED, DENIED, OK,     OK,     OK),
    R("GET",    "/scoring/review",                  NOAUTH, OK,     DENIED, OK,     OK,     OK),
    R("POST",   "/scoring/review/{item_id=999999}/approve",
                                                    NOAUTH, HIDDEN, DENIED, HIDDEN, HIDDEN, HIDDEN, {"note": "ok"}),
    R("POST",   "/scoring/review/{item_id=999999}/reject",
                                                    NOAUTH, HIDDEN, DENIED, HIDDEN, HIDDEN, HIDDEN, {}),

    # --- search: every role searches within what it may see ---
    R("GET",    "/search/leads",                    NOAUTH, OK,     OK,     OK,     OK,     OK,
      query={"q": "pool"}),
    R("GET",    "/search/leads",                    NOAUTH, BAD,    BAD,    BAD,    BAD,    BAD,
      query={"q": "!!"}, label="no words"),

    R("GET",    "/me/recommendations",              NOAUTH, DENIED, OK,     OK,     OK,     DENIED),
    # --- distribution runs: admins only ---
    R("POST",   "/distribution/runs",               NOAUTH, DENIED, DENIED, DENIED, DENIED, OK,
      {}, isolated=True),
    R("POST",   "/distribution/runs",               NOAUTH, BAD,    BAD,    BAD,    BAD,    BAD,
      {"ranker": "v3"}, label="unknown ranker: the body is checked first"),
    R("POST",   "/distribution/runs",               NOAUTH, DENIED, DENIED, DENIED, DENIED, CLASH,
      {"ranker": "mmoe"}, label="no V2 model promoted"),
    R("POST",   "/distribution/runs",               NOAUTH, DENIED, DENIED, DENIED, DENIED, CLASH,
      {"experiment": "ab"}, label="an experiment needs assign"),

    # --- dashboards: admins all leads, supervisors their subtree, salespeople their own; no screeners ---
    R("GET",    "/dashboard",                       NOAUTH, DENIED, OK,     OK,     OK,     OK),
    R("GET",    "/dashboard/assignments",           NOAUTH, DENIED, DENIED, OK,     OK,     OK),

    # --- experiments: admins create, start and stop; supervisors and admins read them and their reports ---
    R("GET",    "/experiments",                     NOAUTH, DENIED, DENIED, OK,     OK,     OK),
    R("POST",   "/experiments",                     NOAUTH, DENIED, DENIED, DENIED, DENIED, CREATED,
      {"key": "ab-{role}", "unit": "lead", "arms": [{"name": "control", "strategy": "round_robin", "share": 0.5},
                                                    {"name": "busy", "strategy": "least_busy", "share": 0.5}]}),
    R("POST",   "/experiments",                     NOAUTH, DENIED, DENIED, DENIED, DENIED, BAD,
      {"key": "ab-bad", "unit": "lead", "arms": [{"name": "a", "strategy": "round_robin", "share": 0.5},
                                                 {"name": "b", "strategy": "least_busy", "share": 0.4}]},
      label="shares add up to 0.9"),
    R("GET",    "/experiments/{key=missing}",       NOAUTH, DENIED, DENIED, HIDDEN, HIDDEN, HIDDEN),
    R("POST",   "/experiments/{key=missing}/start", NOAUTH, DENIED, DENIED, DENIED, DENIED, HIDDEN),
    R("POST",   "/experiments/{key=missing}/stop",  NOAUTH, DENIED, DENIED, DENIED, DENIED, HIDDEN),
    R("GET",    "/experiments/{key=missing}/report",
                                                    NOAUTH, DENIED, DENIED, HIDDEN, HIDDEN, HIDDEN),
    R("GET",    "/experiments/{key=missing}/report.png",
                                                    NOAUTH, DENIED, DENIED, HIDDEN, HIDDEN, HIDDEN),

    # --- contracts: as their lead (sales own, supervisors subtree, admins all; screeners none). The signing
    # link answers without a bearer token but only to a valid one-time token: a bogus one is 403 for all ---
    R("GET",    "/contracts",                       NOAUTH, OK,     OK,     OK,     OK,     OK),
    R("POST",   "/contracts",                       NOAUTH, HIDDEN, CREATED, CREATED, CREATED, CREATED,
      {"lead_id": "{lead:alice}", "amount": "1000", "installments": [{"due_date": "2099-01-31", "amount": "1000"}]}),
    R("POST",   "/contracts",                       NOAUTH, HIDDEN, HIDDEN, HIDDEN, CREATED, CREATED,
      {"lead_id": "{lead:wendy}", "amount": "500"}, label="wendy's lead"),
    R("POST",   "/contracts",                       NOAUTH, HIDDEN, DENIED, CLASH,  CLASH,  CLASH,
      {"lead_id": "{lead:pool}", "amount": "500"}, label="pool lead"),
    R("POST",   "/contracts",                       NOAUTH, HIDDEN, BAD,    BAD,    BAD,    BAD,
      {"lead_id": "{lead:alice}", "amount": "1000", "installments": [{"due_date": "2099-01-31", "amount": "900"}]},
      label="plan short of the amount"),
    R("GET",    "/contracts/{contract_id=999999}",  NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    R("GET",    "/contracts/{contract_id=999999}/installments",
                                                    NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    R("POST",   "/contracts/{contract_id=999999}/send",
                                                    NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    R("POST",   "/contracts/{contract_id=999999}/cancel",
                                                    NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN),
    R("POST",   "/contracts/{contract_id=999999}/payments",
                                                    NOAUTH, HIDDEN, HIDDEN, HIDDEN, HIDDEN, HIDDEN,
      {"amount": "10", "reference": "WIRE-{role}"}),
    R("GET",    "/signing/{token=bogus.token}",     DENIED, DENIED, DENIED, DENIED, DENIED, DENIED),
    R("POST",   "/signing/{token=bogus.token}",     DENIED, DENIED, DENIED, DENIED, DENIED, DENIED,
      {"decision": "sign", "signer": "Mallory"}),

    # --- audit log: admins only ---
    R("GET",    "/audit",                           NOAUTH, DENIED, DENIED, DENIED, DENIED, OK),
]
# fmt: on

WRITE_METHODS = frozenset({"POST", "PATCH", "DELETE"})


def send(env: Env, row: Row, role: str) -> httpx.Response:
    payload = row.payload(env.world, role)
    if row.form:
        return env.client.request(row.method, row.url(env.world), data=payload)
    return env.client.request(row.method, row.url(env.world), json=payload, params=row.query, headers=env.as_(role))


def openapi_routes(client: TestClient) -> set[tuple[str, str]]:
    schema = client.get("/openapi.json").json()
    return {(method.upper(), path) for path, ops in schema["paths"].items() for method in ops}


def test_matrix_covers_every_route(env: Env) -> None:
    """Every route of the OpenAPI schema has a row, and no row names a route that no longer exists."""
    routes = openapi_routes(env.client)
    assert len(routes) >= 40
    covered = {(row.method, row.template) for row in MATRIX}
    missing = sorted(routes - covered)
    assert not missing, f"routes without a row in MATRIX (add the expected status per role): {missing}"
    stale = sorted(covered - routes)
    assert not stale, f"MATRIX rows for routes that do not exist: {stale}"
    assert len({row.id for row in MATRIX}) == len(MATRIX), "rows for the same route need distinct labels"


@pytest.mark.parametrize("row", MATRIX, ids=lambda row: row.id)
def test_route_status_per_role(row: Row, env: Env) -> None:
    """The status each role gets; refusals write nothing; successful writes leave an audit row."""
    expected = dict(zip(ROLES, row.expect, strict=True))
    actual: dict[str, int] = {}
    shown: dict[str, str] = {}
    problems: list[str] = []
    dirty = False  # whether the previous role's request wrote something
    state = env.state()
    for role in ROLES:
        if row.isolated and dirty:
            env.snapshot.restore()
            env.forget_cached_actors()
            state = env.state()
        response = send(env, row, role)
        status = actual[role] = response.status_code
        shown[role] = response.text[:160]
        dirty = row.method in WRITE_METHODS and status < 300
        before, state = state, env.state()
        if status >= 500:
            problems.append(f"{role}: server error {response.text[:300]}")
        elif status >= 400:
            logged_failure = row.form and role == "anonymous"  # a failed login is recorded (throttle, audit)
            if not logged_failure and state != before:
                problems.append(f"{role}: refused with {status} but the database changed")
            if not response.json().get("detail"):
                problems.append(f"{role}: {status} without a detail")
        elif row.method in WRITE_METHODS and state[1] <= before[1]:
            problems.append(f"{role}: {row.method} answered {status} but wrote no audit row")
    wrong = [f"{r}: expected {expected[r]}, got {actual[r]} {shown[r]}" for r in ROLES if actual[r] != expected[r]]
    assert actual == expected, "\n".join(wrong)
    assert not problems, "\n".join(problems)


# --- lists show exactly the rows each role may see -------------------------------------------------------

ALL_LEADS = ["alice", "bob", "new", "pool", "pool2", "screening", "wendy"]
ALL_TASKS = sorted(TASKS)
# resource -> role -> the names (titles, usernames, ...) its list must show, nothing more
VISIBLE: dict[str, dict[str, list[str]]] = {
    "leads": {
        "screener": ["new", "screening"],
        "alice": ["alice", "pool", "pool2"],
        "sup_east": ["alice", "bob", "pool", "pool2"],
        "sup_all": ["alice", "bob", "pool", "pool2", "wendy"],
        "admin": ALL_LEADS,
    },
    "users": {
        "screener": ["screener"],
        "alice": ["alice", "bob", "sup_east"],
        "sup_east": ["alice", "bob", "sup_east"],
        "sup_all": ["alice", "bob", "sup_all", "sup_east", "wendy"],
        "admin": ["admin", "alice", "bob", "screener", "sup_all", "sup_east", "wendy"],
    },
    "teams": {role: ["east", "opportunity", "sales", "spare", "west"] for role in SIGNED_IN},
    "accounts": {
        "screener": ["newco"],
        "alice": ["acme", "poolco"],
        "sup_east": ["acme", "bobco", "poolco"],
        "sup_all": ["acme", "bobco", "poolco", "westco"],
        "admin": ["acme", "bobco", "newco", "orphan", "poolco", "westco"],
    },
    "contacts": {
        "screener": ["nina"],
        "alice": ["carol", "pete"],
        "sup_east": ["bert", "carol", "pete"],
        "sup_all": ["bert", "carol", "pete", "walt"],
        "admin": ["bert", "carol", "nina", "olga", "pete", "walt"],
    },
    "tasks": {
        "screener": ["t_screener"],
        "alice": ["t_alice", "t_pool"],
        "sup_east": ["t_alice", "t_bob", "t_free_bob", "t_pool"],
        "sup_all": ["t_alice", "t_bob", "t_free_bob", "t_free_wendy", "t_pool", "t_wendy"],
        "admin": ALL_TASKS,
    },
    # events are listed by the key of their lead ("-" for events about no lead, such as a task's)
    "events": {
        "screener": ["new", "screening"],
        "alice": ["alice", "pool", "pool2"],
        "sup_east": ["alice", "bob", "pool", "pool2"],
        "sup_all": ["alice", "bob", "pool", "pool2", "wendy"],
        "admin": ["-", *ALL_LEADS],
    },
}


def names_in(env: Env, resource: str, items: list[dict[str, Any]]) -> list[str]:
    if resource == "events":
        by_id = {v: k for k, v in env.world.org.leads.items()}
        return sorted({by_id.get(e["lead_id"], "-") if e["lead_id"] is not None else "-" for e in items})
    key = {"leads": "title", "users": "username", "tasks": "title"}.get(resource, "name")
    return sorted(item[key] for item in items)


@pytest.mark.parametrize("resource", sorted(VISIBLE))
def test_list_shows_exactly_the_visible_rows(resource: str, env: Env) -> None:
    seen: dict[str, list[str]] = {}
    for role in SIGNED_IN:
        r = env.client.get(f"{API}/{resource}", params={"limit": 500}, headers=env.as_(role))
        assert r.status_code == 200, (role, r.text)
        assert r.json()["next_cursor"] is None
        seen[role] = names_in(env, resource, r.json()["items"])
    assert seen == VISIBLE[resource]


def test_every_list_refuses_anonymous_callers(env: Env) -> None:
    for resource in [*VISIBLE, "audit"]:
        r = env.client.get(f"{API}/{resource}")
        assert r.status_code == 401, resource
        assert r.headers["www-authenticate"] == "Bearer"


def test_list_filters_cannot_widen_the_view(env: Env) -> None:
    """Filtering by another team's owner or team shows nothing rather than their rows."""
    w = env.world
    for params in (
        {"owner_id": w.uid("wendy")},
        {"team_id": w.org.teams["west"]},
        {"account_id": w.accounts["westco"]},
        {"stage": ["assigned"], "owner_id": w.uid("bob")},
    ):
        r = env.client.get(f"{API}/leads", params=params, headers=env.as_("alice"))
        assert r.status_code == 200, (params, r.text)
        assert r.json()["items"] == [], params
    r = env.client.get(f"{API}/events", params={"lead_id": w.org.leads["wendy"]}, headers=env.as_("sup_east"))
    assert r.status_code == 200
    assert r.json()["items"] == []
    r = env.client.get(f"{API}/tasks", params={"assignee_id": w.uid("wendy")}, headers=env.as_("alice"))
    assert r.status_code == 200
    assert r.json()["items"] == []


def test_paging_never_leaks_rows_of_other_scopes(env: Env) -> None:
    """Walking alice's lead list one row per page yields exactly her three leads."""
    titles: list[str] = []
    cursor: str | None = None
    for _ in range(10):
        params: dict[str, Any] = {"limit": 1, "sort": "id"}
        if cursor:
            params["cursor"] = cursor
        r = env.client.get(f"{API}/leads", params=params, headers=env.as_("alice"))
        assert r.status_code == 200, r.text
        titles += [x["title"] for x in r.json()["items"]]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            break
    assert sorted(titles) == ["alice", "pool", "pool2"]


POOL_STAGES = {"qualified", "recycled"}
STAGE_AND_POOL_FILTERS: list[dict[str, Any]] = [
    {"in_pool": "true"},
    {"in_pool": "false"},
    {"stage": ["assigned"]},
    {"stage": ["qualified"]},
    {"stage": ["new", "qualified"]},
    {"stage": ["qualified"], "in_pool": "false"},
    {"stage": ["assigned"], "in_pool": "true"},
    {"stage": ["new", "screening", "assigned"], "in_pool": "false"},
]


def _passes(lead: dict[str, Any], params: dict[str, Any]) -> bool:
    in_pool = lead["owner_id"] is None and lead["stage"] in POOL_STAGES
    if "stage" in params and lead["stage"] not in params["stage"]:
        return False
    return "in_pool" not in params or in_pool == (params["in_pool"] == "true")


def test_stage_and_pool_filters_select_exactly_the_visible_leads_that_pass_them(env: Env) -> None:
    """The service folds these filters into the role scope (dropping a branch that cannot match): the result
    must be what filtering the caller's whole view gives, for every role."""
    shown_any: set[str] = set()
    for role in SIGNED_IN:
        r = env.client.get(f"{API}/leads", params={"limit": 500}, headers=env.as_(role))
        assert r.status_code == 200, r.text
        view = r.json()["items"]
        for params in STAGE_AND_POOL_FILTERS:
            r = env.client.get(f"{API}/leads", params={**params, "limit": 500}, headers=env.as_(role))
            assert r.status_code == 200, (role, params, r.text)
            got = sorted(x["title"] for x in r.json()["items"])
            assert got == sorted(x["title"] for x in view if _passes(x, params)), (role, params)
            if got:
                shown_any.add(role)
    assert shown_any == set(SIGNED_IN)  # every role saw rows through some filter: the test is not vacuous


def test_keyset_pages_in_the_default_order_match_one_big_page(env: Env) -> None:
    for role, params in (("admin", {}), ("sup_all", {"stage": ["assigned", "qualified"]}), ("alice", {})):
        r = env.client.get(f"{API}/leads", params={**params, "limit": 500}, headers=env.as_(role))
        whole = [x["id"] for x in r.json()["items"]]
        paged: list[int] = []
        cursor: str | None = None
        for _ in range(20):
            page_params: dict[str, Any] = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            r = env.client.get(f"{API}/leads", params=page_params, headers=env.as_(role))
            assert r.status_code == 200, r.text
            paged += [x["id"] for x in r.json()["items"]]
            cursor = r.json()["next_cursor"]
            if cursor is None:
                break
        assert paged == whole, role


def test_lead_list_items_are_the_same_json_as_a_single_lead(env: Env) -> None:
    """The list writes rows straight to JSON; every item must equal GET /leads/{id} (LeadPublic) exactly."""
    with env.engine.begin() as conn:  # values of every type a lead carries: floats, a second timestamp, text
        conn.execute(
            text(
                "UPDATE leads SET budget = 1234.5, score = 0.25, score_updated_at = created_at, "
                "notes = '备注 \"x\"' WHERE id = :id"
            ),
            {"id": env.world.org.leads["alice"]},
        )
        conn.execute(text("UPDATE leads SET budget = 100000 WHERE id = :id"), {"id": env.world.org.leads["bob"]})
    r = env.client.get(f"{API}/leads", params={"limit": 500}, headers=env.as_("admin"))
    assert r.status_code == 200
    items = r.json()["items"]
    assert len(items) == len(ALL_LEADS)
    for item in items:
        single = env.client.get(f"{API}/leads/{item['id']}", headers=env.as_("admin"))
        assert single.status_code == 200
        assert item == single.json()
        assert item["created_at"].endswith("Z")


# --- claim, release, assign and stage rules ----------------------------------------------------------------


def lead(env: Env, key: str, role: str = "admin") -> dict[str, Any]:
    r = env.client.get(f"{API}/leads/{env.world.org.leads[key]}", headers=env.as_(role))
    assert r.status_code == 200, r.text
    return r.json()


def bearer(env: Env, name: str) -> dict[str, str]:
    token = create_access_token(env.world.org.users[name], secret=env.settings.resolved_secret_key(), minutes=5)
    return {"Authorization": f"Bearer {token}"}


def test_claim_release_and_reclaim(env: Env) -> None:
    w, pool = env.world, env.world.org.leads["pool"]
    r = env.client.post(f"{API}/leads/{pool}/claim", headers=env.as_("alice"))
    assert r.status_code == 200, r.text
    assert (r.json()["owner_id"], r.json()["stage"]) == (w.uid("alice"), "assigned")
    # bob (same team) lost the race: 409, and the lead stays alice's
    r = env.client.post(f"{API}/leads/{pool}/claim", headers=bearer(env, "bob"))
    assert r.status_code == 409
    assert "claimed" in r.json()["detail"]
    assert lead(env, "pool")["owner_id"] == w.uid("alice")
    # out of the pool: wendy no longer sees it, alice's supervisor does
    assert env.client.get(f"{API}/leads/{pool}", headers=bearer(env, "wendy")).status_code == 404
    assert env.client.get(f"{API}/leads/{pool}", headers=env.as_("sup_east")).status_code == 200
    # alice gives it back: recycled, unowned, in the pool for everyone again
    r = env.client.post(f"{API}/leads/{pool}/release", params={"reason": "not my product"}, headers=env.as_("alice"))
    assert r.status_code == 200, r.text
    assert (r.json()["owner_id"], r.json()["stage"]) == (None, "recycled")
    r = env.client.get(f"{API}/leads", params={"in_pool": True}, headers=bearer(env, "wendy"))
    assert sorted(x["title"] for x in r.json()["items"]) == ["pool", "pool2"]
    r = env.client.post(f"{API}/leads/{pool}/claim", headers=bearer(env, "wendy"))
    assert r.status_code == 200, r.text
    assert r.json()["owner_id"] == w.uid("wendy")
    r = env.client.get(f"{API}/events", params={"lead_id": pool, "limit": 500}, headers=env.as_("admin"))
    types = [e["type"] for e in r.json()["items"]]
    assert types.count("claim") == 2
    assert types.count("release") == 1


def test_admin_runs_the_distribution_over_the_api(env: Env) -> None:
    """Rank the pool for every salesperson (their recommendations), then assign it; the run is audited."""
    pool = {env.world.org.leads["pool"], env.world.org.leads["pool2"]}
    r = env.client.post(f"{API}/distribution/runs", json={}, headers=env.as_("admin"))
    assert r.status_code == 200, r.text
    ranked = r.json()
    assert ranked["pool"] == 2 and ranked["pairs"] > 0 and ranked["stored"] > 0 and ranked["assigned"] == 0
    recs = env.client.get(f"{API}/me/recommendations", headers=env.as_("alice")).json()["items"]
    assert {x["lead_id"] for x in recs} <= pool and [x["rank"] for x in recs] == sorted(x["rank"] for x in recs)
    # Nobody on shift now (a one-minute shift twelve hours away): nothing is assigned, the pool waits.
    away = (datetime.now(UTC) + timedelta(hours=12)).strftime("%H:%M")
    later = (datetime.now(UTC) + timedelta(hours=12, minutes=1)).strftime("%H:%M")
    with env.engine.begin() as conn:
        hours = {"a": away, "b": later}
        conn.execute(text("UPDATE users SET work_start = :a, work_end = :b, time_zone = 'UTC'"), hours)
    r = env.client.post(f"{API}/distribution/runs", json={"assign": True}, headers=env.as_("admin"))
    assert r.status_code == 200, r.text
    assert r.json()["assigned"] == 0 and r.json()["off_shift"] > 0
    r = env.client.post(
        f"{API}/distribution/runs", json={"assign": True, "working_hours": False}, headers=env.as_("admin")
    )
    assert r.status_code == 200, r.text
    assert r.json()["assigned"] == 2
    owners = {lead(env, name)["owner_id"] for name in ("pool", "pool2")}
    assert None not in owners
    r = env.client.get(f"{API}/leads", params={"in_pool": True}, headers=env.as_("admin"))
    assert not {x["id"] for x in r.json()["items"]} & pool
    with Session(env.engine) as s:
        runs = s.scalars(select(AuditEntry).where(AuditEntry.action == "distribution_run")).all()
    assert [e.detail["assign"] for e in runs] == [False, True, True]


def test_salesperson_cannot_work_someone_elses_lead(env: Env) -> None:
    w = env.world
    before = env.fingerprint()
    bob_lead = w.org.leads["bob"]
    for method, path, body in (
        ("PATCH", f"/leads/{bob_lead}", {"notes": "mine now"}),
        ("POST", f"/leads/{bob_lead}/stage", {"stage": "contacted"}),
        ("POST", f"/leads/{bob_lead}/release", None),
        ("POST", "/events", {"type": "note", "lead_id": bob_lead}),
        ("POST", "/tasks", {"title": "steal", "lead_id": bob_lead}),
    ):
        r = env.client.request(method, API + path, json=body, headers=env.as_("alice"))
        assert r.status_code == 404, (method, path, r.text)
    assert env.fingerprint() == before


def test_supervisor_assigns_within_subtree_only(env: Env) -> None:
    w = env.world
    pool, pool2 = w.org.leads["pool"], w.org.leads["pool2"]
    r = env.client.post(f"{API}/leads/{pool}/assign", json={"owner_id": w.uid("bob")}, headers=env.as_("sup_east"))
    assert r.status_code == 200, r.text
    assert (r.json()["owner_id"], r.json()["team_id"], r.json()["stage"]) == (
        w.uid("bob"),
        w.org.teams["east"],
        "assigned",
    )
    assert env.client.get(f"{API}/leads/{pool}", headers=env.as_("alice")).status_code == 404
    assert env.client.get(f"{API}/leads/{pool}", headers=bearer(env, "bob")).status_code == 200

    before = lead(env, "pool2")
    r = env.client.post(f"{API}/leads/{pool2}/assign", json={"owner_id": w.uid("wendy")}, headers=env.as_("sup_east"))
    assert r.status_code == 403
    assert "wendy" in r.json()["detail"]
    assert lead(env, "pool2") == before
    # leads go to salespeople and supervisors, never to a screener or an inactive user
    r = env.client.post(f"{API}/leads/{pool2}/assign", json={"owner_id": w.uid("screener")}, headers=env.as_("admin"))
    assert (r.status_code, r.json().get("field")) == (422, "owner_id")
    r = env.client.post(f"{API}/leads/{pool2}/assign", json={"owner_id": MISSING_ID}, headers=env.as_("admin"))
    assert (r.status_code, r.json().get("field")) == (422, "owner_id")
    assert env.client.delete(f"{API}/users/{w.uid('wendy')}", headers=env.as_("admin")).status_code == 200
    r = env.client.post(f"{API}/leads/{pool2}/assign", json={"owner_id": w.uid("wendy")}, headers=env.as_("admin"))
    assert r.status_code == 409
    assert lead(env, "pool2") == before


def test_stage_rules(env: Env) -> None:
    w = env.world
    alice_lead, screening = w.org.leads["alice"], w.org.leads["screening"]

    def move(key_or_id: str | int, stage: str, role: str) -> httpx.Response:
        lead_id = w.org.leads[key_or_id] if isinstance(key_or_id, str) else key_or_id
        return env.client.post(f"{API}/leads/{lead_id}/stage", json={"stage": stage}, headers=env.as_(role))

    r = move("alice", "won", "alice")
    assert r.status_code == 409
    assert r.json()["detail"] == (
        f"lead {alice_lead}: cannot move from 'assigned' to 'won'; allowed next stages: contacted, lost, recycled"
    )
    r = move("pool", "assigned", "sup_east")
    assert r.status_code == 409
    assert "claim" in r.json()["detail"]
    # the screener qualifies a lead: it joins the pool, leaves the screener's view, enters alice's
    assert move(screening, "qualified", "screener").status_code == 200
    assert env.client.get(f"{API}/leads/{screening}", headers=env.as_("screener")).status_code == 404
    assert env.client.get(f"{API}/leads/{screening}", headers=env.as_("alice")).status_code == 200
    # alice works her lead to the end; a final stage cannot be left
    for stage in ("contacted", "negotiating", "won"):
        assert move("alice", stage, "alice").status_code == 200, stage
    r = move("alice", "lost", "alice")
    assert r.status_code == 409
    assert "final stage" in r.json()["detail"]
    r = env.client.get(
        f"{API}/events", params={"lead_id": alice_lead, "type": "stage_change"}, headers=env.as_("alice")
    )
    assert [(e["payload"]["from"], e["payload"]["to"]) for e in r.json()["items"]][-3:] == [
        ("assigned", "contacted"),
        ("contacted", "negotiating"),
        ("negotiating", "won"),
    ]


def test_references_to_rows_outside_the_view_are_refused_like_missing_ones(env: Env) -> None:
    """Linking to an account or contact one cannot see must fail exactly like linking to one that does not
    exist; otherwise it reveals that the row exists and, through the lead, opens its phone and e-mail."""
    w = env.world
    alice_lead = w.org.leads["alice"]
    walt, westco = w.contacts["walt"], w.accounts["westco"]
    cases = [
        ("PATCH", f"/leads/{alice_lead}", "contact_id", walt),
        ("PATCH", f"/leads/{alice_lead}", "account_id", westco),
        ("POST", "/leads", "contact_id", walt),
        ("POST", "/leads", "account_id", westco),
        ("POST", "/contacts", "account_id", westco),
        ("PATCH", f"/contacts/{w.contacts['carol']}", "account_id", westco),
    ]
    outcomes, leaks = {}, []
    for method, path, field_name, hidden_id in cases:
        env.reset()
        before = env.fingerprint()
        missing = env.client.request(method, API + path, json={field_name: MISSING_ID}, headers=env.as_("alice"))
        assert (missing.status_code, missing.json().get("field")) == (422, field_name), missing.text
        hidden = env.client.request(method, API + path, json={field_name: hidden_id}, headers=env.as_("alice"))
        key = f"{method} {path} {field_name}"
        outcomes[key] = (hidden.status_code, hidden.json().get("field"))
        if env.fingerprint() != before:
            leaks.append(f"{key}: the link to a hidden row was written")
        if env.client.get(f"{API}/contacts/{walt}", headers=env.as_("alice")).status_code != 404:
            leaks.append(f"{key}: alice can now read walt's phone and e-mail")
    assert not leaks, "\n".join(leaks)
    assert outcomes == {key: (422, key.rsplit(" ", 1)[1]) for key in outcomes}


# --- users: supervisors change limited fields in their subtree ------------------------------------------


def test_supervisor_changes_only_limited_user_fields(env: Env) -> None:
    w = env.world
    bob = w.uid("bob")
    r = env.client.patch(
        f"{API}/users/{bob}",
        json={"daily_capacity": 7, "regions": ["north"], "work_start": "08:00", "time_zone": "Europe/Paris"},
        headers=env.as_("sup_east"),
    )
    assert r.status_code == 200, r.text
    assert (r.json()["daily_capacity"], r.json()["time_zone"]) == (7, "Europe/Paris")
    for body in ({"role": "admin"}, {"team_id": w.org.teams["west"]}, {"password": "new-password-1"}):
        before = env.fingerprint()
        r = env.client.patch(f"{API}/users/{bob}", json=body, headers=env.as_("sup_east"))
        assert r.status_code == 403, (body, r.text)
        assert next(iter(body)) in r.json()["detail"]
        assert env.fingerprint() == before
    # a supervisor cannot promote themselves either
    r = env.client.patch(f"{API}/users/{w.uid('sup_east')}", json={"role": "admin"}, headers=env.as_("sup_east"))
    assert r.status_code == 403


# --- authentication ------------------------------------------------------------------------------------------


def test_every_protected_route_needs_a_valid_token(env: Env) -> None:
    """No token, a malformed, forged, expired or alg=none token, or a deactivated user's token: 401."""
    w = env.world
    secret = env.settings.resolved_secret_key()
    now = datetime.now(UTC)
    alice = str(w.uid("alice"))
    claims = {"sub": alice, "role": "sales", "iat": now}
    bad_tokens = {
        "none": None,
        "garbage": "not-a-jwt",
        "forged": jwt.encode({**claims, "exp": now + timedelta(minutes=5)}, "another-secret-" + "y" * 32),
        "expired": jwt.encode({**claims, "exp": now - timedelta(seconds=5)}, secret),
        "alg none": jwt.encode({**claims, "exp": now + timedelta(minutes=5)}, None, algorithm="none"),
        "no sub": jwt.encode({"exp": now + timedelta(minutes=5)}, secret),
        "unknown user": jwt.encode({**claims, "sub": str(MISSING_ID), "exp": now + timedelta(minutes=5)}, secret),
    }
    public = {("GET", "/healthz"), ("POST", f"{API}/auth/token")}
    # The customer's signing link is authenticated by its own one-time signing token, not a login: a bad
    # signing token is 403 whatever bearer token comes with it (checked below).
    signing_link = {("GET", f"{API}/signing/{{token}}"), ("POST", f"{API}/signing/{{token}}")}
    assert signing_link <= openapi_routes(env.client)
    routes = sorted(openapi_routes(env.client) - public - signing_link)
    for token in bad_tokens.values():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, template in sorted(signing_link):
            path = template.replace("{token}", "bogus.token")
            body = {"decision": "sign", "signer": "Mallory"} if method == "POST" else None
            r = env.client.request(method, path, headers=headers, json=body)
            assert r.status_code == 403, (method, path, r.status_code, r.text)
    for name, token in bad_tokens.items():
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        for method, template in routes:
            path = re.sub(r"\{\w+\}", "1", template)
            r = env.client.request(method, path, headers=headers, json={} if method in ("POST", "PATCH") else None)
            assert r.status_code == 401, (name, method, path, r.status_code, r.text)
    # a deactivated user's existing token stops working at once
    assert env.client.delete(f"{API}/users/{w.uid('bob')}", headers=env.as_("admin")).status_code == 200
    bob = bearer(env, "bob")
    for method, template in routes:
        path = re.sub(r"\{\w+\}", "1", template)
        r = env.client.request(method, path, headers=bob, json={} if method in ("POST", "PATCH") else None)
        assert r.status_code == 401, (method, path, r.text)


def test_the_role_comes_from_the_database_not_the_token(env: Env) -> None:
    """A validly signed token claiming a role the user does not have grants nothing more."""
    now = datetime.now(UTC)
    token = jwt.encode(
        {"sub": str(env.world.uid("alice")), "role": "admin", "iat": now, "exp": now + timedelta(minutes=5)},
        env.settings.resolved_secret_key(),
    )
    headers = {"Authorization": f"Bearer {token}"}
    assert env.client.get(f"{API}/audit", headers=headers).status_code == 403
    assert env.client.get(f"{API}/leads/{env.world.org.leads['wendy']}", headers=headers).status_code == 404


# --- the audit log --------------------------------------------------------------------------------------------


def audit_rows(env: Env, **params: Any) -> list[dict[str, Any]]:
    r = env.client.get(f"{API}/audit", params={"limit": 500, **params}, headers=env.as_("admin"))
    assert r.status_code == 200, r.text
    return r.json()["items"]


def test_contact_pii_reads_are_audited(env: Env) -> None:
    w = env.world
    carol, pete = w.contacts["carol"], w.contacts["pete"]
    assert audit_rows(env, action="read_pii") == []
    r = env.client.get(f"{API}/contacts/{carol}", headers=env.as_("alice"))
    assert r.status_code == 200
    assert r.json()["phone"].startswith("+1415555")
    rows = audit_rows(env, action="read_pii")
    assert [(a["actor_id"], a["entity"], a["entity_id"]) for a in rows] == [(w.uid("alice"), "contact", carol)]
    assert sorted(rows[0]["detail"]["fields"]) == ["email", "phone"]
    # a list read records one row per contact shown
    r = env.client.get(f"{API}/contacts", headers=env.as_("alice"))
    assert r.status_code == 200
    rows = audit_rows(env, action="read_pii", actor_id=w.uid("alice"))
    assert sorted(a["entity_id"] for a in rows) == sorted([carol, carol, pete])
    # a refused read records nothing
    assert env.client.get(f"{API}/contacts/{w.contacts['walt']}", headers=env.as_("alice")).status_code == 404
    assert len(audit_rows(env, action="read_pii")) == 3


def test_writes_are_audited_with_actor_and_without_pii(env: Env) -> None:
    w = env.world
    alice_lead, carol = w.org.leads["alice"], w.contacts["carol"]
    r = env.client.patch(f"{API}/leads/{alice_lead}", json={"notes": "called twice"}, headers=env.as_("alice"))
    assert r.status_code == 200
    [row] = audit_rows(env, entity="lead", entity_id=alice_lead, action="update", actor_id=w.uid("alice"))
    assert row["detail"] == {"fields": ["notes"]}
    r = env.client.patch(
        f"{API}/contacts/{carol}", json={"phone": "+14155550188", "email": "c2@example.com"}, headers=env.as_("alice")
    )
    assert r.status_code == 200, r.text
    [row] = audit_rows(env, entity="contact", entity_id=carol, action="update")
    assert row["actor_id"] == w.uid("alice")
    assert "4155550188" not in str(row["detail"])
    assert "c2@example.com" not in str(row["detail"])
    r = env.client.post(f"{API}/leads/{w.org.leads['pool']}/claim", headers=env.as_("sup_east"))
    assert r.status_code == 200
    [row] = audit_rows(env, entity="lead", entity_id=w.org.leads["pool"], action="claim")
    assert row["actor_id"] == w.uid("sup_east")
    # the audit log is admins' only, whatever the filter
    for role in ("screener", "alice", "sup_east", "sup_all"):
        r = env.client.get(f"{API}/audit", params={"actor_id": w.uid(role)}, headers=env.as_(role))
        assert r.status_code == 403, role
