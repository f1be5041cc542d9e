"""Device and dtype choice, and what differs by device kind: the one module that knows about CUDA and
Ascend NPUs (and imports torch_npu)."""

from __future__ import annotations

import importlib.util
import logging
import resource
import sys
from typing import Any

import torch

log = logging.getLogger("wanserve.worker")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}


def npu_available() -> bool:
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401  (registers the "npu" device with torch)

    return bool(torch.npu.is_available())  # type: ignore[attr-defined]


def select_device(name: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` prefers CUDA, then an Ascend NPU, then the CPU; accelerators are bound to ``local_rank``."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "npu" if npu_available() else "cpu"
    if name == "npu" and not npu_available():
        raise RuntimeError("WANSERVE_DEVICE=npu but torch_npu is not installed or sees no NPU")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("WANSERVE_DEVICE=cuda but torch sees no CUDA device")
    if name == "cpu":
        return torch.device("cpu")
    device = torch.device(name, local_rank)
    # Set before any collective exists, so NCCL/HCCL communicators bind to this card.
    if name == "cuda":
        torch.cuda.set_device(device)
    else:
        torch.npu.set_device(device)  # type: ignore[attr-defined]
    return device


def select_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` is bfloat16 on accelerators and float32 on the CPU (where bf16 kernels are slow)."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    try:
        return _DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; choose one of auto, {', '.join(_DTYPES)}") from None


def collective_backend(device: torch.device) -> str:
    """The torch.distributed backend for collectives between devices of this kind."""
    return _BACKENDS[device.type]


def enable_context_parallel(transformer: Any, config: Any, device: torch.device) -> None:
    """``transformer.enable_parallelism(config=config)``, on a host without an accelerator too.

    diffusers (0.42) derives a device as ``rank % torch.accelerator.device_count()`` before it reads its
    config, in ``enable_parallelism`` and in ``from_pretrained(parallel_config=...)`` alike, and takes no
    argument that avoids it: a division by zero where there is no accelerator. The device it derives goes
    unused once the config carries a mesh, as ours does; so for a CPU device the count reads 1 during the
    call, and only then.
    """
    count = torch.accelerator.device_count
    if device.type != "cpu" or count() > 0:
        transformer.enable_parallelism(config=config)
        return
    torch.accelerator.device_count = lambda: 1
    try:
        transformer.enable_parallelism(config=config)
    finally:
        torch.accelerator.device_count = count


def _accelerator(device: torch.device) -> Any | None:
    """The torch module of an accelerator device, or None on the CPU: ``torch.cuda``, or ``torch.npu`` once
    torch_npu has registered it; both have the same memory statistics, so one code path serves every kind."""
    if device.type == "cpu":
        return None
    return getattr(torch, device.type)


def reset_peak_memory(device: torch.device) -> None:
    """Start a job's peak-memory measurement (on accelerators; the CPU's peak RSS cannot be reset)."""
    module = _accelerator(device)
    if module is not None:
        module.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory since the last ``reset_peak_memory`` on accelerators; the process's peak RSS on
    the CPU."""
    module = _accelerator(device)
    if module is not None:
        return float(module.max_memory_allocated(device)) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 1024
