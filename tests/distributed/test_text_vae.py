"""Text encoding once per Ulysses group, and the VAE decode split over a group's ranks (CPU, gloo, 2 ranks).

The split decode is diffusers' tiled decode with the tiles shared out: on the same machine it must give the
same numbers (tolerance 0: the same convolutions on the same tiles, blended in the same order; only gloo
moves the tiles, bit for bit). The group's frames differ from one process's by Ulysses' float noise alone
(<= 1e-4, as in test_cache_ulysses.py).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.distributed.groups import (
    finished,
    groups_started,
    submit,
    wait_for,
)
from tests.distributed.run_text_vae import ENGINE_TILE, LATENTS, SECOND, VAE_TILE
from tests.params import PARAMS
from worker.engine import WanEngine
from worker.vae_decode import VideoDecoder, denormalize

pytestmark = pytest.mark.slow

RUNNER = Path(__file__).with_name("run_text_vae.py")


@pytest.fixture(scope="module")
def group_run(
    tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("text_vae")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    done = subprocess.run(
        [*command, str(RUNNER), str(tiny_model_dir), str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out, [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


@pytest.fixture(scope="module")
def one_process(tiny_model_dir: Path) -> WanEngine:
    engine = WanEngine.load(tiny_model_dir, vae_tiling="on")
    engine.video_decoder = VideoDecoder(engine.pipe.vae, tiling="on", tile=ENGINE_TILE)
    return engine


def test_only_the_leader_encodes_and_the_group_matches_one_process(
    group_run: tuple[Path, list[dict[str, Any]]], one_process: WanEngine
) -> None:
    out, reports = group_run
    leader, follower = (report["encoder_calls"] for report in reports)
    # The first request encodes its prompt and its negative prompt; the second only its new prompt.
    assert leader == [2, 3]
    assert follower == [0, 0]
    for index, params in enumerate((PARAMS, SECOND)):
        frames = one_process.generate(params).frames
        assert frames is not None
        assert np.abs(np.load(out / f"frames_{index}.npy") - frames).max() <= 1e-4


def test_the_split_decode_is_diffusers_tiled_decode(
    group_run: tuple[Path, list[dict[str, Any]]], tiny_model_dir: Path
) -> None:
    from diffusers import AutoencoderKLWan

    out, _ = group_run
    vae = AutoencoderKLWan.from_pretrained(str(tiny_model_dir), subfolder="vae", dtype=torch.float32)
    vae.enable_tiling(**{f"tile_sample_{k}": v for k, v in dataclasses.asdict(VAE_TILE).items()})
    z = denormalize(vae, torch.randn(LATENTS, generator=torch.Generator().manual_seed(7)))
    with torch.inference_mode():
        tiled = vae.tiled_decode(z, return_dict=False)[0]
    split = np.load(out / "split.npy")
    assert split.shape == tuple(tiled.shape) == (1, 3, 5, 128, 128)
    assert np.abs(split - tiled.numpy()).max() == 0.0
    print("decode times on this machine:", (out / "timings.json").read_text())


def test_a_rank_that_fails_its_tiles_fails_the_decode_on_every_rank_and_the_group_goes_on(
    group_run: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, reports = group_run
    failures = [report["failure"] for report in reports]
    assert failures[0] == failures[1] == "The split VAE decode failed: rank 1 ran out of memory."
    assert all(report["after_failure_equal"] for report in reports)


def test_a_group_with_the_split_decode_serves_jobs_in_a_row(client, start_group) -> None:  # type: ignore[no-untyped-def]
    # With diffusers' tiles (256 px) a 128x128 frame is one tile: rank 1 decodes none but joins the split
    # decode all the same, through the group's real follower loop, job after job, keep-alives between.
    group = start_group(
        "--nproc",
        "2",
        "--ulysses",
        "2",
        WANSERVE_VAE_TILING="on",
        WANSERVE_VAE_PARALLEL="on",
        WANSERVE_KEEPALIVE_S="1",
        WANSERVE_MODEL="tiny-random",
    )
    first = wait_for(client, submit(client, size="128x128"), finished)
    time.sleep(3)  # keep-alives on the control plane between the jobs
    second = wait_for(client, submit(client, "a blue ball"), finished)
    assert first["status"] == second["status"] == "completed", group.log
    assert groups_started(group.log) == [first["worker"]] and first["worker"] == second["worker"]
    assert "exiting with 3" not in group.log
