"""Engine and session factory for SQLite (WAL, foreign keys) and PostgreSQL (psycopg 3)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, sessionmaker

from leadpilot.config import Settings, get_settings


def normalise_url(url: str) -> str:
    """Pick the psycopg 3 driver for bare postgresql:// URLs."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


READ_ONLY_OPTION = "leadpilot_read_only"


def read_only_engine(engine: Engine) -> Engine:
    """The same engine and pool, marked so SQLite transactions begin deferred (for readers)."""
    return engine.execution_options(**{READ_ONLY_OPTION: True})


def make_engine(url: str, *, busy_timeout_ms: int = 30_000, **kwargs: Any) -> Engine:
    """Create an engine; SQLite gets WAL, foreign keys and a busy timeout on every connection."""
    url = normalise_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": busy_timeout_ms / 1000}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            # Let SQLAlchemy issue BEGIN itself so BEGIN IMMEDIATE can be used for writers.
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            cur.execute("PRAGMA synchronous=NORMAL")
            # 32 MiB page cache (default 2 MiB): bulk inserts touch many index pages.
            cur.execute("PRAGMA cache_size=-32768")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the lock up front (IMMEDIATE) so concurrent writers queue on busy_timeout
            # instead of failing with "database is locked" when a read upgrades to a write; readers
            # (read_only_engine) use a plain deferred BEGIN so they never wait for a writer under WAL.
            if conn.get_execution_options().get(READ_ONLY_OPTION):
                conn.exec_driver_sql("BEGIN")
            else:
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(url, pool_pre_ping=True, **kwargs)


def is_sqlite(engine: Engine) -> bool:
    """Whether the engine talks to SQLite."""
    return engine.dialect.name == "sqlite"


@lru_cache(maxsize=8)
def _cached_engine(url: str, busy_timeout_ms: int) -> Engine:
    return make_engine(url, busy_timeout_ms=busy_timeout_ms)


def get_engine(settings: Settings | None = None) -> Engine:
    """The process-wide engine for the configured database."""
    settings = settings or get_settings()
    return _cached_engine(settings.resolved_database_url(), settings.sqlite_busy_timeout_ms)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    """A session factory bound to the engine; objects stay usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(engine)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
