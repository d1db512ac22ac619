r"""Maximum-likelihood training of a flow, with validation and early stopping.

Example:
    >>> import arflows
    >>> flow = arflows.MAF(2, transforms=2, hidden_features=(16, 16))
    >>> history = fit(flow, torch.randn(200, 2), epochs=3, progress=False)
    >>> len(history.train), history.best_epoch in range(3)
    (3, True)
"""

from __future__ import annotations

__all__ = ["History", "fit"]

import contextlib
import copy
import math
import numbers
import operator
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.distributions import Distribution

from .checkpoint import read_checkpoint, write_checkpoint
from .dequantize import dequantize as uniform_dequantize
from .flows import Flow

Callback = Callable[[int, "History", Flow], "bool | None"]
_SCHEDULES = ("cosine", "plateau", None)
_NUMBER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


@dataclass
class History:
    r"""What :func:`fit` did: average log-likelihoods (nats per row of the data) per epoch.

    The log-likelihoods are those of the data as given (the flow's stored standardisation
    is part of the density), of the dequantised data where columns are dequantised.

    Attributes:
        train: The training average log-likelihood of each epoch (running, over batches).
        valid: The validation average log-likelihood after each epoch (empty without
            validation).
        lr: The learning rate at the start of each epoch.
        best_epoch: The epoch whose weights were kept: the best validation score, or the
            last completed epoch without validation; -1 for the initial weights.
        stopped_early: Whether training ended before ``epochs`` because the patience ran
            out or a callback asked to stop.
        stopped_nonfinite: ``None``, or the message saying where the loss (or gradient)
            became NaN or infinite; training stopped there and the weights of
            ``best_epoch`` were kept.
        seconds: The wall-clock duration of the whole fit, in seconds.
    """

    train: list[float] = field(default_factory=list)
    valid: list[float] = field(default_factory=list)
    lr: list[float] = field(default_factory=list)
    best_epoch: int = -1
    stopped_early: bool = False
    stopped_nonfinite: str | None = None
    seconds: float = 0.0


def _as_data(
    name: str, x: object, dtype: torch.dtype, rows: int | None = None, columns: int | None = None
) -> Tensor:
    """``x`` as a finite ``(rows, columns)`` tensor of ``dtype``; integers become floats."""
    if not isinstance(x, Tensor):
        if isinstance(x, str | bytes):
            raise TypeError(f"expected `{name}` to hold numbers, got a {type(x).__name__}")
        try:
            array = np.asarray(x)
        except ValueError as error:
            raise ValueError(f"expected `{name}` with shape (rows, columns): {error}") from None
        if array.dtype.kind not in "biuf":
            raise TypeError(
                f"expected `{name}` to hold numbers, got a {type(x).__name__} of dtype "
                f"{array.dtype}"
            )
        # A copy: the caller's array may be read-only (a memory map) or change later.
        x = torch.tensor(array)
    elif x.is_complex() or not (x.is_floating_point() or x.dtype in _NUMBER_DTYPES):
        raise TypeError(f"expected `{name}` to hold real numbers, got dtype {x.dtype}")
    if x.dim() != 2:
        raise ValueError(f"expected `{name}` with shape (rows, columns), got {tuple(x.shape)}")
    if rows is not None and x.shape[0] != rows:
        raise ValueError(f"expected `{name}` with {rows} rows (as x), got {x.shape[0]}")
    if columns is not None and x.shape[1] != columns:
        raise ValueError(f"expected `{name}` with {columns} columns, got {x.shape[1]}")
    x = x.to(dtype)
    bad = ~torch.isfinite(x)
    if bad.any():
        row, col = (int(i) for i in bad.nonzero()[0])
        raise ValueError(f"`{name}` holds NaN or inf ({dtype}), first at row {row}, column {col}")
    return x


