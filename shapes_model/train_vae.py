"""Train the VAE: reconstruct windows of synthetic clips, weighting the object's pixels.

First on windows of 9 frames (the first frame alone, then two 4-frame chunks: every path of Wan's causal
encoder and decoder, the chunk-to-chunk feature cache included) cropped to 32x32 around the object:
convolutions do not care about the frame's size, and a quarter of the pixels is a quarter of the time.
Then whole 33-frame clips on whole 64x64 frames: the chunk-to-chunk caches make the decoder recurrent, and
it decodes well only as many chunks as it was trained on (trained on 5-frame windows, the shipped VAE of
issue 15 lost the colour from frame 12 on; trained on 17, from frame 21), so it trains on the longest
clip served. Then the decoder alone, the encoder and so every latent left as they are: for sharp edges
(a loss on pixel differences), then for colours that hold under the transformer's errors (more noise), then
for outlines (the pixels where one shape differs from another weighed up), then for outlines that move at
the default video's speed. The recipe runs the last phases later: the encoder's (new latents) before the
transformer's last phase, the decoder's last one after it (on the squares that phase draws).
"""

from __future__ import annotations

import argparse
import dataclasses
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from shapes_model.data import BACKGROUND, LARGE_SQUARE_RADII, RADII, render, sample_clip
from shapes_model.model import build_vae
from shapes_model.outline_weights import pixel_difference
from shapes_model.training import DEFAULT_SEED, LossLog, warmup_cosine

LATENT_NOISE = 0.1


@dataclass(frozen=True)
class Phase:
    steps: int
    window: int
    """Frames per training clip: 1 + 4k (the first frame alone, then k chunks of 4)."""
    crop: int
    """Square crop around the object, pixels; 64 is the whole frame."""
    batch_size: int
    lr: float
    decoder_only: bool = False
    """Train the decoder alone: the encoder, and so every latent the transformer trains on, stays as it is."""
    edge_weight: float = 0.0
    """Weight of the loss on the frames' spatial differences (``edge_loss``) beside the pixels' L1."""
    relative_noise: float = 0.0
    """With it, the decoder's input noise is each clip's draw from 0 to this many standard deviations of
    the batch's latents per channel (the units the transformer works in), not ``LATENT_NOISE``."""
    outline_weight: float = 0.0
    """The losses weigh each pixel this much more where the clip's shape differs from its twin's
    (``pixel_difference``: a square's corners against the circle drawn alike)."""
    short_window: int = 0
    """If set, every other step trains on whole clips this long instead: the object then moves as fast
    as in a video of that many frames, twice as fast at 17 frames as in a 33-frame window."""
    square_radii: tuple[float, float] = RADII
    """The half sides its clips' squares are drawn at (``data.sample_clip``)."""
    square_share: float | None = None
    """If set, this share of its clips are squares (else every shape alike: a third)."""
    first_frame_weight: float = 1.0
    """The losses weigh the first frame (encoded and decoded alone) this many times more."""


CROPS = Phase(steps=1000, window=9, crop=32, batch_size=8, lr=2e-3)
# Then whole frames (the middle attention block sees 8x8 latents at 64x64, not the crops' 4x4) of whole
# clips as long as the longest served (the profile's 33 frames).
WHOLE_CLIPS = Phase(steps=400, window=33, crop=64, batch_size=2, lr=1e-3)
# Then sharper edges: the decoder alone, with a loss on the frames' spatial differences. Pixel L1 alone left
# it rounding squares' corners and blunting triangles' tips (drawn clips' reconstructions read square in
# 65-80% of frames, triangle in 57%), and the transformer can draw no better than its decoder.
SHARP_EDGES = Phase(steps=300, window=33, crop=64, batch_size=2, lr=5e-4, decoder_only=True, edge_weight=1.0)
# Then a decoder that keeps its colours under the transformer's errors: the first latent frame (the first
# frame alone) carries the object more faintly than the others, and with noise of 0.3 standard deviations
# the decoder after phase 3 decoded frames 0-1 in the wrong colour in 9% of clips, frames 3-16 in none.
ROBUST = Phase(steps=200, window=33, crop=64, batch_size=2, lr=3e-4, decoder_only=True, edge_weight=1.0,
               relative_noise=0.6)  # fmt: skip
