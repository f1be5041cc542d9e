"""Wan2.1-T2V-1.3B on one accelerator with random weights (no download): the numbers issue 17 asks for, from
one run of at most 8 minutes.

    python bench/gpu_wan13b.py                          # one CUDA GPU: 832x480, 81 frames, bf16
    python bench/gpu_wan13b.py --device npu             # one Ascend NPU (bench/npu_wan13b.py is this)
    python bench/gpu_wan13b.py --tiny --device cpu      # the same sections on tiny configs, here, in seconds

The full-size transformer config of Wan2.1-T2V-1.3B (diffusers' ``transformer/config.json`` of
Wan-AI/Wan2.1-T2V-1.3B-Diffusers: 30 layers, 12 heads x 128, ffn 8960, text dim 4096, 16 channels in and out,
patch 1x2x2) with random weights, fed random latents (1, 16, 21, 60, 104) (32,760 tokens) and 512 random text
tokens; the Wan VAE in its default (Wan2.1) config. Sections, in this order:

1. ``attention``: seconds per transformer pass and peak memory for each diffusers attention backend that
   passes diffusers' own availability check on the device; the fastest is used from then on.
2. ``compile``: eager against the transformer's repeated blocks compiled (diffusers' regional
   ``compile_repeated_blocks``): compile time (the first pass) and seconds per pass after warm-up.
3. ``hooks``: seconds per pass with wanserve's block-cache hooks installed but off against none.
4. ``caches``: the per-pass cost of the DiTCache ``fast`` preset, the adaptive cache and EasyCache (passes
   that compute and passes that skip, through ``worker.cache``), then 50-step totals of the denoising loop
   (``WanEngine.denoise``: 2 passes a step with CFG, the scheduler included) uncached and with EasyCache.
5. ``vae``: the transformer freed, then the VAE decoding the 21 latent frames to 81 frames of 832x480 in
   float32, in bfloat16 and float32 tiled: time and peak memory.

Every section is timed on the device's own clock (CUDA or NPU events, synchronize), wrapped so that its
failure is recorded and the next section still runs, and followed by an atomic rewrite of the JSON report.
No section (nor any long step inside one) starts once the deadline has passed: it is recorded as skipped.
Random weights: a pass costs what a trained model's costs; cache decisions (how many passes skip) do not
match a trained model's, so the per-pass costs, not the skip counts, are the numbers to read.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.core.cache import resolve_cache
from service.core.model_profile import ModelProfile
from worker import device as devices
from worker.tiny_model import SCHEDULER_CONFIG, TEXT_ENCODER_CONFIG, TRANSFORMER_CONFIG, VAE_CONFIG

WAN_13B: dict[str, Any] = dict(
    patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True,
    qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
)  # fmt: skip
"""Wan-AI/Wan2.1-T2V-1.3B-Diffusers' transformer/config.json."""

# Backends tried per device kind, fastest-first guesses. Hub kernels (``*_hub``) are left out: they download.
# ``_native_math`` materialises the 32,760 x 32,760 score matrix per head: CPU only (tiny), or by --backends.
BACKENDS: dict[str, tuple[str, ...]] = {
    "cuda": ("native", "_native_cudnn", "_native_flash", "_native_efficient", "flash", "_flash_3", "sage",
             "xformers"),
    "npu": ("native", "_native_npu"),
    "cpu": ("native", "_native_math"),
}  # fmt: skip
REPORT_NAMES = {"cuda": "gpu_wan13b.json", "npu": "npu_wan13b.json", "cpu": "cpu_wan13b.json"}
SECTIONS = ("attention", "compile", "hooks", "caches", "vae")
CACHE_PASS_METHODS = (("dit_fast", "fast"), ("adaptive", "adaptive"), ("easycache", "easycache"))
"""(label, the request's ``cache`` value, resolved by ``resolve_cache``): section 4's per-pass costs."""
TOTAL_CACHES = ("none", "easycache", "fast")
"""Section 4's 50-step totals: uncached, the best cache (EasyCache's default preset, docs/BENCHMARKS.md),
then, if time is left, DiTCache ``fast``, whose static schedule skips on random weights what it skips on
trained ones (EasyCache decides from the model's outputs: random weights do not skip as trained ones do)."""
COMPILE_ESTIMATE_S = 90.0
"""A full-size regional compile, for the decision whether it still fits before the deadline (0 on --tiny)."""


