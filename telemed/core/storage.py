"""Blob storage behind one interface, chosen by URL (``file:`` now; object storage later).

A blob is durable when ``put`` returns: the bytes are written to a temporary file, fsynced, renamed into place
and the directory fsynced, so a crash leaves either the whole blob or nothing under its key.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol
from urllib.parse import unquote, urlparse


class InvalidBlobKey(ValueError):
    pass


class BlobNotFound(KeyError):
    pass


class BlobStorage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...
    async def put_file(self, key: str, source: Path) -> None: ...
    async def get(self, key: str) -> bytes: ...
    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...


def check_key(key: str) -> str:
    """Keys are relative slash paths; no segment may be empty or start with a dot (temporary files do)."""
    parts = key.split("/")
    if not key or any(p == "" or p.startswith(".") for p in parts) or "\\" in key or "\0" in key:
        raise InvalidBlobKey("invalid blob key")
    return key


class FileStorage:
    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / check_key(key)

    def _write_durably(self, key: str, writer_source: bytes | Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as out:
                if isinstance(writer_source, bytes):
                    out.write(writer_source)
                else:
                    with open(writer_source, "rb") as src:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_durably, key, data)

    async def put_file(self, key: str, source: Path) -> None:
        await asyncio.to_thread(self._write_durably, key, source)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._path(key).is_file)

    async def delete(self, key: str) -> None:
        await asyncio.to_thread(self._path(key).unlink, True)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        base = self.root
        paths = await asyncio.to_thread(lambda: sorted(p for p in base.rglob("*") if p.is_file()))
        for path in paths:
            key = path.relative_to(base).as_posix()
            if key.startswith(prefix) and not path.name.startswith("."):
                yield key


def storage_from_url(url: str) -> BlobStorage:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from telemed.core.s3storage import S3Storage  # boto3 loads only when object storage is configured

        return S3Storage.from_url(url)
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")