# Then the decoder again, its losses weighing up to 50 times more the pixels where a shape differs from its
# twin (a square's corners, a triangle's tip and sides against the circle drawn alike): after phase 4,
# drawn clips' reconstructions read square in 76% of frames at 17 frames, triangle in 74% (bench/vae_check.py,
# 30 clips); after this phase 80% and 99%, and generated triangles went from 91% to 98% of frames.
OUTLINES = dataclasses.replace(ROBUST, steps=600, outline_weight=50.0)
# Then the same with every other step on 17-frame clips: a 33-frame window moves the object half as fast
# as the default 17-frame video does, and phases 2-5 saw only that speed. Generated at 17 frames: squares
# 66% -> 69% of frames, circles and triangles 99%, patched videos 27% -> 23%; at 33 frames squares 78% ->
# 82%. On 17-frame clips alone, the decoder lost the colour of 2 of 60 videos after frame 20 of 33.
FAST_MOTION = dataclasses.replace(OUTLINES, short_window=17)
# Then the same with the encoder too: a decoder alone can only restore what the latents hold. It changes
# the latents, so it runs before the transformer's last phase, which trains on them (recipe.LATE_VAE_PHASES):
# generated squares 69% -> 76% of frames at 17 frames, 82% -> 85% at 33. 400 steps drew squares in 82% /
# 86% but held the colour in 91.7% / 95.0% of videos, and took the recipe past two hours.
WHOLE_VAE_OUTLINES = dataclasses.replace(FAST_MOTION, steps=200, decoder_only=False)
# Then the decoder alone on 33-frame windows again: after phase 7 two of the four blue squares at 33 frames
# turned red, then yellow, from frame 18 on. After this, every video holds its colour at 33 frames, and
# videos with a patch of another colour at 17 frames went from 24.4% to 17.2%.
LONG_CLIPS_AGAIN = dataclasses.replace(OUTLINES, steps=100)
# Then the decoder alone once more, after the transformer's last phase (it changes no latent, so the
# transformer need not train again: recipe.FINAL_DECODER_PHASES), on clips like those of the transformer's
# last phase: squares drawn as large (data.LARGE_SQUARE_RADII; the phases before drew them from half side
# 7 px), more of them (70%) and the first frame weighed more (3 times). The transformer's latents are
# smoother than the encoder's (30% less Laplacian energy), and this decoder restores more of a square's
# corners from them. Through the shipped transformer, 360 unseen videos at 17 frames: squares 80.7% ->
# 88.4% of frames (85.3% with half of the clips squares and the first frame weighed twice, 82.5% with the
# large squares alone, 82.4% with those for 400 steps, 79.0% with the input latents blurred as the
# transformer's are), circles 97.8% -> 95.8%, triangles 98%, colour held by 93% of videos; at 33 frames
# squares 92% -> 97%, but one video of 60 (a green circle) turns blue from frame 27: the 17-frame clips of
# every other step undo a little of phase 8.
LAST_CYCLE_CLIPS = dataclasses.replace(
    FAST_MOTION, steps=200, square_radii=LARGE_SQUARE_RADII, square_share=0.7, first_frame_weight=3.0
)
PHASES = (
    CROPS, WHOLE_CLIPS, SHARP_EDGES, ROBUST, OUTLINES, FAST_MOTION, WHOLE_VAE_OUTLINES, LONG_CLIPS_AGAIN,
    LAST_CYCLE_CLIPS,
)  # fmt: skip
CLIP_FRAMES = 17
"""A clip's length when the window is shorter; a longer window is a whole clip of its own length (the
object then moves as slowly as in a video of that many frames)."""


