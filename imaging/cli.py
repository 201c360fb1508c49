"""``telemed imaging ...``: maintenance of the image store."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from imaging import repository
from imaging.ingest import BLOB_PREFIX, blob_written_at
from telemed.core.config import Settings
from telemed.core.context import AppContext


@dataclass(slots=True)
class RepairReport:
    blobs: int = 0
    rows: int = 0
    orphans: list[str] = field(default_factory=list)
    removed: int = 0
    kept_recent: int = 0
    missing: list[str] = field(default_factory=list)
    spool_removed: int = 0


async def repair_store(ctx: AppContext, *, min_age_seconds: float, dry_run: bool) -> RepairReport:
    """Remove blobs that no index row names (left by a crash between writing a file and committing its row), and
    find index rows whose blob is missing (there are none by construction: a row is written after its blob).

    Blobs younger than ``min_age_seconds`` are left alone: they may belong to an upload still in progress.
    """
    report = RepairReport()
    async with ctx.db.read_session() as session:
        referenced = await repository.all_blob_keys(session)
    report.rows = len(referenced)
    present: set[str] = set()
    now = time.time()
    async for key in ctx.storage.list(BLOB_PREFIX):
        report.blobs += 1
        present.add(key)
        if key in referenced:
            continue
        written = blob_written_at(key)
        if written is not None and now - written < min_age_seconds:
            report.kept_recent += 1
            continue
        report.orphans.append(key)
    report.missing = sorted(referenced - present)
    if not dry_run:
        # Checked again row by row just before deleting: a blob may have gained its row meanwhile.
        for key in report.orphans:
            async with ctx.db.read_session() as session:
                still_orphan = key not in await repository.blob_keys_referenced(session, [key])
            if still_orphan:
                await ctx.storage.delete(key)
                report.removed += 1
        report.spool_removed = await asyncio.to_thread(
            _clean_spool, ctx.settings.data_dir / "spool", min_age_seconds, now
        )
    return report


def _clean_spool(spool: Path, min_age_seconds: float, now: float) -> int:
    """Spool files of requests that died with the process (a live request deletes its own)."""
    removed = 0
    if not spool.is_dir():
        return 0
    for path in spool.rglob("*"):
        if path.is_file() and now - path.stat().st_mtime >= min_age_seconds:
            path.unlink(missing_ok=True)
            removed += 1
    return removed


@click.group("imaging")
def imaging() -> None:
    """The image store (DICOM)."""


@imaging.command("repair")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the embedded database and files (default: ./data or TELEMED_DATA_DIR).")  # fmt: skip
@click.option("--min-age", "min_age", default=3600.0, show_default=True, type=float,
              help="Only remove orphan blobs older than this many seconds (younger: maybe uploading).")  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Report only; delete nothing.")
def repair(data_dir: Path | None, min_age: float, dry_run: bool) -> None:
    """Remove orphan DICOM blobs (no index row) and report index rows without a blob; exit 1 if any."""
    if data_dir is not None:
        os.environ["TELEMED_DATA_DIR"] = str(data_dir.resolve())

    async def run() -> RepairReport:
        ctx = AppContext.build(Settings())
        try:
            return await repair_store(ctx, min_age_seconds=min_age, dry_run=dry_run)
        finally:
            await ctx.db.dispose()

    report = asyncio.run(run())
    verb = "would remove" if dry_run else "removed"
    click.echo(
        f"index rows: {report.rows}; blobs: {report.blobs}; orphan blobs: {len(report.orphans)} "
        f"({verb} {len(report.orphans) if dry_run else report.removed}, {report.kept_recent} too recent to judge); "
        f"stale spool files removed: {report.spool_removed}"
    )
    click.echo(f"index rows without blob: {len(report.missing)}")
    for key in report.missing[:100]:
        click.echo(f"MISSING {key}", err=True)
    if report.missing:
        sys.exit(1)
