r"""The optimisation step of :func:`arflows.fit`, and its data-parallel set-up.

:class:`Step` takes the gradient steps of one epoch and stops at the first non-finite loss,
gradient norm or weight. In a :mod:`torch.distributed` group, :func:`distribute` wraps the
flow's log-density in DistributedDataParallel, after checking that every process was given
the same data and options and running data-dependent initialisations on the whole first
batch. :func:`unvalidated` turns torch's distribution argument checks off around the epochs.
"""

from __future__ import annotations

__all__ = ["Step", "distribute", "global_batch_rows", "unvalidated"]

import contextlib
import gc
import inspect
import itertools
import math
import threading
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn.parallel import DistributedDataParallel

from ..checks import unchecked_values
from ..flows import BatchNorm, Flow, FlowLogProb
from .distributed import World
from .rows import Rows


class Step:
    """Gradient steps on one flow; counts the good ones.

    Args:
        log_prob: The module computing ``log p(x | c)`` (the flow's, possibly wrapped for
            data-parallel training).
        flow: The flow whose parameters step.
        optimizer: The optimizer of the flow's parameters.
        scheduler: A schedule stepped after every step (``None``: none).
        clip_grad: The maximum norm of the gradient (``None``: no clipping).
        world: The processes taking part.
        uneven: Whether processes may run out of batches at different steps.
        tick: Called after each good step (a progress bar's update).
        global_rows: The rows of global batch ``step`` (all processes), when they are known
            in advance.
        done: The good steps taken before (those of a resumed fit).
    """

    def __init__(
        self,
        log_prob: nn.Module,
        flow: Flow,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        *,
        clip_grad: float | None = None,
        world: World | None = None,
        uneven: bool = False,
        tick: Callable[[], object] | None = None,
        global_rows: Callable[[int], int] | None = None,
        done: int = 0,
    ):
        self.log_prob: nn.Module | None = log_prob
        self.flow, self.optimizer, self.scheduler = flow, optimizer, scheduler
        # Listed once: walking the flow's modules for them costs as much as clipping.
        self.params = list(flow.parameters())
        self.clip_grad = clip_grad
        self.world = World() if world is None else world
        self.uneven, self.tick, self.global_rows, self.done = uneven, tick, global_rows, done

    def release(self) -> None:
        """Drops the log-density module; a DDP wrapper's reducer goes with it, now."""
        # The reducer holds communication work with tensors: freed at interpreter exit, when
        # gloo's threads are gone, it would abort the process.
        self.log_prob = None
        gc.collect()

    def _loss(
        self, x: Tensor, c: Tensor | None, step: int
    ) -> tuple[Tensor, Callable[[], tuple[float, int]]]:
        """The loss to differentiate, and a function that gives the batch's results.

        The function returns the average log-likelihood and the rows of the whole global
        batch (over all processes), waiting for the sum if it is still running.
        """
        lp = self.log_prob(x, c)
        if not self.world.active:
            loss = -lp.mean()
            # Read after the backward pass: on a GPU, one wait per step, with the norm's.
            return loss, lambda: (-loss.item(), len(x))
        # Summed while the backward pass runs; read before the step.
        finish = self.world.start_sum(torch.stack([lp.detach().sum(), lp.new_tensor(len(x))]))
        if self.global_rows is None:  # each process's own rows: DDP averages their means
            loss = -lp.mean()
        else:  # a share of a global batch: weigh it so that the average is the whole's mean
            loss = -lp.sum() * (self.world.size / self.global_rows(step))

        def result() -> tuple[float, int]:
            sums = finish()
            rows = int(sums[1].item())
            return sums[0].item() / rows, rows

        return loss, result

    def epoch(
        self,
        batches: Iterator[tuple[Tensor, Tensor | None]],
        epoch: int,
        start: int = 0,
        total: float = 0.0,
        seen: int = 0,
        after_step: Callable[[int, float, int], None] | None = None,
    ) -> tuple[float, int, str | None]:
        """A pass over ``batches`` from step ``start``: (sum of log-likelihoods, rows, failure).

        ``total`` and ``seen`` are the sum and the rows so far (of the steps before
        ``start``, which are skipped); ``after_step(step, total, seen)`` is called after each
        good step.
        """
        flow, world = self.flow, self.world
        device = next(flow.parameters()).device
        batches = iter(batches)
        for _ in itertools.islice(batches, start):
            pass
        flow.train()
        step = start
        try:
            for step in itertools.count(start):
                batch = next(batches, None)
                # Processes that iterate loaders of their own stop together at the shortest.
                if self.uneven and world.active and world.any(batch is None):
                    break
                if batch is None:
                    break
                x, c = (None if t is None else _to(t, device) for t in batch)
                loss, result = self._loss(x, c, step)
                # In a distributed fit the sums over processes arrive during the backward pass.
                self.optimizer.zero_grad()
                loss.backward()
                norm = None
                if self.clip_grad is not None:
                    norm = clip_gradients(self.params, self.clip_grad)
                # The checks read the device once per step (a non-finite loss's backward pass
                # changes no weight); all processes see the same sums and norm.
                value, rows = result()
                failure = None
                if not math.isfinite(value):
                    failure = f"the loss became {-value}"
                elif norm is not None and not math.isfinite(norm):
                    failure = f"the gradient norm became {norm}"
                if failure is not None:
                    self.optimizer.zero_grad()  # no non-finite gradient is left behind
                    return total, seen, f"{failure} at epoch {epoch}, step {step}"
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                total += value * rows
                seen += rows
                self.done += 1
                if self.tick is not None:
                    self.tick()
                if after_step is not None:
                    after_step(step, total, seen)
        finally:
            flow.eval()
        # One check of all weights at once (a few operations per parameter cost more).
        weights = torch.cat([p.detach().reshape(-1) for p in self.params])
        if not bool(weights.isfinite().all()):
            # A finite loss with a non-finite gradient (no clipping) poisons the weights.
            return total, seen, f"the weights became non-finite at epoch {epoch}, step {step}"
        return total, seen, None


