"""The resident Wan2.1 model and the denoising loop we own.

We run diffusers' components (text encoder, transformer, scheduler, VAE) in our own loop instead of
``WanPipeline.__call__`` so that every stage is timed, progress is reported every step, and a cancel
stops at a step boundary without decoding. The loop follows ``WanPipeline.__call__`` step for step; a
test checks that both give the same frames.

In a worker group only the leader runs the job's callbacks (progress, stage, cancel check), and only it
knows the job's deadline. Whatever the leader decides or suffers there becomes a verdict that every rank
takes at the same step boundary: a callback that raises is held until the next boundary, so the leader
never leaves the loop while the other ranks wait for it in a collective.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
import torch

from service.core.cache import CacheConfig, cache_report
from service.core.cache_calibration import Calibration
from service.core.errors import GenerationCancelled
from service.core.lifecycle import Stage
from service.core.model_profile import ModelProfile, calibration_for_folder, profile_for_folder
from service.core.schemas import GenerationParams
from service.core.settings import SettingsError
from worker import acceleration as accelerations
from worker import device as devices
from worker.acceleration import Acceleration
from worker.errors import GenerationAborted
from worker.parallel import ParallelLayout, ParallelRuntime, enable_ulysses
from worker.text_encoding import PromptEncoder
from worker.vae_decode import VideoDecoder

log = logging.getLogger("wanserve.worker")

StageCallback = Callable[[Stage], None]
StepCallback = Callable[[int, int], None]
StopCheck = Callable[[], bool]


@dataclass(frozen=True)
class JobHooks:
    """What a job gives the engine besides its parameters; in a worker group, only the leader's count."""

    on_stage: StageCallback | None = None
    """Called when a stage starts."""
    on_step: StepCallback | None = None
    """Called after each denoising step with (steps done, total steps)."""
    should_stop: StopCheck | None = None
    """Polled at each step boundary; True raises ``GenerationCancelled`` on every rank at that boundary."""
    deadline: float | None = None
    """A ``time.monotonic()`` time; once passed, the next step boundary raises ``GenerationAborted``
    (code ``job_timeout``) on every rank."""


NO_HOOKS = JobHooks()


@dataclass(frozen=True)
class Verdict:
    """The leader's decision at a step boundary, taken by every rank; None (no verdict) means go on."""

    action: Literal["cancel", "abort"]
    message: str
    code: str = "generation_failed"


class Engine(Protocol):
    """What a job needs of a model: ``WanEngine`` in one process, ``GroupLeader`` over a worker group."""

    profile: ModelProfile

    @property
    def layout(self) -> dict[str, Any]: ...

    def generate(self, params: GenerationParams, hooks: JobHooks = NO_HOOKS) -> GenerationResult: ...


@dataclass
class GenerationResult:
    frames: np.ndarray | None
    """Decoded video, float32 in [0, 1], shape (frames, height, width, 3); None on follower ranks."""
    timings: dict[str, float] = field(default_factory=dict)
    peak_memory_mb: float | None = None
    cache: dict[str, Any] | None = None
    """The feature cache this request ran with and its work (``service.core.cache.cache_report``): transformer
    passes and blocks computed vs skipped, over every branch of the group (None before denoising)."""


@dataclass
class Denoised:
    """What the ranks of a group compute together: the final latents and the request's report so far."""

    latents: torch.Tensor
    timings: dict[str, float]
    cache: dict[str, Any]


