"""WADO-RS and WADO-URI representations (PS3.18 §10.4, §9): multipart bodies, frames, bulk data.

Files are sent as stored: this service does not transcode. A client that asks for ``transfer-syntax=*`` (OHIF,
dicomweb-client, Weasis) gets them as they are, and each part's ``Content-Type`` names the transfer syntax.
A client that names another transfer syntax still gets the stored one, labelled as such, rather than a 406:
every viewer we target decodes the common syntaxes, and refusing would only leave it with nothing to show.
"""

from __future__ import annotations

import struct
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final

import pydicom
from pydicom.encaps import get_frame
from pydicom.uid import UID

from imaging.errors import BlobMissing, FrameNotFound, NotAcceptable
from imaging.repository import StoredInstance
from telemed.core.storage import BlobNotFound, BlobStorage

DICOM: Final = "application/dicom"
OCTET_STREAM: Final = "application/octet-stream"
DICOM_JSON: Final = "application/dicom+json"
_CHUNK: Final = 1024 * 1024
_UNDEFINED_LENGTH: Final = 0xFFFFFFFF


@dataclass(frozen=True, slots=True)
class MediaRange:
    essence: str
    parameters: dict[str, str]
    quality: float


def parse_accept(header: str | None) -> list[MediaRange]:
    """The media ranges of an Accept header (RFC 9110 §12.5.1), best first; ``*/*`` when there is none."""
    if not header or not header.strip():
        return [MediaRange("*/*", {}, 1.0)]
    ranges: list[MediaRange] = []
    for item in _split_outside_quotes(header, ","):
        pieces = _split_outside_quotes(item, ";")
        essence = pieces[0].strip().lower()
        if not essence:
            continue
        parameters: dict[str, str] = {}
        quality = 1.0
        for piece in pieces[1:]:
            name, _, value = piece.partition("=")
            name, value = name.strip().lower(), value.strip().strip('"')
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
            elif name:
                parameters[name] = value
        if quality > 0:
            ranges.append(MediaRange(essence, parameters, quality))
    ranges.sort(key=lambda r: -r.quality)
    return ranges or [MediaRange("*/*", {}, 1.0)]


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def choose(accept: Sequence[MediaRange], part_type: str, *, single_part_allowed: bool) -> bool:
    """Whether to answer ``multipart/related; type=part_type`` (True) or the single part itself (False).

    PS3.18 §8.7.3: instances are sent as ``multipart/related; type="application/dicom"``, frames as
    ``multipart/related; type="application/octet-stream"``. A client may ask for the bare single part instead
    (OHIF's ``singlepart`` option) when there is only one. 406 when nothing acceptable is asked for.
    """
    for media in accept:
        if media.essence == "multipart/related":
            wanted = media.parameters.get("type", part_type).lower()
            if wanted in (part_type, "*/*", "*"):
                return True
        elif media.essence in ("*/*", "multipart/*"):
            return True
        elif media.essence == part_type and single_part_allowed:
            return False
    raise NotAcceptable(
        f"可提供的格式为 multipart/related; type={part_type}",
        f'Available: multipart/related; type="{part_type}"',
    )


def new_boundary() -> str:
    return f"telemed-{uuid.uuid4().hex}"


