"""Streaming multipart/related parsing for STOW-RS (PS3.18 §10.5; RFC 2046 §5.1; RFC 2387)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import random
import threading
import tracemalloc
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import pytest

from imaging import multipart
from imaging.dicomfile import read_header
from imaging.multipart import (
    MultipartError,
    MultipartProblem,
    Part,
    PartSource,
    RejectedPart,
    build_multipart_related,
    iter_multipart_related,
    iter_parts,
    new_boundary,
    parse_media_type,
    stow_content_type,
)

from .dicom_factory import make_ct_series

MiB = 1024 * 1024


def noise(size: int) -> bytes:
    """Incompressible test data, the same on every run."""
    return random.Random(size).randbytes(size)


async def chunked(data: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


async def from_iterable(blocks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for block in blocks:
        yield block


async def parse(
    body: bytes,
    content_type: str,
    spool_dir: Path,
    *,
    chunk_size: int = 64 * 1024,
    max_part_bytes: int = 10 * MiB,
) -> tuple[list[Part | RejectedPart], MultipartError | None]:
    """Every part yielded, and the error that ended the body if there was one."""
    parts: list[Part | RejectedPart] = []
    try:
        async for part in iter_parts(
            chunked(body, chunk_size), content_type, spool_dir=spool_dir, max_part_bytes=max_part_bytes
        ):
            parts.append(part)
    except MultipartError as error:
        return parts, error
    return parts, None


def content(part: Part) -> bytes:
    """A part's bytes: held in memory (smaller than a spool block) or in its spool file."""
    if part.data is not None:
        assert part.path is None
        return part.data
    assert part.path is not None
    return part.path.read_bytes()


def stored(parts: list[Part | RejectedPart]) -> list[bytes]:
    return [content(part) for part in parts if isinstance(part, Part)]


def spooled_files(directory: Path) -> list[Path]:
    return sorted(directory.iterdir())


def kept_paths(parts: list[Part | RejectedPart]) -> list[Path]:
    return sorted(part.path for part in parts if isinstance(part, Part) and part.path is not None)


def remove_all(parts: list[Part | RejectedPart]) -> None:
    for path in kept_paths(parts):
        path.unlink()


def tricky_payloads(boundary: str) -> list[bytes]:
    """Contents that look like delimiters without being one, in sizes around the delimiter length."""
    near_miss = b"\r\n--" + boundary.encode()[:-1]
    return [
        b"",
        b"x",
        b"\r\n",
        b"--" + boundary.encode() + b"X",  # not at the start of a line, so not a delimiter
        near_miss,
        near_miss + b"\r\n--" + near_miss,
        b"\r\n-\r\n--\r\n--" + boundary.encode()[:5],
        noise(len(boundary) + 3),
        noise(1000),
        bytes(range(256)) * 40,
    ]


# ----------------------------------------------------------------------------------------------------------------
# Good bodies


@pytest.mark.parametrize("chunk_size", [1, 7, 8, 45, 64 * 1024])
async def test_parts_survive_any_chunking(tmp_path: Path, chunk_size: int) -> None:
    boundary = new_boundary()
    payloads = tricky_payloads(boundary)
    sources = [PartSource(body, {"Content-Location": f"file:///upload/{n}.dcm"}) for n, body in enumerate(payloads)]
    content_type, body = build_multipart_related(sources, boundary=boundary)

    parts, error = await parse(body, content_type, tmp_path, chunk_size=chunk_size)

    assert error is None
    assert stored(parts) == payloads
    assert [part.index for part in parts] == list(range(len(payloads)))
    first = parts[1]
    assert isinstance(first, Part)
    assert first.content_type == "application/dicom"
    assert first.content_length == 1
    assert first.content_location == "file:///upload/1.dcm"
    assert first.size == 1


async def test_many_dicom_instances(tmp_path: Path) -> None:
    files = make_ct_series(tmp_path / "series", count=30, rows=32, cols=32, patient_name="张三")
    content_type, body = build_multipart_related(files)

    parts, error = await parse(body, content_type, tmp_path, chunk_size=7)

    assert error is None
    assert stored(parts) == [path.read_bytes() for path in files]
    headers = [read_header(io.BytesIO(content(part))) for part in parts if isinstance(part, Part)]
    assert [header.instance_number for header in headers] == list(range(1, 31))
    assert {header.patient_name for header in headers} == {"张三"}