@dataclass
class Deadline:
    """When no new section or long step may start; ``now`` is injectable for tests."""

    seconds: float
    now: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.started < 0:
            self.started = self.now()

    @property
    def at(self) -> float:
        return self.started + self.seconds

    def elapsed(self) -> float:
        return self.now() - self.started

    def left(self, reserve: float = 0.0) -> float:
        """Seconds until the deadline, less ``reserve`` kept for later sections."""
        return self.at - reserve - self.now()

    def fits(self, estimate_s: float, reserve: float = 0.0) -> bool:
        return self.left(reserve) > estimate_s


class Timer:
    """Times on the device's own clock: CUDA or NPU events around each call, ``perf_counter`` on the CPU."""

    def __init__(self, device: torch.device) -> None:
        self.module: Any = None if device.type == "cpu" else getattr(torch, device.type)

    def synchronize(self) -> None:
        if self.module is not None:
            self.module.synchronize()

    def calls(self, fn: Callable[[], Any], repeats: int) -> list[float]:
        """Seconds of each of ``repeats`` calls of ``fn``, synchronised once at the end."""
        if self.module is None:
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
            return times
        pairs = []
        for _ in range(repeats):
            start, end = self.module.Event(enable_timing=True), self.module.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            pairs.append((start, end))
        self.synchronize()
        return [start.elapsed_time(end) / 1000 for start, end in pairs]

    @contextmanager
    def wall(self, into: dict[str, Any], key: str) -> Iterator[None]:
        """Wall seconds of the block, the device drained before and after (for calls that sync inside)."""
        self.synchronize()
        started = time.perf_counter()
        try:
            yield
        finally:
            self.synchronize()
            into[key] = round(time.perf_counter() - started, 4)


class Report:
    """The JSON report, rewritten atomically (temporary file, then rename) on every :meth:`save`."""

    def __init__(self, path: Path, meta: dict[str, Any]) -> None:
        self.path = path
        self.data: dict[str, Any] = {"meta": meta, "sections": {}, "finished": False}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + ".partial")
        partial.write_text(json.dumps(self.data, indent=2, default=str))
        os.replace(partial, self.path)


SectionFn = Callable[[Any, dict[str, Any]], None]


def run_sections(
    sections: Sequence[tuple[str, SectionFn]], bench: Any, report: Report, deadline: Deadline
) -> None:
    """Run each section in turn: skipped once the deadline has passed, its exception recorded (what it had
    put in its result before failing is kept), the report saved after each."""
    for name, run in sections:
        entry: dict[str, Any] = {"status": "skipped", "result": {}}
        report.data["sections"][name] = entry
        if deadline.left() <= 0:
            entry["reason"] = f"deadline of {deadline.seconds:g} s passed (at {deadline.elapsed():.1f} s)"
            report.save()
            _say(f"[{name}] skipped: {entry['reason']}")
            continue
        _say(f"[{name}] started at {deadline.elapsed():.1f} s")
        started = time.perf_counter()
        entry["status"] = "running"  # what a killed run leaves on disk
        report.save()
        try:
            run(bench, entry["result"])
            entry["status"] = "ok"
        except Exception as exc:  # a section's failure must not lose the others (OOM included)
            entry["status"] = "error"
            entry["error"] = f"{type(exc).__name__}: {exc}"[:2000]
            entry["traceback"] = traceback.format_exc()[-4000:]
            _say(f"[{name}] failed: {entry['error'][:300]}")
            _free(bench)
        entry["elapsed_s"] = round(time.perf_counter() - started, 3)
        report.save()
    report.data["finished"] = True
    report.data["meta"]["total_s"] = round(deadline.elapsed(), 3)
    report.save()