def multipart_content_type(boundary: str, part_type: str) -> str:
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def _part_header(boundary: str, content_type: str, length: int, location: str | None = None) -> bytes:
    lines = [f"--{boundary}", f"Content-Type: {content_type}", f"Content-Length: {length}"]
    if location:
        lines.append(f"Content-Location: {location}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def start_stream(chunks: AsyncGenerator[bytes, None]) -> AsyncGenerator[bytes, None]:
    """``chunks`` with its first block already pulled: a blob that is missing fails now, as a 503 (the index
    names it, so it should be there), rather than after the response headers have gone out."""
    try:
        first = await anext(chunks, None)
    except BlobNotFound:
        raise BlobMissing() from None

    async def rest() -> AsyncGenerator[bytes, None]:
        try:
            if first is not None:
                yield first
            async for block in chunks:
                yield block
        finally:
            await chunks.aclose()

    return rest()


async def multipart_instances(
    storage: BlobStorage, instances: Sequence[StoredInstance], boundary: str, root: str
) -> AsyncGenerator[bytes, None]:
    """The stored files as ``multipart/related; type="application/dicom"``, streamed from storage block by block:
    one block in memory at a time, however large the study. Each blob is opened before its part header goes out,
    so a missing first blob is an error before the response starts (see :func:`start_stream`)."""
    for instance in instances:
        location = (
            f"{root}/studies/{instance.study_uid}/series/{instance.series_uid}/instances/{instance.sop_instance_uid}"
        )
        chunks = storage.open_chunks(instance.blob_key, chunk_size=_CHUNK)
        try:
            first = await anext(chunks, b"")
            yield _part_header(
                boundary, f"{DICOM}; transfer-syntax={instance.transfer_syntax_uid}", instance.size, location
            )
            if first:
                yield first
            async for block in chunks:
                yield block
        finally:
            await chunks.aclose()
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode("ascii")


def multipart_body(parts: Sequence[tuple[str, bytes]], boundary: str) -> bytes:
    chunks: list[bytes] = []
    for content_type, data in parts:
        chunks += [_part_header(boundary, content_type, len(data)), data, b"\r\n"]
    chunks.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(chunks)


async def ensure_blob(storage: BlobStorage, key: str) -> None:
    if not await storage.exists(key):
        raise BlobMissing()


# ---------------------------------------------------------------------------------------------------------------
# Frames (PS3.18 §10.4.1.1.4; PS3.5 §8.2 native and A.4 encapsulated pixel data)


@dataclass(frozen=True, slots=True)
class PixelLayout:
    """Where the pixel data of a file starts and how its frames are laid out."""

    value_offset: int
    value_length: int  # _UNDEFINED_LENGTH when encapsulated
    frame_size: int  # bytes per native frame, 0 when encapsulated
    number_of_frames: int
    little_endian: bool


class PixelLayoutCache:
    """Layouts of recently read files: a viewer fetches the frames of one series many times over."""

    def __init__(self, size: int = 4096) -> None:
        self._size = size
        self._items: OrderedDict[str, PixelLayout] = OrderedDict()
        self._lock = threading.Lock()  # used from worker threads

    def get(self, key: str) -> PixelLayout | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: str, layout: PixelLayout) -> None:
        with self._lock:
            self._items[key] = layout
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)


def pixel_layout(file: IO[bytes]) -> PixelLayout:
    """Read the header up to Pixel Data (7FE0,0010) and describe the frames that follow it."""
    try:
        ds = pydicom.dcmread(file, stop_before_pixels=True, defer_size=1024)
    except Exception:  # indexed files were read at ingest; this is a damaged blob
        raise FrameNotFound() from None
    position = file.tell()
    is_implicit, is_little = ds.original_encoding
    endian = "<" if is_little else ">"
    head = file.read(8)
    if len(head) < 8:
        raise FrameNotFound()
    group, elem = struct.unpack(f"{endian}HH", head[:4])
    if (group, elem) != (0x7FE0, 0x0010):
        raise FrameNotFound()
    if is_implicit:
        (length,) = struct.unpack(f"{endian}L", head[4:8])
        value_offset = position + 8
    else:
        (length,) = struct.unpack(f"{endian}L", file.read(4))
        value_offset = position + 12
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    frame_size = 0
    if length != _UNDEFINED_LENGTH:
        rows, columns = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
        samples, bits = int(ds.get("SamplesPerPixel", 1)), int(ds.get("BitsAllocated", 8))
        if bits % 8:
            # 1-bit frames need not start on a byte boundary (PS3.5 §8.1.1): send them as one block.
            frame_size = length if frames == 1 else 0
        else:
            frame_size = rows * columns * samples * bits // 8
            if ds.get("PhotometricInterpretation") == "YBR_FULL_422":
                frame_size = frame_size * 2 // 3
        if frame_size <= 0:
            raise FrameNotFound()
    return PixelLayout(value_offset, length, frame_size, frames, bool(is_little))


