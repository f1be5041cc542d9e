"""Train the transformer by flow matching, as Wan is trained, on VAE latents of synthetic clips.

The clips are encoded once (the VAE is frozen by then) and the text encoder is frozen, so a step is the
transformer alone. Prompts are encoded exactly as the engine encodes them at inference, padded with
zeros to the profile's ``max_sequence_length`` (32: Wan2.1's 512 would make cross-attention over the
padding most of the cost), and one in ten is dropped to the empty prompt so that guidance works.
Training runs in phases (``PHASES``), each from the last one's EMA weights.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from service.core.model_profile import SHAPES_PROFILE
from shapes_model.data import COLOURS, DIRECTIONS, RADII, SHAPES, Clip, prompt_for, render, sample_clip
from shapes_model.model import SCHEDULER_CONFIG, build_transformer
from shapes_model.outline_weights import outline_weights
from shapes_model.train_vae import to_tensor
from shapes_model.training import LossLog, warmup_cosine

UNCOND_PROBABILITY = 0.1
LONG_EVERY = 3
"""Every third step trains on the long clips, so the transformer learns the latent frames that only a
33-frame video has rather than extrapolating its positions to them."""


def encode_prompts(pipe: Any, prompts: list[str]) -> torch.Tensor:
    """(len(prompts), 512, text_dim) embeddings, as ``WanEngine`` computes them."""
    with torch.no_grad():
        embeds, _ = pipe.encode_prompt(
            prompt=prompts,
            do_classifier_free_guidance=False,
            max_sequence_length=SHAPES_PROFILE.max_sequence_length,
        )
    return embeds


def encode_clips(vae: Any, clips: list[torch.Tensor], batch_size: int = 8) -> torch.Tensor:
    """Posterior means of (3, T, H, W) clips in [-1, 1], raw (not yet normalised)."""
    latents = []
    with torch.no_grad():
        for i in range(0, len(clips), batch_size):
            latents.append(vae.encode(torch.stack(clips[i : i + batch_size])).latent_dist.mode())
    return torch.cat(latents)


@dataclass
class ClipSet:
    """Clips of one length and their latents (raw from the VAE until ``normalise``)."""

    frames: int
    clips: list[Clip]
    latents: torch.Tensor


def make_dataset(
    vae: Any,
    clips_per_combination: int,
    seed: int,
    frames: int = 17,
    square_radii: tuple[float, float] = RADII,
) -> ClipSet:
    """``clips_per_combination`` clips of every colour x shape x direction, ``frames`` long, encoded."""
    rng = random.Random(seed)
    combos = list(itertools.product(COLOURS, SHAPES, DIRECTIONS))
    clips = [
        sample_clip(rng, *combo, square_radii=square_radii)
        for combo in combos
        for _ in range(clips_per_combination)
    ]
    latents = encode_clips(vae, [to_tensor(render(clip, frames)) for clip in clips])
    return ClipSet(frames, clips, latents)


def normalise(sets: Sequence[ClipSet]) -> tuple[list[float], list[float]]:
    """Scale every set's latents to zero mean and unit variance per channel, over all sets; returns the
    mean and std (the VAE's ``latents_mean`` / ``latents_std``)."""
    channels = torch.cat([s.latents.transpose(0, 1).flatten(1) for s in sets], dim=1)
    mean, std = channels.mean(dim=1), channels.std(dim=1)
    for s in sets:
        s.latents = (s.latents - mean.view(1, -1, 1, 1, 1)) / std.view(1, -1, 1, 1, 1)
    return mean.tolist(), std.tolist()


def shifted_sigmas(u: torch.Tensor, shift: float) -> torch.Tensor:
    """The flow-matching noise levels the scheduler's ``flow_shift`` visits, for uniform ``u``."""
    return shift * u / (1 + (shift - 1) * u)


@dataclass(frozen=True)
class Phase:
    steps: int
    lr: float
    batch_size: int
    sigma_shift: float
    """Noise levels are drawn as the scheduler's ``flow_shift`` spaces them, at this shift: 3 (Wan2.1's
    480p setting) puts most of them high, where layout and colour are decided; 1 draws every level alike."""
    level_logit: tuple[float, float] | None = None
    """If set, levels are drawn instead as sigmoid(N(mean, std)), SD3's logit-normal, at this (mean, std)."""
    outline_weight: float = 0.0
    """The loss weighs each latent 1 + this times its cell's ``outline_difference``."""
    first_frame_weight: float = 1.0
    """And the first latent frame (the first video frame, encoded alone) this many times more."""
    square_share: float | None = None
    """If set, this share of each batch is drawn from the square clips (else every clip alike: a third)."""


FROM_SCRATCH = Phase(steps=2400, lr=1e-3, batch_size=32, sigma_shift=float(SCHEDULER_CONFIG["flow_shift"]))
# Then every noise level alike, from the first phase's weights: the high-noise steps had decided colour and
# path, but a shape's outline is settled at lower noise, which shift 3 seldom drew (a quarter of draws below
# 0.5): triangles went from 57% to 84.5% of frames, videos holding their colour from 86.7% to 91.1%.
EVERY_LEVEL = Phase(steps=2400, lr=5e-4, batch_size=32, sigma_shift=1.0)
# Then the cells where a shape differs from its twin weighed up to 21 times, at levels around 0.62, where a
# noised square still turned round when asked for a square (bench/shape_steering.py): squares 10% -> 26% of
# frames, circles 88% -> 97%, triangles 84.5% -> 87%, videos holding their colour 91.1% -> 97.8%.
CORNERS = Phase(
    steps=2400, lr=5e-4, batch_size=32, sigma_shift=1.0, level_logit=(0.5, 1.0), outline_weight=20.0
)
# Then the same at half the rate, a cosine cycle of its own: the third phase's loss was still falling when
# its rate reached zero. The shipped chain ran this three times after the third phase (squares 26% -> 35%
# -> 47% -> 60% of frames, circles 96-98%, triangles 87% -> 91%) before the last cycle; at weight 50
# instead of 20 it drew squares in 61%. The recipe now runs only the last cycle, longer (below).
CORNERS_AGAIN = dataclasses.replace(CORNERS, lr=2.5e-4)
# The last cycle trains on the latents of the VAE whose encoder learnt the outlines too
# (train_vae.WHOLE_VAE_OUTLINES, run between the last two phases by the recipe): squares 69% -> 77%; on
# clips whose squares are at least 17 pixels wide (data.LARGE_SQUARE_RADII), 77% -> 84%; with half of
# each batch squares and the first latent frame weighed twice, 84% -> 85% (frame 0 42% -> 65%), circles
# and triangles 99% -> 98-99%; on 360 videos (six seeds a prompt) 78% -> 81%. Each alone (the first frame
# weighed 3 times): 84%.
# It runs for 4,800 steps straight after the third phase, in place of three 2,400-step cycles before a
# 2,400-step last one (16,800 steps in all, now 12,000; 21 minutes less at the fastest rates), on 360
# unseen videos: squares 88.4% -> 86.2% of frames (paired -2.2, standard error 1.1), circles 96%, triangles
# 98%, colour held by 93.3% -> 96.4% of videos; at 33 frames squares 97% -> 92%, colour 98.3% -> 100%.
# Straight after the third phase at 2,400 steps: squares 76%.
LAST_CYCLE = dataclasses.replace(CORNERS_AGAIN, steps=4800, square_share=0.5, first_frame_weight=2.0)
PHASES = (FROM_SCRATCH, EVERY_LEVEL, CORNERS, LAST_CYCLE)


def draw_levels(phase: Phase, count: int) -> torch.Tensor:
    if phase.level_logit is not None:
        mean, std = phase.level_logit
        return torch.sigmoid(mean + std * torch.randn(count))
    return shifted_sigmas(torch.rand(count), phase.sigma_shift)


def weighted_mse(prediction: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """MSE with each latent weighed by ``weight`` (broadcast over channels), normalised by its mean so that
    a phase's learning rate means the same with or without a weight."""
    return ((prediction - target) ** 2 * weight).mean() / weight.mean()


def loss_weight(phase: Phase, outline: torch.Tensor) -> torch.Tensor:
    """(B, 1, T', H', W'): each latent's weight in the loss, from its cell's ``outline_difference``."""
    weight = 1 + phase.outline_weight * outline
    weight[:, :, 0] *= phase.first_frame_weight
    return weight


def clips_by_shape(clips: Sequence[Clip]) -> tuple[list[int], list[int]]:
    """The indices of the square clips, and of the others."""
    squares = [i for i, clip in enumerate(clips) if clip.shape == "square"]
    return squares, [i for i, clip in enumerate(clips) if clip.shape != "square"]


def draw_rows(rng: random.Random, by_shape: tuple[list[int], list[int]], phase: Phase) -> list[int]:
    """A batch's clip indices: every clip alike, or ``phase.square_share`` of them squares."""
    squares, others = by_shape
    if phase.square_share is None:
        return [rng.randrange(len(squares) + len(others)) for _ in range(phase.batch_size)]
    share = phase.square_share
    return [rng.choice(squares if rng.random() < share else others) for _ in range(phase.batch_size)]


def phase_seed(seed: int, index: int) -> int:
    """Phase ``index``'s seed: the first keeps the recipe's (as the single-phase recipe did), a later one
    steps by 6 so that it draws none of the VAE phases' or the datasets' streams (seeds 1-5 for seed 1)."""
    return seed + 6 * index


def train(
    pipe: Any,
    sets: Sequence[ClipSet],
    out: Path,
    phase: Phase,
    seed: int,
    initial: Any = None,
    offset: int = 0,
    log_every: int = 25,
    checkpoint: Callable[[Any], None] | None = None,
    checkpoint_every: int = 400,
) -> Any:
    """Train ``initial`` (or a fresh transformer) on normalised latents: ``sets[0]`` (the default
    length), and every ``LONG_EVERY``-th step the longer ones in turn; returns its EMA copy."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    prompt_rng = random.Random(seed + 1)
    # Several phrasings per clip, encoded once.
    phrasings = [[[prompt_for(clip, prompt_rng) for _ in range(4)] for clip in s.clips] for s in sets]
    unique = sorted({p for per_set in phrasings for options in per_set for p in options} | {""})
    index = {p: i for i, p in enumerate(unique)}
    table = torch.cat([encode_prompts(pipe, unique[i : i + 64]) for i in range(0, len(unique), 64)])

    transformer = (build_transformer(seed) if initial is None else initial).train().requires_grad_(True)
    ema = copy.deepcopy(transformer).eval().requires_grad_(False)
    # foreach: the same arithmetic as the per-parameter loop (bit for bit), in fewer calls.
    optimiser = torch.optim.AdamW(
        transformer.parameters(), lr=phase.lr, weight_decay=0.01, betas=(0.9, 0.99), foreach=True
    )
    schedule = warmup_cosine(optimiser, phase.steps)
    log = LossLog(out / "transformer_loss.jsonl", "transformer", phase.steps, offset, offset > 0, log_every)
    outlines = (
        [outline_weights(s.clips, s.frames, s.latents.shape[2:]) for s in sets]
        if phase.outline_weight
        else []
    )
    by_shape = [clips_by_shape(s.clips) for s in sets]
    ema_parameters, parameters = list(ema.parameters()), list(transformer.parameters())
    for step in range(phase.steps):
        which = 0 if len(sets) == 1 or (step + 1) % LONG_EVERY else 1 + (step // LONG_EVERY) % (len(sets) - 1)
        rows = draw_rows(rng, by_shape[which], phase)
        x0 = sets[which].latents[rows]
        prompts = ["" if rng.random() < UNCOND_PROBABILITY else rng.choice(phrasings[which][r]) for r in rows]
        text = table[[index[p] for p in prompts]]
        sigma = draw_levels(phase, phase.batch_size).view(-1, 1, 1, 1, 1)
        noise = torch.randn_like(x0)
        noisy = (1 - sigma) * x0 + sigma * noise
        prediction = transformer(
            hidden_states=noisy,
            timestep=sigma.flatten() * SCHEDULER_CONFIG["num_train_timesteps"],
            encoder_hidden_states=text,
            return_dict=False,
        )[0]
        if phase.outline_weight or phase.first_frame_weight != 1:
            outline = outlines[which][rows] if phase.outline_weight else torch.zeros_like(x0[:, :1])
            loss = weighted_mse(prediction, noise - x0, loss_weight(phase, outline))
        else:  # the earlier phases' loss, kept as they ran it
            loss = torch.nn.functional.mse_loss(prediction, noise - x0)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_parameters, parameters, 1 - decay)
        log.add(step, loss.item())
        if checkpoint is not None and (step + 1) % checkpoint_every == 0:
            checkpoint(ema)
    return ema
