"""``telemed imaging ...``: maintenance of the image store."""

from __future__ import annotations

import asyncio
import getpass
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import click

from imaging import repository
from imaging.export import (
    REASONS,
    ExportFailed,
    ExportOptions,
    ExportPurpose,
    ExportResult,
    StudyNotIndexed,
    export_study_to_file,
)
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


def _operator() -> str | None:
    """The server account that ran the command, for the audit record (the actor itself is the system)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return None


@imaging.command("export")
@click.argument("study_uid")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The ZIP file to write (DICOM Part 10 files and manifest.json).")  # fmt: skip
@click.option("--purpose", type=click.Choice([p.value for p in ExportPurpose]), default=ExportPurpose.teaching.value,
              show_default=True, help="Why the study leaves the platform; recorded in the audit trail.")  # fmt: skip
@click.option("--retain-dates", is_flag=True, help="Keep dates and times (PS3.15 E.3.6).")
@click.option("--retain-patient-characteristics", is_flag=True, help="Keep sex, age, size, weight (PS3.15 E.3.7).")
@click.option("--skip-burned-in", is_flag=True,
              help="Leave out instances marked Burned In Annotation = YES instead of stopping.")  # fmt: skip
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder of the embedded database and files (default: ./data or TELEMED_DATA_DIR).")  # fmt: skip
def export(
    study_uid: str,
    out: Path,
    purpose: str,
    retain_dates: bool,
    retain_patient_characteristics: bool,
    skip_burned_in: bool,
    data_dir: Path | None,
) -> None:
    """Write a de-identified copy of a study (DICOM PS3.15 E.1 Basic Profile) to a ZIP; audited as the system."""
    if data_dir is not None:
        os.environ["TELEMED_DATA_DIR"] = str(data_dir.resolve())
    if not out.resolve().parent.is_dir():
        click.echo(f"the folder of --out does not exist: {out.resolve().parent}", err=True)
        sys.exit(2)
    options = ExportOptions(
        retain_long_full_dates=retain_dates,
        retain_patient_characteristics=retain_patient_characteristics,
        skip_burned_in_annotation=skip_burned_in,
    )

    async def run() -> ExportResult:
        ctx = AppContext.build(Settings())
        try:
            return await export_study_to_file(
                ctx, study_uid=study_uid, out=out, purpose=ExportPurpose(purpose), options=options, operator=_operator()
            )
        finally:
            await ctx.db.dispose()

    try:
        result = asyncio.run(run())
    except StudyNotIndexed:
        click.echo("no such study in the index", err=True)
        sys.exit(1)
    except ExportFailed as failure:
        click.echo(f"export failed ({failure.code}): {REASONS[failure.code][1]}", err=True)
        sys.exit(1)
    left_out = f"; {result.skipped} left out for burned-in annotation" if result.skipped else ""
    click.echo(f"wrote {out}: {result.instances} de-identified instances, {result.size_bytes} bytes{left_out}")
