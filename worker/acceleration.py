"""The transformer's attention backend and its ``torch.compile``: which to use here, and applying them so
that the block cache's per-request hooks never cause a recompile.

Attention (``WANSERVE_ATTENTION_BACKEND``): ``auto`` or one of diffusers' attention backends
(``diffusers.models.attention_dispatch.AttentionBackendName``). A backend is available when its package
imports (diffusers' own requirement check), the device is of the kind its kernels run on, and diffusers'
constraints for it (dtype, compute capability, head size) hold for this model in the serving dtype. Under
Ulysses only the backends diffusers registers as context-parallel are allowed. ``auto`` picks:

- CUDA, bf16/fp16: on Hopper and newer (sm90+) ``_native_cudnn`` (PyTorch's cuDNN SDPA: PyTorch measured
  it ahead of FlashAttention-2 on H100, and it ships with torch), then ``flash`` (flash-attn) when it
  imports, then ``_native_flash`` (PyTorch's bundled FlashAttention-2); on Ampere/Ada ``flash`` first,
  then ``_native_flash``, then ``_native_cudnn``. All three support context parallelism.
- Ascend, bf16/fp16: ``_native_npu`` (``torch_npu.npu_fusion_attention``; ``worker.npu_ops`` routes it
  through its own fused processor with full-length token bounds).
- otherwise (the CPU, float32): ``native`` (``scaled_dot_product_attention``).

Compile (``WANSERVE_COMPILE``): ``none``; ``blocks``, diffusers' regional compilation (the classes in the
transformer's ``_repeated_blocks``) done one level lower: each block's own ``forward`` is compiled *before*
the cache hooks wrap it, so every skip decision stays in Python outside the compiled region and one
compiled graph serves every block, cache and step count. (``compile_repeated_blocks`` compiles the module's
whole call, hooks included: dynamo then guards on the hook's state and recompiles per request until it
gives up at its recompile limit.) ``full`` also compiles the condition embedder's forward and the
transformer's own forward, where the hooked submodules are graph breaks: the code between them (patch
embedding, RoPE, output head) is compiled too, the hooks still run in Python.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, cast

import torch

from service.core.settings import SettingsError

log = logging.getLogger("wanserve.worker")

AUTO = "auto"
COMPILE_MODES = ("none", "blocks", "full")
DEFAULT_COMPILE_BACKEND = "inductor"

# The backends whose kernels run on any device (``native`` is SDPA, which dispatches per device;
# ``_native_flash`` is SDPA's flash kernel, which PyTorch also has for the CPU), and those of one kind.
_ANY_DEVICE = frozenset({"native", "_native_math", "_native_flash", "flex"})
_DEVICE_ONLY = {"_native_npu": "npu", "_native_xla": "xla"}
"""Every other backend runs CUDA kernels (flash-attn, SageAttention, xformers, cuDNN, Hub kernels)."""
_DEVICE_WORDS = {"cuda": "a CUDA device", "npu": "an Ascend NPU", "xla": "an XLA device"}
_HALF = (torch.bfloat16, torch.float16)


@dataclass(frozen=True)
class Acceleration:
    """What the transformer runs with, as reported in the worker's layout."""

    attention_backend: str = "native"
    compile: str = "none"


def attention_backend_names() -> list[str]:
    """Every attention backend diffusers knows, sorted."""
    from diffusers.models.attention_dispatch import AttentionBackendName

    return sorted(member.value for member in AttentionBackendName)