class _JobCallbacks:
    """The job's hooks, as the leader runs them: an error is held, not raised, and becomes the verdict
    of the next step boundary (with the deadline and the cancel check)."""

    def __init__(self, hooks: JobHooks) -> None:
        self.hooks = hooks
        self.error: Exception | None = None

    def stage(self, stage: Stage) -> None:
        if self.hooks.on_stage is not None:
            self._call(self.hooks.on_stage, stage)

    def step(self, done: int, total: int) -> None:
        if self.hooks.on_step is not None:
            self._call(self.hooks.on_step, done, total)

    def verdict(self, step: int, total: int) -> Verdict | None:
        """The decision before denoising step ``step + 1`` of ``total`` (``step == total``: after the end)."""
        where = f"before denoising step {step + 1} of {total}" if step < total else "before decoding"
        should_stop, deadline = self.hooks.should_stop, self.hooks.deadline
        if self.error is None and should_stop is not None:
            try:
                if should_stop():
                    return Verdict("cancel", f"Cancelled {where}.")
            except Exception as exc:
                self.error = exc
        if self.error is not None:
            failed = type(self.error).__name__
            return Verdict("abort", f"The leader's job callback failed ({failed}); stopped {where}.")
        if deadline is not None and time.monotonic() >= deadline:
            return Verdict("abort", f"The job's time limit passed; stopped {where}.", code="job_timeout")
        return None

    def _call(self, callback: Callable[..., None], *args: Any) -> None:
        if self.error is not None:
            return  # the job is already lost; its verdict comes at the next boundary
        try:
            callback(*args)
        except Exception as exc:  # JobTimeoutException included: RQ's backstop may ring in here
            log.warning("job callback failed; the job stops at the next step boundary: %r", exc)
            self.error = exc


