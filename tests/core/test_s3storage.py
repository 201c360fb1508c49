"""Blob storage: the same checks against files on disk and against S3 (moto's server, a real HTTP S3 endpoint).

moto runs in a child process (the ``moto_endpoint`` fixture of tests/conftest.py) so that its copy of the uploaded
bytes does not count in this process's memory measurements.
"""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from telemed.core.s3storage import (
    MIN_PART_SIZE,
    BlobCorrupted,
    S3Storage,
    parse_s3_url,
)
from telemed.core.storage import BlobNotFound, BlobStorage, FileStorage, InvalidBlobKey
from tests.conftest import new_s3_bucket, s3_client, s3_url

BAD_KEYS = ["", "/abs", "a//b", "a/../b", "..", "./a", "a/./b", "a\\b", "a\0b", "trailing/", "a/.hidden"]


@pytest.fixture
def bucket(moto_endpoint: str, aws_env: None) -> str:
    return new_s3_bucket(moto_endpoint)


def raw_client(endpoint: str) -> Any:
    return s3_client(endpoint)


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStorage:
    if request.param == "file":
        return FileStorage(tmp_path / "blobs")
    endpoint = request.getfixturevalue("moto_endpoint")
    name = request.getfixturevalue("bucket")
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    return S3Storage.from_url(s3_url(endpoint, name), part_size=MIN_PART_SIZE, temp_dir=downloads)


async def collect(iterator: AsyncIterator[str]) -> list[str]:
    return [key async for key in iterator]


async def test_put_get_exists_delete(storage: BlobStorage) -> None:
    key = "studies/1.2.3/series/4.5/6.7.dcm"
    assert not await storage.exists(key)
    with pytest.raises(BlobNotFound):
        await storage.get(key)

    await storage.put(key, b"DICM first")
    assert await storage.exists(key)
    assert await storage.get(key) == b"DICM first"

    await storage.put(key, b"DICM second")  # overwrite
    assert await storage.get(key) == b"DICM second"

    await storage.delete(key)
    assert not await storage.exists(key)
    await storage.delete(key)  # deleting what is gone is not an error
    with pytest.raises(BlobNotFound):
        await storage.get(key)


async def test_empty_and_binary_blobs_round_trip(storage: BlobStorage) -> None:
    await storage.put("empty", b"")
    await storage.put("binary", bytes(range(256)) * 4)
    assert await storage.get("empty") == b""
    assert await storage.get("binary") == bytes(range(256)) * 4


async def test_list_is_a_string_prefix_in_key_order(storage: BlobStorage) -> None:
    for key in ("a/2", "a/1", "ab/1", "b/1", "a/sub/3"):
        await storage.put(key, key.encode())

    assert await collect(storage.list("a/")) == ["a/1", "a/2", "a/sub/3"]
    assert await collect(storage.list("a")) == ["a/1", "a/2", "a/sub/3", "ab/1"]
    assert await collect(storage.list("")) == ["a/1", "a/2", "a/sub/3", "ab/1", "b/1"]
    assert await collect(storage.list("zzz")) == []


