"""Documentation stays complete: every setting and every CLI command is documented."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer.main
import typer.testing

from leadpilot.cli.main import app
from leadpilot.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _commands(group: Any, prefix: str = "leadpilot") -> list[str]:
    found = []
    for name, command in group.commands.items():
        path = f"{prefix} {name}"
        if hasattr(command, "commands"):
            found.extend(_commands(command, path))
        else:
            found.append(path)
    return found


def test_every_setting_is_documented() -> None:
    text = (DOCS / "configuration.md").read_text()
    missing = [f"LEADPILOT_{name.upper()}" for name in Settings.model_fields if f"LEADPILOT_{name.upper()}" not in text]
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = _commands(typer.main.get_command(app))  # type: ignore[arg-type]
    assert len(commands) >= 12
    missing = [c for c in commands if f"`{c}" not in text]
    assert missing == []


def test_every_cli_command_has_help() -> None:
    for command in _commands(typer.main.get_command(app)):  # type: ignore[arg-type]
        result = typer.testing.CliRunner().invoke(app, [*command.split()[1:], "--help"])
        assert result.exit_code == 0, (command, result.output)
        assert "Usage" in result.output
