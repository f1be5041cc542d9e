"""The adaptive cache's decision, agreed across Ulysses ranks (its config: ``service.core.cache``).

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
from typing import Any

import torch
import torch.distributed as dist


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
