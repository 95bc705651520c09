"""Shared fixtures: the same tests run on SQLite and on PostgreSQL (parametrised ``engine``).

PostgreSQL and Redis are real servers (LEADPILOT_TEST_POSTGRES_URL, LEADPILOT_TEST_REDIS_URL). When one
is absent the tests that need it are skipped with the reason, except under CI=true where that fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import uvicorn
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from leadpilot.api.app import create_app
from leadpilot.auth import security
from leadpilot.auth.security import create_access_token
from leadpilot.config import Settings
from leadpilot.crm import leads, people, schemas
from leadpilot.crm.access import SYSTEM, actor_for
from leadpilot.crm.events import bus
from leadpilot.crm.models import Base, Lead, Role, Stage, TeamKind, User
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine, normalise_url

PG_URL = os.environ.get("LEADPILOT_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("LEADPILOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PASSWORD = "correct-horse-battery"


def service_missing(what: str, error: Exception) -> None:
    """Skip locally, fail in CI, when a real service the test needs is not reachable."""
    message = f"{what} not reachable ({error.__class__.__name__}: {error})"
    if IN_CI:
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


def _pg_admin_engine() -> Engine:
    return create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT", pool_pre_ping=True)


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session, migrated to head, dropped afterwards."""
    admin = _pg_admin_engine()
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        admin.dispose()
        service_missing("PostgreSQL at LEADPILOT_TEST_POSTGRES_URL", exc)
    name = f"leadpilot_test_{uuid.uuid4().hex[:10]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(normalise_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    migrate.upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file copied for each test (migrating once keeps the suite fast)."""
    path = tmp_path_factory.mktemp("sqlite") / "template.db"
    migrate.upgrade(f"sqlite:///{path}")
    return path


def _truncate_pg(engine: Engine) -> None:
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty database: SQLite file or PostgreSQL."""
    if request.param == "sqlite":
        template: Path = request.getfixturevalue("sqlite_template")
        path = tmp_path / "leadpilot.db"
        shutil.copy(template, path)
        eng = make_engine(f"sqlite:///{path}")
    else:
        url: str = request.getfixturevalue("pg_database_url")
        eng = make_engine(url)
        _truncate_pg(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(sqlite_template: Path, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty SQLite database only (for tests that need no backend parity); never the same file
    as ``engine``'s, so a test may use both."""
    path = tmp_path / "sqlite-only.db"
    shutil.copy(sqlite_template, path)
    eng = make_engine(f"sqlite:///{path}")
    yield eng
    eng.dispose()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        environment="test", data_dir=tmp_path / "data", secret_key="test-secret-key-" + "x" * 32, login_free_failures=3
    )


@dataclass
class Org:
    """A small organisation: teams, one user per role (two salespeople), leads at several stages."""

    engine: Engine
    users: dict[str, User] = field(default_factory=dict)
    teams: dict[str, int] = field(default_factory=dict)
    leads: dict[str, int] = field(default_factory=dict)

    def actor(self, name: str):  # type: ignore[no-untyped-def]
        with Session(self.engine) as session:
            return actor_for(session, session.get_one(User, self.users[name].id))


def build_org(engine: Engine) -> Org:
    """Create the test organisation through the service layer."""
    org = Org(engine)
    with Session(engine, expire_on_commit=False) as s:

        def team(name: str, kind: TeamKind, parent: str | None = None) -> None:
            t = people.create_team(
                s,
                actor=SYSTEM,
                data=schemas.TeamCreate(name=name, kind=kind, parent_id=org.teams.get(parent) if parent else None),
            )
            org.teams[name] = t.id

        team("opportunity", TeamKind.OPPORTUNITY)
        team("sales", TeamKind.SALES)
        team("east", TeamKind.SALES, "sales")
        team("west", TeamKind.SALES, "sales")

        def user(name: str, role: Role, team_name: str | None) -> None:
            org.users[name] = people.create_user(
                s,
                actor=SYSTEM,
                data=schemas.UserCreate(
                    username=name, password=PASSWORD, role=role, team_id=org.teams.get(team_name) if team_name else None
                ),
            )

        user("admin", Role.ADMIN, None)
        user("sup_east", Role.SUPERVISOR, "east")
        user("sup_all", Role.SUPERVISOR, "sales")
        user("alice", Role.SALES, "east")
        user("bob", Role.SALES, "east")
        user("wendy", Role.SALES, "west")
        user("screener", Role.SCREENER, "opportunity")
        s.commit()
        sup_all = actor_for(s, org.users["sup_all"])

        def lead(key: str, stage: Stage, owner: str | None = None) -> None:
            row = leads.create_lead(s, actor=SYSTEM, data=schemas.LeadCreate(title=key, product_line="housing"))
            path = {
                Stage.NEW: [],
                Stage.SCREENING: [Stage.SCREENING],
                Stage.QUALIFIED: [Stage.SCREENING, Stage.QUALIFIED],
            }
            for step in path.get(stage, [Stage.SCREENING, Stage.QUALIFIED]):
                leads.change_stage(s, actor=SYSTEM, lead_id=row.id, stage=step)
            if owner:
                leads.assign_lead(s, actor=sup_all, lead_id=row.id, owner_id=org.users[owner].id)
            org.leads[key] = row.id

        lead("new", Stage.NEW)
        lead("screening", Stage.SCREENING)
        lead("pool", Stage.QUALIFIED)
        lead("pool2", Stage.QUALIFIED)
        lead("alice", Stage.ASSIGNED, "alice")
        lead("bob", Stage.ASSIGNED, "bob")
        lead("wendy", Stage.ASSIGNED, "wendy")
        s.commit()
        for lead_row in s.query(Lead).all():
            s.expunge(lead_row)
    return org


@pytest.fixture
def org(engine: Engine) -> Org:
    return build_org(engine)


@pytest.fixture
def client(engine: Engine, settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, engine=engine)
    with TestClient(app) as c:
        yield c


@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """A real uvicorn server for the app on a free port, in a thread; yields its base URL."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("test server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def login(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Bearer headers for a user."""
    r = client.post("/api/v1/auth/token", data={"username": username, "password": password})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


@pytest.fixture
def auth(client: TestClient, org: Org, settings: Settings) -> dict[str, dict[str, str]]:
    """Bearer headers per username of the test organisation (minted directly; login has its own tests)."""
    secret = settings.resolved_secret_key()
    return {
        name: {"Authorization": f"Bearer {create_access_token(user, secret=secret, minutes=30)}"}
        for name, user in org.users.items()
    }


@pytest.fixture(autouse=True, scope="session")
def _cheap_password_hashing() -> Iterator[None]:
    """Argon2 with tiny costs in tests: same code path, a fraction of the time."""
    original = security._hasher
    security._hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    yield
    security._hasher = original


@pytest.fixture(autouse=True)
def _clean_event_bus() -> Iterator[None]:
    """Each test starts with no subscribers and no Redis publishing."""
    saved = (list(bus.subscribers), bus.redis_url, bus.stream)
    bus.subscribers.clear()
    bus.configure_redis(None)
    yield
    bus.subscribers[:] = saved[0]
    bus.configure_redis(saved[1], saved[2])
