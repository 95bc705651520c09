"""Helpers shared by CLI commands: settings, engine, output, errors."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import typer
from rich.console import Console
from sqlalchemy import Engine

from leadpilot.config import Settings, get_settings
from leadpilot.crm.errors import DomainError
from leadpilot.db.engine import get_engine
from leadpilot.db.migrate import current_revision, head_revision

console = Console(stderr=True, soft_wrap=True)  # never break a message in the middle


def settings() -> Settings:
    return get_settings()


def engine() -> Engine:
    return get_engine(settings())


def require_migrated(eng: Engine) -> None:
    """Stop with a clear message when the database is not at the newest schema."""
    current, head = current_revision(eng), head_revision()
    if current != head:
        fail(
            f"database schema is at {current or 'nothing'}, this leadpilot needs {head}: run `leadpilot init` "
            "(or `leadpilot db upgrade`)"
        )


def emit_json(data: Any) -> None:
    """Print machine-readable output on stdout."""
    sys.stdout.write(json.dumps(data, ensure_ascii=False, indent=2, default=str) + "\n")


def fail(message: str, code: int = 1) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(code)


@contextmanager
def domain_errors() -> Iterator[None]:
    """Turn a DomainError into a one-line message and exit code 1."""
    try:
        yield
    except DomainError as exc:
        fail(exc.message + (f" (field: {exc.field})" if exc.field else ""))