async def test_preamble_epilogue_padding_and_missing_headers(tmp_path: Path) -> None:
    body = (
        b"This is the preamble; it is ignored.\r\n"
        b"--b1   \t\r\n"  # transport padding after the boundary (RFC 2046 section 5.1.1)
        b"content-TYPE: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n"
        b"Content-Location:\r\n  folded.dcm\r\n"
        b"\r\n"
        b"first\r\n"
        b"--b1\r\n"
        b"\r\n"  # a part with no headers at all
        b"second\r\n"
        b"--b1--\r\n"
        b"epilogue, also ignored\r\n--b1\r\n\r\nnot a part"
    )

    parts, error = await parse(body, 'multipart/related; type="application/dicom"; boundary=b1', tmp_path)

    assert error is None
    assert stored(parts) == [b"first", b"second"]
    first, second = parts
    assert isinstance(first, Part)
    assert isinstance(second, Part)
    assert first.transfer_syntax == "1.2.840.10008.1.2.1"
    assert first.content_location == "folded.dcm"
    assert second.headers == {}
    assert second.content_type == "application/dicom"  # the request's type (RFC 2387)


async def test_type_parameter_may_be_left_out(tmp_path: Path) -> None:
    _, body = build_multipart_related([b"abc"], boundary="xyz")

    parts, error = await parse(body, "Multipart/Related; boundary=xyz", tmp_path)

    assert error is None
    assert stored(parts) == [b"abc"]


async def test_quoted_boundary_with_special_characters(tmp_path: Path) -> None:
    boundary = "gc0p4Jq0M2Yt08j34c0p:=?()+_,-./ x"
    _, body = build_multipart_related([b"abc", b"def"], boundary=boundary)

    parts, error = await parse(body, f'multipart/related; boundary="{boundary}"; type=application/dicom', tmp_path)

    assert error is None
    assert stored(parts) == [b"abc", b"def"]


async def test_a_50_mib_part_is_parsed_in_little_memory(tmp_path: Path) -> None:
    boundary = new_boundary()
    block = noise(64 * 1024)
    blocks = 800  # 50 MiB
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)

    def body() -> Iterable[bytes]:
        yield f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        for _ in range(blocks):
            yield block
        yield f"\r\n--{boundary}--\r\n".encode()

    tracemalloc.start()
    try:
        parts = [
            part
            async for part in iter_parts(
                from_iterable(body()), stow_content_type(boundary), spool_dir=tmp_path, max_part_bytes=100 * MiB
            )
        ]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert peak < 5 * MiB, f"peak traced memory {peak / MiB:.1f} MiB for a 50 MiB part"
    (part,) = parts
    assert isinstance(part, Part)
    assert part.size == len(block) * blocks
    actual = hashlib.sha256()
    with part.path.open("rb") as file:
        while data := file.read(MiB):
            actual.update(data)
    assert actual.digest() == expected.digest()


# ----------------------------------------------------------------------------------------------------------------
# Bad requests


@pytest.mark.parametrize(
    ("content_type", "problem", "status"),
    [
        ("application/dicom", MultipartProblem.content_type, 415),
        ("multipart/form-data; boundary=abc", MultipartProblem.content_type, 415),
        ("text", MultipartProblem.content_type, 415),
        ('multipart/related; type="application/dicom+json"; boundary=abc', MultipartProblem.type_parameter, 415),
        ("multipart/related; type=image/jpeg; boundary=abc", MultipartProblem.type_parameter, 415),
        ('multipart/related; type="application/dicom"', MultipartProblem.boundary, 400),
        ('multipart/related; type="application/dicom"; boundary=""', MultipartProblem.boundary, 400),
        ('multipart/related; type="application/dicom"; boundary="abc "', MultipartProblem.boundary, 400),
        (f'multipart/related; type="application/dicom"; boundary={"a" * 71}', MultipartProblem.boundary, 400),
        ('multipart/related; type="application/dicom"; boundary="a\x00b"', MultipartProblem.boundary, 400),
        ('multipart/related; type="application/dicom"; boundary="abc', MultipartProblem.content_type, 415),
    ],
)
async def test_wrong_content_type_is_refused_before_reading(
    tmp_path: Path, content_type: str, problem: MultipartProblem, status: int
) -> None:
    async def must_not_be_read() -> AsyncIterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    with pytest.raises(MultipartError) as caught:
        async for _ in iter_parts(must_not_be_read(), content_type, spool_dir=tmp_path, max_part_bytes=MiB):
            pass  # pragma: no cover

    assert caught.value.reason_code is problem
    assert caught.value.http_status == status
    assert "multipart/related" in caught.value.message_en
    assert caught.value.message_zh


