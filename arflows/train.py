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
import gc
import inspect
import itertools
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
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset

from .checkpoint import read_checkpoint, write_checkpoint
from .dequantize import dequantize as uniform_dequantize
from .distributed import World, current_world
from .flows import BatchNorm, Flow, Moments
from .flows.lazy import FlowLogProb
from .parquet import ParquetStream
from .rows import Rows, TensorRows, as_rows, as_tensor, is_fraction

Callback = Callable[[int, "History", Flow], "bool | None"]
# What a checkpoint of fit holds (``seen`` is optional: older checkpoints lack it).
_CHECKPOINT_KEYS = frozenset(
    "options seed model optimizer scheduler best best_score history epoch step total done "
    "finished seconds generator noise_generator".split()
)
_SCHEDULES = ("cosine", "plateau", None)


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

    def __init__(self, columns: list[int], device: torch.device, seed: int):
        self.columns = columns
        # The noise is drawn where the data live.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed % 2**63)

    def __call__(self, x: Tensor) -> Tensor:
        if not self.columns:
            return x
        return uniform_dequantize(x, self.columns, generator=self.generator)


@torch.no_grad()
def _average_log_prob(
    flow: Flow,
    rows: Rows,
    world: World,
    noise: tuple[list[int], int] | None = None,
    batch_size: int = 8192,
) -> float:
    """The average log-likelihood of ``rows`` over all processes; ``noise``: (columns, seed)."""
    device = next(flow.parameters()).device
    noisy = None if noise is None else _Dequantizer(noise[0], torch.device("cpu"), noise[1])
    total = torch.zeros(2, dtype=torch.float64)
    for x, c in rows.batches(batch_size, world, noise=noisy):
        lp = flow(None if c is None else c.to(device)).log_prob(x.to(device))
        total += torch.stack([lp.sum().double().cpu(), torch.tensor(len(x), dtype=torch.float64)])
    total = world.sum(total)
    return (total[0] / total[1]).item()


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


def _held_out(
    valid: object,
    data: Rows,
    generator: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    batch_size: int,
) -> tuple[Rows, Rows | None]:
    """The training rows and the validation rows (``None`` without validation)."""
    if is_fraction(valid):
        if valid == 0:
            return data, None
        if not 0 < valid < 1:
            raise ValueError(f"expected a validation fraction `valid` in [0, 1), got {valid}")
        return data.split(valid, generator)
    if valid is None:
        return data, None
    if isinstance(valid, bool):
        raise TypeError("expected `valid` to be a fraction, rows, (rows, contexts) or None")
    if isinstance(valid, tuple):
        if len(valid) != 2:
            raise ValueError(f"expected `valid=(x_valid, c_valid)`, got a {len(valid)}-tuple")
        x_va, c_va = valid
    else:
        x_va, c_va = valid, None
    if not isinstance(x_va, Tensor | np.ndarray | list):
        held = as_rows("valid", x_va, c_va, dtype, device, batch_size)
        if (held.features, held.context) != (data.features, data.context):
            raise ValueError(
                f"expected validation rows with {data.features} data and {data.context} "
                f"context columns (as the training rows), got {held.features} and "
                f"{held.context}"
            )
        return data, held
    x_va = as_tensor("valid", x_va, dtype, columns=data.features)
    if (data.context == 0) != (c_va is None):
        raise ValueError(
            "expected `valid=(x_valid, c_valid)` with contexts exactly when `context` is given"
        )
    if c_va is not None:
        c_va = as_tensor("valid context", c_va, dtype, rows=len(x_va), columns=data.context)
    if len(x_va) < 1:
        raise ValueError("expected at least 1 validation row, got 0")
    return data, TensorRows(x_va.to(device), None if c_va is None else c_va.to(device))


