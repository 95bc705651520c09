"""Migrations upgrade from empty and downgrade cleanly, on SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

from leadpilot.crm.models import Base
from leadpilot.db import migrate
from leadpilot.db.engine import make_engine, normalise_url
from tests.conftest import PG_URL, service_missing


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
        return
    admin = create_engine(normalise_url(PG_URL), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        service_missing("PostgreSQL", exc)
    name = f"leadpilot_mig_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(normalise_url(PG_URL)).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def test_upgrade_matches_models_and_downgrade_leaves_nothing(empty_url: str) -> None:
    migrate.upgrade(empty_url)
    engine = make_engine(empty_url)
    try:
        assert migrate.current_revision(engine) == migrate.head_revision()
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        migrate.downgrade(empty_url)
        tables = set(inspect(engine).get_table_names()) - {"alembic_version", "sqlite_sequence"}
        assert tables == set()
        assert migrate.current_revision(engine) is None
        migrate.upgrade(empty_url)  # and up again from empty
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_fingerprints_convert_to_raw_digests_and_back(empty_url: str) -> None:
    """Migration 0010 keeps every imported row's fingerprint (hex text <-> the same 32 raw bytes)."""
    digests = [hashlib.sha256(str(i).encode()).digest() for i in range(3)]
    migrate.upgrade(empty_url, "0009")
    engine = make_engine(empty_url)
    try:
        with engine.begin() as conn:
            for i, digest in enumerate(digests):
                conn.execute(
                    text("INSERT INTO imported_rows (fingerprint, lead_id, run_id) VALUES (:fp, :lead, 1)"),
                    {"fp": digest.hex(), "lead": i + 1},
                )
        migrate.upgrade(empty_url, "0010")
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT lead_id, fingerprint FROM imported_rows ORDER BY lead_id")).all()
        assert [bytes(fp) for _, fp in stored] == digests
        migrate.downgrade(empty_url, "0009")
        with engine.connect() as conn:
            stored = conn.execute(text("SELECT fingerprint FROM imported_rows ORDER BY lead_id")).scalars().all()
        assert stored == [digest.hex() for digest in digests]
    finally:
        engine.dispose()
