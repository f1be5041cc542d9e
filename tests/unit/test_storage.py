import os
from pathlib import Path

import pytest

from service.core.errors import StorageError
from service.core.storage import LocalStorage, sha256_of
from service.core.video_store import new_video_id


def test_write_moves_the_file_into_place(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    video_id = new_video_id()
    path = storage.write(video_id, "video", lambda p: p.write_bytes(b"mp4"))
    assert path == storage.path(video_id) and path.read_bytes() == b"mp4"
    assert [p.name for p in path.parent.iterdir()] == ["video.mp4"]


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    video_id = new_video_id()

    def crash(path: Path) -> None:
        path.write_bytes(b"half a video")
        raise RuntimeError("encoder died")

    with pytest.raises(RuntimeError):
        storage.write(video_id, "video", crash)
    assert not storage.exists(video_id)
    assert list((tmp_path / video_id).iterdir()) == []


def test_disk_full_is_a_storage_error(tmp_path: Path) -> None:
    def disk_full(path: Path) -> None:
        raise OSError(28, os.strerror(28))

    with pytest.raises(StorageError, match="No space left"):
        LocalStorage(tmp_path).write(new_video_id(), "video", disk_full)


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_a_real_full_device_is_a_storage_error(tmp_path: Path) -> None:
    def write_to_full_device(path: Path) -> None:
        with open("/dev/full", "wb") as full:
            full.write(b"x" * 65536)
            full.flush()

    with pytest.raises(StorageError):
        LocalStorage(tmp_path).write(new_video_id(), "video", write_to_full_device)


def test_an_unwritable_root_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file-not-folder"
    blocker.write_text("")
    with pytest.raises(StorageError, match="Cannot write"):
        LocalStorage(blocker / "videos").write(new_video_id(), "video", lambda p: p.write_bytes(b""))


@pytest.mark.parametrize("bad_id", ["../etc", "video_../../x", "video_XYZ", "", "video_" + "0" * 31])
def test_ids_are_validated_before_touching_paths(tmp_path: Path, bad_id: str) -> None:
    storage = LocalStorage(tmp_path / "videos")
    with pytest.raises(ValueError):
        storage.path(bad_id)
    named = storage.root / bad_id  # what the id names as a path: the root itself, a folder beside it...
    named.mkdir(parents=True, exist_ok=True)
    (named / "keep").write_bytes(b"")
    storage.delete(bad_id)  # ignored: nothing is removed
    assert (named / "keep").exists()


def test_put_reports_size_and_sha256_and_reads_back_by_range(tmp_path: Path) -> None:
    storage = LocalStorage(tmp_path)
    video_id = new_video_id()
    data = bytes(range(256)) * 8
    stored = storage.put(video_id, "video", lambda p: p.write_bytes(data))
    assert stored.size == len(data) and stored.sha256 == sha256_of(storage.path(video_id))

    info = storage.stat(video_id)
    assert info is not None and info.size == len(data) and info.etag.startswith('"')
    assert info.last_modified == storage.path(video_id).stat().st_mtime
    assert storage.stat(video_id, "thumbnail") is None and storage.stat(new_video_id()) is None
    assert b"".join(storage.open_range(video_id, "video")) == data
    assert b"".join(storage.open_range(video_id, "video", 10, 19)) == data[10:20]
    assert b"".join(storage.open_range(video_id, "video", 2000)) == data[2000:]
    assert storage.presigned_url(video_id) is None
    with pytest.raises(StorageError):
        storage.open_range(video_id, "spritesheet")
