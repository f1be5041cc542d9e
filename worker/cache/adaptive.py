"""The adaptive cache's configuration and its decision, agreed across Ulysses ranks.

First-Block-Cache style (ParaAttention's FBCache, diffusers' ``FirstBlockCache``, after TeaCache): block 0
always runs; its residual ``out(0) - in(0)`` is compared with the residual it had on the branch's last
compute step, and when the relative L1 change ``sum|r - r_prev| / sum|r_prev|`` is below ``threshold``,
blocks ``[1, N)`` are skipped and their cached delta ``out(N-1) - in(1)`` is added instead.

Under Ulysses each rank holds a sequence shard of the residual, so a per-rank decision (what diffusers'
``FirstBlockCache`` and ``MagCache`` do) differs between ranks: one rank skips the blocks and their
all-to-alls while its peer waits in them. Here the two sums are all-reduced over the Ulysses group
before the comparison, so every rank compares the same numbers, those of the whole sequence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class AdaptiveCacheConfig:
    """When the adaptive cache may skip blocks ``[1, N)`` of a branch's forward.

    Args:
        threshold: Skip when the relative L1 change of block 0's residual since the branch's last
            compute step is below this; > 0. Larger skips more.
        warmup_steps: The first steps of each branch always compute; >= 0.
        final_steps: The last steps always compute (needs the request's step count); >= 0.
        max_consecutive_skips: After this many skips in a row a branch computes; >= 1.

    Raises:
        ValueError: If a field is out of range; the message names the field.
    """

    threshold: float = 0.05
    warmup_steps: int = 1
    final_steps: int = 1
    max_consecutive_skips: int = 2

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            wanted: type | tuple[type, ...] = (int, float) if field.name == "threshold" else int
            if not isinstance(value, wanted) or isinstance(value, bool):
                raise ValueError(f"{field.name} must be a number, got {value!r}")
        if not 0 < self.threshold < math.inf:  # also NaN
            raise ValueError(f"threshold must be a finite number > 0, got {self.threshold}")
        for name in ("warmup_steps", "final_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.max_consecutive_skips < 1:
            raise ValueError(f"max_consecutive_skips must be >= 1, got {self.max_consecutive_skips}")

    def forces_compute(self, step: int, num_steps: int | None, consecutive_skips: int) -> bool:
        """Whether ``step`` computes whatever the residual says (warm-up, final steps, too many skips)."""
        final = num_steps is not None and step >= num_steps - self.final_steps
        return step < self.warmup_steps or final or consecutive_skips >= self.max_consecutive_skips

    def to_json(self) -> dict[str, Any]:
        return {field.name: getattr(self, field.name) for field in fields(self)}


def relative_change(
    residual: torch.Tensor, previous: torch.Tensor, group: Any | None = None
) -> tuple[float, float]:
    """``sum|residual - previous| / sum|previous|`` over the whole sequence, and over this rank's shard.

    With ``group`` (the Ulysses process group) the two sums are all-reduced first, so every rank of
    the group returns the same first value. Sums are taken in float32 whatever the activations' dtype.

    Returns:
        ``(global, local)``; ``inf`` when ``previous`` is all zeros.
    """
    sums = torch.stack(
        [
            (residual - previous).abs().sum(dtype=torch.float32),
            previous.abs().sum(dtype=torch.float32),
        ]
    )
    local = _ratio(sums)
    if group is None or dist.get_world_size(group) == 1:
        return local, local
    dist.all_reduce(sums, op=dist.ReduceOp.SUM, group=group)
    return _ratio(sums), local


def _ratio(sums: torch.Tensor) -> float:
    numerator, denominator = (float(value) for value in sums.tolist())
    if denominator == 0.0:
        return math.inf
    return numerator / denominator
