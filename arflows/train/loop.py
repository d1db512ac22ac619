r"""Maximum-likelihood training of a flow, with validation and early stopping.

:func:`fit` reads top to bottom: check the options, take the rows, split off validation
rows, standardise, then run the epochs (:class:`~arflows.train.step.Step`), scoring each,
keeping the best weights, stopping early and checkpointing as asked.

Example:
    >>> import arflows
    >>> flow = arflows.MAF(2, transforms=2, hidden_features=(16, 16))
    >>> history = fit(flow, torch.randn(200, 2), epochs=3, progress=False)
    >>> len(history.train), history.best_epoch in range(3)
    (3, True)
"""

from __future__ import annotations

__all__ = ["fit"]

import contextlib
import copy
import os
import time
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from ..data import ParquetStream
from ..flows import Flow
from .checkpoint import Saver, read_saved, resume_state
from .history import History
from .setup import (
    check_options,
    draw_seed,
    join_world,
    make_optimizer,
    make_scheduler,
    parameters_of,
    prepare,
    progress_bar,
    standardize_from,
    steps_per_epoch,
    training_rows,
)
from .start import start_from_data
from .step import Step, distribute, global_batch_rows, unvalidated
from .validation import Best, end_of_epoch, keep_best_after_failure, should_stop

Callback = Callable[[int, History, Flow], "bool | None"]


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
    warmup: int = 0,
    standardize: bool = True,
    initialize: bool = True,
    dequantize: Sequence[int] | Mapping[int, float] | None = None,
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
    file read in batches (a path or a :class:`~arflows.data.ParquetStream`), so data with
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
            stop together at the shortest); a :class:`~arflows.data.ParquetStream` or
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
        warmup: Optimiser steps over which the learning rate of the cosine schedule rises
            linearly from ``lr / 100`` to ``lr`` (0: none).
        standardize: Whether to store the training rows' standardisation in the flow first.
        initialize: Whether a flow with parts fitted to data before training (a
            :class:`~arflows.flows.GaussianMixture` base, :class:`~arflows.flows.MarginalSpline`
            layers) starts at that classical fit (:func:`~arflows.flows.initialize_`, with
            the mixture's size chosen on the validation rows; in-memory rows, with
            ``standardize``). The starting point is then scored on the validation rows and
            kept unless an epoch beats it (``best_epoch`` -1), so the fit never ends below
            its start; see :attr:`History.start`. Other flows are unaffected.
        dequantize: The columns of discrete data to dequantise: indices of integer-valued
            columns, which get :math:`U[0, 1)` noise, or ``{column: step}`` for columns on
            a grid :math:`v_0 + h k` (:func:`arflows.data.grid_columns`), which get
            :math:`h \, U[0, 1)`, so that each value :math:`v` fills its cell
            :math:`[v, v + h)`. Training rows get fresh noise every epoch, validation rows
            one fixed draw. The log-likelihoods of the history are then log-densities of
            the dequantised (continuous) values, in expectation over the noise at most
            :math:`\log P(v) - \sum_j \log h_j` with :math:`P(v)` the probability of the
            cell (Jensen): they move by :math:`-\log h` with the step. The discrete
            log-probabilities of the grid values, comparable with any discrete model, are
            those of :func:`arflows.data.discrete_log_prob` with the same steps.
        seed: Seeds the split, the batch order and the dequantisation noise (``None``:
            drawn from torch's global generator). The same seed and initial weights give
            bit-identical weights on CPU.
        progress: Whether to show a tqdm progress bar (only when stderr is a terminal).
        callbacks: Functions ``callback(epoch, history, flow)`` called after each epoch
            (with the epoch's weights, before early stopping is checked); one returning
            ``True`` stops training.
        checkpoint: A file to write the whole training state to (weights, optimizer and
            scheduler states, epoch and step, history, best weights and score, RNG states),
            atomically (:func:`arflows.train.write_checkpoint`); ``None``: none.
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
    check_options(
        epochs, batch_size, lr, weight_decay, patience, clip_grad, schedule, callbacks, workers,
        warmup,
    )  # fmt: skip
    dtype, device = parameters_of(flow)
    world = join_world(distributed, device)
    data = training_rows(flow, x, context, dtype, device, batch_size, workers)
    saved = read_saved(checkpoint, checkpoint_every, resume)
    seed = saved["seed"] if saved is not None else draw_seed(seed, world)
    generator = torch.Generator()
    generator.manual_seed(seed)
    rows = prepare(flow, x, data, valid, dequantize, generator, world, batch_size)
    train = rows.train
    history = History()
    # The state before any change: what a failure in the first epoch goes back to.
    best = Best(copy.deepcopy(flow.state_dict()))
    if standardize and saved is None:
        started = start_from_data(flow, rows, world, history, seed) if initialize else None
        if started is None:
            standardize_from(flow, rows, world, batch_size)
        else:
            best = started  # the classical start competes with the epochs

    optimizer = make_optimizer(flow, lr, weight_decay)
    steps = steps_per_epoch(train, world, batch_size)
    scheduler = make_scheduler(schedule, optimizer, epochs, steps, lr, patience, warmup)
    # Streamed epochs can be long: their bar counts batches, not epochs.
    per_step = not rows.in_memory and steps is not None
    bar = progress_bar(
        epochs * (steps if per_step else 1),
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
        "valid": rows.held is not None,
    }
    generators = (generator, rows.noise.generator)
    begin = resume_state(
        saved, checkpoint, options, flow, optimizer, scheduler, best, history, generators,
        batch_size,
    )  # fmt: skip
    stepper = Step(
        distribute(flow, train, world, options, steps, batch_size, generator, device),
        flow,
        optimizer,
        scheduler if schedule == "cosine" else None,
        clip_grad=clip_grad,
        world=world,
        uneven=train.uneven,
        tick=bar.update if per_step else None,
        global_rows=None if train.uneven else global_batch_rows(train.rows, batch_size),
        done=begin.done,
    )
    saver = Saver(
        checkpoint, checkpoint_every, world, options, seed, flow, optimizer, scheduler,
        best=best, history=history, stepper=stepper, generators=generators,
        seconds=begin.seconds, started=start,
    )  # fmt: skip

    finished = begin.finished
    # NaN weights must reach the checks as a NaN loss, not as torch's support error.
    with unvalidated(), contextlib.closing(bar):
        bar.update(begin.epoch * steps + begin.step if per_step else begin.epoch)
        for epoch in range(begin.epoch, 0 if finished else epochs):
            rng = saver.rng()  # the epoch's order and noise, drawn again on resuming
            resumed = epoch == begin.epoch
            if not resumed or begin.step == 0:
                history.lr.append(optimizer.param_groups[0]["lr"])
            total, seen, failure = stepper.epoch(
                train.batches(batch_size, world, generator, rows.noise, epoch),
                epoch,
                *((begin.step, begin.total, begin.seen) if resumed else (0, 0.0, 0)),
                saver.after_step(epoch, rng),
            )
            if failure is not None:
                keep_best_after_failure(flow, best, history, stepper.done, failure)
                break
            end_of_epoch(epoch, total / seen, flow, history, best, rows, world, scheduler)
            postfix = {"train": f"{history.train[-1]:.3f}"}
            if rows.held is not None:
                postfix["valid"] = f"{history.valid[-1]:.3f}"
            bar.set_postfix(postfix)
            if not per_step:
                bar.update()
            if should_stop(
                epoch, flow, history, callbacks, world, patience, rows.held is not None
            ):
                history.stopped_early = epoch < epochs - 1
                finished = True
            saver.end_of_epoch(epoch, epochs, finished)
            if finished:
                break
        else:
            saver.end_of_fit(epochs, finished)
    history.seconds = begin.seconds + time.perf_counter() - start
    flow.load_state_dict(best.state)
    if world.active:
        stepper.release()
    return history