def is_native(layout: PixelLayout) -> bool:
    """Native (not encapsulated) pixel data: frame ``n`` lies at a known offset, readable without the rest."""
    return layout.value_length != _UNDEFINED_LENGTH


def native_frame_start(layout: PixelLayout, number: int) -> int:
    """Where native frame ``number`` (1-based) starts in the file; its length is ``layout.frame_size``."""
    if not 1 <= number <= layout.number_of_frames or not is_native(layout):
        raise FrameNotFound()
    if number * layout.frame_size > layout.value_length:
        raise FrameNotFound()
    return layout.value_offset + (number - 1) * layout.frame_size


async def read_native_frames(
    storage: BlobStorage, key: str, layout: PixelLayout, numbers: Sequence[int]
) -> list[bytes]:
    """Native frames by byte ranges of the blob, once its layout is known: on object storage a viewer paging
    through a large multi-frame instance fetches each frame, not the whole file each time."""
    starts = [native_frame_start(layout, number) for number in numbers]
    frames: list[bytes] = []
    try:
        for start in starts:
            chunks = storage.open_chunks(
                key, chunk_size=max(layout.frame_size, 1), start=start, length=layout.frame_size
            )
            frames.append(b"".join([block async for block in chunks]))
    except BlobNotFound:
        raise BlobMissing() from None
    return frames


def read_frames(file: IO[bytes], layout: PixelLayout, numbers: Sequence[int]) -> list[bytes]:
    """The frames ``numbers`` (1-based) of an open file."""
    frames: list[bytes] = []
    for number in numbers:
        if not 1 <= number <= layout.number_of_frames:
            raise FrameNotFound()
        if is_native(layout):
            file.seek(native_frame_start(layout, number))
            frames.append(file.read(layout.frame_size))
            continue
        file.seek(layout.value_offset)
        try:
            frames.append(
                get_frame(
                    file,
                    number - 1,
                    number_of_frames=layout.number_of_frames,
                    endianness="<" if layout.little_endian else ">",
                )
            )
        except (ValueError, KeyError, IndexError, EOFError, struct.error):
            raise FrameNotFound() from None
    return frames


def frame_media_type(transfer_syntax: str) -> str:
    """Frames go as ``application/octet-stream``, with the stored transfer syntax named (PS3.18 §8.7.3.3.2)."""
    return f"{OCTET_STREAM}; transfer-syntax={transfer_syntax}"


def is_compressed(transfer_syntax: str) -> bool:
    try:
        return bool(UID(transfer_syntax).is_compressed)
    except ValueError:
        return True


def parse_frame_list(text: str) -> list[int]:
    numbers: list[int] = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit():
            raise FrameNotFound()
        numbers.append(int(piece))
    if not numbers:
        raise FrameNotFound()
    return numbers


def read_bulk_value(file: IO[bytes], path: Sequence[str]) -> bytes:
    """The value of a bulk data element named by a BulkDataURI path (``7FE00010``, ``00540016/0/00181072``)."""
    ds: Any = pydicom.dcmread(file, defer_size=None)
    try:
        for index, piece in enumerate(path):
            tag = int(piece, 16)
            if index % 2 == 0:
                element = ds[tag]
                if index == len(path) - 1:
                    value = element.value
                    if isinstance(value, bytes):
                        return value
                    raise FrameNotFound()
                ds = element.value
            else:
                ds = ds[int(piece)]
    except (KeyError, IndexError, ValueError, TypeError):
        raise FrameNotFound() from None
    raise FrameNotFound()
