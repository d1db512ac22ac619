r"""The end of each epoch of :func:`arflows.fit`: scores, best weights, early stopping."""

from __future__ import annotations

__all__ = ["Best", "average_log_prob", "end_of_epoch", "keep_best_after_failure", "should_stop"]

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from ..flows import Flow, log_prob
from .distributed import World
from .history import History
from .rows import Rows
from .setup import Dequantizer, Prepared


@dataclass
class Best:
    """The weights kept so far and their score (the initial weights score ``-inf``).

    ``state`` is a copy of its own, shared with no flow.
    """

    state: dict
    score: float = -math.inf

    @torch.no_grad()
    def keep(self, flow: Flow, score: float) -> None:
        """Keeps a copy of the flow's weights (its state dict) with their score."""
        state, kept = flow.state_dict(), self.state
        if kept.keys() == state.keys() and all(_same_layout(kept[k], v) for k, v in state.items()):
            # Into the tensors kept before: the same values as a new copy, without a deep
            # copy's allocations and Python walk (a few percent of a small flow's epoch).
            for k, v in state.items():
                kept[k].copy_(v)
        else:
            self.state = copy.deepcopy(state)
        self.score = score


def _same_layout(kept: object, value: object) -> bool:
    """Whether ``value`` can be copied into ``kept`` in place (tensors of one shape, dtype)."""
    return (
        isinstance(kept, Tensor)
        and isinstance(value, Tensor)
        and kept.shape == value.shape
        and kept.dtype == value.dtype
    )


@torch.no_grad()
def average_log_prob(
    flow: Flow,
    rows: Rows,
    world: World,
    noise: tuple[list[int], int] | None = None,
    batch_size: int = 8192,
) -> float:
    """The average log-likelihood of ``rows`` over all processes; ``noise``: (columns, seed)."""
    device = next(flow.parameters()).device
    noisy = None if noise is None else Dequantizer(noise[0], torch.device("cpu"), noise[1])
    total = torch.zeros(2, dtype=torch.float64)
    for x, c in rows.batches(batch_size, world, noise=noisy):
        # One chunk per batch; x on the flow's device keeps the scores there for the sum.
        lp = log_prob(flow, x.to(device), c, chunk=batch_size)
        total += torch.stack([lp.sum().double().cpu(), torch.tensor(len(x), dtype=torch.float64)])
    total = world.sum(total)
    return (total[0] / total[1]).item()


def end_of_epoch(
    epoch: int,
    train_score: float,
    flow: Flow,
    history: History,
    best: Best,
    rows: Prepared,
    world: World,
    scheduler: object,
) -> None:
    """Records the epoch's scores, keeps its weights if best, steps a plateau schedule.

    Without validation rows, the last epoch's weights are the best.
    """
    history.train.append(train_score)
    if rows.held is not None:
        history.valid.append(average_log_prob(flow, rows.held, world, rows.held_noise))
    score = history.train[-1] if rows.held is None else history.valid[-1]
    if rows.held is None or score > best.score:
        best.keep(flow, score)
        history.best_epoch = epoch
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau) and math.isfinite(score):
        scheduler.step(score)


def should_stop(
    epoch: int,
    flow: Flow,
    history: History,
    callbacks: Sequence[Callable],
    world: World,
    patience: int | None,
    validating: bool,
) -> bool:
    """Whether a callback (in any process) asks to stop, or the patience ran out."""
    stop = any([bool(callback(epoch, history, flow)) for callback in callbacks])
    stop = world.any(stop) if world.active else stop
    waited = epoch - history.best_epoch
    return stop or (validating and patience is not None and waited >= patience)


def keep_best_after_failure(
    flow: Flow, best: Best, history: History, done: int, failure: str
) -> None:
    """Restores the best weights after a non-finite loss, gradient or weight.

    Raises:
        FloatingPointError: If no step was good (``done == 0``): no good weights exist.
    """
    flow.load_state_dict(best.state)
    if done == 0:
        raise FloatingPointError(
            f"{failure}, before any good step; the initial weights were restored "
            "(check the data's scale, or lower `lr`)"
        )
    kept = "initial" if history.best_epoch < 0 else f"epoch {history.best_epoch}"
    history.stopped_nonfinite = f"{failure}; the {kept} weights were kept"
