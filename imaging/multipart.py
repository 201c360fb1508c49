"""Streaming ``multipart/related`` for STOW-RS request bodies (PS3.18 §10.5; RFC 2387; RFC 2046 §5.1).

:func:`iter_parts` reads the body chunk by chunk. A part smaller than one spool block (``SPOOL_WRITE_BYTES``, most
DICOM instances) is yielded with its bytes, for the caller to check and write in one go; a larger one is spooled
to its own file block by block, so memory use depends on the block size, never on the size of a part or of the
body. Problems are of two kinds:

* the body as a whole is unusable (wrong media type, no boundary, cut short, a broken delimiter): a
  :class:`MultipartError` is raised, after every part that was complete before it has been yielded, so the caller
  can still store those instances and report the rest as failed;
* one part is unusable (larger than ``max_part_bytes``, unreadable headers, wrong Content-Length): it is
  yielded as a :class:`RejectedPart`, nothing of it is kept, and parsing goes on with the next part.

:func:`build_multipart_related` and :func:`iter_multipart_related` build such bodies for tests and benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Final

__all__ = [
    "MediaType",
    "MultipartError",
    "MultipartProblem",
    "Part",
    "PartSource",
    "RejectedPart",
    "build_multipart_related",
    "iter_multipart_related",
    "iter_parts",
    "new_boundary",
    "parse_media_type",
    "stow_content_type",
    "write_spool_file",
]

DICOM_MEDIA_TYPE: Final = "application/dicom"
#: Headers longer than this (per part) are refused; STOW parts carry two or three short headers.
DEFAULT_MAX_HEADER_BYTES: Final = 16 * 1024
#: Part data is written to disk in blocks of this size, off the event loop; a smaller part is held in memory.
SPOOL_WRITE_BYTES: Final = 1024 * 1024

# RFC 2046 §5.1.1: bchars := bcharsnospace / " ", 1 to 70 of them, not ending with a space.
_BOUNDARY_CHARS: Final = frozenset("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ'()+_,-./:=? ")
_MAX_BOUNDARY_LENGTH: Final = 70
_MAX_TRANSPORT_PADDING: Final = 256
_TOKEN_CHARS: Final = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


class MultipartProblem(StrEnum):
    """Stable reason codes for API clients."""

    content_type = "multipart.content_type"
    type_parameter = "multipart.type"
    boundary = "multipart.boundary"
    boundary_not_found = "multipart.boundary_not_found"
    malformed = "multipart.malformed"
    truncated = "multipart.truncated"
    headers_too_large = "multipart.headers_too_large"
    part_too_large = "multipart.part_too_large"
    part_headers = "multipart.part_headers"
    content_length_mismatch = "multipart.content_length_mismatch"


# 415 for a media type STOW-RS does not accept (PS3.18 §10.5.2, Table 10.5.3-1); 413 for a part over the limit.
_HTTP_STATUS: Final = {
    MultipartProblem.content_type: 415,
    MultipartProblem.type_parameter: 415,
    MultipartProblem.part_too_large: 413,
}


class MultipartError(ValueError):
    """A body or part that cannot be used; the messages quote no part content."""

    def __init__(self, reason_code: MultipartProblem, message_en: str, message_zh: str) -> None:
        super().__init__(f"{reason_code.value}: {message_en}")
        self.reason_code = reason_code
        self.message_en = message_en
        self.message_zh = message_zh

    @property
    def http_status(self) -> int:
        return _HTTP_STATUS.get(self.reason_code, 400)


@dataclass(frozen=True, slots=True)
class MediaType:
    """A parsed Content-Type (RFC 9110 §8.3.1): lower-case type and parameter names, unquoted values."""

    essence: str
    parameters: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Part:
    """One complete body part: its bytes (``data``) when it is smaller than a spool block, otherwise spooled to
    ``path``. The caller owns the file (move it, or delete it); it writes a part held in memory where it belongs
    (:func:`write_spool_file`), so that a small part costs one worker-thread call from its last byte to its file.
    """

    index: int
    #: All part headers, names in lower case (RFC 9110 §5.1: names are case-insensitive).
    headers: Mapping[str, str]
    #: The part's Content-Type, or the ``type`` of the request when the part has none (RFC 2387 §3.1).
    content_type: str
    content_length: int | None
    content_location: str | None
    #: The spool file of a large part; None for a part held in memory.
    path: Path | None
    size: int
    #: The bytes of a part smaller than a spool block; None for a spooled part.
    data: bytes | None = None

    @property
    def transfer_syntax(self) -> str | None:
        """The ``transfer-syntax`` parameter of the part's media type, if any (PS3.18 §8.7.3.5.2)."""
        try:
            return parse_media_type(self.content_type).parameters.get("transfer-syntax")
        except MultipartError:
            return None