@dataclass
class Bench:
    """What the sections share: the options, the device, the model (built on first use) and its inputs."""

    args: argparse.Namespace
    device: torch.device
    dtype: torch.dtype
    timer: Timer
    deadline: Deadline
    report: Report
    config: dict[str, Any]
    latent_shape: tuple[int, int, int, int, int]
    reserve_s: float
    """Seconds kept for the VAE section when deciding whether a long step in sections 1-4 still fits."""
    compile_estimate_s: float
    _transformer: Any = None
    inputs: dict[str, torch.Tensor] = field(default_factory=dict)
    best_backend: str | None = None
    per_pass_s: float | None = None
    """The latest eager seconds per pass (the best backend's), for estimating what still fits."""

    @property
    def transformer(self) -> Any:
        if self._transformer is None:
            self._transformer = self._build()
        return self._transformer

    def _build(self) -> Any:
        from diffusers import WanTransformer3DModel

        meta = self.report.data["meta"]
        with self.timer.wall(meta, "build_s"):
            torch.manual_seed(0)
            with torch.device(self.device):
                model: Any = WanTransformer3DModel(**self.config)
            model.eval()
            _cast_as_loaded(model, self.dtype)
        meta["params"] = sum(p.numel() for p in model.parameters())
        generator = torch.Generator(device="cpu").manual_seed(1)
        text = torch.randn(1, 512, self.config["text_dim"], generator=generator)
        self.inputs = {
            "hidden_states": torch.randn(self.latent_shape, generator=generator).to(self.device, self.dtype),
            "timestep": torch.tensor([500], device=self.device),
            "encoder_hidden_states": text.to(self.device, self.dtype),
        }
        return model

    def forget_model(self) -> None:
        self._transformer = None
        self.inputs = {}

    def one_pass(self, hidden_states: torch.Tensor | None = None) -> None:
        inputs = self.inputs if hidden_states is None else {**self.inputs, "hidden_states": hidden_states}
        with self.transformer.cache_context("cond"):
            self.transformer(**inputs, return_dict=False)

    def time_passes(self, warmup: int | None = None) -> dict[str, Any]:
        """Seconds per pass (median of ``--repeats`` after ``warmup``) and peak memory."""
        warmup = self.args.warmup if warmup is None else warmup
        devices.reset_peak_memory(self.device)
        for _ in range(warmup):
            self.one_pass()
        times = self.timer.calls(self.one_pass, self.args.repeats)
        return {
            "s_per_pass": round(statistics.median(times), 5),
            "times_s": [round(t, 5) for t in times],
            "peak_mb": round(devices.peak_memory_mb(self.device), 1),
        }

    def passes_fit(self, passes: float) -> bool:
        return self.deadline.fits(passes * (self.per_pass_s or 0.0), self.reserve_s)


# ---- sections ----


def attention_section(bench: Bench, result: dict[str, Any]) -> None:
    """Seconds per pass for every attention backend the device has; the fastest is kept for later sections."""
    transformer = bench.transformer
    names = bench.args.backends.split(",") if bench.args.backends else BACKENDS[bench.device.type]
    for name in names:
        if not bench.passes_fit(bench.args.warmup + bench.args.repeats):
            result[name] = {"status": "skipped", "reason": "deadline"}
            continue
        try:
            transformer.set_attention_backend(name)  # diffusers' availability check raises here
        except Exception as exc:
            result[name] = {"status": "unavailable", "error": f"{type(exc).__name__}: {exc}"[:500]}
            continue
        try:
            result[name] = {"status": "ok", **bench.time_passes()}
            _say(f"  {name}: {result[name]['s_per_pass']:.4f} s/pass, {result[name]['peak_mb']:.0f} MiB")
        except Exception as exc:
            result[name] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
            _free(bench)
        bench.report.save()
    timed = {name: entry["s_per_pass"] for name, entry in result.items() if entry.get("status") == "ok"}
    if not timed:
        transformer.reset_attention_backend()
        raise RuntimeError("no attention backend ran")
    bench.best_backend = min(timed, key=lambda name: timed[name])
    bench.per_pass_s = timed[bench.best_backend]
    transformer.set_attention_backend(bench.best_backend)
    result["best"] = bench.best_backend


