"""Blob storage: the same checks against files on disk and against S3 (moto's server, a real HTTP S3 endpoint).

moto runs in a child process so that its copy of the uploaded bytes does not count in this process's memory
measurement of ``put_file``.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tracemalloc
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.config import Config

from telemed.core.s3storage import (
    MIN_PART_SIZE,
    BlobCorrupted,
    S3Storage,
    parse_s3_url,
)
from telemed.core.storage import BlobNotFound, BlobStorage, FileStorage, InvalidBlobKey

_MOTO_SERVER = """
import logging
import sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
print(server.get_host_and_port()[1], flush=True)
sys.stdin.read()
server.stop()
"""

BAD_KEYS = ["", "/abs", "a//b", "a/../b", "..", "./a", "a/./b", "a\\b", "a\0b", "trailing/", "a/.hidden"]


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    child = subprocess.Popen(
        [sys.executable, "-c", _MOTO_SERVER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        try:
            child.wait(timeout=10)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def bucket(moto_endpoint: str, aws_env: None) -> str:
    name = f"telemed-{uuid.uuid4().hex[:12]}"
    raw_client(moto_endpoint).create_bucket(Bucket=name)
    return name


def raw_client(endpoint: str) -> Any:
    return boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", config=Config(s3={"addressing_style": "path"})
    )


def s3_url(endpoint: str, bucket: str, prefix: str = "county/images") -> str:
    return f"s3://{bucket}/{prefix}?endpoint_url={endpoint}&region=us-east-1"


@pytest.fixture(params=["file", "s3"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> BlobStorage:
    if request.param == "file":
        return FileStorage(tmp_path / "blobs")
    endpoint = request.getfixturevalue("moto_endpoint")
    name = request.getfixturevalue("bucket")
    return S3Storage.from_url(s3_url(endpoint, name), part_size=MIN_PART_SIZE)


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