@dataclass(frozen=True, slots=True)
class RejectedPart:
    """A part that was read past and not kept; ``error`` says why."""

    index: int
    headers: Mapping[str, str]
    content_location: str | None
    error: MultipartError


def _content_type_error(problem: MultipartProblem, received: str) -> MultipartError:
    shown = "".join(char if char.isprintable() else "?" for char in received)[:120]
    return MultipartError(
        problem,
        'STOW-RS needs Content-Type: multipart/related; type="application/dicom"; boundary=... '
        f"(PS3.18 §10.5.1); received {shown!r}.",
        'STOW-RS 请求的 Content-Type 必须是 multipart/related; type="application/dicom"; boundary=...，'
        f"收到的是 {shown!r}。",
    )


def parse_media_type(value: str) -> MediaType:
    """Parse ``type/subtype; name=value; name="quoted value"`` (RFC 9110 §8.3.1, §5.6.6)."""
    essence, _, rest = value.partition(";")
    essence = essence.strip().lower()
    kind, slash, subtype = essence.partition("/")
    if not slash or not kind or not subtype or not set(kind + subtype) <= _TOKEN_CHARS:
        raise _content_type_error(MultipartProblem.content_type, value)
    parameters: dict[str, str] = {}
    position = 0
    while position < len(rest):
        while position < len(rest) and rest[position] in " \t;":
            position += 1
        if position >= len(rest):
            break
        equals = rest.find("=", position)
        if equals < 0:
            raise _content_type_error(MultipartProblem.content_type, value)
        name = rest[position:equals].strip().lower()
        position = equals + 1
        if position < len(rest) and rest[position] == '"':
            chars: list[str] = []
            position += 1
            while position < len(rest) and rest[position] != '"':
                if rest[position] == "\\" and position + 1 < len(rest):
                    position += 1
                chars.append(rest[position])
                position += 1
            if position >= len(rest):
                raise _content_type_error(MultipartProblem.content_type, value)
            position += 1
            parameter = "".join(chars)
        else:
            end = rest.find(";", position)
            end = len(rest) if end < 0 else end
            parameter = rest[position:end].strip()
            position = end
        if not name or not set(name) <= _TOKEN_CHARS:
            raise _content_type_error(MultipartProblem.content_type, value)
        parameters.setdefault(name, parameter)
    return MediaType(essence, parameters)


def _stow_boundary(content_type_header: str) -> tuple[bytes, str]:
    """The boundary of a STOW-RS request body and the media type of its parts (PS3.18 §10.5.1.1).

    A request without the ``type`` parameter is taken as ``application/dicom``: RFC 2387 makes ``type``
    mandatory, but simple clients (curl scripts, some modalities' uploaders) leave it out, and each part still
    says what it is. A ``type`` other than application/dicom is refused: the metadata-and-bulk-data forms
    (``application/dicom+json``, ``+xml``) are not supported.
    """
    media = parse_media_type(content_type_header)
    if media.essence != "multipart/related":
        raise _content_type_error(MultipartProblem.content_type, content_type_header)
    part_type = media.parameters.get("type", DICOM_MEDIA_TYPE).strip().lower()
    if part_type != DICOM_MEDIA_TYPE:
        raise _content_type_error(MultipartProblem.type_parameter, content_type_header)
    boundary = media.parameters.get("boundary", "")
    if not 1 <= len(boundary) <= _MAX_BOUNDARY_LENGTH or boundary.endswith(" ") or not set(boundary) <= _BOUNDARY_CHARS:
        raise MultipartError(
            MultipartProblem.boundary,
            "The multipart/related Content-Type has no valid boundary parameter (1-70 characters, RFC 2046 §5.1.1).",
            "multipart/related 的 Content-Type 缺少合法的 boundary 参数（1-70 个字符，RFC 2046 §5.1.1）。",
        )
    return boundary.encode("ascii"), DICOM_MEDIA_TYPE