async def test_truncated_body_keeps_the_complete_parts(tmp_path: Path) -> None:
    content_type, body = build_multipart_related([b"one" * 100, b"two" * 100, b"three" * 1000])
    cut = body[: body.index(b"three") + 2000]

    parts, error = await parse(cut, content_type, tmp_path, chunk_size=512)

    assert error is not None
    assert error.reason_code is MultipartProblem.truncated
    assert stored(parts) == [b"one" * 100, b"two" * 100]
    assert spooled_files(tmp_path) == kept_paths(parts)


async def test_cut_anywhere_before_the_close_delimiter(tmp_path: Path) -> None:
    body = b"--b\r\nContent-Type: application/dicom\r\n\r\nabc\r\n--b\r\n\r\ndef\r\n--b--"

    for size in range(3, len(body)):
        parts, error = await parse(body[:size], "multipart/related; boundary=b", tmp_path, chunk_size=2)

        assert error is not None, size
        assert error.reason_code is MultipartProblem.truncated, size
        # A part is complete once the delimiter after it has arrived.
        complete = [data for data in (b"abc", b"def") if size >= body.index(data) + len(data) + len(b"\r\n--b")]
        assert stored(parts) == complete, size
        remove_all(parts)
    assert spooled_files(tmp_path) == []


async def test_boundary_not_in_body(tmp_path: Path) -> None:
    _, body = build_multipart_related([b"abc"], boundary="one")

    parts, error = await parse(body, "multipart/related; boundary=another", tmp_path)

    assert parts == []
    assert error is not None
    assert error.reason_code is MultipartProblem.boundary_not_found


async def test_broken_delimiter_line(tmp_path: Path) -> None:
    body = b"--b\r\n\r\ngood\r\n--b\r\n\r\nalso good\r\n--bX\r\n\r\nbad"

    parts, error = await parse(body, "multipart/related; boundary=b", tmp_path, chunk_size=1)

    assert stored(parts) == [b"good", b"also good"]
    assert error is not None
    assert error.reason_code is MultipartProblem.malformed


async def test_endless_headers(tmp_path: Path) -> None:
    body = b"--b\r\n" + b"X-Padding: " + b"a" * 100_000

    _, error = await parse(body, "multipart/related; boundary=b", tmp_path)

    assert error is not None
    assert error.reason_code is MultipartProblem.headers_too_large


# ----------------------------------------------------------------------------------------------------------------
# Bad parts: reported, not kept, and the next part is read


async def test_oversized_part_is_reported_not_kept(tmp_path: Path) -> None:
    big = noise(3 * 1024 * 1024)
    boundary = new_boundary()
    # No Content-Length on the big part, so the limit is found while receiving it.
    body = b"".join(
        [
            *iter_multipart_related([b"small-1"], boundary=boundary),
        ]
    )[: -len(f"--{boundary}--\r\n")]
    body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + big + b"\r\n"
    body += b"".join(iter_multipart_related([b"small-2"], boundary=boundary))

    parts, error = await parse(body, stow_content_type(boundary), tmp_path, max_part_bytes=MiB)

    assert error is None
    assert [type(part) for part in parts] == [Part, RejectedPart, Part]
    rejected = parts[1]
    assert isinstance(rejected, RejectedPart)
    assert rejected.index == 1
    assert rejected.error.reason_code is MultipartProblem.part_too_large
    assert rejected.error.http_status == 413
    assert stored(parts) == [b"small-1", b"small-2"]
    assert spooled_files(tmp_path) == kept_paths(parts), "nothing of the big part may stay on disk"


async def test_part_declared_too_large_is_refused_without_writing(tmp_path: Path) -> None:
    content_type, body = build_multipart_related([noise(2 * MiB), b"ok"])

    parts, error = await parse(body, content_type, tmp_path, max_part_bytes=MiB)

    assert error is None
    assert isinstance(parts[0], RejectedPart)
    assert parts[0].error.reason_code is MultipartProblem.part_too_large
    assert stored(parts) == [b"ok"]


async def test_content_length_must_match(tmp_path: Path) -> None:
    body = (
        b"--b\r\nContent-Length: 5\r\n\r\nabc\r\n"
        b"--b\r\nContent-Length: three\r\n\r\nabc\r\n"
        b"--b\r\nContent-Length: 3\r\n\r\nabc\r\n--b--"
    )

    parts, error = await parse(body, "multipart/related; boundary=b", tmp_path)

    assert error is None
    assert [part.error.reason_code for part in parts if isinstance(part, RejectedPart)] == [
        MultipartProblem.content_length_mismatch,
        MultipartProblem.part_headers,
    ]
    assert stored(parts) == [b"abc"]
    assert spooled_files(tmp_path) == kept_paths(parts)