def _held_out(
    valid: object, x: Tensor, c: Tensor | None, generator: torch.Generator
) -> tuple[tuple[Tensor, Tensor | None], tuple[Tensor, Tensor | None] | None]:
    """The training rows and the validation rows (``None`` without validation)."""
    if isinstance(valid, numbers.Real) and not isinstance(valid, bool):
        if valid == 0:
            return (x, c), None
        if not 0 < valid < 1:
            raise ValueError(f"expected a validation fraction `valid` in [0, 1), got {valid}")
        n_valid = max(1, round(valid * len(x)))
        if n_valid >= len(x):
            raise ValueError(f"too few rows ({len(x)}) to hold out a validation fraction {valid}")
        perm = torch.randperm(len(x), generator=generator).to(x.device)
        tr, va = perm[n_valid:], perm[:n_valid]
        return (x[tr], None if c is None else c[tr]), (x[va], None if c is None else c[va])
    if valid is None:
        return (x, c), None
    if isinstance(valid, bool):
        raise TypeError("expected `valid` to be a fraction, rows, (rows, contexts) or None")
    if isinstance(valid, tuple):
        if len(valid) != 2:
            raise ValueError(f"expected `valid=(x_valid, c_valid)`, got a {len(valid)}-tuple")
        x_va, c_va = valid
    else:
        x_va, c_va = valid, None
    x_va = _as_data("valid", x_va, x.dtype, columns=x.shape[1])
    if (c is None) != (c_va is None):
        raise ValueError(
            "expected `valid=(x_valid, c_valid)` with contexts exactly when `context` is given"
        )
    if c is not None:
        c_va = _as_data("valid context", c_va, x.dtype, rows=len(x_va), columns=c.shape[1])
    if len(x_va) < 1:
        raise ValueError("expected at least 1 validation row, got 0")
    return (x, c), (x_va.to(x.device), None if c_va is None else c_va.to(x.device))


def _columns(dequantize: Sequence[int] | None, features: int) -> list[int]:
    """The distinct non-negative column indices to dequantise."""
    if dequantize is None:
        return []
    if isinstance(dequantize, str | bytes) or not hasattr(dequantize, "__iter__"):
        raise TypeError(f"expected `dequantize` to be column indices, got {dequantize!r}")
    columns = set()
    for i in dequantize:
        try:
            i = operator.index(i)
        except TypeError:
            raise TypeError(f"expected integer columns in `dequantize`, got {i!r}") from None
        if not -features <= i < features:
            raise ValueError(
                f"expected `dequantize` columns in [0, {features}) (the data's), got {i}"
            )
        columns.add(i % features)
    return sorted(columns)


class _Dequantizer:
    """Adds fresh :math:`U[0, 1)` noise to ``columns`` on each call (nothing without columns)."""

    def __init__(self, columns: list[int], device: torch.device, generator: torch.Generator):
        self.columns = columns
        # The noise is drawn where the data live, from a generator seeded by the main one.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(int(torch.randint(2**62, (), generator=generator)))

    def __call__(self, x: Tensor) -> Tensor:
        if not self.columns:
            return x
        return uniform_dequantize(x, self.columns, generator=self.generator)


@torch.no_grad()
def _average_log_prob(flow: Flow, x: Tensor, c: Tensor | None, batch_size: int = 8192) -> float:
    total = 0.0
    for i in range(0, len(x), batch_size):
        cb = None if c is None else c[i : i + batch_size]
        total += flow(cb).log_prob(x[i : i + batch_size]).sum().item()
    return total / len(x)


