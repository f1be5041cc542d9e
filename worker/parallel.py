"""Parallel layout of one worker group: Ulysses sequence parallelism x CFG parallelism over torchrun ranks.

One group is one replica of the model. Its ranks form a device mesh ``(cfg, ring=1, ulysses)``:
ranks that share a CFG index split the sequence (Ulysses, through diffusers' context parallelism);
the two CFG halves run the conditional and the unconditional pass of each step and exchange results.
A separate gloo group with a long timeout carries the control plane (jobs, keep-alives, per-step
decisions), so it never waits on an accelerator collective and survives idle periods.
"""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, NoReturn

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from worker import device as devices

log = logging.getLogger("wanserve.worker")


@dataclass(frozen=True)
class ParallelLayout:
    """How many ranks, split how: ``ranks == ulysses * cfg``."""

    ranks: int = 1
    ulysses: int = 1
    cfg: int = 1

    def __post_init__(self) -> None:
        if self.cfg not in (1, 2):
            raise ValueError(
                f"--cfg must be 1 or 2 (the conditional and unconditional passes), not {self.cfg}"
            )
        if self.ulysses < 1:
            raise ValueError(f"--ulysses must be at least 1, not {self.ulysses}")
        if self.ranks != self.ulysses * self.cfg:
            raise ValueError(
                f"--nproc {self.ranks} must equal --ulysses {self.ulysses} x --cfg {self.cfg} = "
                f"{self.ulysses * self.cfg}"
            )

    def check_heads(self, num_attention_heads: int) -> None:
        """Ulysses gives each rank whole attention heads: the degree must divide the head count."""
        if num_attention_heads % self.ulysses:
            divisors = [d for d in range(1, num_attention_heads + 1) if num_attention_heads % d == 0]
            raise ValueError(
                f"--ulysses {self.ulysses} does not divide the model's {num_attention_heads} attention "
                f"heads; choose one of {divisors}"
            )


