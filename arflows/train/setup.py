r"""What :func:`arflows.fit` does before its first step: options, rows, noise, statistics.

Options are checked, the rows are taken from wherever they are (:mod:`.rows`) and split into
training and validation rows, dequantisation noise is set up, columns without a density are
refused, the flow's standardisation is measured, and the optimizer's schedule and the
progress bar are made.
"""

from __future__ import annotations

__all__ = [
    "Dequantizer",
    "Prepared",
    "check_options",
    "draw_seed",
    "join_world",
    "make_optimizer",
    "make_scheduler",
    "parameters_of",
    "prepare",
    "progress_bar",
    "standardize_from",
    "steps_per_epoch",
    "training_rows",
]

import itertools
import math
import numbers
import operator
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor

from ..data import ParquetStream
from ..data import dequantize as uniform_dequantize
from ..flows import Flow, Moments
from .distributed import World, current_world
from .rows import Rows, TensorRows, as_rows, as_tensor, is_fraction

_SCHEDULES = ("cosine", "plateau", None)
_FUSED_DEVICES = ("cpu", "cuda")
_FUSED_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_options(
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int | None,
    clip_grad: float | None,
    schedule: str | None,
    callbacks: Sequence[Callable],
    workers: int,
    warmup: int = 0,
) -> None:
    """Refuses bad options, each with an error naming it."""
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
    if isinstance(workers, bool) or not isinstance(workers, numbers.Integral) or workers < 0:
        raise ValueError(f"expected an integer `workers >= 0`, got {workers!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, numbers.Integral) or warmup < 0:
        raise ValueError(f"expected an integer `warmup >= 0`, got {warmup!r}")


def parameters_of(flow: Flow) -> tuple[torch.dtype, torch.device]:
    """The dtype and device of the flow's parameters, which the rows follow.

    Raises:
        ValueError: For a flow without parameters, or with parameters and buffers on more
            than one device (torch would fail inside a layer, naming neither).
    """
    param = next(flow.parameters(), None)
    if param is None:
        raise ValueError("expected a flow with parameters to fit, got none")
    devices = {t.device for t in itertools.chain(flow.parameters(), flow.buffers())}
    if len(devices) > 1:
        listed = ", ".join(sorted(map(str, devices)))
        raise ValueError(
            f"expected a flow on one device, got parameters and buffers on {listed}; move "
            f"it with flow.to(device)"
        )
    return param.dtype, param.device


def join_world(distributed: bool | None, device: torch.device | None = None) -> World:
    """The processes taking part: the initialised process group unless ``False``.

    Args:
        distributed: As :func:`arflows.fit` takes it.
        device: The flow's device: a data-parallel fit over NCCL needs it to be this
            process's GPU (``None``: not checked).
    """
    if distributed and not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            "`distributed=True` needs an initialised process group: launch with torchrun and "
            "call torch.distributed.init_process_group (or arflows.train.init_from_env)"
        )
    world = World() if distributed is False else current_world()
    nccl = world.active and world.device.type == "cuda"
    if nccl and device is not None and device != world.device:
        # NCCL sums the gradients where they are: on this process's GPU, nowhere else.
        raise ValueError(
            f"a data-parallel fit over NCCL needs the flow on this process's GPU "
            f"({world.device}), got it on {device}; move it with flow.to({str(world.device)!r})"
        )
    return world


def training_rows(
    flow: Flow,
    x: object,
    context: object,
    dtype: torch.dtype,
    device: torch.device,
    batch_size: int,
    workers: int,
) -> Rows:
    """The rows of ``x`` (and ``context``), refused unless they fit the flow."""
    data = as_rows("x", x, context, dtype, device, batch_size, workers)
    _check_columns(flow, data, "x")
    if data.rows is not None and data.rows < 2:
        raise ValueError(f"too few rows: expected `x` with at least 2 rows, got {data.rows}")
    return data