# --------------------------------------------------------------------------------------------------------------
# The parser: bytes in, events out; no I/O, so that it can be fed any chunking.


class _State(Enum):
    preamble = "preamble"
    after_delimiter = "after_delimiter"
    headers = "headers"
    body = "body"
    done = "done"


@dataclass(frozen=True, slots=True)
class _PartStart:
    header_block: bytes


@dataclass(frozen=True, slots=True)
class _PartData:
    data: bytes


@dataclass(frozen=True, slots=True)
class _PartEnd:
    pass


@dataclass(frozen=True, slots=True)
class _Failure:
    error: MultipartError


_Event = _PartStart | _PartData | _PartEnd | _Failure


class _Parser:
    """The RFC 2046 §5.1.1 grammar as a state machine over a small buffer.

    The buffer holds at most one chunk plus the bytes that might start a delimiter, so a delimiter split across
    any number of chunks is still found. The body is conceptually prefixed with CRLF, which makes the first
    delimiter (allowed at the very start of the body) look like every other one.
    """

    def __init__(self, boundary: bytes, max_header_bytes: int) -> None:
        self._delimiter = b"\r\n--" + boundary
        self._buffer = bytearray(b"\r\n")
        self._state = _State.preamble
        self._max_header_bytes = max_header_bytes
        self._scanned = 0  # where the next search in the buffer may start: earlier bytes were searched already
        self._delimiter_seen = False

    @property
    def done(self) -> bool:
        return self._state is _State.done

    def feed(self, data: bytes) -> list[_Event]:
        if self._state is _State.done:
            return []  # the epilogue is ignored (RFC 2046 §5.1.1)
        self._buffer += data
        events: list[_Event] = []
        try:
            while self._step(events):
                pass
        except MultipartError as error:
            self._state = _State.done
            events.append(_Failure(error))
        return events

    def finish(self) -> list[_Event]:
        """The end of the body: anything but a close delimiter means it was cut short."""
        if self._state is _State.done:
            return []
        self._state = _State.done
        if self._delimiter_seen:
            error = MultipartError(
                MultipartProblem.truncated,
                "The request body ends before the closing boundary: the upload was cut short.",
                "请求体在结束边界之前就结束了：上传不完整。",
            )
        else:
            error = MultipartError(
                MultipartProblem.boundary_not_found,
                "The boundary from the Content-Type never occurs in the request body.",
                "请求体中找不到 Content-Type 声明的 boundary。",
            )
        return [_Failure(error)]

    def _step(self, events: list[_Event]) -> bool:
        """Advance once; False when more input is needed."""
        buffer = self._buffer
        delimiter = self._delimiter
        if self._state is _State.preamble or self._state is _State.body:
            index = buffer.find(delimiter, self._scanned)
            if index < 0:
                # Keep what could be the start of a delimiter; the rest is data (or ignored preamble).
                safe = len(buffer) - (len(delimiter) - 1)
                if safe > 0:
                    if self._state is _State.body:
                        events.append(_PartData(bytes(buffer[:safe])))
                    del buffer[:safe]
                self._scanned = 0
                return False
            if self._state is _State.body:
                if index:
                    events.append(_PartData(bytes(buffer[:index])))
                events.append(_PartEnd())
            del buffer[: index + len(delimiter)]
            self._scanned = 0
            self._delimiter_seen = True
            self._state = _State.after_delimiter
            return True

        if self._state is _State.after_delimiter:
            if len(buffer) < 2:
                return False
            if buffer[:2] == b"--":
                self._state = _State.done
                buffer.clear()
                return False
            padding = 0
            while padding < len(buffer) and buffer[padding] in b" \t":
                padding += 1
            if padding > _MAX_TRANSPORT_PADDING:
                raise self._malformed()
            if len(buffer) - padding < 2:
                return False
            if buffer[padding : padding + 2] != b"\r\n":
                raise self._malformed()
            # Keep the CRLF: the header block then always ends at the first CRLF CRLF, even when empty.
            del buffer[:padding]
            self._state = _State.headers
            return True

        if self._state is _State.headers:
            index = buffer.find(b"\r\n\r\n", self._scanned)
            if index < 0:
                if len(buffer) > self._max_header_bytes:
                    raise MultipartError(
                        MultipartProblem.headers_too_large,
                        f"A part's headers exceed {self._max_header_bytes} bytes.",
                        f"某个部分的头部超过 {self._max_header_bytes} 字节。",
                    )
                self._scanned = max(len(buffer) - 3, 0)
                return False
            events.append(_PartStart(bytes(buffer[2:index])))
            del buffer[: index + 4]
            self._scanned = 0
            self._state = _State.body
            return True
        return False

    @staticmethod
    def _malformed() -> MultipartError:
        return MultipartError(
            MultipartProblem.malformed,
            "A boundary delimiter is not followed by a line end or '--' (RFC 2046 §5.1.1).",
            "边界分隔符后面既不是换行也不是“--”（RFC 2046 §5.1.1）。",
        )