def compile_section(bench: Bench, result: dict[str, Any]) -> None:
    """Eager against regionally compiled blocks; the blocks are eager again afterwards."""
    transformer = bench.transformer
    result["backend"] = bench.best_backend
    result["eager"] = bench.time_passes()
    bench.per_pass_s = result["eager"]["s_per_pass"]
    bench.report.save()
    if not bench.deadline.fits(bench.compile_estimate_s, bench.reserve_s):
        result["compiled"] = {"status": "skipped", "reason": "deadline"}
        return
    options: dict[str, Any] = {"fullgraph": True, "backend": bench.args.compile_backend}
    if bench.args.compile_mode:
        options["mode"] = bench.args.compile_mode
    try:
        result["compiled"] = _compiled_passes(bench, options)
    except Exception as exc:  # a graph break under fullgraph: say so, then compile what dynamo can
        result["fullgraph_error"] = f"{type(exc).__name__}: {exc}"[:1000]
        _uncompile(transformer)
        options["fullgraph"] = False
        bench.report.save()
        result["compiled"] = _compiled_passes(bench, options)
    finally:
        _uncompile(transformer)
    result["speedup"] = round(result["eager"]["s_per_pass"] / result["compiled"]["s_per_pass"], 3)


def _compiled_passes(bench: Bench, options: dict[str, Any]) -> dict[str, Any]:
    torch._dynamo.reset()
    bench.transformer.compile_repeated_blocks(**options)
    timings: dict[str, Any] = {"options": dict(options)}
    with bench.timer.wall(timings, "compile_s"):  # the first pass compiles
        bench.one_pass()
    timings.update(bench.time_passes())
    return timings


def _uncompile(transformer: Any) -> None:
    for module in transformer.modules():
        if getattr(module, "_compiled_call_impl", None) is not None:
            module._compiled_call_impl = None
    torch._dynamo.reset()


def hooks_section(bench: Bench, result: dict[str, Any]) -> None:
    """The block-cache hooks, installed and off, against no hooks: bare, hooked, bare again (A-B-A)."""
    from worker.cache import has_block_cache, install_block_cache, remove_block_cache, set_block_cache

    transformer = bench.transformer
    if has_block_cache(transformer):
        remove_block_cache(transformer)
    result["bare"] = bench.time_passes()
    install_block_cache(transformer)
    set_block_cache(transformer, None)
    result["hooks_off"] = bench.time_passes()
    remove_block_cache(transformer)
    result["bare_again"] = bench.time_passes(warmup=0)
    install_block_cache(transformer)  # section 4 runs with them
    set_block_cache(transformer, None)
    bare = statistics.median(result["bare"]["times_s"] + result["bare_again"]["times_s"])
    hooked = result["hooks_off"]["s_per_pass"]
    result["overhead_s"] = round(hooked - bare, 5)
    result["overhead_pct"] = round(100 * (hooked - bare) / bare, 2)
    bench.per_pass_s = hooked


def caches_section(bench: Bench, result: dict[str, Any]) -> None:
    """Per-pass cost of each cache (its computing and its skipping passes), then N-step totals."""
    from worker.cache import has_block_cache, install_block_cache

    transformer = bench.transformer
    if not has_block_cache(transformer):
        install_block_cache(transformer)
    per_pass: dict[str, Any] = {}
    result["per_pass"] = per_pass
    passes = bench.args.cache_passes
    for label, value in CACHE_PASS_METHODS:
        if not bench.passes_fit(passes):
            per_pass[label] = {"status": "skipped", "reason": "deadline"}
            continue
        try:
            per_pass[label] = {"status": "ok", **_cache_passes(bench, value, passes)}
        except Exception as exc:
            per_pass[label] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
            _free(bench)
        bench.report.save()
    totals: dict[str, Any] = {}
    result["totals"] = totals
    engine = _engine(bench)
    steps = bench.args.steps
    for cache in TOTAL_CACHES:
        # Uncached: every pass; a cache: at least the share of passes it cannot skip, say half.
        estimate = 2 * steps * (bench.per_pass_s or 0.0) * (1.0 if cache == "none" else 0.5)
        if not bench.deadline.fits(estimate, bench.reserve_s):
            totals[cache] = {"status": "skipped", "reason": "deadline", "estimate_s": round(estimate, 1)}
            continue
        entry: dict[str, Any] = {"status": "running"}
        totals[cache] = entry
        try:
            _denoise_total(bench, engine, cache, steps, entry)
            entry["status"] = "ok"
        except Exception as exc:  # what it measured before failing (steps done, time) stays
            entry.update(status="error", error=f"{type(exc).__name__}: {exc}"[:500])
            _free(bench)
        bench.report.save()
    done = [entry for entry in totals.values() if entry.get("status") == "ok"]
    if totals.get("none", {}).get("status") == "ok":
        for entry in done:
            entry["speedup"] = round(totals["none"]["total_s"] / entry["total_s"], 3)