def clip_gradients(params: list[nn.Parameter], max_norm: float) -> float:
    """Scales the gradients to a total 2-norm of at most ``max_norm``; returns the norm before.

    As :func:`torch.nn.utils.clip_grad_norm_` (the factor ``max_norm / (norm + 1e-6)``), but
    the norm is read first and the gradients are scaled only when it is over: most steps of a
    fit are not clipped, and the read is the step's one read of the device anyway. A
    non-finite norm scales nothing (the step is refused).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # Each tensor's norm in one call (as torch's clipping computes them), then their norm.
    norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))).item()
    if norm + 1e-6 > max_norm:  # also False for NaN
        factor = max_norm / (norm + 1e-6)
        for g in grads:
            g.mul_(factor)
    return norm


def _to(t: Tensor, device: torch.device) -> Tensor:
    """``t`` on ``device``; copied asynchronously from the host (pinned rows overlap)."""
    # Never from a device to the host: that copy could still be running when it is read.
    return t.to(device, non_blocking=t.device.type == "cpu")


def _data_parallel(module: nn.Module, flow: Flow, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel, syncing buffers at each step only if needed."""
    # Buffers (masks, degrees, standardisation) are rank 0's everywhere from the start; only
    # batch normalisation's running averages change, and need rank 0's at every step.
    changing = any(
        isinstance(m, BatchNorm | nn.modules.batchnorm._BatchNorm) for m in flow.modules()
    )
    sync = "broadcast_buffers"  # torch < 2.13; later ones call it forward_sync_buffers
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel).parameters:
        sync = "forward_sync_buffers"
    return DistributedDataParallel(
        module, device_ids=None if device.type != "cuda" else [device], **{sync: changing}
    )