async def test_unreadable_part_headers(tmp_path: Path) -> None:
    body = b"--b\r\nthis is not a header\r\n\r\nabc\r\n--b\r\nContent-Type: application/dicom\r\n\r\ndef\r\n--b--"

    parts, error = await parse(body, "multipart/related; boundary=b", tmp_path)

    assert error is None
    assert isinstance(parts[0], RejectedPart)
    assert parts[0].error.reason_code is MultipartProblem.part_headers
    assert stored(parts) == [b"def"]


# ----------------------------------------------------------------------------------------------------------------
# Cleaning up


async def test_cancelled_upload_leaves_no_partial_file(tmp_path: Path) -> None:
    stalled = asyncio.Event()

    async def slow_client() -> AsyncIterator[bytes]:
        yield b"--b\r\n\r\ncomplete\r\n--b\r\n\r\n"
        yield noise(2 * MiB)  # more than one spool block, so data reaches the file
        stalled.set()
        await asyncio.Event().wait()  # the client stops sending
        yield b""  # pragma: no cover

    received: list[Part | RejectedPart] = []

    async def receive() -> None:
        async for part in iter_parts(
            slow_client(), "multipart/related; boundary=b", spool_dir=tmp_path, max_part_bytes=10 * MiB
        ):
            received.append(part)

    task = asyncio.create_task(receive())
    await stalled.wait()
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert stored(received) == [b"complete"]
    assert spooled_files(tmp_path) == kept_paths(received)


async def test_a_small_part_is_held_in_memory_and_a_cancel_during_a_block_write_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A part smaller than a spool block comes with its bytes and no file (the caller writes it where it
    belongs); a larger one is written in a worker thread, and cancelled while that write runs, the file it made is
    removed when the write returns."""
    calls: list[int] = []
    entered, release = threading.Event(), threading.Event()
    write_all = multipart._write_all

    def slow_write(descriptor: int, data: bytes) -> None:
        calls.append(len(data))
        entered.set()
        assert release.wait(timeout=30)
        write_all(descriptor, data)

    monkeypatch.setattr(multipart, "_write_all", slow_write)
    received: list[Part | RejectedPart] = []
    large = noise(multipart.SPOOL_WRITE_BYTES + 9)

    async def receive() -> None:
        body = b"--b\r\n\r\nsmall one\r\n--b\r\n\r\n" + large + b"\r\n--b--\r\n"
        async for part in iter_parts(
            from_iterable([body]), "multipart/related; boundary=b", spool_dir=tmp_path, max_part_bytes=10 * MiB
        ):
            received.append(part)

    task = asyncio.create_task(receive())
    await asyncio.to_thread(entered.wait, 30)
    task.cancel()
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    for _ in range(100):
        if not spooled_files(tmp_path):
            break
        await asyncio.sleep(0.02)

    assert calls == [len(large)]  # the small part was never written here
    assert len(received) == 1
    held = received[0]
    assert isinstance(held, Part)
    assert held.data == b"small one"
    assert held.path is None
    assert held.size == 9
    assert spooled_files(tmp_path) == []


def test_write_spool_file(tmp_path: Path) -> None:
    path = multipart.write_spool_file(tmp_path, b"held part")

    assert path.parent == tmp_path
    assert path.read_bytes() == b"held part"


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def test_parse_media_type() -> None:
    media = parse_media_type('Multipart/Related; TYPE="application/dicom"; boundary="a \\"b\\""; start=<x>')

    assert media.essence == "multipart/related"
    assert media.parameters == {"type": "application/dicom", "boundary": 'a "b"', "start": "<x>"}


def test_streamed_body_equals_built_body(tmp_path: Path) -> None:
    files = [tmp_path / "a.dcm", tmp_path / "b.dcm"]
    files[0].write_bytes(noise(200_000))
    files[1].write_bytes(b"")
    parts: list[bytes | Path | PartSource] = [*files, b"inline", PartSource(b"x", {"Content-Location": "x.dcm"})]

    content_type, body = build_multipart_related(parts, boundary="fixed")

    assert content_type == 'multipart/related; type="application/dicom"; boundary=fixed'
    assert b"".join(iter_multipart_related(parts, boundary="fixed", chunk_size=1000)) == body
    assert body.count(b"--fixed\r\n") == 4
    assert body.endswith(b"--fixed--\r\n")
