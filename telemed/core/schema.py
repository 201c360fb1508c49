"""The schema and its migrations: the metadata of the host and every installed domain, and Alembic helpers."""

from __future__ import annotations

import importlib
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import MetaData
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from telemed.core.db import Base
from telemed.core.plugins import discover_domains

#: Host modules that declare tables; importing them registers the tables on ``Base.metadata``.
HOST_MODEL_MODULES = (
    "telemed.core.auth",
    "telemed.core.audit",
    "telemed.core.events",
    "telemed.core.notify",
    "telemed.org.models",
)

MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"


def target_metadata() -> MetaData:
    for module in HOST_MODEL_MODULES:
        importlib.import_module(module)
    discover_domains()  # every installed domain's models, whether or not a deployment mounts it
    return Base.metadata


def alembic_config(url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url:
        config.set_main_option("sqlalchemy.url", url)
    return config


async def upgrade(engine: AsyncEngine, revision: str = "heads") -> None:
    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.upgrade(config, revision)

    async with engine.connect() as connection:
        await connection.run_sync(run)
        await connection.commit()


async def check(engine: AsyncEngine) -> None:
    """Raise when the models and the migrations disagree (``alembic check``)."""

    def run(connection: Connection) -> None:
        config = alembic_config()
        config.attributes["connection"] = connection
        command.check(config)

    async with engine.connect() as connection:
        await connection.run_sync(run)