def unavailable_reason(
    name: str, device: torch.device, dtype: torch.dtype, head_dim: int = 128
) -> str | None:
    """Why the backend ``name`` cannot serve on ``device`` in ``dtype`` here (None: it can).

    Args:
        name: A diffusers attention backend name.
        device: The device the transformer runs on.
        dtype: The transformer's dtype (queries, keys and values come in it).
        head_dim: The model's attention head size (some kernels take only some).
    """
    from diffusers.models import attention_dispatch as dispatch

    if name not in attention_backend_names():
        return "not a diffusers attention backend"
    kind = _DEVICE_ONLY.get(name, "any" if name in _ANY_DEVICE else "cuda")
    if kind != "any" and device.type != kind:
        return f"needs {_DEVICE_WORDS[kind]}"
    backend = dispatch.AttentionBackendName(name)
    try:
        dispatch._check_attention_backend_requirements(backend)
    except RuntimeError as exc:
        return str(exc).split(". Please")[0]
    # diffusers' own per-call checks (off by default at run time): dtype, compute capability, head size.
    probe = torch.zeros(1, 4, 2, head_dim, dtype=dtype, device=device)
    for check in dispatch._AttentionBackendRegistry._constraints.get(backend, []):
        try:
            check(query=probe, key=probe, value=probe, attn_mask=None, is_causal=False)
        except (ValueError, RuntimeError) as exc:
            return str(exc).rstrip(".")
    sdpa_kernel = {"_native_cudnn": "cudnn", "_native_flash": "flash", "_native_efficient": "efficient"}
    if device.type == "cuda" and name in sdpa_kernel and not _sdpa_kernel_usable(sdpa_kernel[name], probe):
        return f"PyTorch's {sdpa_kernel[name]} SDPA kernel cannot run here"
    return None


def available_attention_backends(
    device: torch.device, dtype: torch.dtype, *, head_dim: int = 128, ulysses: int = 1
) -> list[str]:
    """The backends that can serve here (``auto`` not included), sorted; with ``ulysses > 1`` only those
    that support diffusers' context parallelism."""
    return [
        name
        for name in attention_backend_names()
        if unavailable_reason(name, device, dtype, head_dim) is None
        and (ulysses == 1 or supports_context_parallel(name))
    ]


def supports_context_parallel(name: str) -> bool:
    """Whether diffusers runs this backend under context parallelism (Ulysses)."""
    from diffusers.models.attention_dispatch import AttentionBackendName, _AttentionBackendRegistry

    return _AttentionBackendRegistry._is_context_parallel_available(AttentionBackendName(name))


def resolve_attention_backend(
    name: str, device: torch.device, dtype: torch.dtype, *, head_dim: int = 128, ulysses: int = 1
) -> str:
    """``WANSERVE_ATTENTION_BACKEND``, resolved: ``auto`` to the fastest backend available, a name checked.

    Raises:
        SettingsError: One line naming the variable and listing the available backends, if the name is
            unknown, cannot serve on this device/host, or (``ulysses > 1``) does not support Ulysses.
    """
    name = name.strip().lower()
    if name == AUTO:
        return _fastest(device, dtype, head_dim=head_dim, ulysses=ulysses)
    if name not in attention_backend_names():
        available = available_attention_backends(device, dtype, head_dim=head_dim, ulysses=ulysses)
        raise SettingsError(
            f"WANSERVE_ATTENTION_BACKEND={name!r} is not an attention backend; available here: "
            f"{', '.join([AUTO, *available])}"
        )
    reason = unavailable_reason(name, device, dtype, head_dim)
    if reason is None and ulysses > 1 and not supports_context_parallel(name):
        available = available_attention_backends(device, dtype, head_dim=head_dim, ulysses=ulysses)
        raise SettingsError(
            f"WANSERVE_ATTENTION_BACKEND={name!r} does not support Ulysses (diffusers' context parallelism, "
            f"--ulysses {ulysses}); available with Ulysses here: {', '.join([AUTO, *available])}"
        )
    if reason is not None:
        available = available_attention_backends(device, dtype, head_dim=head_dim, ulysses=ulysses)
        where = f"{device.type}, {str(dtype).removeprefix('torch.')}"
        raise SettingsError(
            f"WANSERVE_ATTENTION_BACKEND={name!r} is not usable here ({where}): {reason}; "
            f"available: {', '.join([AUTO, *available])}"
        )
    return name


def apply_attention_backend(transformer: Any, name: str) -> None:
    """Set the transformer's attention backend (before ``enable_parallelism``, which checks it), then run
    it once on a small input, so a kernel that cannot run here fails the worker's start, not a job.

    Raises:
        SettingsError: One line naming the variable, if diffusers refuses the backend or its kernel fails.
    """
    from diffusers.models.attention_dispatch import AttentionBackendName, dispatch_attention_fn

    parameter = next(transformer.parameters())
    head_dim = int(getattr(transformer.config, "attention_head_dim", 128))
    probe = torch.randn(1, 4, 2, head_dim, generator=torch.Generator().manual_seed(0))
    probe = probe.to(parameter.device, parameter.dtype)
    try:
        transformer.set_attention_backend(name)
        dispatch_attention_fn(probe, probe, probe, backend=AttentionBackendName(name))
    except Exception as exc:
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SettingsError(f"WANSERVE_ATTENTION_BACKEND={name!r} failed on this device: {detail}") from exc