class WanEngine:
    """A Wan2.1 pipeline loaded once and kept resident; ``generate`` runs one request.

    In a worker group every rank holds an engine and calls ``generate`` with the same parameters; the
    ranks split each step's work and only the leader decodes the video.
    """

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        dtype: torch.dtype,
        profile: ModelProfile,
        parallel: ParallelRuntime | None = None,
        calibration: Calibration | None = None,
        *,
        vae_tiling: str = "off",
        vae_parallel: bool = False,
        text_encoder_offload: bool = False,
        acceleration: Acceleration | None = None,
    ) -> None:
        self.pipe = pipe
        self.acceleration = acceleration or Acceleration()
        """The attention backend and compile mode the transformer runs with."""
        self.device = device
        self.dtype = dtype
        self.profile = profile
        self.parallel = parallel
        self.calibration = calibration or Calibration()
        """The model's cache calibration: MagCache's curves, TeaCache's polynomial."""
        self.prompts = PromptEncoder(
            pipe,
            device,
            dtype,
            profile.max_sequence_length,
            parallel=parallel,
            offload=text_encoder_offload,
        )
        self.video_decoder = VideoDecoder(pipe.vae, tiling=vae_tiling, parallel=parallel, split=vae_parallel)

    @classmethod
    def load(
        cls,
        folder: Path,
        *,
        device: str = "auto",
        dtype: str = "auto",
        model_name: str | None = None,
        parallel: ParallelRuntime | None = None,
        npu_ops: str = "auto",
        vae_tiling: str = "off",
        vae_parallel: bool = False,
        text_encoder_offload: bool = False,
        attention_backend: str = "auto",
        compile: str = "none",
        compile_backend: str = accelerations.DEFAULT_COMPILE_BACKEND,
    ) -> WanEngine:
        """Load the model in ``folder`` and make it ready to serve (compiled and warmed up if asked).

        ``attention_backend`` (``auto`` or a diffusers backend) and ``compile`` (``none``, ``blocks``,
        ``full``) are checked before the weights load; ``compile_backend`` is ``torch.compile``'s backend
        (tests pass ``aot_eager``).

        Raises:
            SettingsError: If the attention backend or compile mode cannot serve here (one line).
        """
        from diffusers import AutoencoderKLWan, WanPipeline

        from worker.npu_ops import apply_npu_ops

        started = time.perf_counter()
        profile = profile_for_folder(folder, model_name)
        if parallel is not None:
            parallel.layout.check_heads(profile.num_attention_heads)  # before minutes of weight loading
        target = parallel.device if parallel is not None else devices.select_device(device)
        torch_dtype = devices.select_dtype(dtype, target)
        ulysses = parallel.layout.ulysses if parallel is not None else 1
        acceleration = Acceleration(
            accelerations.resolve_attention_backend(
                attention_backend, target, torch_dtype, head_dim=_head_dim(folder), ulysses=ulysses
            ),
            accelerations.check_compile_mode(compile),
        )
        # The VAE is loaded and decodes in float32, as in Wan2.1's recipe and diffusers' Wan examples:
        # bf16 decoding bands visibly, and loading it in bf16 then casting up would round its weights.
        vae = AutoencoderKLWan.from_pretrained(str(folder), subfolder="vae", dtype=torch.float32)
        pipe = WanPipeline.from_pretrained(str(folder), vae=vae, dtype=torch_dtype).to(target)
        apply_npu_ops(pipe.transformer, target, npu_ops)  # fused RoPE/RMSNorm/attention on Ascend
        pipe.set_progress_bar_config(disable=True)
        accelerations.apply_attention_backend(pipe.transformer, acceleration.attention_backend)
        # Compiled before the cache hooks wrap the blocks, so their decisions stay outside the graphs.
        accelerations.compile_transformer(pipe.transformer, acceleration.compile, backend=compile_backend)
        _install_cache(pipe.transformer, parallel)  # before enable_parallelism: inside the split
        if parallel is not None and parallel.layout.ulysses > 1:
            enable_ulysses(pipe.transformer, parallel)
        engine = cls(
            pipe,
            target,
            torch_dtype,
            profile,
            parallel,
            calibration_for_folder(folder),
            vae_tiling=vae_tiling,
            vae_parallel=vae_parallel,
            text_encoder_offload=text_encoder_offload,
            acceleration=acceleration,
        )
        log.info(
            "model %s loaded from %s on %s (%s, attention %s) in %.1f s",
            profile.name,
            folder,
            target,
            torch_dtype,
            acceleration.attention_backend,
            time.perf_counter() - started,
        )
        if acceleration.compile != "none":
            try:
                engine.warm_up()
            except Exception as exc:  # a backend that cannot compile for this device, mostly
                log.exception("the compile warm-up failed")
                raise SettingsError(
                    f"WANSERVE_COMPILE={acceleration.compile!r}: the warm-up failed on {target.type} "
                    f"({type(exc).__name__}; the log has the traceback); try WANSERVE_COMPILE=none"
                ) from exc
        return engine

    def warm_up(self, steps: int = 2) -> float:
        """Denoise ``steps`` steps at the profile's default size and frames, with guidance, so that
        ``torch.compile`` compiles now rather than in the first job. Every rank of a group calls it (the
        passes are collective); no video is decoded.

        Returns:
            The seconds it took (logged).
        """
        width, height = (int(side) for side in self.profile.default_size.split("x"))
        params = GenerationParams(
            prompt="warm-up",
            negative_prompt="",
            width=width,
            height=height,
            num_frames=self.profile.default_frames,
            fps=self.profile.default_fps,
            num_inference_steps=steps,
            guidance_scale=self.profile.default_guidance_scale,
            seed=0,
        )
        started = time.perf_counter()
        self.denoise(params)
        elapsed = time.perf_counter() - started
        log.info(
            "warm-up (compile=%s, %d steps at %s, %d frames) took %.1f s",
            self.acceleration.compile,
            steps,
            params.size,
            params.num_frames,
            elapsed,
        )
        return elapsed

    @property
    def layout(self) -> dict[str, Any]:
        """The parallel layout, as reported in the video object."""
        layout = self.parallel.layout if self.parallel is not None else ParallelLayout()
        return {
            "ranks": layout.ranks,
            "ulysses": layout.ulysses,
            "cfg": layout.cfg,
            "device": self.device.type,
            "attention_backend": self.acceleration.attention_backend,
            "compile": self.acceleration.compile,
        }

    def generate(self, params: GenerationParams, hooks: JobHooks = NO_HOOKS) -> GenerationResult:
        """Generate one video: :meth:`denoise`, then :meth:`decode` on the leader.

        Args:
            params: fully resolved request parameters (identical on every rank of a group).
            hooks: the job's callbacks and deadline (the leader's; followers pass none).

        Returns:
            The decoded frames (None on followers), the seconds spent in each stage, and the cache report.

        Raises:
            GenerationCancelled: If ``hooks.should_stop`` said so.
            GenerationAborted: If a callback raised (chained as its cause) or the deadline passed.
        """
        denoised = self.denoise(params, hooks)
        if not self._leads and not self.video_decoder.together:
            peak = devices.peak_memory_mb(self.device)
            return GenerationResult(None, denoised.timings, peak, denoised.cache)
        return self.decode(denoised, on_stage=hooks.on_stage)

    @torch.inference_mode()
    def denoise(self, params: GenerationParams, hooks: JobHooks = NO_HOOKS) -> Denoised:
        """The part of :meth:`generate` that every rank of a group runs together, up to its last collective.

        A callback that raises does not raise here at once: the error stops every rank at the next step
        boundary (the boundary after the last step included) as ``GenerationAborted``, its cause chained
        on the leader. Arguments and errors are those of :meth:`generate`.
        """
        callbacks = _JobCallbacks(hooks)
        # A preset the API could not size (its profile lacked the layer count) is sized here.
        cache = params.cache.sized(params.num_inference_steps, len(self.pipe.transformer.blocks))
        timings: dict[str, float] = {}
        devices.reset_peak_memory(self.device)
        passes = self._passes(use_cfg=params.guidance_scale > 1.0)

        callbacks.stage(Stage.TEXT_ENCODE)
        with _timed(timings, "text_encode_s"):
            texts = {"cond": params.prompt, "uncond": params.negative_prompt}
            embeds = {name: self._encode(texts[name]) for name in passes}

        callbacks.stage(Stage.DENOISE)
        with _timed(timings, "denoise_s"):
            latents, cache_counts = self._denoise(params, embeds, callbacks, cache.config)
        counts = self._group_cache_counts(cache_counts, use_cfg=params.guidance_scale > 1.0)
        return Denoised(latents, timings, cache_report(cache, counts))

    @torch.inference_mode()
    def decode(self, denoised: Denoised, *, on_stage: StageCallback | None = None) -> GenerationResult:
        """The leader's part of :meth:`generate`, after the group's last collective: latents to frames.

        A failure here (out of memory in the VAE, say) is this job's failure alone: the other ranks have
        already moved on. With a split decode (``vae_parallel``) every rank calls this after the group
        agreed on the denoising: a rank that fails its tiles makes every rank raise the same
        ``VaeDecodeFailed``, still the job's failure alone; only a lost rank raises ``GroupFailed``.
        """
        timings = dict(denoised.timings)
        hook_error: Exception | None = None
        if on_stage is not None:
            try:
                on_stage(Stage.VAE_DECODE)
            except Exception as exc:
                if not self.video_decoder.together:
                    raise
                hook_error = exc  # the other ranks are on their way into the decode: join them first
        with _timed(timings, "vae_decode_s"):
            frames = self._decode(denoised.latents)
        if hook_error is not None:
            raise hook_error
        return GenerationResult(frames, timings, devices.peak_memory_mb(self.device), denoised.cache)

    @property
    def _leads(self) -> bool:
        """Whether this rank runs the job's callbacks and decodes: the leader, or a lone process."""
        return self.parallel is None or self.parallel.is_leader

    def _group_cache_counts(self, counts: dict[str, int], *, use_cfg: bool) -> dict[str, int]:
        """This request's cache counts over the group: Ulysses ranks share passes (counted once, and
        they must agree), CFG halves run different branches (summed)."""
        if self.parallel is None or self.parallel.layout.ranks == 1:
            return counts
        layout = self.parallel.layout
        reports = self.parallel.gather(counts)
        halves = [reports[c * layout.ulysses : (c + 1) * layout.ulysses] for c in range(layout.cfg)]
        if any(report != half[0] for half in halves for report in half):
            log.error("cache decisions differ between the ranks of a Ulysses group: %s", reports)
        if not use_cfg or layout.cfg == 1:
            return halves[0][0]  # without guidance both CFG halves run the same conditional pass
        return {key: sum(half[0][key] for half in halves) for key in counts}

    def _passes(self, *, use_cfg: bool) -> tuple[str, ...]:
        """The transformer passes this rank runs each step: "cond", and "uncond" for guidance.

        With CFG parallelism the two passes run on different ranks; without guidance every rank runs
        the conditional pass.
        """
        if not use_cfg:
            return ("cond",)
        if self.parallel is not None and self.parallel.layout.cfg == 2:
            return ("cond",) if self.parallel.cfg_rank == 0 else ("uncond",)
        return ("cond", "uncond")

    def _encode(self, text: str) -> torch.Tensor:
        return self.prompts.encode(text)

    def _denoise(
        self,
        params: GenerationParams,
        embeds: dict[str, torch.Tensor],
        callbacks: _JobCallbacks,
        cache_config: CacheConfig | None = None,
    ) -> tuple[torch.Tensor, dict[str, int]]:
        from worker.cache import block_cache_stats, set_block_cache

        pipe, transformer, scheduler = self.pipe, self.pipe.transformer, self.pipe.scheduler
        use_cfg = params.guidance_scale > 1.0
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
        set_block_cache(transformer, cache_config, num_steps=len(timesteps), calibration=self.calibration)
        try:
            for i, t in enumerate(timesteps):
                self._take_verdict(callbacks, i, len(timesteps))
                model_input = latents.to(self.dtype)
                timestep = t.expand(latents.shape[0])
                context = {
                    "step_index": i,
                    "sigma": float(scheduler.sigmas[i]),
                    "num_inference_steps": len(timesteps),
                }
                predictions = {}
                for name, embedding in embeds.items():
                    with transformer.cache_context(name, **context):
                        predictions[name] = transformer(
                            hidden_states=model_input,
                            timestep=timestep,
                            encoder_hidden_states=embedding,
                            return_dict=False,
                        )[0]
                noise_pred = (
                    self._guided(predictions, params.guidance_scale) if use_cfg else predictions["cond"]
                )
                latents = scheduler.step(noise_pred, t, latents, return_dict=False)[0]
                callbacks.step(i + 1, len(timesteps))
            # A last boundary: a callback that failed at the last step, or a deadline passed during it,
            # stops the job before the leader decodes.
            self._take_verdict(callbacks, len(timesteps), len(timesteps))
            counts = block_cache_stats(transformer)
        finally:
            # Stateful hooks (feature caches) must not leak one request's state into the next, and the
            # transformer is left uncached for anyone who calls it outside a request.
            if hasattr(transformer, "_reset_stateful_cache"):
                transformer._reset_stateful_cache()
            set_block_cache(transformer, None, clear_stats=False)
        return latents, counts

    def _guided(self, predictions: dict[str, torch.Tensor], guidance_scale: float) -> torch.Tensor:
        if len(predictions) == 1:  # CFG parallel: the other half ran on the paired rank
            assert self.parallel is not None
            cond, uncond = self.parallel.cfg_gather(next(iter(predictions.values())))
        else:
            cond, uncond = predictions["cond"], predictions["uncond"]
        return uncond + guidance_scale * (cond - uncond)

    def _take_verdict(self, callbacks: _JobCallbacks, step: int, total: int) -> None:
        """Every rank takes the leader's verdict at this step boundary: go on, cancel or abort."""
        verdict = callbacks.verdict(step, total) if self._leads else None
        if self.parallel is not None:
            verdict = self.parallel.broadcast_decision(verdict)
        if verdict is None:
            return
        if verdict.action == "cancel":
            raise GenerationCancelled(verdict.message)
        raise GenerationAborted(verdict.message, verdict.code) from callbacks.error

    def _decode(self, latents: torch.Tensor) -> np.ndarray | None:
        """The frames (None on a follower that joined a split decode)."""
        video = self.video_decoder.decode(latents)
        if video is None:
            return None
        frames: np.ndarray = self.pipe.video_processor.postprocess_video(video, output_type="np")[0]
        return frames.astype(np.float32)


def _head_dim(folder: Path) -> int:
    """The transformer's attention head size, from its config (before the weights load); Wan's 128 if the
    config does not say."""
    config = folder / "transformer" / "config.json"
    if not config.is_file():
        return 128
    return int(json.loads(config.read_text()).get("attention_head_dim", 128))


def _install_cache(transformer: Any, parallel: ParallelRuntime | None) -> None:
    """Install the per-request feature cache (off until a request sets it); the adaptive cache's
    decision is all-reduced over the Ulysses group, EasyCache's broadcast over the CFG pair."""
    from worker.cache import install_block_cache

    group = cfg_group = None
    if parallel is not None and parallel.layout.ulysses > 1:
        group = parallel.mesh.get_group("ulysses")
    if parallel is not None and parallel.layout.cfg > 1:
        cfg_group = parallel.mesh.get_group("cfg")
    install_block_cache(transformer, process_group=group, cfg_group=cfg_group)


@contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = round(time.perf_counter() - started, 4)
