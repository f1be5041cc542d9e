"""The text encoder and the VAE decode in a torchrun group (Ulysses over every rank, CPU, gloo).

torchrun --standalone --nproc-per-node 2 tests/distributed/run_text_vae.py MODEL OUT

1. Two requests through ``WanEngine.generate`` on every rank (the second shares the first's negative
   prompt), the engine loaded with ``vae_tiling=on, vae_parallel=True`` and small tiles so that the 64x64
   frames make nine tiles split over the ranks. Each rank writes ``rank{r}.json``: its text encoder's
   forward calls after each request; the leader writes ``frames_{i}.npy``.
2. The VAE alone on ``LATENTS`` (seeded): the split decode timed on every rank at once (the leader
   saves ``split.npy``), then on the leader alone diffusers' tiled and untiled decodes (``timings.json``).
3. A split decode in which rank 1 runs out of memory: every rank must raise the same ``VaeDecodeFailed``
   (its message in ``rank{r}.json``), and the next split decode must work.
"""

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from tests.params import PARAMS
from worker.engine import WanEngine
from worker.parallel import ParallelLayout, init_parallel, leave_group
from worker.vae_decode import TileSize, VaeDecodeFailed, VideoDecoder, denormalize, split_tiled_decode

ENGINE_TILE = TileSize(32, 32, 24, 24)
VAE_TILE = TileSize(64, 64, 48, 48)
LATENTS = (1, 16, 2, 16, 16)
"""5 frames of 128x128 pixels: 9 tiles of VAE_TILE."""
SECOND = dataclasses.replace(PARAMS, prompt="a blue ball on grass", seed=99)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()

    ranks = int(os.environ["WORLD_SIZE"])
    runtime = init_parallel(ParallelLayout(ranks, ranks, 1), "cpu", timeout_s=120)
    engine = WanEngine.load(args.model, parallel=runtime, vae_tiling="on", vae_parallel=True)
    vae = engine.pipe.vae
    engine.video_decoder = VideoDecoder(vae, tiling="on", tile=ENGINE_TILE, parallel=runtime, split=True)
    calls: list[int] = []
    engine.pipe.text_encoder.register_forward_hook(lambda *_: calls.append(1))
    report: dict[str, Any] = {"encoder_calls": [], "after_failure_equal": True}
    for index, params in enumerate((PARAMS, SECOND)):
        result = engine.generate(params)
        report["encoder_calls"].append(len(calls))
        if runtime.is_leader:
            assert result.frames is not None
            np.save(args.out / f"frames_{index}.npy", result.frames)
        else:
            assert result.frames is None

    z = denormalize(vae, torch.randn(LATENTS, generator=torch.Generator().manual_seed(7)))
    vae.enable_tiling(
        tile_sample_min_height=VAE_TILE.min_height,
        tile_sample_min_width=VAE_TILE.min_width,
        tile_sample_stride_height=VAE_TILE.stride_height,
        tile_sample_stride_width=VAE_TILE.stride_width,
    )
    timings: dict[str, float] = {}
    with torch.inference_mode():
        dist.barrier()
        started = time.perf_counter()
        split = split_tiled_decode(vae, z, runtime)
        timings["split_s"] = time.perf_counter() - started
        if runtime.is_leader:
            assert split is not None
            np.save(args.out / "split.npy", split.numpy())
            started = time.perf_counter()
            vae.tiled_decode(z, return_dict=False)
            timings["tiled_s"] = time.perf_counter() - started
            vae.disable_tiling()
            started = time.perf_counter()
            vae.decode(z, return_dict=False)
            timings["single_s"] = time.perf_counter() - started
            (args.out / "timings.json").write_text(json.dumps(timings))
        dist.barrier()

        decoder_forward = vae.decoder.forward
        if runtime.rank == 1:

            def out_of_memory(*_: Any, **__: Any) -> Any:
                raise torch.OutOfMemoryError("CUDA out of memory (injected)")

            vae.decoder.forward = out_of_memory
        try:
            split_tiled_decode(vae, z, runtime)
            report["failure"] = None
        except VaeDecodeFailed as exc:
            report["failure"] = str(exc)
        vae.decoder.forward = decoder_forward
        again = split_tiled_decode(vae, z, runtime)
        if again is not None:
            report["after_failure_equal"] = torch.equal(
                again, torch.from_numpy(np.load(args.out / "split.npy"))
            )
    (args.out / f"rank{runtime.rank}.json").write_text(json.dumps(report))
    leave_group(0)


if __name__ == "__main__":
    main()
