"""The S3 backend against a real S3 API over HTTP (moto's server); the content answers of both backends."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from fastapi.testclient import TestClient
from starlette.responses import Response

from service.api import error_handlers
from service.api.stored_content import content_response
from service.core.errors import StorageError
from service.core.s3_storage import S3Storage, s3_client
from service.core.settings import Settings
from service.core.storage import LocalStorage, Storage, storage_from_settings
from service.core.video_store import new_video_id
from tests.processes import free_port
from tests.s3_server import ACCESS_KEY_ID, SECRET_ACCESS_KEY, S3Server, running_moto

VIDEO = bytes(range(256)) * 40  # 10240 bytes, every offset distinguishable
SECRETS = (ACCESS_KEY_ID, SECRET_ACCESS_KEY)


def writer(data: bytes):  # type: ignore[no-untyped-def]
    return lambda path: path.write_bytes(data)


@pytest.fixture(scope="module")
def client(s3_server: S3Server) -> Any:
    """One client built from the environment, as a process builds it (each takes half a second)."""
    return s3_client()


@pytest.fixture
def storage(client: Any, s3_bucket: str) -> S3Storage:
    return S3Storage(s3_bucket, "fleet/videos", client=client)


def test_put_stores_every_variant_under_the_prefix(storage: S3Storage, s3_server: S3Server) -> None:
    video_id = new_video_id()
    contents = {"video": VIDEO, "thumbnail": b"webp", "spritesheet": b"jpeg"}
    stored = {variant: storage.put(video_id, variant, writer(data)) for variant, data in contents.items()}

    for variant, data in contents.items():
        assert stored[variant].size == len(data)
        assert stored[variant].sha256 == hashlib.sha256(data).hexdigest()
    assert sorted(s3_server.keys(storage.bucket)) == [
        f"fleet/videos/{video_id}/spritesheet.jpg",
        f"fleet/videos/{video_id}/thumbnail.webp",
        f"fleet/videos/{video_id}/video.mp4",
    ]
    head = s3_server.admin.head_object(Bucket=storage.bucket, Key=storage.key(video_id))
    assert head["ContentType"] == "video/mp4"


def test_a_video_past_the_multipart_threshold_round_trips(storage: S3Storage) -> None:
    video_id = new_video_id()
    data = os.urandom(9 << 20)  # boto3 uploads files over 8 MiB in parts
    stored = storage.put(video_id, "video", writer(data))
    assert stored.sha256 == hashlib.sha256(data).hexdigest()
    info = storage.stat(video_id)
    assert info is not None and info.size == len(data)
    assert hashlib.sha256(b"".join(storage.open_range(video_id, "video"))).hexdigest() == stored.sha256


def test_stat_reports_size_etag_and_mtime(storage: S3Storage, s3_server: S3Server) -> None:
    video_id = new_video_id()
    before = time.time()
    storage.put(video_id, "video", writer(VIDEO))

    info = storage.stat(video_id)
    assert info is not None and info.size == len(VIDEO)
    assert info.etag == s3_server.admin.head_object(Bucket=storage.bucket, Key=storage.key(video_id))["ETag"]
    assert info.etag.startswith('"') and info.etag.endswith('"')
    assert before - 2 <= info.last_modified <= time.time() + 2
    assert storage.exists(video_id)
    assert not storage.exists(video_id, "thumbnail") and storage.stat(video_id, "thumbnail") is None
    assert storage.stat(new_video_id()) is None


def test_open_range_reads_the_bytes_asked_for(storage: S3Storage) -> None:
    video_id = new_video_id()
    storage.put(video_id, "video", writer(VIDEO))

    assert b"".join(storage.open_range(video_id, "video")) == VIDEO
    assert b"".join(storage.open_range(video_id, "video", 100, 199)) == VIDEO[100:200]
    assert b"".join(storage.open_range(video_id, "video", 10000)) == VIDEO[10000:]
    assert b"".join(storage.open_range(video_id, "video", 0, 0)) == VIDEO[:1]


def test_delete_removes_every_object_of_the_video_and_nothing_else(
    storage: S3Storage, s3_server: S3Server
) -> None:
    doomed, kept = new_video_id(), new_video_id()
    for video_id in (doomed, kept):
        for variant in ("video", "thumbnail", "spritesheet"):
            storage.put(video_id, variant, writer(b"x"))

    storage.delete(doomed)

    assert s3_server.keys(storage.bucket, f"fleet/videos/{doomed}/") == []
    assert len(s3_server.keys(storage.bucket, f"fleet/videos/{kept}/")) == 3
    storage.delete(doomed)  # nothing left: still fine
    storage.delete("../" + kept)  # a malformed id touches nothing
    assert len(s3_server.keys(storage.bucket)) == 3


def test_a_failed_produce_uploads_nothing(storage: S3Storage, s3_server: S3Server) -> None:
    def crash(path: Path) -> None:
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder died")

    def disk_full(path: Path) -> None:
        raise OSError(28, os.strerror(28))

    with pytest.raises(RuntimeError):
        storage.put(new_video_id(), "video", crash)
    with pytest.raises(StorageError, match="No space left"):
        storage.put(new_video_id(), "video", disk_full)
    assert s3_server.keys(storage.bucket) == []


def assert_no_secret(message: str) -> None:
    assert not any(secret in message for secret in SECRETS), message


def test_a_missing_bucket_is_a_storage_error_without_credentials(s3_server: S3Server) -> None:
    storage = S3Storage("no-such-bucket-here", "videos")
    video_id = new_video_id()
    with pytest.raises(StorageError) as raised:
        storage.put(video_id, "video", writer(VIDEO))
    assert (
        "NoSuchBucket" in raised.value.message and "s3://no-such-bucket-here/videos/" in raised.value.message
    )
    assert raised.value.code == "storage_error"
    assert_no_secret(raised.value.message)
    with pytest.raises(StorageError) as raised:
        storage.open_range(video_id, "video")
    assert_no_secret(raised.value.message)


def test_an_unreachable_store_is_a_storage_error_and_delete_only_logs(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    storage = S3Storage("videos")
    video_id = new_video_id()

    with pytest.raises(StorageError, match=r"cannot connect to http://127\.0\.0\.1:\d+") as raised:
        storage.put(video_id, "video", writer(VIDEO))
    assert_no_secret(raised.value.message)
    with pytest.raises(StorageError, match="cannot connect"):
        storage.stat(video_id)

    with caplog.at_level(logging.WARNING, logger="wanserve"):
        storage.delete(video_id)  # never raises: the record is gone either way
    assert f"{video_id}: its stored files were not all removed" in caplog.text
    assert_no_secret(caplog.text)


def test_refused_credentials_are_a_storage_error_that_does_not_repeat_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_moto(tmp_path, INITIAL_NO_AUTH_ACTION_COUNT="0") as checking:  # this one checks signatures
        for name, value in checking.env.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG1")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "a-wrong-secret-that-must-not-leak")
        storage = S3Storage("videos")
        with pytest.raises(StorageError) as raised:
            storage.put(new_video_id(), "video", writer(b"x"))
    assert "InvalidAccessKeyId" in raised.value.message, raised.value.message
    assert "AKIAWRONGWRONGWRONG1" not in raised.value.message and "a-wrong-secret" not in raised.value.message


def test_a_presigned_url_downloads_the_bytes(storage: S3Storage) -> None:
    video_id = new_video_id()
    storage.put(video_id, "video", writer(VIDEO))

    url = storage.presigned_url(video_id, expires_s=60)
    assert "X-Amz-Expires=60" in url and SECRET_ACCESS_KEY not in url
    assert httpx.get(url).content == VIDEO
    partial = httpx.get(url, headers={"Range": "bytes=10-19"})
    assert partial.status_code == 206 and partial.content == VIDEO[10:20]


def test_storage_from_settings_builds_s3_from_the_url_and_the_environment(
    s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, storage_url=f"s3://{s3_bucket}/a/b/")
    storage = storage_from_settings(settings)
    assert isinstance(storage, S3Storage) and (storage.bucket, storage.prefix) == (s3_bucket, "a/b")
    video_id = new_video_id()
    storage.put(video_id, "thumbnail", writer(b"webp"))
    assert s3_server.keys(s3_bucket) == [f"a/b/{video_id}/thumbnail.webp"]


# The content answers, for both backends: what GET /v1/videos/{id}/content does with a stored variant.


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    if request.param == "local":
        return LocalStorage(tmp_path / "videos")
    s3_server = request.getfixturevalue("s3_server")
    return S3Storage(s3_server.new_bucket(), "videos", client=request.getfixturevalue("client"))


def serving_app(storage: Storage, *, redirect: bool = False, record_etag: str | None = None) -> TestClient:
    app = FastAPI()
    error_handlers.install(app)

    @app.api_route("/content/{video_id}", methods=["GET", "HEAD"])
    def content(video_id: str, request: Request, variant: str = "video") -> Response:
        return content_response(request, storage, video_id, variant, etag=record_etag, redirect=redirect)

    return TestClient(app, follow_redirects=False)


@pytest.fixture
def stored(backend: Storage) -> Iterator[tuple[TestClient, str]]:
    video_id = new_video_id()
    backend.put(video_id, "video", writer(VIDEO))
    with serving_app(backend) as client:
        yield client, video_id


def test_the_whole_variant(stored: tuple[TestClient, str]) -> None:
    client, video_id = stored
    response = client.get(f"/content/{video_id}")
    assert response.status_code == 200 and response.content == VIDEO
    assert response.headers["content-type"] == "video/mp4"
    assert response.headers["content-length"] == str(len(VIDEO))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"].startswith('"') and response.headers["last-modified"]
    assert response.headers["cache-control"] == "private, max-age=86400"

    head = client.head(f"/content/{video_id}")
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(VIDEO))
    assert head.headers["etag"] == response.headers["etag"]


@pytest.mark.parametrize(
    ("header", "first", "last"),
    [("bytes=100-199", 100, 199), ("bytes=10000-", 10000, len(VIDEO) - 1), ("bytes=-40", len(VIDEO) - 40,
     len(VIDEO) - 1), ("bytes=10200-99999", 10200, len(VIDEO) - 1)],
)  # fmt: skip
def test_a_single_range_is_a_206(stored: tuple[TestClient, str], header: str, first: int, last: int) -> None:
    client, video_id = stored
    response = client.get(f"/content/{video_id}", headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == f"bytes {first}-{last}/{len(VIDEO)}"
    assert response.content == VIDEO[first : last + 1]
    assert response.headers["content-length"] == str(last - first + 1)


def test_an_unsatisfiable_range_is_a_416(stored: tuple[TestClient, str]) -> None:
    client, video_id = stored
    response = client.get(f"/content/{video_id}", headers={"Range": "bytes=20000-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(VIDEO)}"
    assert response.json()["error"]["code"] == "range_not_satisfiable"


@pytest.mark.parametrize("header", ["bytes=5-1", "items=0-1", "bytes=abc"])
def test_a_malformed_range_is_ignored(stored: tuple[TestClient, str], header: str) -> None:
    client, video_id = stored
    response = client.get(f"/content/{video_id}", headers={"Range": header})
    assert response.status_code == 200 and response.content == VIDEO


def test_several_ranges_are_served_whole_or_as_multipart(stored: tuple[TestClient, str]) -> None:
    client, video_id = stored
    response = client.get(f"/content/{video_id}", headers={"Range": "bytes=0-9,100-109"})
    if response.status_code == 200:  # S3: RFC 9110 lets a server ignore Range
        assert response.content == VIDEO
    else:  # the local file: multipart/byteranges
        assert response.status_code == 206
        assert response.headers["content-type"].startswith("multipart/byteranges")
        assert VIDEO[0:10] in response.content and VIDEO[100:110] in response.content


def test_if_none_match_is_a_304_and_if_range_guards_range(stored: tuple[TestClient, str]) -> None:
    client, video_id = stored
    etag = client.head(f"/content/{video_id}").headers["etag"]
    for header in (etag, f"W/{etag}", '"other", ' + etag, "*"):
        response = client.get(f"/content/{video_id}", headers={"If-None-Match": header})
        assert response.status_code == 304 and response.content == b""
        assert response.headers["etag"] == etag
    assert client.get(f"/content/{video_id}", headers={"If-None-Match": '"other"'}).status_code == 200

    ranged = {"Range": "bytes=0-9"}
    assert client.get(f"/content/{video_id}", headers={**ranged, "If-Range": etag}).status_code == 206
    stale = client.get(f"/content/{video_id}", headers={**ranged, "If-Range": '"stale"'})
    assert stale.status_code == 200 and stale.content == VIDEO


def test_the_records_etag_is_the_one_answered(backend: Storage) -> None:
    video_id = new_video_id()
    stored = backend.put(video_id, "video", writer(VIDEO))
    etag = f'"{stored.sha256}"'
    with serving_app(backend, record_etag=etag) as client:
        assert client.get(f"/content/{video_id}").headers["etag"] == etag
        assert client.get(f"/content/{video_id}", headers={"If-None-Match": etag}).status_code == 304


def test_a_variant_not_stored_is_a_404_or_variant_not_found(stored: tuple[TestClient, str]) -> None:
    client, video_id = stored
    missing = client.get(f"/content/{new_video_id()}")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "video_not_found"
    no_thumbnail = client.get(f"/content/{video_id}", params={"variant": "thumbnail"})
    assert no_thumbnail.status_code == 400
    assert no_thumbnail.json()["error"]["code"] == "variant_not_found"


def test_redirect_sends_a_get_to_a_presigned_url(storage: S3Storage) -> None:
    video_id = new_video_id()
    storage.put(video_id, "video", writer(VIDEO))
    with serving_app(storage, redirect=True) as client:
        response = client.get(f"/content/{video_id}")
        assert response.status_code == 307 and response.headers["cache-control"] == "no-store"
        location = response.headers["location"]
        assert location.startswith(storage.client.meta.endpoint_url) and SECRET_ACCESS_KEY not in location
        assert httpx.get(location).content == VIDEO
        partial = httpx.get(location, headers={"Range": "bytes=0-9"})
        assert partial.status_code == 206 and partial.content == VIDEO[:10]

        head = client.head(f"/content/{video_id}")  # a URL presigned for GET would refuse a HEAD
        assert head.status_code == 200 and head.headers["content-length"] == str(len(VIDEO))
        etag = head.headers["etag"]
        assert client.get(f"/content/{video_id}", headers={"If-None-Match": etag}).status_code == 304


def test_redirect_serves_a_local_file_itself(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    video_id = new_video_id()
    storage.put(video_id, "video", writer(VIDEO))
    with serving_app(storage, redirect=True) as client:
        response = client.get(f"/content/{video_id}")
    assert response.status_code == 200 and response.content == VIDEO


def test_a_store_that_fails_is_a_500_storage_error(
    s3_server: S3Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")  # nothing listens there
    with serving_app(S3Storage("videos")) as client:
        response = client.get(f"/content/{new_video_id()}")
    assert response.status_code == 500 and response.json()["error"]["code"] == "storage_error"
    assert_no_secret(response.text)