def training_window(
    rng: random.Random,
    window: int,
    crop: int,
    square_radii: tuple[float, float] = RADII,
    square_share: float | None = None,
    outlined: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A (window, crop, crop, 3) uint8 window of a random clip (squares of half side in ``square_radii``),
    cropped near the object, and the same window of its ``pixel_difference`` from its twin, (window,
    crop, crop); zeros unless ``outlined`` (it costs as much as drawing the clip)."""
    shape = None
    if square_share is not None:
        shape = "square" if rng.random() < square_share else rng.choice(("circle", "triangle"))
    clip = sample_clip(rng, shape=shape, square_radii=square_radii)
    length = max(CLIP_FRAMES, window)
    first = rng.randrange(0, length - window + 1)
    t = (first + window / 2) / (length - 1)
    cx = (clip.start[0] + (clip.end[0] - clip.start[0]) * t) * 64 + rng.uniform(-10, 10)
    cy = (clip.start[1] + (clip.end[1] - clip.start[1]) * t) * 64 + rng.uniform(-10, 10)
    x0 = int(np.clip(round(cx - crop / 2), 0, 64 - crop))
    y0 = int(np.clip(round(cy - crop / 2), 0, 64 - crop))
    frames = render(clip, length)
    outline = pixel_difference(clip, length) if outlined else np.zeros(frames.shape[:3], np.float32)
    where = (slice(first, first + window), slice(y0, y0 + crop), slice(x0, x0 + crop))
    return frames[where], outline[where]


def window_at(phase: Phase, step: int) -> int:
    """The clip length ``phase`` trains on at ``step``."""
    return phase.short_window if phase.short_window and step % 2 else phase.window


def to_tensor(frames: np.ndarray) -> torch.Tensor:
    """uint8 (T, H, W, 3) frames to the VAE's (3, T, H, W) in [-1, 1]."""
    return torch.from_numpy(frames).permute(3, 0, 1, 2).float() / 127.5 - 1.0


def object_weight(batch: torch.Tensor, weight: float = 10.0) -> torch.Tensor:
    """1 on the background, ``weight`` on and near the object: it is 5% of the pixels and all of the point."""
    background = torch.tensor(BACKGROUND, dtype=batch.dtype).view(1, 3, 1, 1, 1) / 127.5 - 1.0
    on_object = ((batch - background).abs().amax(dim=1, keepdim=True) > 0.05).float()
    near = torch.nn.functional.max_pool3d(on_object, (1, 3, 3), stride=1, padding=(0, 1, 1))
    return 1.0 + (weight - 1.0) * near


def pixel_weight(phase: Phase, batch: torch.Tensor, outlines: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, H, W): each pixel's weight in the losses, ``object_weight`` plus ``phase.outline_weight``
    times its ``pixel_difference`` (``outlines``), the first frame's times ``phase.first_frame_weight``."""
    weight = object_weight(batch) + phase.outline_weight * outlines
    weight[:, :, 0] *= phase.first_frame_weight
    return weight


def edge_loss(reconstruction: torch.Tensor, batch: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted L1 between the horizontal and vertical pixel differences of two (B, C, T, H, W) clips: it
    asks for the drawn clip's one-pixel step across an edge, where pixel L1 is content with a ramp."""
    loss = reconstruction.new_zeros(())
    for axis in (3, 4):
        difference = torch.diff(reconstruction, dim=axis) - torch.diff(batch, dim=axis)
        loss = loss + (difference.abs() * weight.narrow(axis, 1, weight.shape[axis] - 1)).mean()
    return loss


def decoder_noise(latents: torch.Tensor, relative: float) -> torch.Tensor:
    """Noise for the decoder's input: ``LATENT_NOISE``, or with ``relative`` up to that many of the batch's
    per-channel standard deviations, a level drawn per clip."""
    if not relative:
        return LATENT_NOISE * torch.randn_like(latents)
    level = relative * torch.rand(latents.shape[0], 1, 1, 1, 1)
    return level * latents.std(dim=(0, 2, 3, 4), keepdim=True) * torch.randn_like(latents)


def train(
    out: Path, phases: tuple[Phase, ...] = PHASES, seed: int = DEFAULT_SEED, first_phase: int = 0
) -> Any:
    """Run ``phases`` in turn (from ``first_phase``, resuming from ``out/vae``); saves and returns the VAE."""
    from diffusers import AutoencoderKLWan

    out.mkdir(parents=True, exist_ok=True)
    vae = build_vae(seed) if first_phase == 0 else AutoencoderKLWan.from_pretrained(out / "vae")
    offset = sum(phase.steps for phase in phases[:first_phase])
    for index in range(first_phase, len(phases)):
        vae = _train_phase(vae, phases[index], out, seed + index, offset, append=index > 0)
        vae.save_pretrained(out / "vae")
        offset += phases[index].steps
    return vae.eval()


def _train_phase(vae: Any, phase: Phase, out: Path, seed: int, offset: int, append: bool) -> Any:
    rng = random.Random(seed)
    vae.train()
    if phase.decoder_only:
        trained = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    else:
        trained = list(vae.parameters())
    vae.requires_grad_(False)
    for parameter in trained:
        parameter.requires_grad_(True)
    optimiser = torch.optim.AdamW(trained, lr=phase.lr, weight_decay=0.0, betas=(0.9, 0.99), foreach=True)
    schedule = warmup_cosine(optimiser, phase.steps)
    torch.manual_seed(seed)
    log = LossLog(out / "vae_loss.jsonl", "vae", phase.steps, offset=offset, append=append)
    for step in range(phase.steps):
        window = window_at(phase, step)
        windows = [
            training_window(
                rng, window, phase.crop, phase.square_radii, phase.square_share, bool(phase.outline_weight)
            )
            for _ in range(phase.batch_size)
        ]
        batch = torch.stack([to_tensor(frames) for frames, _ in windows])
        with torch.set_grad_enabled(not phase.decoder_only):
            posterior = vae.encode(batch).latent_dist
        # The posterior's mean plus a little noise, not a posterior sample: sampling at the untrained
        # posterior's width drowns the latents in noise, and we encode with the mean anyway.
        latents = posterior.mode()
        reconstruction = vae.decode(latents + decoder_noise(latents, phase.relative_noise)).sample
        outlines = torch.stack([torch.from_numpy(outline) for _, outline in windows]).unsqueeze(1)
        weight = pixel_weight(phase, batch, outlines)
        l1 = ((reconstruction - batch).abs() * weight).mean()
        loss = l1 + 1e-6 * posterior.kl().mean()
        if phase.edge_weight:
            loss = loss + phase.edge_weight * edge_loss(reconstruction, batch, weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        optimiser.step()
        schedule.step()
        log.add(step, l1.item())
        if (step + 1) % 250 == 0:  # a checkpoint to look at while it trains
            vae.save_pretrained(out / "vae")
    return vae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--first-phase", type=int, default=0, help="resume from OUT/vae at this phase")
    args = parser.parse_args()
    train(args.out, seed=args.seed, first_phase=args.first_phase)


if __name__ == "__main__":
    main()