def _parse_headers(block: bytes) -> dict[str, str]:
    """Part headers (RFC 2045 / RFC 5322 syntax); folded lines are joined."""
    headers: dict[str, str] = {}
    last: str | None = None
    for line in block.decode("latin-1").split("\r\n"):
        if not line:
            continue
        if line[0] in " \t" and last is not None:
            headers[last] = f"{headers[last]} {line.strip()}".strip()
            continue
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name or not set(name) <= _TOKEN_CHARS:
            raise MultipartError(
                MultipartProblem.part_headers,
                "A part has a header line that is not 'Name: value'.",
                "某个部分的头部格式不正确（应为“名称: 值”）。",
            )
        headers[name] = value.strip()
        last = name
    return headers


# --------------------------------------------------------------------------------------------------------------
# Spooling


def _write_all(descriptor: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


class _Spool:
    """One part's temp file. Data is buffered up to SPOOL_WRITE_BYTES and written in a worker thread; the file is
    made by the first write, so that a part that never fills a block (most DICOM instances) is never spooled here
    (:meth:`held`)."""

    def __init__(self, spool_dir: Path) -> None:
        self.spool_dir = spool_dir
        self.descriptor: int | None = None
        self.path: Path | None = None
        self.size = 0
        self._pending = bytearray()
        self._in_flight: asyncio.Future[tuple[int | None, Path]] | None = None

    async def write(self, data: bytes) -> None:
        self.size += len(data)
        self._pending += data
        if len(self._pending) >= SPOOL_WRITE_BYTES:
            await self._flush(close=False)

    def held(self) -> bytes | None:
        """The whole part, when none of it has been written (it is smaller than a block); the spool is empty then."""
        if self.path is not None or self._in_flight is not None:
            return None
        data = bytes(self._pending)
        self._pending.clear()
        return data

    async def close(self) -> Path:
        """Write what is buffered and close the file; its path."""
        await self._flush(close=True)
        assert self.path is not None
        return self.path

    async def _flush(self, *, close: bool) -> None:
        data = bytes(self._pending)
        self._pending.clear()
        # The file is the thread's while it writes: back here when the write returns, or with discard() after.
        descriptor, path = self.descriptor, self.path
        self.descriptor = self.path = None
        loop = asyncio.get_running_loop()
        self._in_flight = loop.run_in_executor(None, _spool_write, self.spool_dir, descriptor, path, data, close)
        # Shielded, so that cancelling the task leaves this future pending until the thread has returned.
        self.descriptor, self.path = await asyncio.shield(self._in_flight)
        self._in_flight = None

    def discard(self) -> None:
        # Synchronous on purpose: it runs in ``finally`` of an async generator, which may be closed where
        # awaiting is not possible. If the task was cancelled while a worker thread was writing, the file is
        # closed and removed only when that write returns: closing its descriptor earlier could let the thread
        # write into whatever file reuses the descriptor number.
        self._pending.clear()
        in_flight, self._in_flight = self._in_flight, None
        descriptor, self.descriptor = self.descriptor, None
        path, self.path = self.path, None
        if in_flight is not None:
            if in_flight.done():
                _discard_written(in_flight)
            else:
                in_flight.add_done_callback(_discard_written)
        _close_and_unlink(descriptor, path)


def _spool_write(
    spool_dir: Path, descriptor: int | None, path: Path | None, data: bytes, close: bool
) -> tuple[int | None, Path]:
    """Append ``data`` to the spool file (made first if there is none yet), and close it when asked: the file's
    descriptor (None once closed) and path. On failure the file is closed and removed."""
    if path is None:
        descriptor, name = tempfile.mkstemp(prefix="stow-", suffix=".part", dir=spool_dir)
        path = Path(name)
    assert descriptor is not None
    try:
        _write_all(descriptor, data)
    except BaseException:
        _close_and_unlink(descriptor, path)
        raise
    if close:
        try:
            os.close(descriptor)  # the descriptor is released even when this raises (close(2) on Linux)
        except BaseException:
            _close_and_unlink(None, path)
            raise
        return None, path
    return descriptor, path


def write_spool_file(spool_dir: Path, data: bytes) -> Path:
    """Write ``data`` (a part held in memory) to a new spool file and close it (blocking: call it in a worker
    thread); the file's path. On failure nothing is left."""
    return _spool_write(spool_dir, None, None, data, True)[1]


def _discard_written(write: asyncio.Future[tuple[int | None, Path]]) -> None:
    """What a spool write left behind, when nobody is left to use it."""
    if write.cancelled() or write.exception() is not None:
        return  # nothing: a failed write removes its file itself
    _close_and_unlink(*write.result())


def _close_and_unlink(descriptor: int | None, path: Path | None) -> None:
    if descriptor is not None:
        os.close(descriptor)
    if path is not None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@dataclass(slots=True)
class _CurrentPart:
    index: int
    headers: dict[str, str]
    spool: _Spool | None
    rejection: MultipartError | None = None
    received: int = 0


def _part_too_large(max_part_bytes: int) -> MultipartError:
    return MultipartError(
        MultipartProblem.part_too_large,
        f"A part is larger than the limit of {max_part_bytes} bytes; it was not stored.",
        f"某个部分超过了 {max_part_bytes} 字节的上限，未保存。",
    )


def _declared_length(headers: Mapping[str, str]) -> int | None:
    value = headers.get("content-length")
    if value is None:
        return None
    if not value.isascii() or not value.isdigit():
        raise MultipartError(
            MultipartProblem.part_headers,
            "A part has a Content-Length that is not a number.",
            "某个部分的 Content-Length 不是数字。",
        )
    return int(value)


async def iter_parts(
    chunks: AsyncIterator[bytes],
    content_type_header: str,
    *,
    spool_dir: Path,
    max_part_bytes: int,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
) -> AsyncIterator[Part | RejectedPart]:
    """The parts of a STOW-RS request body (PS3.18 §10.5.1): held in memory when smaller than a spool block,
    otherwise spooled to a file in ``spool_dir`` (:class:`Part`).

    Raises :class:`MultipartError` for a Content-Type that is not ``multipart/related; type="application/dicom"``
    with a boundary (before reading anything), and for a body that is malformed or cut short (after yielding
    every part that was complete). Parts over ``max_part_bytes`` or with bad headers come out as
    :class:`RejectedPart`. A part being received when iteration stops is deleted; a yielded part's file belongs
    to the caller.
    """
    boundary, default_type = _stow_boundary(content_type_header)
    parser = _Parser(boundary, max_header_bytes)
    current: _CurrentPart | None = None
    next_index = 0
    try:
        async for chunk in chunks:
            for event in parser.feed(chunk):
                if isinstance(event, _PartStart):
                    current = await _start_part(event, next_index, spool_dir, max_part_bytes)
                    next_index += 1
                elif isinstance(event, _PartData):
                    assert current is not None
                    await _receive(current, event.data, max_part_bytes)
                elif isinstance(event, _PartEnd):
                    assert current is not None
                    # ``current`` is cleared only once the part is finished, so that a cancellation while its
                    # last block is being written still removes the file.
                    finished = await _finish_part(current, default_type)
                    current = None
                    yield finished
                else:
                    raise event.error
            if parser.done:
                break
        for event in parser.finish():
            assert isinstance(event, _Failure)
            raise event.error
    finally:
        if current is not None and current.spool is not None:
            current.spool.discard()


async def _start_part(event: _PartStart, index: int, spool_dir: Path, max_part_bytes: int) -> _CurrentPart:
    try:
        headers = _parse_headers(event.header_block)
        declared = _declared_length(headers)
    except MultipartError as error:
        return _CurrentPart(index, {}, None, rejection=error)
    if declared is not None and declared > max_part_bytes:
        # Refuse before writing a byte when the sender tells us the size.
        return _CurrentPart(index, headers, None, rejection=_part_too_large(max_part_bytes))
    return _CurrentPart(index, headers, _Spool(spool_dir))


async def _receive(part: _CurrentPart, data: bytes, max_part_bytes: int) -> None:
    part.received += len(data)
    if part.spool is None:
        return  # rejected: read past the rest of it
    if part.received > max_part_bytes:
        part.spool.discard()
        part.spool = None
        part.rejection = _part_too_large(max_part_bytes)
        return
    await part.spool.write(data)


async def _finish_part(part: _CurrentPart, default_type: str) -> Part | RejectedPart:
    location = part.headers.get("content-location")
    if part.rejection is not None:
        return RejectedPart(part.index, part.headers, location, part.rejection)
    spool = part.spool
    assert spool is not None  # a part without a spool file has been rejected
    data = spool.held()
    path = await spool.close() if data is None else None
    declared = _declared_length(part.headers)
    if declared is not None and declared != spool.size:
        spool.discard()
        error = MultipartError(
            MultipartProblem.content_length_mismatch,
            f"A part declares Content-Length {declared} but holds {spool.size} bytes; it was not stored.",
            f"某个部分声明的 Content-Length 为 {declared}，实际为 {spool.size} 字节，未保存。",
        )
        return RejectedPart(part.index, part.headers, location, error)
    return Part(
        index=part.index,
        headers=part.headers,
        content_type=part.headers.get("content-type", default_type),
        content_length=declared,
        content_location=location,
        path=path,
        size=spool.size,
        data=data,
    )


# --------------------------------------------------------------------------------------------------------------
# Building bodies (tests, benchmarks, a STOW-RS client)


@dataclass(frozen=True, slots=True)
class PartSource:
    """One part to send: bytes or a file, plus extra headers (e.g. Content-Location)."""

    body: bytes | Path
    headers: Mapping[str, str] = field(default_factory=dict)


def new_boundary() -> str:
    # 128 random bits: the chance of it occurring inside a DICOM file is negligible (RFC 2046 §5.1.1 asks
    # the sender to pick a boundary that does not occur in the content).
    return f"telemed-{uuid.uuid4().hex}"


def stow_content_type(boundary: str) -> str:
    return f'multipart/related; type="{DICOM_MEDIA_TYPE}"; boundary={boundary}'


def iter_multipart_related(
    parts: Iterable[bytes | Path | PartSource],
    *,
    boundary: str,
    part_content_type: str = DICOM_MEDIA_TYPE,
    chunk_size: int = 64 * 1024,
) -> Iterator[bytes]:
    """The body in chunks, reading files as it goes, so a benchmark can send gigabytes from little memory."""
    delimiter = f"--{boundary}".encode("ascii")
    for part in parts:
        source = part if isinstance(part, PartSource) else PartSource(part)
        size = len(source.body) if isinstance(source.body, bytes) else source.body.stat().st_size
        headers = {"Content-Type": part_content_type, "Content-Length": str(size), **source.headers}
        head = b"".join(f"{name}: {value}\r\n".encode("latin-1") for name, value in headers.items())
        yield delimiter + b"\r\n" + head + b"\r\n"
        if isinstance(source.body, bytes):
            yield source.body
        else:
            with source.body.open("rb") as file:
                while block := file.read(chunk_size):
                    yield block
        yield b"\r\n"
    yield delimiter + b"--\r\n"


def build_multipart_related(
    parts: Iterable[bytes | Path | PartSource],
    *,
    boundary: str | None = None,
    part_content_type: str = DICOM_MEDIA_TYPE,
) -> tuple[str, bytes]:
    """A whole STOW-RS request body in memory: ``(content_type_header, body)``."""
    boundary = boundary or new_boundary()
    body = b"".join(iter_multipart_related(parts, boundary=boundary, part_content_type=part_content_type))
    return stow_content_type(boundary), body