def _check_options(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int | None,
    clip_grad: float | None,
    schedule: str | None,
    callbacks: Sequence[Callback],
) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"expected an integer `{name} >= 1`, got {value!r}")
    if not isinstance(lr, numbers.Real) or not 0 < lr < math.inf:
        raise ValueError(f"expected a finite `lr > 0`, got {lr!r}")
    if not isinstance(weight_decay, numbers.Real) or not 0 <= weight_decay < math.inf:
        raise ValueError(f"expected a finite `weight_decay >= 0`, got {weight_decay!r}")
    if patience is not None and (not isinstance(patience, numbers.Integral) or patience < 1):
        raise ValueError(f"expected an integer `patience >= 1` or None, got {patience!r}")
    if clip_grad is not None and (not isinstance(clip_grad, numbers.Real) or not clip_grad > 0):
        raise ValueError(f"expected `clip_grad > 0` or None, got {clip_grad!r}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"expected `schedule` in {_SCHEDULES}, got {schedule!r}")
    if not all(callable(callback) for callback in callbacks):
        raise TypeError(f"expected `callbacks` to be a sequence of callables, got {callbacks!r}")


def fit(
    flow: Flow,
    x: Tensor,
    context: Tensor | None = None,
    *,
    valid: float | Tensor | tuple[Tensor, Tensor | None] | None = 0.1,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    patience: int | None = 10,
    clip_grad: float | None = 5.0,
    schedule: str | None = "cosine",
    standardize: bool = True,
    dequantize: Sequence[int] | None = None,
    seed: int | None = 0,
    progress: bool = True,
    callbacks: Sequence[Callback] = (),
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
) -> History:
    r"""Fits a flow by maximum likelihood with AdamW; keeps the best validation weights.

    Minimises :math:`-\frac{1}{N} \sum_n \log p(x_n \mid c_n)` over shuffled mini-batches.
    After each epoch the held-out average log-likelihood is measured; training stops after
    ``patience`` epochs without improvement, and the best weights are restored at the end.
    Without validation there is no early stopping and the last weights are kept.

    With ``standardize`` the flow first stores the training rows' means and scales
    (:meth:`~arflows.Flow.standardize_`): the flow then sees standardised data, while its
    densities (with the standardisation's log-determinant) and samples stay those of the
    raw data.

    A NaN or infinite loss (or gradient norm, with clipping) stops training at once: the
    weights of ``best_epoch`` (the initial ones if no epoch completed) are restored and
    :attr:`History.stopped_nonfinite` names the epoch and step. The weights left in the flow
    are always finite ones that were kept, never the diverged ones. (During the fit, torch's
    distribution argument checks are off, the data having been checked up front, so that
    diverging weights show as a NaN loss rather than a support error.)

    Args:
        flow: The flow to fit, in place; the data follow its parameters' dtype and device.
        x: The data, with shape :math:`(N, D)`, :math:`N \ge 2` (integers become floats).
        context: The contexts, with shape :math:`(N, C)`, for conditional flows.
        valid: The validation rows: a fraction of ``x`` held out at random; a tensor (or
            array) with shape :math:`(N_v, D)`; a tuple ``(x_valid, c_valid)``; or ``None``
            (or 0) for no validation.
        epochs: The maximum number of passes over the training rows.
        batch_size: The mini-batch size (larger than the data is fine: one batch).
        lr: The (initial) learning rate.
        weight_decay: AdamW's decoupled weight decay.
        patience: Epochs without validation improvement before stopping (``None``: never).
        clip_grad: The maximum norm of the gradient of all parameters (``None``: no clip).
        schedule: ``"cosine"``: the learning rate decays from ``lr`` to ``lr / 100`` along a
            half cosine over all steps of ``epochs`` epochs; ``"plateau"``: it halves after
            ``max(1, patience // 2)`` epochs (5 without patience) in which the validation
            score (the training score without validation) gained less than 0.001 nats;
            ``None``: constant.
        standardize: Whether to store the training rows' standardisation in the flow first.
        dequantize: Column indices of integer-valued data to dequantise: training rows get
            fresh :math:`U[0, 1)` noise every epoch, validation rows one fixed draw.
        seed: Seeds the split, the batch order and the dequantisation noise (``None``:
            drawn from torch's global generator). The same seed and initial weights give
            bit-identical weights on CPU.
        progress: Whether to show a tqdm progress bar (only when stderr is a terminal).
        callbacks: Functions ``callback(epoch, history, flow)`` called after each epoch
            (with the epoch's weights, before early stopping is checked); one returning
            ``True`` stops training.
        checkpoint: A file to write the whole training state to (weights, optimizer and
            scheduler states, epoch and step, history, best weights and score, RNG states),
            atomically (:func:`arflows.checkpoint.write_checkpoint`); ``None``: none.
        checkpoint_every: Write the checkpoint every this many gradient steps (and at the
            end of the fit); ``None``: after every epoch.
        resume: Continue from ``checkpoint`` if the file exists (start afresh otherwise).
            The data and options must be those of the interrupted fit; the checkpoint's seed
            is used. On CPU the resumed fit ends with the same weights and history, bit for
            bit, as an uninterrupted one (callbacks are not re-run for finished epochs).

    Returns:
        The :class:`History` of the fit.

    Raises:
        ValueError: For bad options or data (fewer than 2 rows, wrong shapes, NaN or inf).
        TypeError: For data that are not numbers.
        FloatingPointError: If the very first step already has a non-finite loss or
            gradient (no good weights exist); the initial weights are restored first.
    """
    start = time.perf_counter()
    callbacks = tuple(callbacks)
    _check_options(epochs, batch_size, lr, weight_decay, patience, clip_grad, schedule, callbacks)
    param = next(flow.parameters(), None)
    if param is None:
        raise ValueError("expected a flow with parameters to fit, got none")
    x = _as_data("x", x, param.dtype).to(param.device)
    if len(x) < 2:
        raise ValueError(f"too few rows: expected `x` with at least 2 rows, got {len(x)}")
    c = None
    if context is not None:
        c = _as_data("context", context, param.dtype, rows=len(x)).to(param.device)
    if checkpoint_every is not None and (
        not isinstance(checkpoint_every, numbers.Integral) or checkpoint_every < 1
    ):
        raise ValueError(
            f"expected an integer `checkpoint_every >= 1` or None, got {checkpoint_every!r}"
        )
    if resume and checkpoint is None:
        raise ValueError("`resume=True` needs a `checkpoint` file to resume from, got None")
    saved = read_checkpoint(checkpoint) if resume and Path(checkpoint).is_file() else None
    if saved is not None:
        seed = saved["seed"]
    elif seed is None:
        seed = int(torch.randint(2**62, ()).item())
    generator = torch.Generator()
    generator.manual_seed(seed)
    noisy = _Dequantizer(_columns(dequantize, x.shape[1]), x.device, generator)
    (x_tr, c_tr), held = _held_out(valid, x, c, generator)
    if held is not None:
        held = (noisy(held[0]), held[1])
    # The state before any change: what a failure in the first epoch goes back to.
    best, best_score = copy.deepcopy(flow.state_dict()), -math.inf
    if standardize:
        flow.standardize_(noisy(x_tr), c_tr)

    optimizer = torch.optim.AdamW(flow.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = math.ceil(len(x_tr) / batch_size)
    scheduler = None
    if schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, epochs * steps_per_epoch, lr / 100
        )
    elif schedule == "plateau":
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=0.5,
            patience=max(1, (patience or 10) // 2),
            threshold=1e-3,  # nats per row
            threshold_mode="abs",
        )
    history, bar = History(), _progress(epochs, progress)
    stepper = _Step(flow, optimizer, scheduler if schedule == "cosine" else None, clip_grad)
    # What must match for a checkpoint to continue this fit.
    options = {
        "rows": len(x_tr),
        "features": x.shape[1],
        "epochs": epochs,
        "batch_size": batch_size,
        "schedule": schedule,
        "valid": held is not None,
    }
    first, first_step, first_total, finished, seconds = 0, 0, 0.0, False, 0.0
    if saved is not None:
        if saved["options"] != options:
            raise ValueError(
                f"cannot resume from {checkpoint}: it was written by a fit with {saved['options']}"
                f", this one has {options}"
            )
        flow.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        best, best_score = saved["best"], saved["best_score"]
        for name, value in saved["history"].items():
            setattr(history, name, value)
        first, first_step, first_total = saved["epoch"], saved["step"], saved["total"]
        finished, seconds, stepper.done = saved["finished"], saved["seconds"], saved["done"]
        # The RNG states at the start of epoch `first`: its noise and order are redrawn.
        generator.set_state(saved["generator"])
        noisy.generator.set_state(saved["noise_generator"].to(noisy.generator.device))

    def save(epoch: int, step: int, total: float, rng: tuple[Tensor, Tensor], done: bool) -> None:
        write_checkpoint(
            checkpoint,
            {
                "options": options,
                "seed": seed,
                "model": flow.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": None if scheduler is None else scheduler.state_dict(),
                "best": best,
                "best_score": best_score,
                "history": vars(history),
                "epoch": epoch,
                "step": step,
                "total": total,
                "done": stepper.done,
                "finished": done,
                "seconds": seconds + time.perf_counter() - start,
                "generator": rng[0],
                "noise_generator": rng[1],
            },
        )

    # NaN weights must reach the checks as a NaN loss, not as torch's support error.
    with _unvalidated(), contextlib.closing(bar):
        bar.update(first)
        for epoch in range(first, 0 if finished else epochs):
            rng = (generator.get_state(), noisy.generator.get_state())
            if epoch > first or first_step == 0:
                history.lr.append(optimizer.param_groups[0]["lr"])
            x_epoch = noisy(x_tr)
            order = torch.randperm(len(x_tr), generator=generator).to(x_tr.device)
            batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
            after_step = None
            if checkpoint is not None and checkpoint_every is not None:

                def after_step(
                    step: int, total: float, epoch: int = epoch, rng: tuple = rng
                ) -> None:
                    if stepper.done % checkpoint_every == 0:
                        save(epoch, step + 1, total, rng, False)

            start_step, start_total = (first_step, first_total) if epoch == first else (0, 0.0)
            total, failure = stepper.epoch(
                x_epoch, c_tr, batches, epoch, start_step, start_total, after_step
            )
            if failure is not None:
                flow.load_state_dict(best)
                if stepper.done == 0:
                    raise FloatingPointError(
                        f"{failure}, before any good step; the initial weights were restored "
                        "(check the data's scale, or lower `lr`)"
                    )
                kept = "initial" if history.best_epoch < 0 else f"epoch {history.best_epoch}"
                history.stopped_nonfinite = f"{failure}; the {kept} weights were kept"
                break
            history.train.append(total / len(x_tr))
            if held is not None:
                history.valid.append(_average_log_prob(flow, *held))
            score = history.train[-1] if held is None else history.valid[-1]
            if held is None or score > best_score:
                best, best_score = copy.deepcopy(flow.state_dict()), score
                history.best_epoch = epoch
            if schedule == "plateau" and math.isfinite(score):
                scheduler.step(score)
            postfix = {"train": f"{history.train[-1]:.3f}"}
            if held is not None:
                postfix["valid"] = f"{history.valid[-1]:.3f}"
            bar.set_postfix(postfix)
            bar.update()
            stop = [bool(callback(epoch, history, flow)) for callback in callbacks]
            waited = epoch - history.best_epoch
            if any(stop) or (held is not None and patience is not None and waited >= patience):
                history.stopped_early = epoch < epochs - 1
                finished = True
            if checkpoint is not None and (checkpoint_every is None or finished):
                rng = (generator.get_state(), noisy.generator.get_state())
                save(epoch + 1, 0, 0.0, rng, finished or epoch + 1 == epochs)
            if finished:
                break
        else:
            if checkpoint is not None and checkpoint_every is not None and not finished:
                rng = (generator.get_state(), noisy.generator.get_state())
                save(epochs, 0, 0.0, rng, True)
    history.seconds = seconds + time.perf_counter() - start
    flow.load_state_dict(best)
    return history


class _Step:
    """Gradient steps on one flow; counts the good ones."""

    def __init__(
        self,
        flow: Flow,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
        clip_grad: float | None,
    ):
        self.flow, self.optimizer, self.scheduler = flow, optimizer, scheduler
        self.clip_grad, self.done = clip_grad, 0

    def epoch(
        self,
        x: Tensor,
        c: Tensor | None,
        batches: list[Tensor],
        epoch: int,
        start: int = 0,
        total: float = 0.0,
        after_step: Callable[[int, float], None] | None = None,
    ) -> tuple[float, str | None]:
        """A pass over ``batches[start:]`` of row indices: (sum of log-likelihoods, failure).

        ``total`` is the sum so far (of the batches before ``start``); ``after_step(step,
        total)`` is called after each good step.
        """
        flow = self.flow
        flow.train()
        step = start
        try:
            for step, idx in enumerate(batches[start:], start):
                loss = -flow(None if c is None else c[idx]).log_prob(x[idx]).mean()
                if not torch.isfinite(loss):
                    return total, f"the loss became {loss.item()} at epoch {epoch}, step {step}"
                self.optimizer.zero_grad()
                loss.backward()
                if self.clip_grad is not None:
                    norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), self.clip_grad)
                    if not torch.isfinite(norm):
                        return total, (
                            f"the gradient norm became {norm.item()} at epoch {epoch}, step {step}"
                        )
                self.optimizer.step()
                if self.scheduler is not None:
                    self.scheduler.step()
                total -= loss.item() * len(idx)
                self.done += 1
                if after_step is not None:
                    after_step(step, total)
        finally:
            flow.eval()
        if not all(p.isfinite().all() for p in flow.parameters()):
            # A finite loss with a non-finite gradient (no clipping) poisons the weights.
            return total, f"the weights became non-finite at epoch {epoch}, step {step}"
        return total, None


@contextlib.contextmanager
def _unvalidated() -> Iterator[None]:
    """Distributions built inside skip argument validation (the data were checked already)."""
    previous = Distribution._validate_args
    Distribution.set_default_validate_args(False)
    try:
        yield
    finally:
        Distribution.set_default_validate_args(previous)


class _NoBar:
    """Stands in for a progress bar when there is none to show."""

    def set_postfix(self, postfix: dict) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> object:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit="epoch")