@pytest.mark.parametrize("key", BAD_KEYS)
async def test_invalid_keys_are_refused(storage: BlobStorage, key: str, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    source.write_bytes(b"x")
    with pytest.raises(InvalidBlobKey):
        await storage.put(key, b"x")
    with pytest.raises(InvalidBlobKey):
        await storage.put_file(key, source)
    with pytest.raises(InvalidBlobKey):
        await storage.get(key)
    with pytest.raises(InvalidBlobKey):
        await storage.exists(key)
    with pytest.raises(InvalidBlobKey):
        await storage.delete(key)
    with pytest.raises(InvalidBlobKey):
        await storage.size(key)
    with pytest.raises(InvalidBlobKey):
        await collect_bytes(storage.open_chunks(key))
    with pytest.raises(InvalidBlobKey):
        async with storage.local_file(key):
            pass
    with pytest.raises(InvalidBlobKey):
        await storage.put_file(key, source, move=True)
    assert source.read_bytes() == b"x"  # a refused move leaves the source alone


def _write_random_file(path: Path, size: int) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        remaining = size
        while remaining:
            chunk = os.urandom(min(remaining, 1 << 20))
            digest.update(chunk)
            out.write(chunk)
            remaining -= len(chunk)
    return digest.hexdigest()


@pytest.mark.slow
async def test_put_file_streams_a_large_file_with_little_memory(storage: BlobStorage, tmp_path: Path) -> None:
    size = 50 * 1024 * 1024 + 12_345  # not a whole number of parts
    source = tmp_path / "large-study.bin"
    expected = _write_random_file(source, size)

    tracemalloc.start()
    try:
        await storage.put_file("large/study.bin", source)
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    # One part (5 MiB for S3 here) and the client's buffers, never the 50 MB file.
    assert peak < 20 * 1024 * 1024, f"put_file peaked at {peak / 2**20:.1f} MiB"
    assert await storage.exists("large/study.bin")
    assert hashlib.sha256(await storage.get("large/study.bin")).hexdigest() == expected


async def test_small_files_go_up_in_one_request(storage: BlobStorage, tmp_path: Path) -> None:
    source = tmp_path / "small.dcm"
    source.write_bytes(b"DICM" * 1000)
    await storage.put_file("small.dcm", source)
    assert await storage.get("small.dcm") == b"DICM" * 1000


async def collect_bytes(chunks: AsyncIterator[bytes]) -> list[bytes]:
    return [block async for block in chunks]


async def test_missing_blobs_are_not_found_by_every_read(storage: BlobStorage) -> None:
    with pytest.raises(BlobNotFound):
        await storage.size("nothing/here.dcm")
    with pytest.raises(BlobNotFound):
        await collect_bytes(storage.open_chunks("nothing/here.dcm"))
    with pytest.raises(BlobNotFound):
        await collect_bytes(storage.open_chunks("nothing/here.dcm", start=10, length=5))
    with pytest.raises(BlobNotFound):
        await collect_bytes(storage.open_chunks("nothing/here.dcm", length=0))
    with pytest.raises(BlobNotFound):
        async with storage.local_file("nothing/here.dcm"):
            pass
    await storage.put("nothing/here.dcm/not-a-prefix", b"x")  # "nothing/here.dcm" is a folder on disk now
    with pytest.raises(BlobNotFound):
        await storage.size("nothing/here.dcm")
    with pytest.raises(BlobNotFound):
        await collect_bytes(storage.open_chunks("nothing/here.dcm"))


async def test_open_chunks_streams_in_blocks_of_the_asked_size(storage: BlobStorage) -> None:
    data = os.urandom(3 * 65536 + 1000)
    await storage.put("stream/ct.dcm", data)

    blocks = await collect_bytes(storage.open_chunks("stream/ct.dcm", chunk_size=65536))

    assert b"".join(blocks) == data
    assert len(blocks) == 4
    assert all(len(block) <= 65536 for block in blocks)
    assert await storage.size("stream/ct.dcm") == len(data)


async def test_byte_ranges_read_like_a_file(storage: BlobStorage) -> None:
    data = bytes(range(256)) * 40  # 10,240 bytes
    await storage.put("range/mr.dcm", data)

    async def read(start: int, length: int | None, chunk_size: int = 1000) -> bytes:
        blocks = await collect_bytes(
            storage.open_chunks("range/mr.dcm", chunk_size=chunk_size, start=start, length=length)
        )
        assert all(len(block) <= chunk_size for block in blocks)
        return b"".join(blocks)

    assert await read(0, None) == data
    assert await read(5000, 2500) == data[5000:7500]
    assert await read(9999, None) == data[9999:]
    assert await read(10_000, 1000) == data[10_000:]  # runs past the end: what there is
    assert await read(20_000, 10) == b""  # starts past the end
    assert await read(100, 0) == b""
    assert await read(0, 1, chunk_size=1) == data[:1]
    await storage.put("range/empty", b"")
    assert await collect_bytes(storage.open_chunks("range/empty")) == []
    assert await collect_bytes(storage.open_chunks("range/empty", start=0, length=10)) == []
    with pytest.raises(ValueError, match="chunk_size"):
        await collect_bytes(storage.open_chunks("range/mr.dcm", chunk_size=0))
    with pytest.raises(ValueError, match="range"):
        await collect_bytes(storage.open_chunks("range/mr.dcm", start=-1))


@pytest.mark.slow
async def test_streaming_a_large_blob_holds_a_block_or_two_not_the_blob(storage: BlobStorage, tmp_path: Path) -> None:
    size = 24 * 1024 * 1024 + 777
    source = tmp_path / "cine.bin"
    expected = _write_random_file(source, size)
    await storage.put_file("large/cine.bin", source)
    digest = hashlib.sha256()
    largest = 0

    tracemalloc.start()
    try:
        async for block in storage.open_chunks("large/cine.bin", chunk_size=256 * 1024):
            digest.update(block)
            largest = max(largest, len(block))
            del block
        _current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert digest.hexdigest() == expected
    assert largest <= 256 * 1024
    # A couple of 256 KiB blocks and the HTTP client's buffers, never the 24 MB blob.
    assert peak < 4 * 1024 * 1024, f"streaming peaked at {peak / 2**20:.1f} MiB"


async def test_stopping_a_stream_early_releases_it(storage: BlobStorage) -> None:
    await storage.put("early/stop.dcm", os.urandom(200_000))
    chunks = storage.open_chunks("early/stop.dcm", chunk_size=10_000)
    first = await anext(chunks)
    await chunks.aclose()
    assert len(first) == 10_000
    # Still readable afterwards (the file or the pooled connection was handed back, not left half-read).
    assert len(b"".join(await collect_bytes(storage.open_chunks("early/stop.dcm")))) == 200_000


async def test_local_file_holds_the_blob_and_leaves_nothing_behind(storage: BlobStorage, tmp_path: Path) -> None:
    data = os.urandom(70_000)
    await storage.put("local/us.dcm", data)

    async with storage.local_file("local/us.dcm") as path:
        assert path.read_bytes() == data
        assert path.suffix == ".dcm"
        kept = path
    if isinstance(storage, FileStorage):
        assert kept == storage.root / "local" / "us.dcm"  # the stored file itself: no copy
        assert kept.exists()
    else:
        assert not kept.exists()  # the download is gone
        assert list((tmp_path / "downloads").iterdir()) == []

    with pytest.raises(RuntimeError, match="render failed"):
        async with storage.local_file("local/us.dcm") as path:
            raise RuntimeError("render failed")
    assert await storage.get("local/us.dcm") == data
    if not isinstance(storage, FileStorage):
        assert list((tmp_path / "downloads").iterdir()) == []


async def test_put_file_move_hands_the_source_over(storage: BlobStorage, tmp_path: Path) -> None:
    source = tmp_path / "spool" / "stow-1.part"
    source.parent.mkdir()
    data = os.urandom(100_000)
    source.write_bytes(data)

    await storage.put_file("moved/1.dcm", source, move=True)

    assert not source.exists()
    assert await storage.get("moved/1.dcm") == data

    kept = tmp_path / "spool" / "stow-2.part"
    kept.write_bytes(b"DICM copy")
    await storage.put_file("copied/2.dcm", kept)  # the default still copies
    assert kept.read_bytes() == b"DICM copy"
    assert await storage.get("copied/2.dcm") == b"DICM copy"

    kept.write_bytes(b"DICM replaced")
    await storage.put_file("moved/1.dcm", kept, move=True)  # a move over an existing key replaces it
    assert await storage.get("moved/1.dcm") == b"DICM replaced"
    assert not kept.exists()


def test_a_move_on_one_file_system_renames_after_fsync_and_syncs_the_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from telemed.core import storage as storage_module

    files = FileStorage(tmp_path / "blobs")
    source = tmp_path / "spool" / "stow-1.part"
    source.parent.mkdir()
    source.write_bytes(b"DICM" * 1000)
    source_inode = source.stat().st_ino
    events: list[tuple[str, Path]] = []
    real_fsync, real_replace = storage_module.fsync_path, os.replace

    def fsync(path: Path) -> None:
        events.append(("fsync", Path(path)))
        real_fsync(path)

    def replace(src: Any, dst: Any) -> None:
        events.append(("rename", Path(src)))
        real_replace(src, dst)

    monkeypatch.setattr(storage_module, "fsync_path", fsync)
    monkeypatch.setattr(os, "replace", replace)

    files._move_durably("dicom/1.2/3.4/5.6.dcm", source)

    target = files.root / "dicom/1.2/3.4/5.6.dcm"
    assert target.stat().st_ino == source_inode  # renamed, not copied: the bytes were written once
    assert not source.exists()
    assert events == [
        ("fsync", source),  # the contents are durable before the key names them
        ("rename", source),
        ("fsync", target.parent),  # the new name; an old name back after a crash is a spool file repair removes
    ]


def test_a_move_across_file_systems_falls_back_to_a_durable_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    files = FileStorage(tmp_path / "blobs")
    source = tmp_path / "other-volume" / "c-store.dcm"
    source.parent.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 5)
    source.write_bytes(data)
    real_replace = os.replace
    refused: list[Path] = []

    def replace(src: Any, dst: Any) -> None:
        if Path(src) == source:  # the spool is on another volume
            refused.append(Path(src))
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        real_replace(src, dst)  # the copy's own temporary file renames as usual

    monkeypatch.setattr(os, "replace", replace)

    files._move_durably("dicom/9/9/9.dcm", source)

    assert refused == [source]
    assert (files.root / "dicom/9/9/9.dcm").read_bytes() == data
    assert not source.exists()
    assert [p.name for p in (files.root / "dicom/9/9").iterdir()] == ["9.dcm"]  # no temporary file left


