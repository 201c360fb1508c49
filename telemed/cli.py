"""The ``telemed`` command: serve, demo, migrate, audit verify, keys rotate, and what the domains add."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import click

from telemed.core.config import Settings
from telemed.core.plugins import discover_domains


def _apply_options(data_dir: Path | None) -> None:
    # The app factory reads its settings from the environment (uvicorn may start it in another process).
    if data_dir is not None:
        os.environ["TELEMED_DATA_DIR"] = str(data_dir.resolve())


async def _migrate(settings: Settings) -> None:
    from telemed.core.db import Database
    from telemed.core.schema import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    db = Database(settings.resolved_database_url)
    try:
        await upgrade(db.engine)
    finally:
        await db.dispose()


def _serve(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        "telemed.app:create_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        access_log=False,
        log_config=None,
    )


@click.group()
def main() -> None:
    """县域医共体远程医疗与转诊平台 · County telemedicine and referral platform."""


data_dir_option = click.option(
    "--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
    help="Folder for the embedded database and files (default: ./data or TELEMED_DATA_DIR).",
)  # fmt: skip


@main.command()
@data_dir_option
@click.option("--check", is_flag=True, help="Only check that the models and the migrations agree.")
def migrate(data_dir: Path | None, check: bool) -> None:
    """Bring the database schema up to date (one Alembic tree for every domain)."""
    _apply_options(data_dir)
    settings = Settings()
    if check:
        from telemed.core.db import Database
        from telemed.core.schema import check as schema_check

        async def run_check() -> None:
            db = Database(settings.resolved_database_url)
            try:
                await schema_check(db.engine)
            finally:
                await db.dispose()

        asyncio.run(run_check())
        click.echo("schema matches the models")
        return
    asyncio.run(_migrate(settings))
    click.echo("database is at the newest migration")


@main.command()
@data_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--workers", default=1, show_default=True, type=int)
def serve(data_dir: Path | None, host: str, port: int, workers: int) -> None:
    """Migrate, then serve the web pages and the API."""
    _apply_options(data_dir)
    asyncio.run(_migrate(Settings()))
    _serve(host, port, workers)


@main.command()
@data_dir_option
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--seed", default=2026, show_default=True, type=int, help="Same seed, same county.")
@click.option("--patients", default=3000, show_default=True, type=int)
@click.option("--no-serve", is_flag=True, help="Seed and print the logins, then exit.")
def demo(data_dir: Path | None, host: str, port: int, seed: int, patients: int, no_serve: bool) -> None:
    """Create (once) a realistic demo county, print the demo logins, and serve it."""
    _apply_options(data_dir)
    settings = Settings()

    async def seed_all() -> str:
        from telemed.core.context import AppContext
        from telemed.org.demo import format_logins, seed_demo_county

        await _migrate(settings)
        ctx = AppContext.build(settings)
        try:
            summary = await seed_demo_county(ctx, seed=seed, patients=patients)
            for domain in discover_domains(disabled=settings.disabled_domains):
                for seeder in domain.demo_seeders:
                    async with ctx.db.session() as session:
                        await seeder(session, seed)
                        await session.commit()
            return format_logins(summary, f"http://{host}:{port}/")
        finally:
            await ctx.db.dispose()

    click.echo(asyncio.run(seed_all()))
    sys.stdout.flush()
    if not no_serve:
        _serve(host, port, 1)


@main.group()
def audit() -> None:
    """The tamper-evident audit trail."""


@audit.command("verify")
@data_dir_option
def audit_verify(data_dir: Path | None) -> None:
    """Recompute the hash chain; exit 1 when a record was changed, removed or the tail truncated."""
    _apply_options(data_dir)
    from telemed.core.audit import BadCheckpoint, stored_checkpoints, verify_chain
    from telemed.core.context import AppContext

    async def run() -> bool:
        ctx = AppContext.build(Settings())
        try:
            try:
                checkpoints = await stored_checkpoints(ctx.storage, ctx.audit_key)
            except BadCheckpoint as forged:
                click.echo(f"TAMPERED: checkpoint {forged} has a bad signature", err=True)
                return False
            async with ctx.db.read_session() as session:
                report = await verify_chain(session, ctx.audit_key, checkpoints)
        finally:
            await ctx.db.dispose()
        for problem in report.problems:
            click.echo(f"TAMPERED: {problem}", err=True)
        if report.ok:
            click.echo(f"audit trail intact: {report.checked} records, {len(checkpoints)} checkpoints")
        else:
            click.echo(f"audit trail damaged from record {report.first_bad_seq}", err=True)
        return report.ok

    if not asyncio.run(run()):
        sys.exit(1)


@main.group()
def keys() -> None:
    """Field-encryption keys."""


@keys.command("rotate")
@data_dir_option
def keys_rotate(data_dir: Path | None) -> None:
    """Re-encrypt protected identifiers under TELEMED_FIELD_KEY_VERSION (older keys must still be loaded)."""
    _apply_options(data_dir)
    from telemed.core.context import AppContext
    from telemed.org.keys import key_versions_in_use, rotate_patient_keys

    async def run() -> None:
        ctx = AppContext.build(Settings())
        try:
            changed = await rotate_patient_keys(ctx)
            versions = await key_versions_in_use(ctx)
        finally:
            await ctx.db.dispose()
        click.echo(f"re-encrypted {changed} patient records; key versions in use: {versions}")

    asyncio.run(run())


for _domain in discover_domains():
    for _command in _domain.cli_commands:
        main.add_command(_command)
