"""One typed Settings object; every knob is an environment variable with prefix LEADPILOT_."""

from __future__ import annotations

import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

if TYPE_CHECKING:
    from leadpilot.crm.leads import ClaimPolicy

# Values that must never be used as a signing key in production.
PLACEHOLDER_SECRETS = frozenset({"", "changeme", "change-me", "secret", "changethis", "dev", "test", "password"})


class InsecureSettingsError(RuntimeError):
    """Raised when production mode is asked to run with an unsafe setting."""


class Settings(BaseSettings):
    """Runtime configuration; defaults run with no setup on the embedded SQLite store."""

    model_config = SettingsConfigDict(env_prefix="LEADPILOT_", env_file=".env", extra="ignore")

    environment: Literal["development", "production", "test"] = "development"
    data_dir: Path = Path(".leadpilot")
    database_url: str | None = None
    secret_key: str | None = None
    redis_url: str | None = None
    redis_stream: str = "leadpilot:events"
    access_token_minutes: int = 12 * 60
    # How long an API worker trusts a verified token's user (role, team, active flag); 0 turns it off.
    auth_cache_seconds: float = Field(default=5.0, ge=0)
    # Login throttling: after this many consecutive failures each attempt must wait, doubling.
    login_free_failures: int = 3
    login_max_delay_seconds: int = 900
    max_body_bytes: int = 1_048_576
    page_size_default: int = 50
    page_size_max: int = 500
    default_phone_region: str = "US"
    sqlite_busy_timeout_ms: int = 30_000
    import_batch_size: int = Field(default=10_000, ge=1)
    # Processes validating rows while the main process writes; 0 validates inline.
    import_workers: int = Field(default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) - 1)), ge=0)
    # Feature pipeline: engine, dictionary file (empty: the shipped default), history retention.
    feature_engine: Literal["duckdb", "spark"] = "duckdb"
    feature_dictionary: Path | None = None
    feature_retention_days: int = Field(default=548, ge=1)
    feature_memory_limit: str = "4GB"
    online_store: Literal["database", "redis"] = "database"
    # Claim pool: claims per salesperson per UTC day (0: no limit), a previous owner's wait before reclaiming,
    # and after how many days without work an owned lead goes back to the pool.
    claim_daily_limit: int = Field(default=30, ge=0)
    claim_cooldown_hours: float = Field(default=72.0, ge=0)
    recycle_after_days: float = Field(default=7.0, gt=0)
    # Workflow engine: timers claimed per batch, how long a claim lasts before another worker may take it over,
    # the longest chain of rules one event may set off, the worker's idle poll and the webhook retry base.
    workflow_batch_size: int = Field(default=500, ge=1)
    workflow_lease_seconds: float = Field(default=60.0, gt=0)
    workflow_max_depth: int = Field(default=5, ge=1)
    workflow_poll_seconds: float = Field(default=1.0, gt=0)
    workflow_webhook_backoff_seconds: float = Field(default=1.0, gt=0)
    # Contracts: who collects e-signatures ("local": built-in one-time signed links) and how long a link lasts.
    signing_provider: Literal["local"] = "local"
    signing_link_days: int = Field(default=14, ge=1, le=365)

    def claim_policy(self) -> ClaimPolicy:
        """The claim pool's limits for ``crm.leads.claim_lead``."""
        from leadpilot.crm.leads import ClaimPolicy

        return ClaimPolicy(daily_limit=self.claim_daily_limit or None, cooldown_hours=self.claim_cooldown_hours)

    @property
    def feature_dir(self) -> Path:
        """Where the feature store (lake, tiles, history) lives."""
        return self.data_dir / "features"

    @field_validator("default_phone_region")
    @classmethod
    def _known_region(cls, value: str) -> str:
        import phonenumbers

        region = value.strip().upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region {value!r}; use an ISO 3166 code such as US or CN")
        return region

    def resolved_database_url(self) -> str:
        """The database URL, defaulting to a SQLite file under the data dir."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'leadpilot.db').resolve()}"

    def resolved_secret_key(self) -> str:
        """The JWT signing key: from the environment, else generated once into the data dir."""
        if self.secret_key is not None:
            if self.environment == "production" and self.secret_key.strip().lower() in PLACEHOLDER_SECRETS:
                raise InsecureSettingsError(
                    "LEADPILOT_SECRET_KEY is a known placeholder; set a long random value in production"
                )
            return self.secret_key
        key_file = self.data_dir / "secret_key"
        if key_file.exists():
            return key_file.read_text().strip()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        # Create with 0600 so the key is never world-readable, even briefly.
        try:
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another worker won the race; use its key
            return key_file.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(key)
        return key


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, read once from the environment."""
    return Settings()
