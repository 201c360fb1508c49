"""Blob storage on S3-compatible object storage (AWS S3, MinIO, Aliyun OSS, Huawei OBS, Ceph RGW).

The same interface as :class:`telemed.core.storage.BlobStorage`, chosen by a URL::

    s3://bucket/optional/prefix?endpoint_url=http://127.0.0.1:9000&region=us-east-1&addressing_style=path

Credentials come from boto3's usual chain (``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` /
``AWS_SESSION_TOKEN``, a profile, an instance role), never from the URL, so that a logged storage URL gives
nothing away. boto3 is blocking; every call runs in a worker thread (``asyncio.to_thread``).

Integrity: every request body carries ``Content-MD5``, which S3 and MinIO check before they store anything
(RFC 1864; a mismatch answers ``BadDigest``). ``put_file`` streams a large file as a multipart upload, one part
in memory at a time; it checks the ETag of the completed object against the part digests (``verify_multipart_etag``,
on by default, which also catches stores that skip the Content-MD5 check) and the object's size against the file,
and aborts the upload on any failure so that no half-written parts linger. The SHA-256 of the whole blob is stored
as object metadata (``x-amz-meta-sha256``) and every whole read verifies it, raising :class:`BlobCorrupted` on a
mismatch (security notes D4): ``get`` before it returns, ``local_file`` before it hands over the download, and
``open_chunks`` before it yields the last block (so that a damaged blob never streams out complete; byte ranges
are not checked). A blob is durable when ``put`` returns: S3 acknowledges a write only once it is stored.
``put_file(..., move=True)`` removes the source file once the upload is complete.

Streaming reads hold one or two blocks in memory; ``local_file`` downloads to a temporary file (in ``temp_dir``,
by default the system's temporary folder) that is removed when the ``async with`` ends.

boto3's default "flexible checksums" (CRC32 headers and trailers, boto3 ≥ 1.36) are switched to "when required",
because S3-compatible stores do not all accept them (older MinIO and Ceph releases among them); Content-MD5 is
understood everywhere.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import math
import os
import re
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qs, urlparse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from telemed.core.storage import DEFAULT_CHUNK_SIZE, BlobNotFound, check_key, check_range

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_s3.type_defs import CompletedPartTypeDef, GetObjectOutputTypeDef, ListObjectsV2OutputTypeDef

__all__ = ["BlobCorrupted", "S3Location", "S3Storage", "parse_s3_url"]

#: S3's smallest part (all but the last) and largest part count (the multipart upload limits).
MIN_PART_SIZE: Final = 5 * 1024 * 1024
MAX_PARTS: Final = 10_000
DEFAULT_PART_SIZE: Final = 8 * 1024 * 1024
#: Presigned URLs for images and recordings live at most this long (security notes B8).
MAX_PRESIGNED_SECONDS: Final = 300

_SHA256_METADATA: Final = "sha256"
_NOT_FOUND_CODES: Final = frozenset({"NoSuchKey", "404", "NotFound"})
_RANGE_NOT_SATISFIABLE: Final = frozenset({"InvalidRange", "416"})
_BUCKET_NAME: Final = re.compile(r"[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]")
_URL_PARAMETERS: Final = frozenset({"endpoint_url", "region", "addressing_style", "verify_multipart_etag"})
_HASH_CHUNK: Final = 1024 * 1024

AddressingStyle = Literal["auto", "virtual", "path"]
_ADDRESSING_STYLES: Final[dict[str, AddressingStyle]] = {"auto": "auto", "virtual": "virtual", "path": "path"}


class BlobCorrupted(RuntimeError):
    """The stored bytes do not match the digest recorded at upload, or an upload did not arrive whole."""


@dataclass(frozen=True, slots=True)
class S3Location:
    bucket: str
    prefix: str = ""
    endpoint_url: str | None = None
    region: str | None = None
    addressing_style: AddressingStyle | None = None
    verify_multipart_etag: bool = True


def parse_s3_url(url: str) -> S3Location:
    """``s3://bucket/prefix?endpoint_url=...&region=...&addressing_style=path|virtual`` → :class:`S3Location`."""
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise ValueError(f"not an s3: storage URL (scheme {parsed.scheme!r})")
    if parsed.username is not None or parsed.password is not None:
        raise ValueError("put S3 credentials in the AWS_* environment variables, not in the storage URL")
    bucket = parsed.hostname or ""
    if not _BUCKET_NAME.fullmatch(bucket):
        raise ValueError("the s3: storage URL needs a valid bucket name")
    prefix = parsed.path.strip("/")
    if prefix:
        check_key(prefix)
    query = parse_qs(parsed.query, keep_blank_values=False, strict_parsing=False)
    unknown = set(query) - _URL_PARAMETERS
    if unknown:
        raise ValueError(f"unknown s3: storage URL parameters: {', '.join(sorted(unknown))}")
    values = {name: items[-1] for name, items in query.items()}
    style: AddressingStyle | None = None
    if "addressing_style" in values:
        style = _ADDRESSING_STYLES.get(values["addressing_style"])
        if style is None:
            raise ValueError("addressing_style must be path, virtual or auto")
    endpoint = values.get("endpoint_url")
    if endpoint is not None and urlparse(endpoint).scheme not in ("http", "https"):
        raise ValueError("endpoint_url must be an http or https URL")
    verify = values.get("verify_multipart_etag", "true").lower()
    if verify not in ("true", "false"):
        raise ValueError("verify_multipart_etag must be true or false")
    return S3Location(
        bucket=bucket,
        prefix=prefix,
        endpoint_url=endpoint,
        region=values.get("region"),
        addressing_style=style,
        verify_multipart_etag=verify == "true",
    )


