"""The resident Wan2.1 model and the denoising loop we own.

We run diffusers' components (text encoder, transformer, scheduler, VAE) in our own loop instead of
``WanPipeline.__call__`` so that every stage is timed, progress is reported every step, and a cancel
stops at a step boundary without decoding. The loop follows ``WanPipeline.__call__`` step for step; a
test checks that both give the same frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.errors import GenerationCancelled
from service.jobs import Stage
from service.model_profile import ModelProfile, profile_for_folder
from service.schemas import GenerationParams
from worker import device as devices

log = logging.getLogger("wanserve.worker")

MAX_SEQUENCE_LENGTH = 512

StageCallback = Callable[[Stage], None]
StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


@dataclass
class GenerationResult:
    frames: np.ndarray
    """Decoded video, uint8, shape (frames, height, width, 3)."""
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None


class WanEngine:
    """A Wan2.1 pipeline loaded once and kept resident; ``generate`` runs one request."""

    def __init__(self, pipe: Any, device: torch.device, dtype: torch.dtype, profile: ModelProfile) -> None:
        self.pipe = pipe
        self.device = device
        self.dtype = dtype
        self.profile = profile

    @classmethod
    def load(
        cls, folder: Path, *, device: str = "auto", dtype: str = "auto", model_name: str | None = None
    ) -> WanEngine:
        from diffusers import WanPipeline

        started = time.perf_counter()
        target = devices.select_device(device)
        torch_dtype = devices.select_dtype(dtype, target)
        pipe = WanPipeline.from_pretrained(str(folder), dtype=torch_dtype).to(target)
        pipe.set_progress_bar_config(disable=True)
        if torch_dtype != torch.float32:
            # The VAE decodes in float32 as in diffusers' Wan examples: bf16 decoding bands visibly.
            pipe.vae.to(torch.float32)
        engine = cls(pipe, target, torch_dtype, profile_for_folder(folder, model_name))
        log.info(
            "model %s loaded from %s on %s (%s) in %.1f s",
            engine.profile.name,
            folder,
            target,
            torch_dtype,
            time.perf_counter() - started,
        )
        return engine

    @torch.inference_mode()
    def generate(
        self,
        params: GenerationParams,
        *,
        on_stage: StageCallback | None = None,
        on_step: StepCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> GenerationResult:
        """Generate one video.

        Args:
            params: fully resolved request parameters.
            on_stage: called when a stage starts.
            on_step: called after each denoising step with (steps done, total steps).
            should_stop: polled before each step; True raises ``GenerationCancelled``.

        Returns:
            The decoded frames and the seconds spent in each stage.
        """
        pipe = self.pipe
        timings: dict[str, float] = {}
        devices.reset_peak_memory(self.device)

        def enter(stage: Stage) -> None:
            if on_stage is not None:
                on_stage(stage)

        enter(Stage.TEXT_ENCODE)
        with _timed(timings, "text_encode_s"):
            use_cfg = params.guidance_scale > 1.0
            prompt_embeds, negative_embeds = pipe.encode_prompt(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt,
                do_classifier_free_guidance=use_cfg,
                max_sequence_length=MAX_SEQUENCE_LENGTH,
                device=self.device,
            )
            prompt_embeds = prompt_embeds.to(self.dtype)
            if negative_embeds is not None:
                negative_embeds = negative_embeds.to(self.dtype)

        enter(Stage.DENOISE)
        with _timed(timings, "denoise_s"):
            latents = self._denoise(
                params, prompt_embeds, negative_embeds if use_cfg else None, on_step, should_stop
            )

        enter(Stage.VAE_DECODE)
        with _timed(timings, "vae_decode_s"):
            frames = self._decode(latents)
        return GenerationResult(frames, timings, devices.peak_memory_mb(self.device))

    def _denoise(
        self,
        params: GenerationParams,
        prompt_embeds: torch.Tensor,
        negative_embeds: torch.Tensor | None,
        on_step: StepCallback | None,
        should_stop: StopCheck | None,
    ) -> torch.Tensor:
        pipe, transformer, scheduler = self.pipe, self.pipe.transformer, self.pipe.scheduler
        generator = torch.Generator(device="cpu").manual_seed(params.seed)
        scheduler.set_timesteps(params.num_inference_steps, device=self.device)
        scheduler.set_begin_index(0)
        latents = pipe.prepare_latents(
            1,
            transformer.config.in_channels,
            params.height,
            params.width,
            params.num_frames,
            torch.float32,
            self.device,
            generator,
        )
        timesteps = scheduler.timesteps
        try:
            for i, t in enumerate(timesteps):
                if should_stop is not None and should_stop():
                    raise GenerationCancelled(f"Cancelled before denoising step {i + 1} of {len(timesteps)}.")
                model_input = latents.to(self.dtype)
                timestep = t.expand(latents.shape[0])
                context = {
                    "step_index": i,
                    "sigma": float(scheduler.sigmas[i]),
                    "num_inference_steps": len(timesteps),
                }
                with transformer.cache_context("cond", **context):
                    noise_pred = transformer(
                        hidden_states=model_input,
                        timestep=timestep,
                        encoder_hidden_states=prompt_embeds,
                        return_dict=False,
                    )[0]
                if negative_embeds is not None:
                    with transformer.cache_context("uncond", **context):
                        noise_uncond = transformer(
                            hidden_states=model_input,
                            timestep=timestep,
                            encoder_hidden_states=negative_embeds,
                            return_dict=False,
                        )[0]
                    noise_pred = noise_uncond + params.guidance_scale * (noise_pred - noise_uncond)
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                if on_step is not None:
                    on_step(i + 1, len(timesteps))
        finally:
            # Stateful hooks (feature caches) must not leak one request's state into the next.
            if hasattr(transformer, "_reset_stateful_cache"):
                transformer._reset_stateful_cache()
        return latents

    def _decode(self, latents: torch.Tensor) -> np.ndarray:
        vae = self.pipe.vae
        latents = latents.to(self.device, dtype=vae.dtype)
        z_dim = vae.config.z_dim
        mean = torch.tensor(vae.config.latents_mean).view(1, z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        frames = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        return to_uint8(frames)


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """Float frames in [0, 1] to uint8, rounding as imageio and PIL do."""
    return (np.clip(frames, 0.0, 1.0) * 255.0).round().astype(np.uint8)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 4)