def _cache_passes(bench: Bench, value: str, passes: int) -> dict[str, Any]:
    """``passes`` passes of one branch with ``value``'s cache, sized by ``resolve_cache`` to that many steps;
    each pass timed, then split by whether it skipped (``block_cache_trace``)."""
    from worker.cache import block_cache_stats, block_cache_trace, set_block_cache

    transformer = bench.transformer
    spec = resolve_cache(value, num_steps=passes, num_layers=len(transformer.blocks))
    set_block_cache(transformer, spec.config, num_steps=passes)
    # Latents that drift a little each pass, as in denoising: EasyCache measures its rate from input changes.
    base = bench.inputs["hidden_states"]
    drift = torch.randn(base.shape, generator=torch.Generator().manual_seed(5)).to(base) * 0.002
    latents = iter([base + drift * step for step in range(passes)])
    devices.reset_peak_memory(bench.device)
    try:
        times = bench.timer.calls(lambda: bench.one_pass(next(latents)), passes)
        trace = block_cache_trace(transformer)
        stats = block_cache_stats(transformer)
    finally:
        set_block_cache(transformer, None)
    computed = [t for t, entry in zip(times, trace, strict=True) if not entry["skipped"]]
    skipped = [t for t, entry in zip(times, trace, strict=True) if entry["skipped"]]
    return {
        "config": spec.to_json(),
        "compute_pass_s": round(statistics.median(computed), 5) if computed else None,
        "skip_pass_s": round(statistics.median(skipped), 5) if skipped else None,
        "passes_computed": len(computed),
        "passes_skipped": len(skipped),
        "blocks_skipped": stats["blocks_skipped"],
        "times_s": [round(t, 5) for t in times],
        "peak_mb": round(devices.peak_memory_mb(bench.device), 1),
    }


