"""Shared pieces of the imaging tests: small studies on disk, STOW-RS requests, DICOM JSON reading, dcmtk."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

from imaging.config import ImagingSettings, use_imaging_settings
from imaging.models import ImagingInstance
from imaging.multipart import PartSource, build_multipart_related
from telemed.core.context import AppContext
from tests.imaging.dicom_factory import make_ct_series, make_ct_slice, make_multiframe_xa, make_xray, new_uid

__all__ = [
    "count_blobs",
    "count_rows",
    "dcmtk",
    "first",
    "make_ct_series",
    "make_ct_slice",
    "make_multiframe_xa",
    "make_xray",
    "multiframe_study",
    "new_uid",
    "parse_multipart",
    "quick_settings",
    "sequence",
    "small_study",
    "stow",
]


def small_study(directory: Path, count: int = 3, **options: Any) -> list[Path]:
    """``count`` small CT slices (64x64) of one study and series; options go to ``make_ct_series``."""
    options.setdefault("rows", 64)
    options.setdefault("cols", 64)
    return make_ct_series(directory, count=count, **options)


def multiframe_study(directory: Path, frames: int = 3, **options: Any) -> Path:
    """One XA cine instance of ``frames`` frames (64x64), alone in a new study; options go to
    ``make_multiframe_xa``."""
    options.setdefault("patient_name", "Li^Si=李^四")
    options.setdefault("charset", "GB18030")
    return make_multiframe_xa(
        directory / "xa-0001.dcm",
        study_uid=options.pop("study_uid", None) or new_uid(),
        series_uid=options.pop("series_uid", None) or new_uid(),
        sop_uid=options.pop("sop_uid", None) or new_uid(),
        frames=frames,
        **options,
    )


async def stow(
    client: httpx.AsyncClient,
    headers: dict[str, str],
    parts: Sequence[bytes | Path | PartSource],
    *,
    study_uid: str | None = None,
) -> httpx.Response:
    content_type, body = build_multipart_related(parts)
    url = "/dicomweb/studies" + (f"/{study_uid}" if study_uid else "")
    return await client.post(
        url, content=body, headers={**headers, "Content-Type": content_type, "Accept": "application/dicom+json"}
    )


def first(attributes: dict[str, Any], tag: str) -> Any:
    """The first value of ``tag`` in a DICOM JSON object, or None."""
    values = attributes.get(tag, {}).get("Value")
    return values[0] if values else None


def sequence(body: dict[str, Any], tag: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = body.get(tag, {}).get("Value", [])
    return items


async def count_rows(ctx: AppContext) -> int:
    async with ctx.db.read_session() as session:
        return int(await session.scalar(select(func.count(ImagingInstance.id))) or 0)


async def count_blobs(ctx: AppContext) -> int:
    return len([key async for key in ctx.storage.list("dicom/")])


def quick_settings(ctx: AppContext, **overrides: Any) -> ImagingSettings:
    """Imaging settings for a test: a one-second quiet period unless told otherwise."""
    overrides.setdefault("imaging_stable_seconds", 1.0)
    settings = ImagingSettings(**overrides)
    use_imaging_settings(ctx, settings)
    return settings


def dcmtk(tool: str) -> str:
    """The path of a dcmtk tool (``storescu``, ``findscu``).

    pynetdicom installs console scripts of the same names (its own SCUs), which come first on a virtualenv's
    PATH; only dcmtk's own binaries are real peers. A missing dcmtk makes the test fail, not skip.
    """
    candidates = [Path("/usr/bin") / tool, Path("/usr/local/bin") / tool]
    found = shutil.which(tool)
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if not candidate.is_file():
            continue
        version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True, check=False)
        if "dcmtk" in (version.stdout + version.stderr).lower():
            return str(candidate)
    raise AssertionError(f"dcmtk's {tool} is not installed (Debian package dcmtk): the interop test cannot run")


def parse_multipart(response: httpx.Response) -> list[tuple[dict[str, str], bytes]]:
    """The parts of a ``multipart/related`` response: (headers with lower-case names, body)."""
    content_type = response.headers["content-type"]
    assert content_type.startswith("multipart/related"), content_type
    boundary = next(
        p.split("=", 1)[1].strip().strip('"') for p in content_type.split(";") if p.strip().startswith("boundary=")
    )
    delimiter = b"--" + boundary.encode()
    pieces = response.content.split(delimiter)
    assert pieces[-1].startswith(b"--"), "no closing delimiter"
    parts: list[tuple[dict[str, str], bytes]] = []
    for piece in pieces[1:-1]:
        assert piece.startswith(b"\r\n")
        assert piece.endswith(b"\r\n")
        head, _, data = piece[2:-2].partition(b"\r\n\r\n")
        headers = {}
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        parts.append((headers, data))
    return parts