def _check_columns(flow: Flow, rows: Rows, name: str) -> None:
    """Refuses rows whose column counts differ from those the flow was built for."""
    arguments = flow.config["arguments"]
    for what, count, expected in (
        ("data", rows.features, arguments.get("features")),
        ("context", rows.context, arguments.get("context", 0)),
    ):
        if (
            isinstance(expected, int)
            and count != expected
            and not (what == "context" and flow.embedding is not None)
        ):
            argument = "features" if what == "data" else "context"
            raise ValueError(
                f"expected rows with {expected} {what} columns for `{name}` (the flow's "
                f"`{argument}`), got {count}"
            )


def _refuse_constant(
    constant: Tensor, values: Tensor | None, rows: int, names: Sequence[str] | None
) -> None:
    """Refuses data columns with one value in every training row: they have no density."""
    js = constant.nonzero().flatten().tolist()
    if not js:
        return
    why = (
        "a constant has no density (a point mass: no finite log-density), and fitting one "
        "narrows the flow onto the value without end"
    )
    if len(js) == len(constant) > 1 and values is not None:
        listed = ", ".join(f"{v:g}" for v in values.tolist())
        raise ValueError(f"all {rows} training rows are identical ({listed}): {why}")
    named = names is not None and len(names) == len(constant)
    labels = [f"{j} ({names[j]!r})" if named else f"{j}" for j in js]
    if len(js) == 1:
        what = "one value" if values is None else f"the value {values[js[0]].item():g}"
        head = f"data column {labels[0]} holds {what}"
    else:
        head = f"data columns {', '.join(labels)} each hold one value"
    it = "it" if len(js) == 1 else "them"
    raise ValueError(f"{head} in every training row: {why}; leave {it} out")


def _moments(
    flow: Flow, rows: Rows, world: World, noise: _Dequantizer, batch_size: int
) -> tuple[Moments, Moments | None]:
    """The moments of the (support-mapped) data and contexts of ``rows``, in one pass."""
    device = next(flow.parameters()).device
    mx, mc = Moments(0, torch.zeros(0), torch.zeros(0)), None
    for x, c in rows.batches(max(batch_size, 8192), world, noise=noise):
        bx, bc = flow.moments(x.to(device), None if c is None else c.to(device))
        mx = mx + bx
        mc = bc if mc is None else mc + bc
    parts = world.gather((mx, mc))
    mx, mc = parts[0]
    for px, pc in parts[1:]:
        mx, mc = mx + px, None if mc is None else mc + pc
    return mx, mc


