"""Videos in an S3-compatible store (AWS S3, MinIO, Ceph RGW, Huawei OBS): ``<prefix>/<video_id>/<file>``.

The standard AWS variables configure the client (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``); boto3 is imported only when this backend is built. An object
becomes visible only once its upload completes, so a reader never sees half a video.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from service.core import redis_keys
from service.core.errors import StorageError
from service.core.settings import SettingsError
from service.core.storage import (
    CHUNK_BYTES,
    PRESIGN_EXPIRY_S,
    VARIANT_FILES,
    ObjectInfo,
    StoredFile,
    sha256_of,
)

log = logging.getLogger("wanserve")

_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def s3_client() -> Any:
    """A boto3 S3 client configured from the environment.

    Raises:
        SettingsError: boto3 is not installed.
    """
    try:
        import boto3
        from botocore.config import Config
    except ImportError as exc:
        raise SettingsError(
            "WANSERVE_STORAGE_URL names S3 but boto3 is not installed (pip install 'wanserve[s3]')"
        ) from exc
    config = Config(
        signature_version="s3v4",  # presigned URLs otherwise default to the deprecated SigV2
        connect_timeout=5,
        read_timeout=60,
        retries={"max_attempts": 3, "mode": "standard"},
        max_pool_connections=50,  # a streamed download holds one for its whole length
        # botocore >= 1.36 sends CRC32 checksums that MinIO, Ceph RGW and Huawei OBS reject; the AWS
        # variables still choose, as they do for every AWS SDK.
        request_checksum_calculation=_environ_lower("AWS_REQUEST_CHECKSUM_CALCULATION", "when_required"),
        response_checksum_validation=_environ_lower("AWS_RESPONSE_CHECKSUM_VALIDATION", "when_required"),
    )
    # botocore reads AWS_DEFAULT_REGION only; AWS_REGION is what the other SDKs and most deployments set.
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
    return boto3.session.Session().client("s3", region_name=region, config=config)


class S3Storage:
    """The :class:`service.core.storage.Storage` interface over one bucket and key prefix."""

    def __init__(self, bucket: str, prefix: str = "", *, client: Any | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client if client is not None else s3_client()

    def key(self, video_id: str, variant: str = "video") -> str:
        return self._folder(video_id) + VARIANT_FILES[variant][0]

    def put(self, video_id: str, variant: str, produce: Callable[[Path], None]) -> StoredFile:
        key = self.key(video_id, variant)
        try:
            folder = tempfile.TemporaryDirectory(prefix="wanserve-upload-")
        except OSError as exc:
            raise StorageError(f"Cannot write {variant} before upload: {exc.strerror or exc}") from exc
        with folder:
            path = Path(folder.name) / VARIANT_FILES[variant][0]
            try:
                produce(path)
                stored = StoredFile(size=path.stat().st_size, sha256=sha256_of(path))
            except OSError as exc:
                raise StorageError(f"Cannot write {variant} before upload: {exc.strerror or exc}") from exc
            with self._errors("upload", key):
                self.client.upload_file(
                    str(path), self.bucket, key, ExtraArgs={"ContentType": VARIANT_FILES[variant][1]}
                )
        return stored

    def exists(self, video_id: str, variant: str = "video") -> bool:
        return self.stat(video_id, variant) is not None

    def stat(self, video_id: str, variant: str = "video") -> ObjectInfo | None:
        key = self.key(video_id, variant)
        try:
            with self._errors("read", key):
                head = self.client.head_object(Bucket=self.bucket, Key=key)
        except StorageError as exc:
            if _status_of(exc.__cause__) == 404:
                return None
            raise
        return ObjectInfo(
            size=int(head["ContentLength"]), etag=head["ETag"], last_modified=head["LastModified"].timestamp()
        )

    def open_range(
        self, video_id: str, variant: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        key = self.key(video_id, variant)
        extra = {} if start == 0 and end is None else {"Range": f"bytes={start}-{'' if end is None else end}"}
        with self._errors("read", key):
            body = self.client.get_object(Bucket=self.bucket, Key=key, **extra)["Body"]
        return _chunks(body)

    def presigned_url(self, video_id: str, variant: str = "video", expires_s: int = PRESIGN_EXPIRY_S) -> str:
        key = self.key(video_id, variant)
        with self._errors("sign a URL for", key):
            url: str = self.client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_s
            )
        return url

    def delete(self, video_id: str) -> None:
        if not redis_keys.is_valid_video_id(video_id):
            return
        folder = self._folder(video_id)
        try:
            with self._errors("delete", folder):
                pages = self.client.get_paginator("list_objects_v2").paginate(
                    Bucket=self.bucket, Prefix=folder
                )
                # One DeleteObject per object: DeleteObjects needs a Content-MD5 or checksum header that
                # not every S3-compatible store agrees on, and a video has three objects.
                for page in pages:
                    for item in page.get("Contents", []):
                        self.client.delete_object(Bucket=self.bucket, Key=item["Key"])
        except StorageError as exc:
            log.warning("%s: its stored files were not all removed: %s", video_id, exc.message)

    def _folder(self, video_id: str) -> str:
        if not redis_keys.is_valid_video_id(video_id):
            raise ValueError(f"invalid video id {video_id!r}")
        return f"{self.prefix}/{video_id}/" if self.prefix else f"{video_id}/"

    @contextmanager
    def _errors(self, action: str, key: str) -> Iterator[None]:
        """botocore's and boto3's errors become a :class:`StorageError` whose message holds no secret."""
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except (BotoCoreError, ClientError, Boto3Error) as exc:
            reason = _scrub(_describe(exc, self.client.meta.endpoint_url))
            raise StorageError(f"Cannot {action} s3://{self.bucket}/{key}: {reason}") from exc


def _chunks(body: Any) -> Iterator[bytes]:
    try:
        yield from body.iter_chunks(CHUNK_BYTES)
    finally:
        body.close()


def _causes(exc: BaseException | None) -> Iterator[BaseException]:
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def _status_of(exc: BaseException | None) -> int | None:
    from botocore.exceptions import ClientError

    for cause in _causes(exc):
        if isinstance(cause, ClientError):
            status = cause.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return int(status) if status is not None else None
    return None


def _describe(exc: BaseException, endpoint_url: str) -> str:
    """A short reason built from the error's code and kind (boto3's own texts name local temp files)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    for cause in _causes(exc):
        if isinstance(cause, ClientError):
            error = cause.response.get("Error", {})
            code = str(error.get("Code") or _status_of(cause) or "error")
            message = str(error.get("Message") or "")
            return f"{code} ({message})" if message and message != code else code
        if isinstance(cause, NoCredentialsError):
            return "no credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
        if isinstance(cause, (EndpointConnectionError, ConnectTimeoutError)):
            parts = urlsplit(endpoint_url)  # without any user:password@ someone put in AWS_ENDPOINT_URL
            port = f":{parts.port}" if parts.port else ""
            return f"cannot connect to {parts.scheme}://{parts.hostname}{port}"
        if isinstance(cause, ReadTimeoutError):
            return "the store did not answer in time"
    return type(exc).__name__


def _environ_lower(name: str, default: str) -> str:
    return os.environ.get(name, default).lower()


def _scrub(text: str) -> str:
    for name in _SECRET_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text
