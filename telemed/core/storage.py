"""Blob storage behind one interface, chosen by URL (``file:`` or ``s3:``, see :mod:`telemed.core.s3storage`).

A blob is durable when ``put`` or ``put_file`` returns: the bytes are written to a temporary file, fsynced,
renamed into place and the directory fsynced, so a crash leaves either the whole blob or nothing under its key.
``put_file(..., move=True)`` hands the source file over instead of copying it (a 2 GB STOW part is then written
once, not twice): the file is fsynced, renamed under its key and the key's directory fsynced; across file systems
it falls back to a durable copy, and the source is removed once the blob is safe.

Reads come three ways: ``get`` (all the bytes, for small blobs), ``open_chunks`` (a stream of blocks, optionally
a byte range, one block in memory at a time) and ``local_file`` (a file on disk for code that needs a path or
seeks: the blob itself for :class:`FileStorage`, a temporary download removed afterwards for object storage).
A missing key raises :class:`BlobNotFound` from every one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import stat
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Final, Protocol
from urllib.parse import unquote, urlparse

#: Block size of ``open_chunks`` unless the caller asks otherwise.
DEFAULT_CHUNK_SIZE: Final = 1024 * 1024


class InvalidBlobKey(ValueError):
    pass


class BlobNotFound(KeyError):
    pass


class BlobStorage(Protocol):
    async def put(self, key: str, data: bytes) -> None: ...

    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        """Store the file ``source`` under ``key``, durably on return. With ``move`` the source is consumed:
        renamed into place or, where that cannot be done, removed once the blob is stored; it is left alone
        when the call fails."""
        ...

    def put_file_blocking(self, key: str, source: Path, *, move: bool = False) -> None:
        """:meth:`put_file` for a thread that may block (a DICOM association's own): the same work, in the calling
        thread instead of a worker thread of the event loop."""
        ...

    async def get(self, key: str) -> bytes: ...

    async def size(self, key: str) -> int:
        """The blob's length in bytes."""
        ...

    def open_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        """The blob's bytes from ``start`` (``length`` of them, or to the end) in blocks of at most ``chunk_size``.

        A range past the end yields what there is (nothing beyond the end), as a file read does. Close the
        generator (``aclose``) when stopping early, so that the file or connection behind it is released.
        """
        ...

    def local_file(self, key: str) -> AbstractAsyncContextManager[Path]:
        """A file holding the blob, for the time of the ``async with``. Read it only: for local storage it is the
        stored blob itself (no copy), for object storage a temporary download that is removed afterwards."""
        ...

    async def exists(self, key: str) -> bool: ...
    async def delete(self, key: str) -> None: ...
    def list(self, prefix: str) -> AsyncIterator[str]: ...


def check_key(key: str) -> str:
    """Keys are relative slash paths; no segment may be empty or start with a dot (temporary files do)."""
    parts = key.split("/")
    if not key or any(p == "" or p.startswith(".") for p in parts) or "\\" in key or "\0" in key:
        raise InvalidBlobKey("invalid blob key")
    return key


def check_range(chunk_size: int, start: int, length: int | None) -> None:
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if start < 0 or (length is not None and length < 0):
        raise ValueError("a byte range starts at 0 or later and has no negative length")


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by name (a directory's fsync makes the names in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


_MISSING: Final = (FileNotFoundError, IsADirectoryError, NotADirectoryError)


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
        fsync_path(target.parent)

    def _move_durably(self, key: str, source: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        # The contents first: a rename does not flush them, and the key must never name a half-written file.
        fsync_path(source)
        try:
            os.replace(source, target)
        except OSError as error:
            if error.errno != errno.EXDEV:
                raise
            # Another file system (a spool on a separate volume, a C-STORE file in /tmp): copy, then let go.
            self._write_durably(key, source)
            source.unlink(missing_ok=True)
            return
        # The new name is made durable; the old one's removal is not waited for (one fsync fewer on every
        # instance): a journalling file system commits both with this fsync anyway, and where the old name could
        # come back after a crash, it is a spool file naming the same bytes, which ``telemed imaging repair``
        # removes like any other a crash leaves (the blob keeps its own name).
        fsync_path(target.parent)

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._write_durably, key, data)

    def put_file_blocking(self, key: str, source: Path, *, move: bool = False) -> None:
        if move:
            self._move_durably(key, Path(source))
        else:
            self._write_durably(key, Path(source))

    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        await asyncio.to_thread(self.put_file_blocking, key, source, move=move)

    async def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return await asyncio.to_thread(path.read_bytes)
        except FileNotFoundError:
            raise BlobNotFound(key) from None

    async def size(self, key: str) -> int:
        path = self._path(key)
        try:
            found = await asyncio.to_thread(os.stat, path)
        except _MISSING:
            raise BlobNotFound(key) from None
        if not stat.S_ISREG(found.st_mode):
            raise BlobNotFound(key)
        return found.st_size

    async def open_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        check_range(chunk_size, start, length)
        path = self._path(key)
        try:
            file = await asyncio.to_thread(open, path, "rb")
        except _MISSING:
            raise BlobNotFound(key) from None
        try:
            if start:
                file.seek(start)
            remaining = length
            while remaining is None or remaining > 0:
                wanted = chunk_size if remaining is None else min(chunk_size, remaining)
                block = await asyncio.to_thread(file.read, wanted)
                if not block:
                    return
                if remaining is not None:
                    remaining -= len(block)
                yield block
        finally:
            file.close()

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        path = self._path(key)
        if not await asyncio.to_thread(path.is_file):
            raise BlobNotFound(key)
        yield path

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


def storage_from_url(url: str, *, temp_dir: Path | None = None) -> BlobStorage:
    """The storage a URL names. ``temp_dir`` is where object storage puts the downloads of ``local_file``
    (default: the system's temporary folder); local files need none."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return FileStorage(Path(unquote(parsed.path)))
    if parsed.scheme == "s3":
        from telemed.core.s3storage import S3Storage  # boto3 loads only when object storage is configured

        return S3Storage.from_url(url, temp_dir=temp_dir)
    raise ValueError(f"unsupported storage URL scheme: {parsed.scheme!r}")
