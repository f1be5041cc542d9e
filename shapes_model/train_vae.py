"""Train the VAE: reconstruct short windows of synthetic clips, weighting the object's pixels.

The windows are 9 frames (the first frame alone, then two 4-frame chunks: every path of Wan's causal
encoder and decoder, the chunk-to-chunk feature cache included) cropped to 32x32 around the object:
convolutions do not care about the frame's size, and a quarter of the pixels is a quarter of the time.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import numpy as np
import torch

from shapes_model.data import BACKGROUND, render, sample_clip
from shapes_model.model import build_vae

WINDOW, CROP = 9, 32
LATENT_NOISE = 0.1


def training_window(rng: random.Random) -> np.ndarray:
    """A (WINDOW, CROP, CROP, 3) uint8 window of a random clip, cropped near the object."""
    clip = sample_clip(rng)
    frames = render(clip)
    first = rng.randrange(0, frames.shape[0] - WINDOW + 1)
    frames = frames[first : first + WINDOW]
    t = (first + WINDOW / 2) / (17 - 1)
    cx = (clip.start[0] + (clip.end[0] - clip.start[0]) * t) * 64 + rng.uniform(-10, 10)
    cy = (clip.start[1] + (clip.end[1] - clip.start[1]) * t) * 64 + rng.uniform(-10, 10)
    x0 = int(np.clip(round(cx - CROP / 2), 0, 64 - CROP))
    y0 = int(np.clip(round(cy - CROP / 2), 0, 64 - CROP))
    return frames[:, y0 : y0 + CROP, x0 : x0 + CROP]


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames to the VAE's (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def object_weight(batch: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """1 on the background, ``weight`` on and near the object: it is 5% of the pixels and all of the point."""
    background = torch.tensor(BACKGROUND, dtype=batch.dtype).view(1, 3, 1, 1, 1) / 127.5 - 1.0
    on_object = ((batch - background).abs().amax(dim=1, keepdim=True) > 0.05).float()
    near = torch.nn.functional.max_pool3d(on_object, (1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + (weight - 1.0) * near


def train(out: Path, steps: int, batch_size: int, lr: float, seed: int, log_every: int = 25) -> None:
    rng = random.Random(seed)
    vae = build_vae(seed).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0, betas=(0.9, 0.99))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimiser,
        lambda s: min(1.0, (s + 1) / warmup) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * s / steps))),
    )
    torch.manual_seed(seed)
    out.mkdir(parents=True, exist_ok=True)
    log = (out / "vae_loss.jsonl").open("w")
    started, running = time.perf_counter(), []
    for step in range(steps):
        batch = torch.stack([to_tensor(training_window(rng)) for _ in range(batch_size)])
        posterior = vae.encode(batch).latent_dist
        # The posterior's mean plus a little noise, not a posterior sample: sampling at the untrained
        # posterior's width drowns the latents in noise, and we encode with the mean anyway.
        latents = posterior.mode()
        reconstruction = vae.decode(latents + LATENT_NOISE * torch.randn_like(latents)).sample
        l1 = ((reconstruction - batch).abs() * object_weight(batch)).mean()
        loss = l1 + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        running.append(l1.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            record = {"step": step + 1, "loss": float(np.mean(running)), "s": time.perf_counter() - started}
            log.write(json.dumps(record) + "\n")
            log.flush()
            print(f"vae step {step + 1}/{steps} loss {record['loss']:.4f} {record['s']:.0f}s", flush=True)
            running = []
        if (step + 1) % 250 == 0:  # a checkpoint to look at while it trains
            vae.save_pretrained(out / "vae")
    vae.eval().save_pretrained(out / "vae")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    train(args.out, args.steps, args.batch_size, args.lr, args.seed)


if __name__ == "__main__":
    main()
