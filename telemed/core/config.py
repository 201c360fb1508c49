"""Settings, read from the environment with the prefix ``TELEMED_`` (pydantic-settings).

Every backend is chosen by URL: with nothing set, one laptop runs the whole county on SQLite, in-process events
and files under the data folder; production points the same code at PostgreSQL, Redis and object storage.
"""

from __future__ import annotations

import re
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Final

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_SECRET_KEY: Final = "telemed-development-secret-do-not-use-in-production"
_ORIGIN: Final = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+")


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


class InsecureSettings(RuntimeError):
    """Raised at start-up when a production deployment still carries a development default."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMED_", extra="ignore")

    environment: Environment = Environment.development
    data_dir: Path = Path("data")
    database_url: str | None = None
    redis_url: str | None = None
    storage_url: str | None = None
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)

    #: The field-encryption key version new writes use; older versions stay readable for rotation.
    field_key_version: int = Field(default=1, ge=1)
    #: Field-encryption keys as ``version:base64key`` pairs separated by commas; derived from the secret in dev.
    field_keys: SecretStr | None = None

    access_token_minutes: int = Field(default=15, ge=1, le=15)
    refresh_token_hours: int = Field(default=12, ge=1, le=12)
    idle_timeout_minutes: int = Field(default=30, ge=1, le=30)
    lockout_threshold: int = Field(default=5, ge=1)
    lockout_minutes: int = Field(default=30, ge=1)

    #: Domains to leave out of this deployment (entry-point names), e.g. ``imaging`` where a PACS exists.
    disabled_domains: list[str] = Field(default_factory=list)
    #: Browser origins allowed to call the API across origins (CORS), e.g. an OHIF viewer served elsewhere:
    #: ``TELEMED_CORS_ORIGINS='["https://ohif.county.example"]'``. Empty (the default) allows none. Requests carry
    #: bearer tokens, never cookies, so credentials are not allowed either way.
    cors_origins: list[str] = Field(default_factory=list)
    #: Where the DICOM listener binds (imaging domain).
    dicom_port: int = 11112
    dicom_ae_title: str = "TELEMED"
    default_dicom_charset: str = "GB18030"

    log_level: str = "INFO"
    log_json: bool = True
    #: Audit chain checkpoints (signed chain heads) are written to storage every this many records.
    audit_checkpoint_every: int = Field(default=1000, ge=1)

    #: Chaos-test hook, honoured only outside production: the process kills itself right after a commit that
    #: wrote outbox events and before it publishes them, to prove the outbox delivers them after a restart.
    chaos_kill_after_commit: bool = False

    @model_validator(mode="after")
    def _refuse_development_defaults(self) -> Settings:
        if self.environment is Environment.production:
            if self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY or len(self.secret_key.get_secret_value()) < 32:
                raise InsecureSettings(
                    "TELEMED_SECRET_KEY must be set to a random value of at least 32 characters in production"
                )
            if self.field_keys is None:
                raise InsecureSettings("TELEMED_FIELD_KEYS must be set in production")
            if self.chaos_kill_after_commit:
                raise InsecureSettings("TELEMED_CHAOS_KILL_AFTER_COMMIT is a test hook, refused in production")
            if "*" in self.cors_origins:
                raise InsecureSettings("TELEMED_CORS_ORIGINS must name the viewer's origins in production, not '*'")
        for origin in self.cors_origins:
            if origin != "*" and not _ORIGIN.fullmatch(origin):
                raise ValueError(f"TELEMED_CORS_ORIGINS: {origin!r} is not an origin like https://viewer.example:8443")
        return self

    @cached_property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'telemed.db').resolve()}"

    @cached_property
    def resolved_storage_url(self) -> str:
        if self.storage_url:
            return self.storage_url
        return (self.data_dir / "blobs").resolve().as_uri()

    @property
    def is_sqlite(self) -> bool:
        return self.resolved_database_url.startswith("sqlite")