def _engine(bench: Bench) -> Any:
    """The project's engine around the benchmark's transformer: a tiny text encoder of the transformer's text
    width (its cost is not what is measured), the Wan scheduler, no VAE (the latents are the output)."""
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import ByT5Tokenizer, UMT5Config, UMT5EncoderModel

    from worker.engine import WanEngine

    torch.manual_seed(2)
    text_config = UMT5Config(**{**TEXT_ENCODER_CONFIG, "d_model": bench.config["text_dim"], "num_layers": 1})
    text_encoder: Any = UMT5EncoderModel(text_config)
    text_encoder.to(bench.device, bench.dtype).eval()
    pipe: Any = WanPipeline(
        tokenizer=ByT5Tokenizer(),
        text_encoder=text_encoder,
        vae=None,
        scheduler=UniPCMultistepScheduler(**SCHEDULER_CONFIG),
        transformer=bench.transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    layers = len(bench.transformer.blocks)
    profile = ModelProfile(
        name="wan2.1-t2v-1.3b-random",
        sizes=(f"{bench.args.width}x{bench.args.height}",),
        default_size=f"{bench.args.width}x{bench.args.height}",
        num_attention_heads=bench.config["num_attention_heads"],
        num_layers=layers,
    )
    return WanEngine(pipe, bench.device, bench.dtype, profile)


def _denoise_total(bench: Bench, engine: Any, cache: str, steps: int, into: dict[str, Any]) -> None:
    """One request's denoising through ``WanEngine.denoise`` (text encoding, ``steps`` steps of 2 passes,
    the scheduler), into ``into``; stopped by the engine at a step boundary if the deadline passes."""
    from service.core.schemas import GenerationParams
    from worker.engine import JobHooks

    args = bench.args
    params = GenerationParams(
        prompt="a red square moving left",
        negative_prompt="",
        width=args.width,
        height=args.height,
        num_frames=args.frames,
        fps=16,
        num_inference_steps=steps,
        guidance_scale=5.0,
        seed=0,
        cache=resolve_cache(cache, num_steps=steps, num_layers=len(bench.transformer.blocks)),
    )
    done: dict[str, int] = {"steps": 0}

    def on_step(step: int, total: int) -> None:
        done["steps"] = step

    hooks = JobHooks(on_step=on_step, deadline=bench.deadline.at - bench.reserve_s)
    into["steps"] = steps
    try:
        with bench.timer.wall(into, "total_s"):
            denoised = engine.denoise(params, hooks)
    finally:
        into["steps_done"] = done["steps"]
        into["s_per_step"] = round(into["total_s"] / max(done["steps"], 1), 5)
    into["engine_timings"] = denoised.timings
    into["passes"] = denoised.cache["passes"]
    into["passes_skipped"] = denoised.cache["passes_skipped"]
    into["peak_mb"] = round(devices.peak_memory_mb(bench.device), 1)


def vae_section(bench: Bench, result: dict[str, Any]) -> None:
    """The transformer freed, then the VAE's decode of the latents in float32, bfloat16 and float32 tiled."""
    from diffusers import AutoencoderKLWan

    bench.forget_model()
    _free(bench)
    result["allocated_mb_after_free"] = _allocated_mb(bench.device)
    torch.manual_seed(3)
    vae_config = VAE_CONFIG if bench.args.tiny else {}
    with torch.device(bench.device):
        vae: Any = AutoencoderKLWan(**vae_config)
    vae.float().eval()
    latents = torch.randn(bench.latent_shape, generator=torch.Generator().manual_seed(4)).to(bench.device)
    # --tiny: small tiles, so that the tiled code path runs at 64x64 too.
    tiles = {"tile_sample_min_height": 48, "tile_sample_min_width": 48} if bench.args.tiny else {}
    tiles |= {"tile_sample_stride_height": 32, "tile_sample_stride_width": 32} if bench.args.tiny else {}
    variants = (("float32", torch.float32, False), ("float32_tiled", torch.float32, True),
                ("bfloat16", torch.bfloat16, False))  # fmt: skip
    for label, dtype, tiled in variants:
        if not bench.deadline.fits(0.0):
            result[label] = {"status": "skipped", "reason": "deadline"}
            continue
        try:
            vae.to(dtype)
            if tiled:
                vae.enable_tiling(**tiles)
            else:
                vae.disable_tiling()
            vae.decode(latents[:, :, :1, :8, :8].to(dtype), return_dict=False)  # warm-up: kernels, allocator
            devices.reset_peak_memory(bench.device)
            entry: dict[str, Any] = {"status": "ok"}
            with bench.timer.wall(entry, "s"):
                video = vae.decode(latents.to(dtype), return_dict=False)[0]
            entry["frames"], entry["size"] = video.shape[2], f"{video.shape[4]}x{video.shape[3]}"
            entry["peak_mb"] = round(devices.peak_memory_mb(bench.device), 1)
            result[label] = entry
            del video
        except Exception as exc:
            result[label] = {"status": "error", "error": f"{type(exc).__name__}: {exc}"[:500]}
        _free(bench)
        bench.report.save()
    if not any(entry.get("status") == "ok" for entry in result.values() if isinstance(entry, dict)):
        raise RuntimeError("no VAE decode ran")


SECTION_FUNCTIONS: dict[str, SectionFn] = {
    "attention": attention_section,
    "compile": compile_section,
    "hooks": hooks_section,
    "caches": caches_section,
    "vae": vae_section,
}


# ---- helpers ----


def _cast_as_loaded(model: Any, dtype: torch.dtype) -> None:
    """``dtype``, but float32 for the parameters ``from_pretrained(torch_dtype=...)`` keeps in float32 (the
    model's ``_keep_in_fp32_modules``: norms, time embedder, modulation table), as the worker loads it."""
    keep = set(getattr(model, "_keep_in_fp32_modules", None) or ())
    for name, parameter in model.named_parameters():
        if not keep.intersection(name.split(".")):
            parameter.data = parameter.data.to(dtype)
    for name, buffer in model.named_buffers():
        if buffer.is_floating_point() and not keep.intersection(name.split(".")):
            buffer.data = buffer.data.to(dtype)


def _free(bench: Bench | None) -> None:
    gc.collect()
    module = bench.timer.module if bench is not None else None
    if module is not None:
        module.empty_cache()


def _allocated_mb(device: torch.device) -> float | None:
    if device.type == "cpu":
        return None
    return round(getattr(torch, device.type).memory_allocated(device) / 2**20, 1)


def _say(line: str) -> None:
    print(line, flush=True)


def _device_name(device: torch.device) -> str:
    if device.type == "cpu":
        return f"cpu ({platform.machine()})"
    return str(getattr(torch, device.type).get_device_name(device))


def _versions() -> dict[str, str | None]:
    import diffusers
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "torch_npu": getattr(sys.modules.get("torch_npu"), "__version__", None),
    }