@dataclass
class ParallelRuntime:
    """This rank's place in its group, and the groups it talks over."""

    layout: ParallelLayout
    rank: int
    device: torch.device
    control: Any
    """gloo process group for the control plane."""
    mesh: DeviceMesh

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def cfg_rank(self) -> int:
        return int(self.mesh.get_local_rank("cfg"))

    def broadcast_decision(self, decision: Any) -> Any:
        """The leader's ``decision`` on every rank (a cancel, an abort; None to go on), at the same point.

        Followers pass anything (it is ignored). None, the usual case, costs one small tensor broadcast;
        any other decision is then sent whole with :meth:`broadcast`.
        """
        flag = torch.tensor([int(decision is not None)], dtype=torch.int32)
        dist.broadcast(flag, src=0, group=self.control)
        if not flag.item():
            return None
        return self.broadcast(decision if self.is_leader else None)

    def cfg_gather(self, local: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exchange this rank's half of classifier-free guidance; returns (conditional, unconditional)."""
        gathered = [torch.empty_like(local) for _ in range(self.layout.cfg)]
        dist.all_gather(gathered, local.contiguous(), group=self.mesh.get_group("cfg"))
        return gathered[0], gathered[1]

    def broadcast(self, obj: Any) -> Any:
        """Send ``obj`` from the leader to every rank over the control plane; followers pass None."""
        box = [obj]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        out: list[Any] = [None] * self.layout.ranks
        dist.all_gather_object(out, obj, group=self.control)
        return out

    @property
    def leads_ulysses(self) -> bool:
        """Whether this rank is the first of its Ulysses group (the ranks that split one pass)."""
        return int(self.mesh.get_local_rank("ulysses")) == 0

    def ulysses_broadcast(self, tensor: torch.Tensor) -> torch.Tensor:
        """The first rank of this rank's Ulysses group sends ``tensor``; the others receive it in place."""
        group = self.mesh.get_group("ulysses")
        dist.broadcast(tensor, src=dist.get_global_rank(group, 0), group=group)
        return tensor

    def device_gather_codes(self, code: int) -> list[int]:
        """Every rank's small integer, in rank order, over the device group (not the control plane,
        which the leader's keep-alive may use between jobs)."""
        local = torch.tensor([code], dtype=torch.int64, device=self.device)
        out = [torch.empty_like(local) for _ in range(self.layout.ranks)]
        dist.all_gather(out, local)
        return [int(item.item()) for item in out]

    def gather_tensors_to_leader(
        self, tensors: list[torch.Tensor], shapes: list[list[tuple[int, ...]]], dtype: torch.dtype
    ) -> list[list[torch.Tensor]] | None:
        """Every rank's ``tensors`` on the leader (None elsewhere), over the device group.

        ``shapes[r]`` are rank r's tensor shapes, known to every rank beforehand; each rank sends its
        tensors as one flat buffer, padded to the longest rank's.
        """
        sizes = [sum(int(torch.Size(shape).numel()) for shape in rank_shapes) for rank_shapes in shapes]
        longest = max(sizes)
        flat = torch.zeros(longest, dtype=dtype, device=self.device)
        if tensors:
            mine = torch.cat([tensor.reshape(-1) for tensor in tensors])
            flat[: mine.numel()] = mine
        buffers = [torch.empty_like(flat) for _ in sizes] if self.is_leader else None
        dist.gather(flat, buffers, dst=0)
        if buffers is None:
            return None
        out = []
        for buffer, rank_shapes, size in zip(buffers, shapes, sizes, strict=True):
            lengths = [int(torch.Size(shape).numel()) for shape in rank_shapes]
            pieces = buffer.split([*lengths, longest - size])  # the last piece: padding
            out.append([piece.view(shape) for piece, shape in zip(pieces, rank_shapes, strict=False)])
        return out


def init_parallel(layout: ParallelLayout, device_name: str, timeout_s: float) -> ParallelRuntime:
    """Join the torchrun group (RANK, WORLD_SIZE, LOCAL_RANK from the environment) and build the mesh.

    ``timeout_s`` bounds how long a rank waits in a device collective; the control plane gets twice that.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size != layout.ranks:
        raise ValueError(f"torchrun started {world_size} ranks but the layout needs {layout.ranks}")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = devices.select_device(device_name, local_rank)
    dist.init_process_group(devices.collective_backend(device), timeout=timedelta(seconds=timeout_s))
    # Twice as patient as the compute group: after a rank fails mid-step, its peers first sit out the
    # compute collective's timeout, and only then join the control plane to compare outcomes.
    control = dist.new_group(backend="gloo", timeout=timedelta(seconds=2 * timeout_s))
    mesh = init_device_mesh(
        device.type, (layout.cfg, 1, layout.ulysses), mesh_dim_names=("cfg", "ring", "ulysses")
    )
    runtime = ParallelRuntime(layout, dist.get_rank(), device, control, mesh)
    log.info("rank %d/%d on %s: %s", runtime.rank, layout.ranks, device, layout)
    return runtime


def enable_ulysses(transformer: Any, runtime: ParallelRuntime) -> None:
    """Split attention over the Ulysses ranks with diffusers' context parallelism."""
    from diffusers import ContextParallelConfig

    config = ContextParallelConfig(
        ulysses_degree=runtime.layout.ulysses, mesh=runtime.mesh["ring", "ulysses"]
    )
    devices.enable_context_parallel(transformer, config, runtime.device)


def leave_group(code: int) -> NoReturn:
    """End this rank's process with ``code``: on a clean exit the process groups are destroyed first (a
    failing rank's peers may be stuck in a collective, so then they are not), and Python does not finalize.

    A gloo worker thread can still be releasing a finished collective's tensors when the main thread
    exits; if it needs the GIL while the interpreter finalizes, the process aborts ("terminate called
    without an active exception", pytorch/pytorch#179291) and a clean exit reads as a failed rank. So
    logs and standard streams are flushed and the process exits at once."""
    if code == 0 and dist.is_initialized():
        dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
