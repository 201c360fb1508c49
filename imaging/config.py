"""Settings of the imaging domain, read from the environment with the prefix ``TELEMED_`` (pydantic-settings).

The host's settings (``telemed.core.config.Settings``) carry what the whole platform shares: the DICOM port and AE
title, the default character set. What only imaging needs lives here, so that the host never has to know it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from telemed.core.config import Environment, Settings
from telemed.core.context import AppContext

_EXTRAS_KEY: Final = "imaging.settings"
DEFAULT_ROUTING_FILE: Final = Path(__file__).resolve().parent / "routing.yaml"


class ImagingSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TELEMED_", extra="ignore")

    #: A study is stable after this many seconds without a new instance (Orthanc's ``StableAge``).
    imaging_stable_seconds: float = Field(default=60.0, gt=0)
    #: Routing rules (YAML); the packaged defaults route to the demo county's people's hospital.
    imaging_routing_file: Path = DEFAULT_ROUTING_FILE
    #: Largest accepted STOW-RS part (one DICOM file). 4 GiB: a DICOM element length is 32 bits anyway.
    imaging_max_part_bytes: int = Field(default=4 * 1024**3, ge=1024)
    #: Instances (and bytes) gathered before the index rows of a long STOW-RS request are committed, so that
    #: a 2 GB upload never holds the database's write lock while it is received.
    imaging_batch_instances: int = Field(default=100, ge=1)
    imaging_batch_bytes: int = Field(default=256 * 1024**2, ge=1024)
    #: QIDO-RS answers at most this many matches per request (PS3.18 §8.3.4.4 lets a server cap results).
    imaging_max_results: int = Field(default=1000, ge=1)
    #: De-identified exports (ZIP files) are deleted this many days after they were made.
    imaging_export_retention_days: float = Field(default=7.0, gt=0)
    #: A running export promises to report within this many seconds; one silent for longer was abandoned by a
    #: crashed worker and is taken up again (or failed after three attempts).
    imaging_export_lease_seconds: float = Field(default=120.0, ge=5)
    #: How often the export worker looks for queued, abandoned and expired exports when nobody wakes it.
    imaging_export_poll_seconds: float = Field(default=5.0, gt=0)

    #: Where the DICOM listener binds; unset: all interfaces in production, loopback elsewhere.
    dicom_host: str | None = None
    #: Accept associations from AE titles that no ``dicom_node`` names (their studies get no facility).
    #: Unset: refused in production, accepted in development and test.
    dicom_accept_unknown: bool | None = None
    dicom_max_associations: int = Field(default=20, ge=1)
    #: Largest PDU we announce we can receive (bytes; PS3.8 §9.3.1); large PDUs mean fewer round trips.
    dicom_max_pdu: int = Field(default=1024 * 1024, ge=0)
    #: How long a C-STORE or C-FIND handler waits for the index before answering "out of resources".
    dicom_handler_timeout_seconds: float = Field(default=25.0, gt=0)

    def accepts_unknown_ae(self, settings: Settings) -> bool:
        if self.dicom_accept_unknown is not None:
            return self.dicom_accept_unknown
        return settings.environment is not Environment.production

    def bind_host(self, settings: Settings) -> str:
        if self.dicom_host:
            return self.dicom_host
        return "0.0.0.0" if settings.environment is Environment.production else "127.0.0.1"


def imaging_settings(ctx: AppContext) -> ImagingSettings:
    """The imaging settings of a running app (built once from the environment; tests may replace them)."""
    found = ctx.extras.get(_EXTRAS_KEY)
    if isinstance(found, ImagingSettings):
        return found
    built = ImagingSettings()
    ctx.extras[_EXTRAS_KEY] = built
    return built


def use_imaging_settings(ctx: AppContext, settings: ImagingSettings) -> None:
    ctx.extras[_EXTRAS_KEY] = settings