def global_batch_rows(rows: int, batch_size: int) -> Callable[[int], int]:
    """The rows of each global batch of one pass over ``rows`` rows (the last may be short)."""
    return lambda step: min(batch_size, rows - step * batch_size)


def distribute(
    flow: Flow,
    train: Rows,
    world: World,
    options: dict,
    steps: int | None,
    batch_size: int,
    generator: torch.Generator,
    device: torch.device,
) -> nn.Module:
    """The flow's log-density as the step calls it: DDP-wrapped in a distributed fit.

    In a distributed fit, first refuses processes given different data or options and runs
    the data-dependent initialisations on the whole first batch.
    """
    log_prob: nn.Module = FlowLogProb(flow)
    if world.active:
        _check_same_everywhere(world, train, options, steps)
        _initialize_from_data(flow, train, batch_size, generator)
        log_prob = _data_parallel(log_prob, flow, device)
    return log_prob


@torch.no_grad()
def _initialize_from_data(
    flow: Flow, train: Rows, batch_size: int, generator: torch.Generator
) -> None:
    """Runs the data-dependent initialisations (ActNorm) on the first batch, before DDP.

    Layers with an ``initialized`` buffer still ``False`` initialise on their first
    training batch; in a distributed fit each process would see only its share of it. Done
    here, before DistributedDataParallel copies rank 0's parameters and buffers to every
    process, they start from the whole first batch (that of one process) everywhere.
    """
    pending = [
        m
        for m in flow.modules()
        if isinstance(getattr(m, "initialized", None), Tensor) and not bool(m.initialized)
    ]
    if not pending:
        return
    peek = torch.Generator()
    peek.set_state(generator.get_state())  # the first epoch's order, left unconsumed
    x, c = next(iter(train.batches(batch_size, World(), peek)))
    device = next(flow.parameters()).device
    flow.train()
    try:
        flow(None if c is None else c.to(device)).log_prob(x.to(device))
    finally:
        flow.eval()


def _check_same_everywhere(world: World, train: Rows, options: dict, steps: int | None) -> None:
    """Refuses a distributed fit whose processes were given different data or options."""
    # A user's DataLoader holds each process's own rows; only their shape must agree.
    mine = (
        (train.features, train.context) if train.uneven else (options, steps, train.fingerprint())
    )
    for rank, theirs in enumerate(world.gather(mine)):
        if theirs != mine:
            raise ValueError(
                f"every process of a distributed fit needs the same data and options: process "
                f"{rank} has {theirs}, process {world.rank} has {mine}"
            )


class _Unvalidated:
    """One switch for every :func:`unvalidated` block of the process, nested or concurrent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.before = True

    def enter(self) -> None:
        with self.lock:
            if self.depth == 0:
                self.before = Distribution._validate_args
                Distribution.set_default_validate_args(False)
            self.depth += 1

    def exit(self) -> None:
        with self.lock:
            self.depth -= 1
            if self.depth == 0:
                Distribution.set_default_validate_args(self.before)


_UNVALIDATED = _Unvalidated()


@contextlib.contextmanager
def unvalidated() -> Iterator[None]:
    """Distributions built inside skip torch's argument validation; the data were checked.

    Diverging weights must reach the step's checks as a NaN loss, not as torch's support
    error on the base distribution, and the step need not scan every batch for NaN again.
    torch keeps the switch in one class attribute (:meth:`Distribution.set_default_validate_args`),
    so it holds for the whole process while a block runs. Blocks share one count: the first
    to enter turns validation off, the last to leave restores what the first found, even when
    a block raises; so fits in several threads, or nested ones, leave the flag as it was.
    arflows' own finite-value checks (:func:`arflows.checks.unchecked_values`) are off in
    this thread only.
    """
    _UNVALIDATED.enter()
    try:
        with unchecked_values():
            yield
    finally:
        _UNVALIDATED.exit()