def test_a_failed_move_keeps_the_source(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    files = FileStorage(tmp_path / "blobs")
    source = tmp_path / "spool.part"
    source.write_bytes(b"DICM keep me")

    def replace(src: Any, dst: Any) -> None:
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(PermissionError):
        files._move_durably("dicom/a.dcm", source)
    assert source.read_bytes() == b"DICM keep me"


# ------------------------------------------------------------------------------------------------ S3 only


async def test_keys_live_under_the_url_prefix_and_other_objects_are_not_listed(moto_endpoint: str, bucket: str) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket, "county/images"))
    raw = raw_client(moto_endpoint)
    raw.put_object(Bucket=bucket, Key="county/imagesX/outside", Body=b"-")
    raw.put_object(Bucket=bucket, Key="elsewhere/a", Body=b"-")

    await storage.put("a/1.dcm", b"1")

    assert raw.get_object(Bucket=bucket, Key="county/images/a/1.dcm")["Body"].read() == b"1"
    assert await collect(storage.list("")) == ["a/1.dcm"]


async def test_a_blob_changed_in_the_bucket_is_detected_on_read(moto_endpoint: str, bucket: str) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket))
    await storage.put("report.pdf", b"original bytes")
    raw = raw_client(moto_endpoint)
    metadata = raw.head_object(Bucket=bucket, Key="county/images/report.pdf")["Metadata"]
    assert metadata["sha256"] == hashlib.sha256(b"original bytes").hexdigest()

    # Someone with bucket access rewrites the object but cannot recompute the recorded digest.
    raw.put_object(Bucket=bucket, Key="county/images/report.pdf", Body=b"tampered bytes", Metadata=metadata)

    with pytest.raises(BlobCorrupted):
        await storage.get("report.pdf")


