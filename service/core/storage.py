"""Where finished videos live: the one interface both backends implement, the local folder, and the choice
between a folder and an S3-compatible store (:mod:`service.core.s3_storage`) made from the settings.

Every variant is written whole or not at all: a local file under a temporary name and renamed into place,
an object only once its upload completes. A reader never sees half a video, and a worker that dies
mid-write leaves nothing that could be served.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Protocol
from urllib.parse import unquote, urlsplit

from service.core import redis_keys
from service.core.errors import StorageError
from service.core.settings import SettingsError

if TYPE_CHECKING:
    from service.core.settings import Settings

VARIANT_FILES = {
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.webp", "image/webp"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}
CHUNK_BYTES = 1 << 20
PRESIGN_EXPIRY_S = 300


@dataclass(frozen=True)
class StoredFile:
    """What a write stored: the size and SHA-256 of the bytes (the worker records both)."""

    size: int
    sha256: str


@dataclass(frozen=True)
class ObjectInfo:
    """A stored variant as the API serves it: size in bytes, the store's quoted ETag, mtime (epoch s)."""

    size: int
    etag: str
    last_modified: float


class Storage(Protocol):
    """The interface of every backend. Ids are checked (``ValueError`` for a malformed one); failures of
    the store itself raise :class:`StorageError`, whose message never holds credentials."""

    def put(self, video_id: str, variant: str, produce: Callable[[Path], None]) -> StoredFile:
        """Call ``produce(path)`` to write a local temporary file, then store it as the variant.

        An exception from ``produce`` propagates (an ``OSError`` as :class:`StorageError`) and nothing
        is stored."""
        ...

    def exists(self, video_id: str, variant: str = "video") -> bool: ...

    def stat(self, video_id: str, variant: str = "video") -> ObjectInfo | None:
        """The stored variant's size, ETag and mtime; None when it is not stored."""
        ...

    def open_range(
        self, video_id: str, variant: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        """The bytes ``start..end`` (inclusive; ``end`` None: to the last byte) in chunks.

        The variant is opened before this returns (so a missing one raises :class:`StorageError` here,
        not mid-response); closing the iterator releases it."""
        ...

    def presigned_url(
        self, video_id: str, variant: str = "video", expires_s: int = PRESIGN_EXPIRY_S
    ) -> str | None:
        """A URL anyone may GET the variant from for ``expires_s`` seconds; None when the backend has none."""
        ...

    def delete(self, video_id: str) -> None:
        """Remove every stored variant of the video. Best effort: never raises (a failure is logged)."""
        ...


class LocalStorage:
    """A folder (on a shared volume for many workers): ``<root>/<video_id>/<file name>``.

    ``path`` and ``write`` are this backend's own (the file's place; write returning it)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, video_id: str, variant: str = "video") -> Path:
        if not redis_keys.is_valid_video_id(video_id):
            raise ValueError(f"invalid video id {video_id!r}")
        return self.root / video_id / VARIANT_FILES[variant][0]

    def write(self, video_id: str, variant: str, produce: Callable[[Path], None]) -> Path:
        """Call ``produce(tmp_path)`` to write the file, then move it into place atomically.

        Raises:
            StorageError: the folder cannot be created or written (disk full, read-only, permissions).
        """
        final = self.path(video_id, variant)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=final.parent, prefix=f".{final.stem}-", suffix=final.suffix)
            os.close(fd)
        except OSError as exc:
            raise StorageError(f"Cannot write to storage at {final.parent}: {exc.strerror or exc}") from exc
        tmp = Path(tmp_name)
        try:
            produce(tmp)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise StorageError(f"Cannot write {variant} to storage: {exc.strerror or exc}") from exc
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return final

    def put(self, video_id: str, variant: str, produce: Callable[[Path], None]) -> StoredFile:
        path = self.write(video_id, variant, produce)
        try:
            return StoredFile(size=path.stat().st_size, sha256=sha256_of(path))
        except OSError as exc:
            raise StorageError(f"Cannot read back {variant} from storage: {exc.strerror or exc}") from exc

    def exists(self, video_id: str, variant: str = "video") -> bool:
        return self.path(video_id, variant).is_file()

    def stat(self, video_id: str, variant: str = "video") -> ObjectInfo | None:
        try:
            result = self.path(video_id, variant).stat()
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as exc:
            raise StorageError(f"Cannot read {variant} from storage: {exc.strerror or exc}") from exc
        etag = f'"{result.st_mtime_ns:x}-{result.st_size:x}"'
        return ObjectInfo(size=result.st_size, etag=etag, last_modified=result.st_mtime)

    def open_range(
        self, video_id: str, variant: str, start: int = 0, end: int | None = None
    ) -> Iterator[bytes]:
        try:
            handle = self.path(video_id, variant).open("rb")
            handle.seek(start)
        except OSError as exc:
            raise StorageError(f"Cannot read {variant} from storage: {exc.strerror or exc}") from exc
        return _read_chunks(handle, None if end is None else end - start + 1)

    def presigned_url(
        self, video_id: str, variant: str = "video", expires_s: int = PRESIGN_EXPIRY_S
    ) -> str | None:
        return None

    def delete(self, video_id: str) -> None:
        if redis_keys.is_valid_video_id(video_id):
            shutil.rmtree(self.root / video_id, ignore_errors=True)


def _read_chunks(handle: BinaryIO, remaining: int | None) -> Iterator[bytes]:
    with handle:
        while remaining is None or remaining > 0:
            chunk = handle.read(CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining))
            if not chunk:
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
    return digest.hexdigest()


def storage_from_settings(settings: Settings) -> Storage:
    """The backend ``WANSERVE_STORAGE_URL`` names (it wins over ``WANSERVE_STORAGE_DIR``); unset: the
    folder ``settings.videos_dir``.

    Raises:
        SettingsError: the URL is not a folder, ``file:///path`` or ``s3://bucket[/prefix]``, or names
            S3 without boto3 installed.
    """
    url = settings.storage_url
    if url is None:
        return LocalStorage(settings.videos_dir)
    location = parse_storage_url(url)
    if isinstance(location, Path):
        return LocalStorage(location)
    from service.core.s3_storage import S3Storage  # boto3 only where S3 is configured

    bucket, prefix = location
    return S3Storage(bucket, prefix)


def parse_storage_url(url: str) -> Path | tuple[str, str]:
    """A folder's path, or an S3 ``(bucket, prefix)`` (prefix without leading or trailing slashes).

    Raises:
        SettingsError: one line naming the variable, with any credentials in the URL masked.
    """
    if "://" not in url:
        if url.strip() != url or not url:
            raise _bad_url(url, "a folder path must not start or end with spaces")
        return Path(url)
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if parts.query or parts.fragment:
        raise _bad_url(url, "query strings and fragments are not supported")
    if scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise _bad_url(url, "a file URL names a local folder: file:///path (no host)")
        if not parts.path.startswith("/"):
            raise _bad_url(url, "a file URL needs an absolute path: file:///path")
        return Path(unquote(parts.path))
    if scheme == "s3":
        if "@" in parts.netloc:
            raise _bad_url(
                url, "credentials do not belong in the URL (use AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            )
        bucket = parts.netloc
        if not bucket or any(char.isspace() or char in ":/" for char in bucket):
            raise _bad_url(url, "expected s3://bucket or s3://bucket/prefix")
        prefix = "/".join(segment for segment in parts.path.split("/") if segment)
        if any(segment in (".", "..") for segment in prefix.split("/")):
            raise _bad_url(url, "the prefix must not contain '.' or '..' segments")
        return bucket, prefix
    raise _bad_url(url, f"unsupported scheme {scheme!r} (use a folder, file:///path or s3://bucket/prefix)")


def _bad_url(url: str, reason: str) -> SettingsError:
    parts = urlsplit(url)
    if "@" in parts.netloc:  # never echo a password or secret key someone put in the URL
        url = parts._replace(netloc="***@" + parts.netloc.rsplit("@", 1)[1]).geturl()
    return SettingsError(f"WANSERVE_STORAGE_URL={url!r}: {reason}")
