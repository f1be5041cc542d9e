"""Encoded files (the MP4 through ffmpeg, a child process), read back with a real decoder."""

from pathlib import Path

import imageio.v3 as iio
import numpy as np

from worker.video import read_mp4, write_mp4, write_spritesheet, write_thumbnail


def gradient_frames(count: int = 17, height: int = 64, width: int = 96) -> np.ndarray:
    t = np.linspace(0, 1, count)[:, None, None, None]
    y = np.linspace(0, 1, height)[None, :, None, None]
    x = np.linspace(0, 1, width)[None, None, :, None]
    rgb = np.concatenate([x + 0 * y * t, y + 0 * x * t, t + 0 * x * y], axis=-1)
    return (rgb * 255).astype(np.uint8)


def test_mp4_is_h264_yuv420p_with_the_index_first(tmp_path: Path) -> None:
    frames = gradient_frames()
    path = tmp_path / "v.mp4"
    write_mp4(frames, path, fps=16)
    meta = iio.immeta(path, plugin="FFMPEG")
    assert meta["codec"] == "h264"
    assert meta["pix_fmt"].startswith("yuv420p")
    assert meta["fps"] == 16.0
    head = path.read_bytes()
    assert 0 <= head.find(b"moov") < head.find(b"mdat"), "faststart puts moov before mdat"
    decoded = read_mp4(path)
    assert decoded.shape == frames.shape
    # Lossy but close: a smooth gradient survives H.264 at CRF 18 within a few levels.
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 4


def test_thumbnail_is_the_middle_frame(tmp_path: Path) -> None:
    frames = gradient_frames()  # the blue channel tells the frames apart
    write_thumbnail(frames, tmp_path / "t.webp")
    thumb = iio.imread(tmp_path / "t.webp").astype(int)
    assert thumb.shape == (64, 96, 3)
    distances = [np.abs(thumb - frame).mean() for frame in frames.astype(int)]
    assert int(np.argmin(distances)) == len(frames) // 2 == 8
    assert distances[8] < 2, "lossy, but the middle frame itself"


def test_spritesheet_tiles_every_frame(tmp_path: Path) -> None:
    frames = gradient_frames(count=17, height=32, width=32)
    write_spritesheet(frames, tmp_path / "s.jpg")
    sheet = iio.imread(tmp_path / "s.jpg")
    assert sheet.shape == (3 * 32, 8 * 32, 3)  # 17 frames, 8 to a row
