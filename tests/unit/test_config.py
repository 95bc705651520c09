"""Settings: defaults that run with no setup, a private generated key, placeholders refused in production."""

from __future__ import annotations

from pathlib import Path

import pytest

from leadpilot.config import InsecureSettingsError, Settings


def test_defaults_use_a_sqlite_file_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "d", _env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_database_url() == f"sqlite:///{(tmp_path / 'd' / 'leadpilot.db').resolve()}"


def test_environment_variables_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEADPILOT_DATABASE_URL", "postgresql://u@h/db")
    monkeypatch.setenv("LEADPILOT_PAGE_SIZE_MAX", "100")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.resolved_database_url() == "postgresql://u@h/db"
    assert settings.page_size_max == 100


def test_secret_is_generated_once_and_private(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    first = settings.resolved_secret_key()
    assert len(first) >= 40
    assert settings.resolved_secret_key() == first
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("placeholder", ["changeme", "secret", "", "CHANGEME "])
def test_placeholder_secret_refused_in_production(tmp_path: Path, placeholder: str) -> None:
    settings = Settings(environment="production", secret_key=placeholder, data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    with pytest.raises(InsecureSettingsError):
        settings.resolved_secret_key()
    dev = Settings(environment="development", secret_key="changeme", data_dir=tmp_path, _env_file=None)  # type: ignore[call-arg]
    assert dev.resolved_secret_key() == "changeme"


def test_phone_region_is_checked_and_upper_cased() -> None:
    assert Settings(default_phone_region="cn", _env_file=None).default_phone_region == "CN"  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="unknown phone region"):
        Settings(default_phone_region="XX", _env_file=None)  # type: ignore[call-arg]