async def test_a_failed_multipart_upload_is_aborted(
    moto_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket), part_size=MIN_PART_SIZE)
    source = tmp_path / "video.bin"
    _write_random_file(source, 3 * MIN_PART_SIZE)
    real_upload_part = storage.client.upload_part
    calls = 0

    def failing_upload_part(**arguments: Any) -> Any:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise ConnectionError("link to the county dropped")
        return real_upload_part(**arguments)

    monkeypatch.setattr(storage.client, "upload_part", failing_upload_part)

    with pytest.raises(ConnectionError):
        await storage.put_file("video.bin", source)

    assert not await storage.exists("video.bin")
    assert raw_client(moto_endpoint).list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


async def test_a_part_damaged_on_the_way_fails_the_upload(
    moto_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket), part_size=MIN_PART_SIZE)
    source = tmp_path / "ct.bin"
    _write_random_file(source, 2 * MIN_PART_SIZE + 10)
    real_upload_part = storage.client.upload_part

    def flip_a_byte(**arguments: Any) -> Any:
        body = bytearray(arguments["Body"])
        if arguments["PartNumber"] == 2:
            body[100] ^= 0xFF  # damaged on the way, after Content-MD5 was computed
        return real_upload_part(**{**arguments, "Body": bytes(body)})

    monkeypatch.setattr(storage.client, "upload_part", flip_a_byte)

    # S3 and MinIO refuse the part (BadDigest, Content-MD5); moto does not check it, and then the ETag of the
    # completed object (MD5 of the part MD5s the server computed) gives the damage away.
    with pytest.raises(Exception, match=r"(?i)BadDigest|Content-MD5|does not match"):
        await storage.put_file("ct.bin", source)
    assert not await storage.exists("ct.bin")