def draw_seed(seed: int | None, world: World) -> int:
    """``seed``, or one drawn from torch's global generator (rank 0's in every process)."""
    if seed is None:
        seed = int(world.gather(int(torch.randint(2**62, ()).item()))[0])
    return seed


@dataclass
class Prepared:
    """The rows a fit passes over, and the noise it adds to them.

    Attributes:
        train: The training rows.
        held: The validation rows (``None`` without validation); dequantised in-memory
            rows hold their one fixed draw of noise.
        noise: Adds fresh noise to the dequantised columns of each training batch.
        held_noise: ``(columns, seed)`` of the noise of streamed validation rows, drawn the
            same at every evaluation, or ``None``; ``columns`` as :class:`Dequantizer`
            takes them (indices, or ``{column: step}``).
        in_memory: Whether the rows are tensors (not streamed).
        names: The data columns' names, for messages (``None`` if unknown).
    """

    train: Rows
    held: Rows | None
    noise: Dequantizer
    held_noise: tuple[list[int] | dict[int, float], int] | None
    in_memory: bool
    names: Sequence[str] | None


def prepare(
    flow: Flow,
    x: object,
    data: Rows,
    valid: object,
    dequantize: Sequence[int] | Mapping[int, float] | None,
    generator: torch.Generator,
    world: World,
    batch_size: int,
) -> Prepared:
    """Splits off the validation rows, sets up the noise, refuses constant columns."""
    dtype, device = parameters_of(flow)
    columns = _columns(dequantize, data.features)
    noise_seed = int(torch.randint(2**62, (), generator=generator))
    # Processes that see different rows draw different noise.
    rank = 0 if data.shared else world.rank
    in_memory = isinstance(data, TensorRows)
    noise = Dequantizer(columns, device if in_memory else torch.device("cpu"), noise_seed + rank)
    train, held = _held_out(valid, data, generator, dtype, device, batch_size)
    names = x.columns if isinstance(x, ParquetStream) else flow.columns
    if isinstance(train, TensorRows):
        constant = (train.x == train.x[:1]).all(0)
        constant[list(columns)] = False  # dequantisation noise spreads these
        _refuse_constant(constant, train.x[0], train.rows, names)
    held_noise = None
    if held is not None and columns:
        if isinstance(held, TensorRows):
            held = TensorRows(noise(held.x), held.c)  # one fixed draw
        else:  # the same draw at every evaluation
            held_noise = (columns, (noise_seed + 1_000_003 + rank) % 2**62)
    return Prepared(train, held, noise, held_noise, in_memory, names)


def standardize_from(flow: Flow, rows: Prepared, world: World, batch_size: int) -> None:
    """Stores the training rows' standardisation in the flow (one pass if streamed)."""
    train, noise = rows.train, rows.noise
    if isinstance(train, TensorRows):
        flow.standardize_(noise(train.x), train.c)
        return
    mx, mc = _moments(flow, train, world, noise, batch_size)
    value = mx.mean if flow.support is None else None  # else a support-mapped mean
    _refuse_constant(mx.constant, value, mx.count, rows.names)
    flow.standardize_(mx, mc)


def steps_per_epoch(train: Rows, world: World, batch_size: int) -> int | None:
    """The batches of one epoch (``None`` if unknown)."""
    steps = train.steps(batch_size)
    if world.active and train.uneven:
        # Processes with loaders of their own stop each epoch together, at the shortest.
        counts = world.gather(steps)
        steps = None if None in counts else min(counts)
    return steps