def parse_args(argv: list[str] | None = None, *, default_device: str = "cuda") -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=default_device, choices=("cuda", "npu", "cpu"))
    parser.add_argument("--tiny", action="store_true", help="tiny configs, 64x64, 17 frames: a smoke test")
    parser.add_argument("--deadline-s", type=float, default=420.0, help="no section starts after this")
    parser.add_argument("--out", type=Path, help="the JSON report (default: $OUT/<device>_wan13b.json or ./)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help="a comma list, in the fixed order")
    parser.add_argument("--backends", help="attention backends to try (comma list; default per device)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed passes before each measurement")
    parser.add_argument("--steps", type=int, help="denoising steps of the totals (default 50; tiny 10)")
    parser.add_argument("--cache-passes", type=int, default=8, help="passes per cache in the per-pass costs")
    parser.add_argument("--vae-reserve-s", type=float, help="seconds kept for the VAE (default 75; tiny 0)")
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--compile-mode", help="torch.compile mode (default: torch's)")
    parser.add_argument("--dtype", choices=("bfloat16", "float32"), help="default: bfloat16, float32 on cpu")
    parser.add_argument("--threads", type=int, help="torch threads on the CPU (default: torch's; tiny 1)")
    parser.add_argument("--width", type=int)
    parser.add_argument("--height", type=int)
    parser.add_argument("--frames", type=int)
    args = parser.parse_args(argv)
    args.steps = args.steps or (10 if args.tiny else 50)
    # Tiny passes are milliseconds: on a shared CPU more threads wait on each other more than they gain.
    args.threads = args.threads or (1 if args.tiny and args.device == "cpu" else None)
    size = (64, 64, 17) if args.tiny else (832, 480, 81)
    args.width, args.height, args.frames = (
        given or default for given, default in zip((args.width, args.height, args.frames), size, strict=True)
    )
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    return args


def main(argv: list[str] | None = None, *, default_device: str = "cuda") -> dict[str, Any]:
    args = parse_args(argv, default_device=default_device)
    deadline = Deadline(args.deadline_s)
    if args.device == "npu" and not devices.npu_available():  # imports torch_npu: torch.npu exists after
        raise SystemExit("--device npu: torch_npu is not installed or sees no NPU")
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device (use --device cpu --tiny here)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device) if args.device == "cpu" else torch.device(args.device, 0)
    if device.type != "cpu":
        getattr(torch, device.type).set_device(device)
    default_dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    dtype = getattr(torch, args.dtype) if args.dtype else default_dtype
    config = TRANSFORMER_CONFIG if args.tiny else WAN_13B
    latent_shape = (1, 16, (args.frames - 1) // 4 + 1, args.height // 8, args.width // 8)
    out = args.out or Path(os.environ.get("OUT", ".")) / REPORT_NAMES[device.type]
    patch = config["patch_size"]
    meta = {
        "device": _device_name(device),
        "device_type": device.type,
        **_versions(),
        "dtype": str(dtype).removeprefix("torch."),
        "config": "tiny" if args.tiny else "wan2.1-t2v-1.3b",
        "size": f"{args.width}x{args.height}",
        "frames": args.frames,
        "latents": latent_shape,
        "tokens": latent_shape[2] * (latent_shape[3] // patch[1]) * (latent_shape[4] // patch[2]),
        "steps": args.steps,
        "repeats": args.repeats,
        "deadline_s": args.deadline_s,
        "peak_mb_means": "peak process RSS (never reset)" if device.type == "cpu" else "peak allocated",
    }
    report = Report(out, meta)
    report.save()
    bench = Bench(
        args=args,
        device=device,
        dtype=dtype,
        timer=Timer(device),
        deadline=deadline,
        report=report,
        config=config,
        latent_shape=latent_shape,
        reserve_s=args.vae_reserve_s if args.vae_reserve_s is not None else 0.0 if args.tiny else 75.0,
        compile_estimate_s=0.0 if args.tiny else COMPILE_ESTIMATE_S,
    )
    chosen = args.sections.split(",")
    sections = [(name, SECTION_FUNCTIONS[name]) for name in SECTIONS if name in chosen]
    with torch.inference_mode():
        run_sections(sections, bench, report, deadline)
    _say(summary(report.data))
    _say(f"report: {out}")
    return report.data


def summary(data: dict[str, Any]) -> str:
    """The report as a Markdown table: one row per measurement."""
    rows = [("section", "measure", "s", "peak MiB", "note")]
    for name, entry in data["sections"].items():
        result = entry.get("result", {})
        if entry["status"] != "ok":
            rows.append((name, "", "", "", _why(entry)))
        for measure, value in _measures(name, result):
            rows.append((name, measure, *value))
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    lines += ["| " + " | ".join(str(cell)[:120] for cell in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


def _measures(section: str, result: dict[str, Any]) -> Iterator[tuple[str, tuple[Any, Any, str]]]:
    def row(entry: dict[str, Any], key: str, note: str = "") -> tuple[Any, Any, str]:
        if entry.get("status", "ok") != "ok":
            return "", "", _why(entry)
        return entry.get(key, ""), entry.get("peak_mb", ""), note

    if section == "attention":
        for name, entry in result.items():
            if isinstance(entry, dict):
                best = " (best)" if name == result.get("best") else ""
                yield f"{name} s/pass", row(entry, "s_per_pass", best)
    elif section == "compile":
        if "eager" in result:
            yield "eager s/pass", row(result["eager"], "s_per_pass", f"backend {result.get('backend')}")
        if "compiled" in result:
            compiled = result["compiled"]
            note = f"compile {compiled.get('compile_s', '')} s; x{result.get('speedup', '')}"
            yield "compiled blocks s/pass", row(compiled, "s_per_pass", note)
    elif section == "hooks":
        for key in ("bare", "hooks_off", "bare_again"):
            if key in result:
                yield f"{key} s/pass", row(result[key], "s_per_pass")
        if "overhead_pct" in result:
            yield "hooks off overhead", (result["overhead_s"], "", f"{result['overhead_pct']} %")
    elif section == "caches":
        for label, entry in result.get("per_pass", {}).items():
            yield f"{label} compute pass", row(entry, "compute_pass_s")
            skipped = f"{entry.get('passes_skipped', '')} skipped"
            yield f"{label} skip pass", row(entry, "skip_pass_s", skipped)
        for label, entry in result.get("totals", {}).items():
            note = f"{entry.get('passes_skipped', '')}/{entry.get('passes', '')} passes skipped"
            note += f"; x{entry['speedup']}" if "speedup" in entry else ""
            yield f"{label} {entry.get('steps', '')}-step total", row(entry, "total_s", note)
    elif section == "vae":
        for label, entry in result.items():
            if isinstance(entry, dict):
                yield f"decode {label}", row(entry, "s", f"{entry.get('frames', '')} frames")


def _why(entry: dict[str, Any]) -> str:
    return f"{entry['status']}: {entry.get('error') or entry.get('reason', '')}"


if __name__ == "__main__":
    main()