def _content_md5(digest: bytes) -> str:
    return base64.b64encode(digest).decode("ascii")


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


def _is_not_found(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _NOT_FOUND_CODES or status == 404


def _is_unsatisfiable_range(error: ClientError) -> bool:
    code = str(error.response.get("Error", {}).get("Code", ""))
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code in _RANGE_NOT_SATISFIABLE or status == 416


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class S3Storage:
    """:class:`~telemed.core.storage.BlobStorage` on one bucket, under an optional key prefix."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        addressing_style: AddressingStyle | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        verify_multipart_etag: bool = True,
        temp_dir: Path | None = None,
        client: S3Client | None = None,
    ) -> None:
        """``verify_multipart_etag=False`` for stores whose multipart ETag is not MD5-of-part-MD5s (AWS SSE-KMS
        or SSE-C buckets, some vendors); the part Content-MD5 checks and the size check still apply.
        ``temp_dir`` holds the downloads of :meth:`local_file` (None: the system's temporary folder)."""
        if part_size < MIN_PART_SIZE:
            raise ValueError(f"part_size must be at least {MIN_PART_SIZE} bytes (the S3 minimum)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        if self.prefix:
            check_key(self.prefix)
        self.part_size = part_size
        self.verify_multipart_etag = verify_multipart_etag
        self.temp_dir = temp_dir
        if temp_dir is not None:
            temp_dir.mkdir(parents=True, exist_ok=True)
        if client is None:
            style: AddressingStyle = addressing_style or ("path" if endpoint_url else "auto")
            config = Config(
                region_name=region,
                signature_version="s3v4",
                s3={"addressing_style": style},
                retries={"max_attempts": 5, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=32,
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            )
            client = boto3.session.Session().client("s3", endpoint_url=endpoint_url, region_name=region, config=config)
        self._client = client

    @classmethod
    def from_url(cls, url: str, **options: Any) -> S3Storage:
        location = parse_s3_url(url)
        return cls(
            location.bucket,
            prefix=location.prefix,
            endpoint_url=location.endpoint_url,
            region=location.region,
            addressing_style=location.addressing_style,
            verify_multipart_etag=location.verify_multipart_etag,
            **options,
        )

    @property
    def client(self) -> S3Client:
        return self._client

    def _object_key(self, key: str) -> str:
        check_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    # ---------------------------------------------------------------------------------------------- writes

    def _put_bytes(self, object_key: str, data: bytes) -> None:
        self._client.put_object(
            Bucket=self.bucket,
            Key=object_key,
            Body=data,
            ContentMD5=_content_md5(_md5(data)),
            Metadata={_SHA256_METADATA: hashlib.sha256(data).hexdigest()},
        )

    def _put_file(self, object_key: str, source: Path) -> None:
        size = source.stat().st_size
        if size <= self.part_size:
            self._put_bytes(object_key, source.read_bytes())
            return
        # Keep within S3's 10,000 parts for very large files; each part stays in memory on its own only.
        part_size = max(self.part_size, math.ceil(size / MAX_PARTS))
        expected_sha256 = _file_sha256(source)
        upload_id = self._client.create_multipart_upload(
            Bucket=self.bucket, Key=object_key, Metadata={_SHA256_METADATA: expected_sha256}
        )["UploadId"]
        completed = False
        try:
            parts: list[CompletedPartTypeDef] = []
            part_digests: list[bytes] = []
            sent = hashlib.sha256()
            sent_bytes = 0
            with open(source, "rb") as stream:
                while chunk := stream.read(part_size):
                    number = len(parts) + 1
                    digest = _md5(chunk)
                    sent.update(chunk)
                    sent_bytes += len(chunk)
                    response = self._client.upload_part(
                        Bucket=self.bucket,
                        Key=object_key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=chunk,
                        ContentMD5=_content_md5(digest),
                    )
                    parts.append({"ETag": response["ETag"], "PartNumber": number})
                    part_digests.append(digest)
                    del chunk
            if sent.hexdigest() != expected_sha256 or sent_bytes != size:
                raise BlobCorrupted("the source file changed while it was being uploaded")
            result = self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=object_key, UploadId=upload_id, MultipartUpload={"Parts": parts}
            )
            completed = True
            # The ETag of a multipart object is MD5(concatenated part MD5s)-<part count> (S3, MinIO, Ceph).
            expected_etag = f"{hashlib.md5(b''.join(part_digests), usedforsecurity=False).hexdigest()}-{len(parts)}"
            stored = self._client.head_object(Bucket=self.bucket, Key=object_key)
            etag_matches = str(result.get("ETag", "")).strip('"') == expected_etag
            if (self.verify_multipart_etag and not etag_matches) or stored["ContentLength"] != size:
                self._client.delete_object(Bucket=self.bucket, Key=object_key)
                raise BlobCorrupted("the completed upload does not match the parts that were sent")
        except BaseException:
            if not completed:
                self._client.abort_multipart_upload(Bucket=self.bucket, Key=object_key, UploadId=upload_id)
            raise

    async def put(self, key: str, data: bytes) -> None:
        await asyncio.to_thread(self._put_bytes, self._object_key(key), bytes(data))

    def _put_and_release(self, object_key: str, source: Path, move: bool) -> None:
        self._put_file(object_key, source)
        if move:
            source.unlink(missing_ok=True)  # only once S3 holds the whole object

    def put_file_blocking(self, key: str, source: Path, *, move: bool = False) -> None:
        self._put_and_release(self._object_key(key), Path(source), move)

    async def put_file(self, key: str, source: Path, *, move: bool = False) -> None:
        await asyncio.to_thread(self.put_file_blocking, key, source, move=move)

    # ----------------------------------------------------------------------------------------------- reads

    def _get(self, object_key: str, key: str) -> bytes:
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=object_key)
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFound(key) from None
            raise
        with response["Body"] as body:
            data = body.read()
        expected = response.get("Metadata", {}).get(_SHA256_METADATA)
        if expected is not None and hashlib.sha256(data).hexdigest() != expected:
            raise BlobCorrupted(f"blob {key} does not match the SHA-256 recorded when it was stored")
        return data

    def _exists(self, object_key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as error:
            if _is_not_found(error):
                return False
            raise
        return True

    async def get(self, key: str) -> bytes:
        return await asyncio.to_thread(self._get, self._object_key(key), key)

    def _size(self, object_key: str, key: str) -> int:
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=object_key)
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFound(key) from None
            raise
        return int(head["ContentLength"])

    async def size(self, key: str) -> int:
        return await asyncio.to_thread(self._size, self._object_key(key), key)

    def _open(self, object_key: str, key: str, start: int, length: int | None) -> GetObjectOutputTypeDef | None:
        """GET the object, or the byte range of it; None when the range starts past the end."""
        try:
            if start == 0 and length is None:
                return self._client.get_object(Bucket=self.bucket, Key=object_key)
            last = "" if length is None else str(start + length - 1)
            return self._client.get_object(Bucket=self.bucket, Key=object_key, Range=f"bytes={start}-{last}")
        except ClientError as error:
            if _is_not_found(error):
                raise BlobNotFound(key) from None
            if _is_unsatisfiable_range(error):
                return None
            raise

    async def open_chunks(
        self, key: str, *, chunk_size: int = DEFAULT_CHUNK_SIZE, start: int = 0, length: int | None = None
    ) -> AsyncGenerator[bytes, None]:
        check_range(chunk_size, start, length)
        object_key = self._object_key(key)
        if length == 0:
            if not await asyncio.to_thread(self._exists, object_key):
                raise BlobNotFound(key)
            return
        response = await asyncio.to_thread(self._open, object_key, key, start, length)
        if response is None:
            return
        whole = start == 0 and length is None
        expected_sha256 = response.get("Metadata", {}).get(_SHA256_METADATA) if whole else None
        expected_length = response.get("ContentLength")
        body = response["Body"]
        try:
            digest = hashlib.sha256()
            received = 0
            held: bytes | None = None
            # One block is held back until the object is verified: a damaged blob never streams out whole.
            while block := await asyncio.to_thread(body.read, chunk_size):
                if expected_sha256 is not None:
                    digest.update(block)
                received += len(block)
                if held is not None:
                    yield held
                held = block
            if expected_length is not None and received != expected_length:
                raise BlobCorrupted(f"blob {key} arrived incomplete")
            if expected_sha256 is not None and digest.hexdigest() != expected_sha256:
                raise BlobCorrupted(f"blob {key} does not match the SHA-256 recorded when it was stored")
            if held is not None:
                yield held
        finally:
            body.close()

    def _download(self, descriptor: int, object_key: str, key: str) -> None:
        """Write the object into the open file ``descriptor`` (which this closes), verifying it as ``get`` does."""
        with os.fdopen(descriptor, "wb") as out:
            response = self._open(object_key, key, 0, None)
            if response is None:  # only a byte range can miss, and this is the whole object
                return
            digest = hashlib.sha256()
            received = 0
            with response["Body"] as body:
                while block := body.read(DEFAULT_CHUNK_SIZE):
                    digest.update(block)
                    received += len(block)
                    out.write(block)
        expected = response.get("Metadata", {}).get(_SHA256_METADATA)
        if received != response.get("ContentLength", received):
            raise BlobCorrupted(f"blob {key} arrived incomplete")
        if expected is not None and digest.hexdigest() != expected:
            raise BlobCorrupted(f"blob {key} does not match the SHA-256 recorded when it was stored")

    @contextlib.asynccontextmanager
    async def local_file(self, key: str) -> AsyncIterator[Path]:
        object_key = self._object_key(key)
        descriptor, name = tempfile.mkstemp(prefix="blob-", suffix=Path(key).suffix, dir=self.temp_dir)
        try:
            # Removed in the finally even when the task is cancelled mid-download (the thread then writes on
            # into an unlinked file, which goes when it closes it).
            await asyncio.to_thread(self._download, descriptor, object_key, key)
            yield Path(name)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)

    async def exists(self, key: str) -> bool:
        return await asyncio.to_thread(self._exists, self._object_key(key))

    async def delete(self, key: str) -> None:
        object_key = self._object_key(key)
        await asyncio.to_thread(self._client.delete_object, Bucket=self.bucket, Key=object_key)

    def _list_page(self, object_prefix: str, token: str | None) -> ListObjectsV2OutputTypeDef:
        if token:
            return self._client.list_objects_v2(Bucket=self.bucket, Prefix=object_prefix, ContinuationToken=token)
        return self._client.list_objects_v2(Bucket=self.bucket, Prefix=object_prefix)

    async def list(self, prefix: str) -> AsyncIterator[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as in :class:`FileStorage`), in key order."""
        root = f"{self.prefix}/" if self.prefix else ""
        token: str | None = None
        while True:
            page = await asyncio.to_thread(self._list_page, root + prefix, token)
            for entry in page.get("Contents", []):
                yield entry["Key"][len(root) :]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def presigned_get_url(self, key: str, *, expires_in: int = MAX_PRESIGNED_SECONDS) -> str:
        """A GET URL for one object that expires within 300 s (security notes B8); issue it after authorising."""
        if not 1 <= expires_in <= MAX_PRESIGNED_SECONDS:
            raise ValueError(f"presigned URLs expire within 1..{MAX_PRESIGNED_SECONDS} seconds")
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._object_key(key)}, ExpiresIn=expires_in
        )