def fit(
    flow: Flow,
    x: Tensor | Dataset | DataLoader | ParquetStream | str | os.PathLike,
    context: Tensor | None = None,
    *,
    valid: float | Tensor | tuple[Tensor, Tensor | None] | Dataset | None = 0.1,
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
    distributed: bool | None = None,
    workers: int = 0,
) -> History:
    r"""Fits a flow by maximum likelihood with AdamW; keeps the best validation weights.

    Minimises :math:`-\frac{1}{N} \sum_n \log p(x_n \mid c_n)` over shuffled mini-batches.
    The rows may be in memory (tensors, arrays) or streamed: a map-style
    :class:`~torch.utils.data.Dataset`, a :class:`~torch.utils.data.DataLoader`, or a Parquet
    file read in batches (a path or a :class:`~arflows.parquet.ParquetStream`), so data with
    more rows than fit in memory can be fitted; the standardisation is then measured in one
    pass over the training rows first.

    In a :mod:`torch.distributed` process group (e.g. under ``torchrun``), the fit is
    data-parallel (DistributedDataParallel): ``batch_size`` is the global batch, each
    process computes the log-likelihood of its share of every batch, and the averaged
    gradients make every process take the step one process would take on the whole batch,
    so all end with the same weights. Only rank 0 writes the checkpoint and shows progress.

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
        x: The data: a tensor or array with shape :math:`(N, D)`, :math:`N \ge 2` (integers
            become floats); a map-style Dataset whose items are ``x_n`` or ``(x_n, c_n)``
            (fetched by index in a seeded order, each process fetching only its share); a
            DataLoader (or IterableDataset) of such batches, iterated as it is (under
            torchrun each process iterates its own, e.g. with a DistributedSampler; they
            stop together at the shortest); a :class:`~arflows.parquet.ParquetStream` or
            the path of a ``.parquet`` file (read by every process, shuffled through a
            buffer, dealt out per batch).
        context: The contexts, with shape :math:`(N, C)`, of in-memory rows (``None`` for
            streamed rows, which carry their own).
        valid: The validation rows: a fraction of ``x`` held out at random (row by row for
            a Parquet file; not possible for a DataLoader); a tensor (or array) with shape
            :math:`(N_v, D)`; a tuple ``(x_valid, c_valid)``; any streamed source as for
            ``x``; or ``None`` (or 0) for no validation.
        epochs: The maximum number of passes over the training rows.
        batch_size: The mini-batch size (larger than the data is fine: one batch); in a
            distributed fit, the rows of all processes together.
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
        distributed: ``None``: data-parallel when a process group of more than one process
            is initialised; ``False``: never (each process fits on its own); ``True``:
            require a process group.
        workers: Worker processes loading the items of a map-style Dataset (0: in this
            process).

    Returns:
        The :class:`History` of the fit.

    Raises:
        ValueError: For bad options or data (fewer than 2 rows, wrong shapes, NaN or inf, a
            data column that is not dequantised and holds one value in every training row:
            it has no density; streamed rows are checked in the standardisation pass).
        TypeError: For data that are not numbers.
        FloatingPointError: If the very first step already has a non-finite loss or
            gradient (no good weights exist); the initial weights are restored first.
    """
    start = time.perf_counter()
    callbacks = tuple(callbacks)
    _check_options(epochs, batch_size, lr, weight_decay, patience, clip_grad, schedule, callbacks)
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
        raise ValueError(f"expected an integer `workers >= 0`, got {workers!r}")
    param = next(flow.parameters(), None)
    if param is None:
        raise ValueError("expected a flow with parameters to fit, got none")
    dtype, device = param.dtype, param.device
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "`distributed=True` needs an initialised process group: launch with torchrun and "
            "call torch.distributed.init_process_group (or arflows.distributed.init_from_env)"
        )
    world = World() if distributed is False else current_world()
    data = as_rows("x", x, context, dtype, device, batch_size, workers)
    _check_columns(flow, data, "x")
    if data.rows is not None and data.rows < 2:
        raise ValueError(f"too few rows: expected `x` with at least 2 rows, got {data.rows}")
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
        missing = _CHECKPOINT_KEYS - set(saved) if isinstance(saved, dict) else _CHECKPOINT_KEYS
        if missing:
            raise ValueError(
                f"cannot resume from {checkpoint}: not a checkpoint of arflows.fit (it has no "
                f"{', '.join(sorted(missing))})"
            )
        seed = saved["seed"]
    elif seed is None:
        seed = int(world.gather(int(torch.randint(2**62, ()).item()))[0])
    generator = torch.Generator()
    generator.manual_seed(seed)
    columns = _columns(dequantize, data.features)
    noise_seed = int(torch.randint(2**62, (), generator=generator))
    # Processes that see different rows draw different noise.
    rank = 0 if data.shared else world.rank
    in_memory = isinstance(data, TensorRows)
    noisy = _Dequantizer(columns, device if in_memory else torch.device("cpu"), noise_seed + rank)
    train, held = _held_out(valid, data, generator, dtype, device, batch_size)
    names = x.columns if isinstance(x, ParquetStream) else getattr(flow, "columns", None)
    if isinstance(train, TensorRows):
        constant = (train.x == train.x[:1]).all(0)
        constant[columns] = False  # dequantisation noise spreads these
        _refuse_constant(constant, train.x[0], train.rows, names)
    held_noise = None
    if held is not None and columns:
        if isinstance(held, TensorRows):
            held = TensorRows(noisy(held.x), held.c)  # one fixed draw
        else:  # the same draw at every evaluation
            held_noise = (columns, (noise_seed + 1_000_003 + rank) % 2**62)
    # The state before any change: what a failure in the first epoch goes back to.
    best, best_score = copy.deepcopy(flow.state_dict()), -math.inf
    if standardize and saved is None:
        if isinstance(train, TensorRows):
            flow.standardize_(noisy(train.x), train.c)
        else:
            mx, mc = _moments(flow, train, world, noisy, batch_size)
            value = mx.mean if flow.support is None else None  # else a support-mapped mean
            _refuse_constant(mx.constant, value, mx.count, names)
            flow.standardize_(mx, mc)

    optimizer = torch.optim.AdamW(flow.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = train.steps(batch_size)
    if world.active and train.uneven:
        # Processes with loaders of their own stop each epoch together, at the shortest.
        counts = world.gather(steps_per_epoch)
        steps_per_epoch = None if None in counts else min(counts)
    scheduler = None
    if schedule == "cosine":
        if steps_per_epoch is None:
            raise ValueError(
                "schedule='cosine' needs the number of batches per epoch, and this DataLoader "
                "has no length: give one with a length, or schedule='plateau' or None"
            )
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
    # Streamed epochs can be long: their bar counts batches, not epochs.
    per_step = not in_memory and steps_per_epoch is not None
    history = History()
    bar = _progress(
        epochs * (steps_per_epoch if per_step else 1),
        progress and world.main,
        "batch" if per_step else "epoch",
    )
    # What must match for a checkpoint to continue this fit.
    options = {
        "rows": train.rows,
        "features": train.features,
        "epochs": epochs,
        "batch_size": batch_size,
        "schedule": schedule,
        "valid": held is not None,
    }
    first, first_step, first_total, first_seen = 0, 0, 0.0, 0
    finished, seconds = False, 0.0
    if saved is not None:
        if saved["options"] != options:
            raise ValueError(
                f"cannot resume from {checkpoint}: it was written by a fit with {saved['options']}"
                f", this one has {options}"
            )
        try:
            flow.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            if scheduler is not None:
                scheduler.load_state_dict(saved["scheduler"])
            best, best_score = saved["best"], saved["best_score"]
            for name, value in saved["history"].items():
                setattr(history, name, value)
            first, first_step, first_total = saved["epoch"], saved["step"], saved["total"]
            first_seen = saved.get("seen", first_step * batch_size)
            finished, seconds = saved["finished"], saved["seconds"]
            # The RNG states at the start of epoch `first`: its noise and order are redrawn.
            generator.set_state(saved["generator"])
            noisy.generator.set_state(saved["noise_generator"].to(noisy.generator.device))
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as error:
            message = " ".join(str(error).split())[:300]
            raise ValueError(
                f"cannot resume from {checkpoint}: it does not fit this flow or fit (another "
                f"architecture?): {type(error).__name__}: {message}"
            ) from None
    log_prob: nn.Module = FlowLogProb(flow)
    if world.active:
        _check_same_everywhere(world, train, options, steps_per_epoch)
        _initialize_from_data(flow, train, batch_size, generator)
        log_prob = _data_parallel(log_prob, flow, device)
    stepper = _Step(log_prob, flow, optimizer, scheduler if schedule == "cosine" else None)
    stepper.clip_grad, stepper.world, stepper.uneven = clip_grad, world, train.uneven
    stepper.tick = bar.update if per_step else None
    if not train.uneven:
        stepper.global_rows = lambda step: min(batch_size, train.rows - step * batch_size)
    if saved is not None:
        stepper.done = saved["done"]

    def save(
        epoch: int, step: int, total: float, seen: int, rng: tuple[Tensor, Tensor], done: bool
    ) -> None:
        if not world.main:
            return  # one writer
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
                "seen": seen,
                "done": stepper.done,
                "finished": done,
                "seconds": seconds + time.perf_counter() - start,
                "generator": rng[0],
                "noise_generator": rng[1],
            },
        )

    # NaN weights must reach the checks as a NaN loss, not as torch's support error.
    with _unvalidated(), contextlib.closing(bar):
        bar.update(first * steps_per_epoch + first_step if per_step else first)
        for epoch in range(first, 0 if finished else epochs):
            rng = (generator.get_state(), noisy.generator.get_state())
            if epoch > first or first_step == 0:
                history.lr.append(optimizer.param_groups[0]["lr"])
            batches = train.batches(batch_size, world, generator, noisy, epoch)
            after_step = None
            if checkpoint is not None and checkpoint_every is not None:

                def after_step(
                    step: int, total: float, seen: int, epoch: int = epoch, rng: tuple = rng
                ) -> None:
                    if stepper.done % checkpoint_every == 0:
                        save(epoch, step + 1, total, seen, rng, False)

            resumed = epoch == first
            total, seen, failure = stepper.epoch(
                batches,
                epoch,
                first_step if resumed else 0,
                first_total if resumed else 0.0,
                first_seen if resumed else 0,
                after_step,
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
            history.train.append(total / seen)
            if held is not None:
                history.valid.append(_average_log_prob(flow, held, world, held_noise))
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
            if not per_step:
                bar.update()
            stop = any([bool(callback(epoch, history, flow)) for callback in callbacks])
            stop = world.any(stop) if world.active else stop
            waited = epoch - history.best_epoch
            if stop or (held is not None and patience is not None and waited >= patience):
                history.stopped_early = epoch < epochs - 1
                finished = True
            if checkpoint is not None and (checkpoint_every is None or finished):
                rng = (generator.get_state(), noisy.generator.get_state())
                save(epoch + 1, 0, 0.0, 0, rng, finished or epoch + 1 == epochs)
            if finished:
                break
        else:
            if checkpoint is not None and checkpoint_every is not None and not finished:
                rng = (generator.get_state(), noisy.generator.get_state())
                save(epochs, 0, 0.0, 0, rng, True)
    history.seconds = seconds + time.perf_counter() - start
    flow.load_state_dict(best)
    if world.active:
        # The DDP wrapper's reducer holds communication work with tensors: free it now, not
        # at interpreter exit, when gloo's threads would abort the process.
        stepper.log_prob = log_prob = None
        gc.collect()
    return history


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


class _Step:
    """Gradient steps on one flow; counts the good ones."""

    def __init__(
        self,
        log_prob: nn.Module,
        flow: Flow,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None,
    ):
        self.log_prob, self.flow, self.optimizer, self.scheduler = (
            log_prob,
            flow,
            optimizer,
            scheduler,
        )
        self.clip_grad: float | None = None
        self.world, self.uneven, self.done = World(), False, 0
        self.tick: Callable[[], object] | None = None  # after each step (a progress bar)
        # The rows of global batch `step` (all processes), when they are known in advance.
        self.global_rows: Callable[[int], int] | None = None

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
            value = -loss.item()
            return loss, lambda: (value, len(x))
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
                x, c = batch
                loss, result = self._loss(x.to(device), None if c is None else c.to(device), step)
                if world.active:  # the sums over processes arrive during the backward pass
                    self.optimizer.zero_grad()
                    loss.backward()
                value, rows = result()
                if not math.isfinite(value):  # all processes see the same sums: all stop here
                    return total, seen, f"the loss became {-value} at epoch {epoch}, step {step}"
                if not world.active:
                    self.optimizer.zero_grad()
                    loss.backward()
                if self.clip_grad is not None:
                    norm = torch.nn.utils.clip_grad_norm_(flow.parameters(), self.clip_grad)
                    if not torch.isfinite(norm):
                        where = f"at epoch {epoch}, step {step}"
                        return total, seen, f"the gradient norm became {norm.item()} {where}"
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
        if not all(p.isfinite().all() for p in flow.parameters()):
            # A finite loss with a non-finite gradient (no clipping) poisons the weights.
            return total, seen, f"the weights became non-finite at epoch {epoch}, step {step}"
        return total, seen, None


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


def _progress(total: int, enabled: bool, unit: str = "epoch") -> object:
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit=unit)
