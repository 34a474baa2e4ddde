"""Data-parallel training with ``torch.distributed``: process groups, and the batch gathers the losses need.

Launched with ``torchrun`` (one process per GPU, any number of hosts; see docs/model.md):

    torchrun --nproc-per-node 8 -m inference.train --corpus DIR --features DIR --out var/models/mine

`init_distributed()` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT), starts
the process group (NCCL on CUDA, gloo on CPU) and picks this process's device.

The contrastive losses need every rank's embeddings: the ITC negatives of a slide are all texts of the
*global* batch, and ITM mines its hard negatives from the global similarity matrix. `BatchGather` gives
the Q-Former's forward what it needs from the other ranks:

- `rows(x)`: all ranks' ``x`` concatenated along dim 0, differentiable: the backward sums the gradient of
  every rank's loss with respect to the gathered tensor (an all-reduce) and hands each rank its own slice,
  so each rank's parameters receive the gradient of the losses of *all* ranks with respect to its own
  embeddings. Together with DDP's gradient averaging and losses normalised by the global counts (each rank's
  loss is its share of the global loss times the world size), the update is the single-process update on
  the global batch (``tests/inference/test_distributed_training.py`` checks it on two gloo processes).
- `inputs(x)`: the same without gradients, padded along dim 1 (patches and token ids of different
  lengths): the frozen patch features and token ids of the hard negatives that live on other ranks.
- `sum(x)`: a count summed over ranks (tokens for ITG).

`LOCAL` is the one-process version (identity); the Q-Former uses it when no gather is given, so one code
path serves both. Nothing here imports Django.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["LOCAL", "BatchGather", "DistContext", "LocalGather", "init_distributed", "launched_by_torchrun",
           "rank_slice", "shutdown"]


@dataclass
class DistContext:
    """Where this process stands in a data-parallel job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # noqa: RUF009 - immutable enough
    backend: str | None = None
    gather_group: Any = None  # the process group of the embedding gathers (separate from DDP's)

    @property
    def enabled(self) -> bool:
        return self.backend is not None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self) -> BatchGather | LocalGather:
        return BatchGather(self.gather_group) if self.enabled else LOCAL

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (a copy on this process's device; the input as is when not distributed)."""
        if not self.enabled:
            return values
        out = values.detach().to(self.device).clone()
        dist.all_reduce(out)
        return out


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or anything that sets its RANK / WORLD_SIZE variables)."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def init_distributed(device: str = "auto", backend: str | None = None, timeout_s: float = 1800) -> DistContext:
    """Start the process group from torchrun's environment; one process per GPU (``LOCAL_RANK``).

    ``device`` "auto": cuda:LOCAL_RANK when CUDA is present, else CPU; backend: NCCL on CUDA, gloo on CPU.
    Without torchrun's variables: a one-process context (nothing started)."""
    if not launched_by_torchrun():
        dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        return DistContext(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda":
        dev = torch.device("cuda", local if dev.index is None else dev.index)
        torch.cuda.set_device(dev)
    backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
    if not dist.is_initialized():
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    # The gathers inside the forward/backward get their own group, so their collectives never interleave
    # with DDP's gradient buckets on one communicator.
    group = dist.new_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, device=dev, backend=backend,
                       gather_group=group)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def rank_slice(n: int, rank: int, world: int) -> slice:
    """This rank's contiguous part of a global batch of n (sizes differ by at most one; earlier ranks larger)."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


# ------------------------------------------------------------------------------------------------ gathers
class LocalGather:
    """One process: every gather is the identity."""

    world = 1
    rank = 0

    def rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        return x, 0

    def inputs(self, x: torch.Tensor, pad_value: float | int | bool = 0) -> torch.Tensor:
        return x

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        return x


LOCAL = LocalGather()


class _GatherRows(torch.autograd.Function):
    """all_gather along dim 0 (sizes may differ), gradients routed back to their owners (all-reduce)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group: Any, sizes: list[int], rank: int) -> torch.Tensor:  # noqa: ANN001
        ctx.group, ctx.sizes, ctx.rank = group, sizes, rank
        m = max(sizes)
        x = x.contiguous()
        if x.shape[0] < m:
            x = torch.cat([x, x.new_zeros((m - x.shape[0], *x.shape[1:]))])
        bufs = [torch.empty_like(x) for _ in sizes]
        dist.all_gather(bufs, x, group=group)
        return torch.cat([b[:n] for b, n in zip(bufs, sizes, strict=True)])

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN001, ANN205
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        start = sum(ctx.sizes[: ctx.rank])
        return grad[start:start + ctx.sizes[ctx.rank]], None, None, None


class BatchGather:
    """The gathers of one forward across the ranks of ``group`` (see the module docstring)."""

    def __init__(self, group: Any = None):
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def _shapes(self, x: torch.Tensor) -> list[list[int]]:
        dims = torch.tensor(list(x.shape), dtype=torch.long, device=x.device)
        out = [torch.empty_like(dims) for _ in range(self.world)]
        dist.all_gather(out, dims, group=self.group)
        return [d.tolist() for d in out]

    def rows(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """(all ranks' x along dim 0, differentiable; where this rank's rows start)."""
        sizes = [s[0] for s in self._shapes(x)]
        return _GatherRows.apply(x, self.group, sizes, self.rank), sum(sizes[: self.rank])

    @torch.no_grad()
    def inputs(self, x: torch.Tensor, pad_value: float | int | bool = 0) -> torch.Tensor:
        """All ranks' x along dim 0, no gradient; dim 1 padded with ``pad_value`` to the longest."""
        shapes = self._shapes(x)
        is_bool = x.dtype == torch.bool
        y = x.to(torch.uint8) if is_bool else x  # gloo has no bool collectives
        m0 = max(s[0] for s in shapes)
        m1 = max(s[1] for s in shapes) if x.dim() > 1 else None
        pad = [0, 0] * (x.dim() - 2) + ([0, m1 - x.shape[1]] if m1 is not None else []) + [0, m0 - x.shape[0]]
        if any(pad):
            y = torch.nn.functional.pad(y, pad, value=int(pad_value) if is_bool else pad_value)
        bufs = [torch.empty_like(y) for _ in shapes]
        dist.all_gather(bufs, y.contiguous(), group=self.group)
        out = torch.cat([b[: s[0]] for b, s in zip(bufs, shapes, strict=True)])
        return out.bool() if is_bool else out

    @torch.no_grad()
    def sum(self, x: torch.Tensor) -> torch.Tensor:
        out = x.detach().clone()
        dist.all_reduce(out, group=self.group)
        return out
