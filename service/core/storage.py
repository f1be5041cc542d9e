"""Where finished videos live: a local folder shared by the API and the workers.

Files are written under a temporary name and renamed into place, so a reader never sees half a video
and a worker that dies mid-write leaves nothing that could be served.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from service.core import redis_keys
from service.core.errors import StorageError

VARIANT_FILES = {
    "video": ("video.mp4", "video/mp4"),
    "thumbnail": ("thumbnail.webp", "image/webp"),
    "spritesheet": ("spritesheet.jpg", "image/jpeg"),
}


class LocalStorage:
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

    def exists(self, video_id: str, variant: str = "video") -> bool:
        return self.path(video_id, variant).is_file()

    def delete(self, video_id: str) -> None:
        if redis_keys.is_valid_video_id(video_id):
            shutil.rmtree(self.root / video_id, ignore_errors=True)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
