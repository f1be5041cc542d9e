"""Choosing the storage backend from WANSERVE_STORAGE_URL; boto3 kept out of processes without S3."""

from __future__ import annotations

import ast
import inspect
import sys
from pathlib import Path

import pytest

from service.core.s3_storage import S3Storage
from service.core.settings import Settings, SettingsError
from service.core.storage import LocalStorage, Storage, parse_storage_url, storage_from_settings

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("/data/videos", Path("/data/videos")),
        ("videos", Path("videos")),
        ("file:///data/videos", Path("/data/videos")),
        ("file://localhost/data/videos/", Path("/data/videos")),
        ("file:///data/my%20videos", Path("/data/my videos")),
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://my.bucket-1/fleet/videos/", ("my.bucket-1", "fleet/videos")),
        ("S3://bucket//a//b", ("bucket", "a/b")),
    ],
)
def test_urls_name_a_folder_or_a_bucket_and_prefix(url: str, expected: object) -> None:
    assert parse_storage_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("gs://bucket/videos", "unsupported scheme 'gs'"),
        ("https://s3.example.com/bucket", "unsupported scheme 'https'"),
        ("s3://", "expected s3://bucket"),
        ("s3:///prefix", "expected s3://bucket"),
        ("s3://bucket/videos?region=eu", "query strings"),
        ("s3://bucket/../other", "'.' or '..'"),
        ("file://server/share", "no host"),
        (" /data/videos", "spaces"),
    ],
)
def test_anything_else_is_one_settings_error_line(url: str, reason: str) -> None:
    with pytest.raises(SettingsError) as raised:
        parse_storage_url(url)
    message = str(raised.value)
    assert message.startswith(f"WANSERVE_STORAGE_URL={url!r}: ") and reason in message
    assert "\n" not in message


def test_credentials_in_the_url_are_refused_and_never_repeated() -> None:
    with pytest.raises(SettingsError, match="credentials do not belong in the URL") as raised:
        parse_storage_url("s3://AKIAEXAMPLE:s3cr3t-key@bucket/videos")
    assert "s3cr3t-key" not in str(raised.value) and "AKIAEXAMPLE" not in str(raised.value)
    assert "s3://***@bucket/videos" in str(raised.value)


def test_unset_is_the_videos_folder_of_the_data_dir_or_storage_dir(tmp_path: Path) -> None:
    default = storage_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(default, LocalStorage) and default.root == tmp_path / "videos"
    legacy = storage_from_settings(Settings(data_dir=tmp_path, storage_dir=tmp_path / "elsewhere"))
    assert isinstance(legacy, LocalStorage) and legacy.root == tmp_path / "elsewhere"


def test_a_folder_url_is_local_storage_and_wins_over_storage_dir(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, storage_dir=tmp_path / "ignored", storage_url=f"file://{tmp_path}/v"
    )
    chosen = storage_from_settings(settings)
    assert isinstance(chosen, LocalStorage) and chosen.root == tmp_path / "v"


def test_an_s3_url_is_s3_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "unit")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "unit")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    chosen = storage_from_settings(Settings(data_dir=tmp_path, storage_url="s3://bucket/fleet/"))
    assert isinstance(chosen, S3Storage) and (chosen.bucket, chosen.prefix) == ("bucket", "fleet")
    assert chosen.key("video_" + "0" * 32, "thumbnail") == f"fleet/video_{'0' * 32}/thumbnail.webp"
    assert chosen.client.meta.region_name == "eu-west-1"  # AWS_REGION, which botocore alone ignores


def test_s3_without_boto3_is_a_settings_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "boto3", None)  # import boto3 now raises ImportError
    with pytest.raises(SettingsError, match=r"boto3 is not installed \(pip install 'wanserve\[s3\]'\)"):
        storage_from_settings(Settings(data_dir=tmp_path, storage_url="s3://bucket"))


def test_folders_never_need_boto3(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("boto3", "botocore"):
        monkeypatch.setitem(sys.modules, name, None)  # any import of them now raises ImportError
    local = storage_from_settings(Settings(data_dir=tmp_path, storage_url=str(tmp_path)))
    video_id = "video_" + "0" * 32
    local.put(video_id, "video", lambda path: path.write_bytes(b"mp4"))
    assert local.stat(video_id) is not None
    local.delete(video_id)


def module_level_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:  # top-level statements only, not function bodies
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module or "")
    return names


@pytest.mark.parametrize(
    "module", ["service/core/storage.py", "service/core/s3_storage.py", "service/api/stored_content.py"]
)
def test_boto3_is_imported_only_where_s3_is_built(module: str) -> None:
    imported = module_level_imports(ROOT / module)
    assert not any(name.split(".")[0] in ("boto3", "botocore") for name in imported), imported
    assert "service.core.s3_storage" not in imported


@pytest.mark.parametrize("backend", [LocalStorage, S3Storage])
def test_both_backends_implement_the_one_interface(backend: type) -> None:
    members = [name for name in vars(Storage) if not name.startswith("_")]
    assert set(members) == {"put", "exists", "stat", "open_range", "presigned_url", "delete"}
    for name in members:
        expected = inspect.signature(getattr(Storage, name))
        actual = inspect.signature(getattr(backend, name))
        assert list(actual.parameters) == list(expected.parameters), name
        assert [p.default for p in actual.parameters.values()] == [
            p.default for p in expected.parameters.values()
        ]
