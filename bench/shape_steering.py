"""Does the shapes model's prompt steer the shape? Start from a drawn clip, part noised, and denoise it.

    .venv/bin/python bench/shape_steering.py [--model DIR] [--clips 6] [--levels 0.2 0.4 0.6 0.8] [--json F]

Drawn squares (seeds from 1000) are encoded, noised to a flow-matching level s (x_s = (1 - s) x0 + s e, as
training noises them) and denoised from s to 0 by the model, guided as served (Euler steps, the profile's
guidance), once with the prompt naming the square and once naming a circle, all else alike. The result
is read frame by frame as ``bench/shapes_eval.py`` reads a generated video; the figure is the share of
frames that read square. At a low level both prompts keep the drawn square (the decoder's ceiling); if
the model follows the shape word, the circle prompt should round it from the level where shape is still
undecided, and the square prompt keep it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.core.model_profile import profile_for_folder
from shapes_model.analyse import analyse_each_frame, score_frames
from shapes_model.data import Clip, render, sample_clip
from shapes_model.train_dit import encode_prompts
from shapes_model.train_vae import to_tensor
from worker.tiny_model import SHAPES_MODEL_DIR
from worker.vae_decode import denormalize
from worker.video import to_uint8

EULER_STEPS = 12


def denoise(pipe: Any, clip: Clip, prompt: str, level: float, guidance: float) -> np.ndarray:
    """``clip`` noised to ``level`` and denoised with ``prompt``: uint8 frames."""
    vae, transformer = pipe.vae, pipe.transformer
    mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1)
    texts = encode_prompts(pipe, [prompt, ""])  # the conditional and unconditional branch, as a batch
    with torch.no_grad():
        x0 = (vae.encode(to_tensor(render(clip))[None]).latent_dist.mode() - mean) / std
        x = (1 - level) * x0 + level * torch.randn_like(x0)
        levels = torch.linspace(level, 0.0, EULER_STEPS + 1)
        for here, there in itertools.pairwise(levels):
            timestep = (here * 1000).expand(2)
            v = transformer(hidden_states=x.expand(2, -1, -1, -1, -1), timestep=timestep,
                            encoder_hidden_states=texts, return_dict=False)[0]  # fmt: skip
            v_cond, v_uncond = v.split(1)
            x = x + (there - here) * (v_uncond + guidance * (v_cond - v_uncond))
        frames = vae.decode(denormalize(vae, x)).sample[0]
    return to_uint8(((frames + 1) / 2).permute(1, 2, 3, 0).numpy())


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=SHAPES_MODEL_DIR)
    parser.add_argument("--clips", type=int, default=6)
    parser.add_argument("--levels", type=float, nargs="+", default=[0.2, 0.4, 0.6, 0.8])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from diffusers import WanPipeline

    torch.set_num_threads(2)
    pipe = WanPipeline.from_pretrained(args.model)
    pipe.transformer.eval()
    guidance = profile_for_folder(args.model).default_guidance_scale
    rng = random.Random(1000)
    clips = [sample_clip(rng, shape="square") for _ in range(args.clips)]
    report: dict[str, Any] = {"model": str(args.model), "clips": args.clips, "guidance": guidance}
    for level in args.levels:
        for said in ("square", "circle"):
            torch.manual_seed(0)  # both prompts see the same noise
            read = [
                score_frames(
                    analyse_each_frame(
                        denoise(
                            pipe, clip, f"a {clip.colour} {said} moving {clip.direction}", level, guidance
                        )
                    ),
                    clip.colour,
                    "square",
                ).shape
                for clip in clips
            ]
            report[f"{level}_{said}"] = round(float(np.mean(read)), 3)
            print(f"level {level}, prompt says {said}: frames read square {np.mean(read):.0%}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