def make_optimizer(flow: Flow, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """The AdamW optimizer of the flow's parameters that :func:`arflows.fit` steps.

    The fused implementation (one kernel for all parameters) where torch has it for the
    parameters' device and dtype: the same update up to rounding (about 1e-7 apart after
    many steps), and a tenth to a fifth less time per step of a small flow on CPU, where
    torch's default takes a few kernels per parameter. Elsewhere torch's default.
    """
    params = list(flow.parameters())
    if all(p.device.type in _FUSED_DEVICES and p.dtype in _FUSED_DTYPES for p in params):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except RuntimeError:  # torch < 2.4 fuses on CUDA only
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def make_scheduler(
    schedule: str | None,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    steps: int | None,
    lr: float,
    patience: int | None,
    warmup: int = 0,
) -> torch.optim.lr_scheduler.LRScheduler | torch.optim.lr_scheduler.ReduceLROnPlateau | None:
    """The learning rate schedule named by ``schedule`` (see :func:`arflows.fit`)."""
    if schedule == "cosine":
        if steps is None:
            raise ValueError(
                "schedule='cosine' needs the number of batches per epoch, and this DataLoader "
                "has no length: give one with a length, or schedule='plateau' or None"
            )
        total = epochs * steps
        warmup = min(warmup, total - 1)
        cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total - warmup, lr / 100)
        if warmup <= 0:
            return cosine
        # A linear ramp first: the data-initialised start is a good point to not jump away from.
        ramp = torch.optim.lr_scheduler.LinearLR(optimizer, 0.01, 1.0, total_iters=warmup)
        return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, cosine], [warmup])
    if schedule == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            mode="max",
            factor=0.5,
            patience=max(1, (patience or 10) // 2),
            threshold=1e-3,  # nats per row
            threshold_mode="abs",
        )
    return None


def _columns(
    dequantize: Sequence[int] | Mapping[int, float] | None, features: int
) -> list[int] | dict[int, float]:
    """The distinct non-negative column indices to dequantise, or ``{column: step}``."""
    if dequantize is None:
        return []
    if isinstance(dequantize, Mapping):
        return _steps(dequantize, features)
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


def _steps(dequantize: Mapping[int, float], features: int) -> dict[int, float]:
    """``{column: step}`` with non-negative columns, refused unless steps are finite > 0."""
    columns = _columns(list(dequantize), features)
    if len(columns) != len(dequantize):
        raise ValueError(f"expected distinct columns in `dequantize`, got {list(dequantize)}")
    steps = {}
    for i, step in zip(dequantize, dequantize.values(), strict=True):
        if isinstance(step, bool) or not isinstance(step, numbers.Real) or not 0 < step < math.inf:
            raise ValueError(
                f"expected finite grid steps > 0 in `dequantize`, got {step!r} for column {i}"
            )
        steps[operator.index(i) % features] = float(step)
    return dict(sorted(steps.items()))


class Dequantizer:
    r"""Adds fresh noise to ``columns`` on each call (nothing without columns).

    Column indices get :math:`U[0, 1)` noise (integers); ``{column: step}`` gets
    :math:`h \, U[0, 1)` for step :math:`h` (a grid :math:`v_0 + h k`), so that each value
    :math:`v` fills its cell :math:`[v, v + h)`.
    """

    def __init__(self, columns: list[int] | Mapping[int, float], device: torch.device, seed: int):
        self.columns = sorted(columns) if isinstance(columns, Mapping) else columns
        self.steps = dict(columns) if isinstance(columns, Mapping) else None
        # The noise is drawn where the data live.
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed % 2**63)

    def __call__(self, x: Tensor) -> Tensor:
        """``x`` with noise added to the columns (``x`` itself without columns)."""
        if not self.columns:
            return x
        return uniform_dequantize(x, self.columns, self.steps, generator=self.generator)


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
    for what, count, expected in (
        ("data", rows.features, flow.features),
        ("context", rows.context, flow.context),
    ):
        if count != expected and not (what == "context" and flow.embedding is not None):
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
    flow: Flow, rows: Rows, world: World, noise: Dequantizer, batch_size: int
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


class _NoBar:
    """Stands in for a progress bar when there is none to show."""

    def set_postfix(self, postfix: dict) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool, unit: str = "epoch") -> object:
    """A tqdm bar on a terminal's stderr when ``enabled``; one that shows nothing otherwise."""
    if not enabled or not sys.stderr.isatty():
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="fit", unit=unit)