async def test_presigned_urls_are_short_lived_and_work(moto_endpoint: str, bucket: str) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket))
    await storage.put("xray.jpg", b"\xff\xd8 jpeg")

    url = storage.presigned_get_url("xray.jpg", expires_in=60)
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(url)
    assert response.status_code == 200
    assert response.content == b"\xff\xd8 jpeg"
    assert "X-Amz-Expires=60" in url
    with pytest.raises(ValueError, match="300"):
        storage.presigned_get_url("xray.jpg", expires_in=3600)
    with pytest.raises(InvalidBlobKey):
        storage.presigned_get_url("../other")


def test_storage_urls_are_parsed_and_credentials_in_them_refused() -> None:
    location = parse_s3_url("s3://pacs-archive/qingtian/dicom?endpoint_url=http://127.0.0.1:9000&region=cn-east-1")
    assert (location.bucket, location.prefix, location.endpoint_url, location.region) == (
        "pacs-archive",
        "qingtian/dicom",
        "http://127.0.0.1:9000",
        "cn-east-1",
    )
    assert parse_s3_url("s3://bucket").prefix == ""
    assert parse_s3_url("s3://bucket/p?addressing_style=virtual").addressing_style == "virtual"
    assert parse_s3_url("s3://bucket").verify_multipart_etag
    assert not parse_s3_url("s3://bucket?verify_multipart_etag=false").verify_multipart_etag
    for bad in (
        "s3://AKIA:secret@bucket/p",
        "file:///tmp/x",
        "s3:///no-bucket",
        "s3://bucket/p?endpoint=http://x",
        "s3://bucket/p?addressing_style=sideways",
        "s3://bucket/a/../b",
        "s3://bucket/p?endpoint_url=ftp://x",
        "s3://bucket/p?verify_multipart_etag=maybe",
    ):
        with pytest.raises(ValueError):  # noqa: PT011 (each case has its own message)
            parse_s3_url(bad)
    with pytest.raises(ValueError, match="part_size"):
        S3Storage("bucket", part_size=1024)


def test_the_storage_url_selects_the_backend(moto_endpoint: str, bucket: str, tmp_path: Path) -> None:
    from telemed.core.storage import storage_from_url

    assert isinstance(storage_from_url(s3_url(moto_endpoint, bucket)), S3Storage)
    assert isinstance(storage_from_url((tmp_path / "blobs").as_uri()), FileStorage)


async def test_a_move_to_s3_removes_the_source_only_after_the_upload(
    moto_endpoint: str, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket), part_size=MIN_PART_SIZE)
    source = tmp_path / "large.part"
    expected = _write_random_file(source, 2 * MIN_PART_SIZE + 99)  # a multipart upload

    await storage.put_file("moved/large.dcm", source, move=True)

    assert not source.exists()
    assert hashlib.sha256(await storage.get("moved/large.dcm")).hexdigest() == expected

    small = tmp_path / "small.part"
    small.write_bytes(b"DICM small")

    def refuse(**arguments: Any) -> Any:
        raise ConnectionError("link to the county dropped")

    monkeypatch.setattr(storage.client, "put_object", refuse)
    with pytest.raises(ConnectionError):
        await storage.put_file("moved/small.dcm", small, move=True)
    assert small.read_bytes() == b"DICM small"  # kept: the caller may retry or clean up


async def test_a_tampered_blob_never_streams_out_whole_nor_reaches_a_local_file(
    moto_endpoint: str, bucket: str, tmp_path: Path
) -> None:
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    storage = S3Storage.from_url(s3_url(moto_endpoint, bucket), temp_dir=downloads)
    original = os.urandom(300_000)
    await storage.put("xray.dcm", original)
    raw = raw_client(moto_endpoint)
    metadata = raw.head_object(Bucket=bucket, Key="county/images/xray.dcm")["Metadata"]
    tampered = bytearray(original)
    tampered[-1] ^= 0xFF
    raw.put_object(Bucket=bucket, Key="county/images/xray.dcm", Body=bytes(tampered), Metadata=metadata)

    received: list[bytes] = []

    async def read_all() -> None:
        async for block in storage.open_chunks("xray.dcm", chunk_size=100_000):
            received.append(block)

    with pytest.raises(BlobCorrupted):
        await read_all()
    assert len(b"".join(received)) < len(tampered)  # the last block was held back, the stream cut short

    with pytest.raises(BlobCorrupted):
        async with storage.local_file("xray.dcm"):
            pytest.fail("a damaged download must not be handed over")
    assert list(downloads.iterdir()) == []

    # A byte range cannot be checked against the whole blob's digest: it is served as stored.
    assert b"".join(await collect_bytes(storage.open_chunks("xray.dcm", start=0, length=10))) == original[:10]