def check_compile_mode(mode: str) -> str:
    """``WANSERVE_COMPILE``, checked.

    Raises:
        SettingsError: If it is not ``none``, ``blocks`` or ``full``.
    """
    mode = mode.strip().lower()
    if mode not in COMPILE_MODES:
        raise SettingsError(f"WANSERVE_COMPILE={mode!r}: must be one of {', '.join(COMPILE_MODES)}")
    return mode


def compile_transformer(transformer: Any, mode: str, *, backend: str = DEFAULT_COMPILE_BACKEND) -> None:
    """Compile the transformer's forwards for ``mode``; call before the block cache is installed.

    Compilation is lazy: the first forward (the engine's warm-up) compiles.

    Args:
        transformer: A ``WanTransformer3DModel``, not yet hooked by the block cache or context parallelism.
        mode: ``none``, ``blocks`` or ``full`` (see the module's docstring).
        backend: ``torch.compile``'s backend: the product uses inductor; tests may pass ``aot_eager``.

    Raises:
        ValueError: If the transformer already carries diffusers hooks (they would be compiled in).
    """
    mode = check_compile_mode(mode)
    if mode == "none":
        return
    blocks = _repeated_blocks(transformer)
    hooked = [module for module in (transformer, *transformer.modules()) if _has_hooks(module)]
    if hooked:
        raise ValueError("compile the transformer before its cache or parallel hooks are installed")
    regions = blocks if mode == "blocks" else [*blocks, transformer.condition_embedder]
    for module in regions:
        # The module's own forward, compiled as an instance attribute: hooks registered later wrap this
        # attribute and call it as their original forward, from Python.
        module.forward = torch.compile(module.forward, backend=backend)
    if mode == "full":
        for module in regions:
            # The hooked call of a region is a graph break in the transformer's graph (nn.Module calls
            # ``_compiled_call_impl`` when set, as ``Module.compile`` does): the hooks run in Python, the
            # region's forward in its own compiled graph.
            module._compiled_call_impl = torch.compiler.disable(module._call_impl)
        transformer.forward = torch.compile(transformer.forward, backend=backend)
    log.info("transformer compiled (%s, backend %s): %d regions", mode, backend, len(regions))


def _repeated_blocks(transformer: Any) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", None) or ())
    blocks = [module for module in transformer.modules() if type(module).__name__ in names]
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} names no repeated blocks to compile")
    return blocks


def _has_hooks(module: torch.nn.Module) -> bool:
    registry = getattr(module, "_diffusers_hook", None)
    return registry is not None and bool(registry.hooks)


def _fastest(device: torch.device, dtype: torch.dtype, *, head_dim: int, ulysses: int) -> str:
    """``auto``: the first available of the device's preferred backends (see the module's docstring)."""
    preferred: list[str] = []
    if device.type == "cuda" and dtype in _HALF:
        hopper = torch.cuda.get_device_capability(device) >= (9, 0)
        preferred = ["_native_cudnn", "flash", "_native_flash"]
        if not hopper:
            preferred = ["flash", "_native_flash", "_native_cudnn"]
    elif device.type == "npu" and dtype in _HALF:
        preferred = ["_native_npu"]
    for name in preferred:
        if unavailable_reason(name, device, dtype, head_dim) is None and (
            ulysses == 1 or supports_context_parallel(name)
        ):
            return name
    return "native"


def _sdpa_kernel_usable(kernel: str, probe: torch.Tensor) -> bool:
    """Whether PyTorch's SDPA can run ``kernel`` for tensors like ``probe`` (batch, seq, heads, dim)."""
    from torch.backends import cuda

    layout = probe.transpose(1, 2)
    params = cuda.SDPAParams(layout, layout, layout, None, 0.0, False, False)
    usable = {
        "cudnn": cuda.can_use_cudnn_attention,
        "flash": cuda.can_use_flash_attention,
        "efficient": cuda.can_use_efficient_attention,
    }[kernel]
    return bool(cast(Any, usable)(params))
