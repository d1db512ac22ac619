r"""Data-parallel training across processes with :mod:`torch.distributed`.

:func:`arflows.fit` trains data-parallel (DistributedDataParallel) whenever a process group
with more than one process is initialised, for example by the command line under
``torchrun --nproc_per_node N -m arflows fit ...``. Every process then takes its share of
each global mini-batch; gradients are averaged so that the run follows the same path as one
process on the combined batch. :class:`World` is the small view of the process group that
the training loop needs.

Example:
    >>> world = current_world()  # no process group: one process
    >>> world.rank, world.size, world.main
    (0, 1, True)
    >>> world.sum(torch.tensor([1.0, 2.0])).tolist()
    [1.0, 2.0]
"""

from __future__ import annotations

__all__ = ["World", "current_world", "init_from_env", "shutdown"]

import gc
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    r"""The processes taking part in one training run.

    Attributes:
        rank: This process's index, ``0 <= rank < size``.
        size: The number of processes (1: no distribution).
        device: Where collective operations need their tensors (the CUDA device for NCCL,
            the CPU for gloo).
    """

    rank: int = 0
    size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        """Whether this is the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Whether more than one process takes part."""
        return self.size > 1

    def part(self, rows: Tensor) -> Tensor:
        r"""This process's share of a global batch: every ``size``-th row from ``rank``.

        Args:
            rows: Row indices or rows, with shape :math:`(B, *)`.

        Returns:
            The rows ``rank, rank + size, ...``, with shape :math:`(\lceil (B - rank) / size
            \rceil, *)` (possibly empty).
        """
        return rows[self.rank :: self.size] if self.active else rows

    def sum(self, values: Tensor) -> Tensor:
        """The elementwise sum of ``values`` over all processes (a new tensor)."""
        return self.start_sum(values)()

    def start_sum(self, values: Tensor) -> Callable[[], Tensor]:
        """Starts summing ``values`` over all processes; the function returned waits for it.

        The sum runs in the background (e.g. during a backward pass); every process must
        start it at the same point, and call the function before its next collective
        operation that depends on the result.
        """
        if not self.active:
            done = values.clone()
            return lambda: done
        out = values.detach().to(self.device, torch.float64)
        work = dist.all_reduce(out, op=dist.ReduceOp.SUM, async_op=True)

        def finish() -> Tensor:
            work.wait()
            return out.to(values.device, values.dtype)

        return finish

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` is true on at least one process."""
        return bool(self.sum(torch.tensor([float(flag)])).item() > 0)

    def gather(self, value: object) -> list[object]:
        """``value`` of every process (picklable Python objects), in rank order."""
        if not self.active:
            return [value]
        out: list[object] = [None] * self.size
        dist.all_gather_object(out, value)
        return out


def current_world() -> World:
    """The world of the initialised default process group (one process without one)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    return World(dist.get_rank(), dist.get_world_size(), device)


def init_from_env(device: torch.device | str = "cpu") -> tuple[World, torch.device]:
    r"""Joins the process group that ``torchrun`` describes in the environment, if any.

    With ``WORLD_SIZE > 1`` (set by ``torchrun``), initialises the default process group:
    NCCL when ``device`` is a CUDA device (each process then takes the GPU ``LOCAL_RANK``),
    gloo otherwise. Without it (a plain ``python`` run), nothing happens.

    Args:
        device: The device asked for (``"cpu"``, ``"cuda"``).

    Returns:
        The world and the device this process should train on.

    Raises:
        ValueError: If CUDA is asked for but this process has no GPU of its own.
    """
    device = torch.device(device)
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or not dist.is_available():
        return World(), device
    if not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            if local >= torch.cuda.device_count():
                raise ValueError(
                    f"process LOCAL_RANK={local} has no GPU: {torch.cuda.device_count()} "
                    "visible; start at most that many processes per node, or use --device cpu"
                )
            torch.cuda.set_device(local)
            dist.init_process_group("nccl")
        else:
            dist.init_process_group("gloo")
    world = current_world()
    if device.type == "cuda":
        device = world.device
    return world, device


def shutdown(wait: bool = True) -> None:
    """Leaves the default process group, if one was joined.

    Args:
        wait: Whether to wait at a barrier until every process gets here (a normal end);
            ``False`` on an error path, where the others may never arrive.
    """
    if dist.is_available() and dist.is_initialized():
        # Objects still holding communication work (a DDP reducer in a reference cycle) go
        # first: destroyed during interpreter exit, they abort the process.
        gc.collect()
        if wait:
            dist.barrier()  # no process leaves while another still communicates
        dist.destroy_process_group()
