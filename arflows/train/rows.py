r"""Where :func:`arflows.fit` takes its rows from: tensors, Datasets, DataLoaders, Parquet.

Every source gives, for one pass, this process's part of each global mini-batch as
``(x, c)`` tensors. In a distributed run (:mod:`arflows.train.distributed`) the in-memory,
:class:`~torch.utils.data.Dataset` and Parquet sources deal each global batch out across the
processes, so the run follows the path of one process on the combined batch; a user's
:class:`~torch.utils.data.DataLoader` is taken as it is (each process iterates its own,
e.g. with a :class:`~torch.utils.data.DistributedSampler`).
"""

from __future__ import annotations

__all__ = ["Rows", "TensorRows", "as_rows", "as_tensor", "is_fraction"]

import abc
import numbers
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset

from ..data import ParquetStream, split_indices
from .distributed import World

Batch = tuple[Tensor, "Tensor | None"]
Noise = Callable[[Tensor], Tensor]
_NUMBER_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def as_tensor(
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


class Rows(abc.ABC):
    r"""Rows of data (and contexts) that training passes over in mini-batches.

    Attributes:
        rows: The number of rows in all processes together (``None`` if unknown).
        features: The number of data columns :math:`D`.
        context: The number of context columns :math:`C` (0 without).
        shared: Whether every process sees the same global batches and takes its part of
            them (then random noise drawn for the global batch is the same everywhere);
            otherwise each process's rows are its own.
        uneven: Whether processes may run out of batches at different steps.
    """

    rows: int | None
    features: int
    context: int
    shared: bool = True
    uneven: bool = False

    @abc.abstractmethod
    def batches(
        self,
        batch_size: int,
        world: World,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
        epoch: int = 0,
    ) -> Iterator[Batch]:
        r"""One pass: this process's part of each global batch of ``batch_size`` rows.

        Args:
            batch_size: The rows of a global batch (all processes together).
            world: The processes taking part.
            generator: Shuffles the rows when given (the same state gives the same order);
                ``None`` keeps their order.
            noise: Applied to the data rows before they are yielded (dequantization).
            epoch: The epoch, for samplers that reshuffle by it.

        Yields:
            ``(x, c)``, with shapes :math:`(B_r, D)` and :math:`(B_r, C)` (``c`` is ``None``
            without context), where :math:`B_r` is this process's part (possibly 0).
        """

    def split(self, fraction: float, generator: torch.Generator) -> tuple[Rows, Rows]:
        """The rows without and with a random ``fraction`` of them held out."""
        raise ValueError(
            "cannot hold out a fraction of the rows of a DataLoader (or IterableDataset): pass "
            "the validation rows as `valid=` (a tensor, Dataset, DataLoader or ParquetStream) "
            "or `valid=None`"
        )

    def steps(self, batch_size: int) -> int | None:
        """The number of batches of one pass (``None`` if unknown)."""
        return None if self.rows is None else -(-self.rows // batch_size)

    def fingerprint(self) -> tuple:
        """What processes of one distributed fit must agree on (cheap to compute)."""
        return type(self).__name__, self.rows, self.features, self.context


def _held_rows(rows: int, fraction: float) -> int:
    """How many of ``rows`` a validation ``fraction`` holds out (at least 1, not all)."""
    n_valid = max(1, round(fraction * rows))
    if n_valid >= rows:
        raise ValueError(f"too few rows ({rows}) to hold out a validation fraction {fraction}")
    return n_valid


class TensorRows(Rows):
    """Rows held in memory as tensors (on the flow's device)."""

    def __init__(self, x: Tensor, c: Tensor | None):
        self.x, self.c = x, c
        self.rows, self.features = x.shape
        self.context = 0 if c is None else c.shape[1]

    def split(self, fraction: float, generator: torch.Generator) -> tuple[Rows, Rows]:  # noqa: D102
        n_valid = _held_rows(self.rows, fraction)
        va, tr = split_indices(self.rows, (n_valid, self.rows - n_valid), generator)
        return self._take(tr.to(self.x.device)), self._take(va.to(self.x.device))

    def fingerprint(self) -> tuple:  # noqa: D102
        # Sums of the values catch processes handed different rows of the same size.
        sums = [float(t.double().sum()) for t in (self.x, self.c) if t is not None]
        return (*super().fingerprint(), *sums)

    def _take(self, idx: Tensor) -> TensorRows:
        return TensorRows(self.x[idx], None if self.c is None else self.c[idx])

    def batches(  # noqa: D102
        self,
        batch_size: int,
        world: World,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
        epoch: int = 0,
    ) -> Iterator[Batch]:
        # The noise of all rows at once, so that every process draws the same numbers.
        x = self.x if noise is None else noise(self.x)
        if generator is None:  # in order: views of the rows, no copies
            for i in range(0, self.rows, batch_size):
                c = None if self.c is None else world.part(self.c[i : i + batch_size])
                yield world.part(x[i : i + batch_size]), c
            return
        order = torch.randperm(self.rows, generator=generator).to(x.device)
        for i in range(0, self.rows, batch_size):
            idx = world.part(order[i : i + batch_size])
            yield x[idx], None if self.c is None else self.c[idx]


def _tensor_or_none(value: object) -> Tensor | None:
    if value is None:
        return None
    return value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))


def _unpack(batch: object, where: str) -> tuple[object, object]:
    """A batch of a Dataset or DataLoader as ``(x, c)``: ``x`` alone or a pair."""
    if isinstance(batch, list | tuple):
        if len(batch) == 1:
            return batch[0], None
        if len(batch) == 2:
            return batch[0], batch[1]
        raise ValueError(f"expected {where} to give `x` or `(x, context)`, got {len(batch)} parts")
    if isinstance(batch, dict):
        raise TypeError(
            f"expected {where} to give `x` or `(x, context)`, got a dict with keys "
            f"{sorted(map(str, batch))}"
        )
    return batch, None


class _CheckedBatches:
    """Turns raw batches into checked ``(x, c)`` tensors with fixed column counts."""

    def __init__(self, where: str, dtype: torch.dtype):
        self.where, self.dtype = where, dtype
        self.features: int | None = None
        self.context: int | None = None

    def __call__(self, batch: object) -> Batch:
        x, c = _unpack(batch, self.where)
        x = _tensor_or_none(x)
        if x is not None and x.dim() == 1:
            x = x[:, None]  # a batch of scalars: one column
        x = as_tensor(f"x from {self.where}", x, self.dtype, columns=self.features)
        c = _tensor_or_none(c)
        if c is not None:
            c = as_tensor(f"context from {self.where}", c, self.dtype, rows=len(x))
        context = 0 if c is None else c.shape[1]
        if self.context is not None and context != self.context:
            raise ValueError(
                f"expected {self.where} to give {self.context} context columns in every batch, "
                f"got {context}"
            )
        self.features, self.context = x.shape[1], context
        return x, c


class DatasetRows(Rows):
    """The items of a map-style Dataset (``x`` or ``(x, c)`` per row), fetched by index.

    With ``pin``, batches come in page-locked memory, so that copies to a GPU run
    asynchronously.
    """

    shared = False

    def __init__(
        self,
        dataset: Dataset,
        dtype: torch.dtype,
        indices: Tensor | None = None,
        workers: int = 0,
        pin: bool = False,
    ):
        self.dataset, self.workers, self.pin = dataset, workers, pin
        self.indices = torch.arange(len(dataset)) if indices is None else indices
        self.rows = len(self.indices)
        if self.rows == 0:
            raise ValueError("expected a Dataset with at least 1 item, got an empty one")
        self.check = _CheckedBatches("the Dataset", dtype)
        x, c = self.check(torch.utils.data.default_collate([dataset[int(self.indices[0])]]))
        self.features, self.context = x.shape[1], 0 if c is None else c.shape[1]

    def split(self, fraction: float, generator: torch.Generator) -> tuple[Rows, Rows]:  # noqa: D102
        n_valid = _held_rows(self.rows, fraction)
        va, tr = split_indices(self.rows, (n_valid, self.rows - n_valid), generator)
        dtype = self.check.dtype
        return (
            DatasetRows(self.dataset, dtype, self.indices[tr], self.workers, self.pin),
            DatasetRows(self.dataset, dtype, self.indices[va], self.workers, self.pin),
        )

    def batches(  # noqa: D102
        self,
        batch_size: int,
        world: World,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
        epoch: int = 0,
    ) -> Iterator[Batch]:
        order = self.indices
        if generator is not None:
            order = order[torch.randperm(self.rows, generator=generator)]
        parts = _Parts(order, batch_size, world)
        loader = DataLoader(
            self.dataset, batch_sampler=parts, num_workers=self.workers, pin_memory=self.pin
        )
        fetched = iter(loader)
        for i in range(0, self.rows, batch_size):
            if min(batch_size, self.rows - i) <= world.rank:
                # A global batch with fewer rows than processes leaves this one none.
                dtype = self.check.dtype
                c = torch.zeros(0, self.context, dtype=dtype) if self.context else None
                yield torch.zeros(0, self.features, dtype=dtype), c
                continue
            x, c = self.check(next(fetched))
            yield (x if noise is None else noise(x)), c


class _Parts:
    """This process's index lists of the global batches, made as the loader asks for them.

    Lazy, so that an epoch over many rows holds one tensor of indices, not a Python list of
    every index.
    """

    def __init__(self, order: Tensor, batch_size: int, world: World):
        self.order, self.batch_size, self.world = order, batch_size, world

    def _all(self) -> Iterator[Tensor]:
        for i in range(0, len(self.order), self.batch_size):
            part = self.world.part(self.order[i : i + self.batch_size])
            if len(part):
                yield part

    def __iter__(self) -> Iterator[list[int]]:
        return (part.tolist() for part in self._all())

    def __len__(self) -> int:
        return sum(1 for _ in self._all())


class LoaderRows(Rows):
    """A user's DataLoader, iterated as it is (each process its own)."""

    shared = False
    uneven = True

    def __init__(self, loader: DataLoader, dtype: torch.dtype):
        self.loader = loader
        self.check = _CheckedBatches("the DataLoader", dtype)
        try:
            self.rows = len(loader.dataset)
        except TypeError:
            self.rows = None
        try:
            self._steps: int | None = len(loader)
        except TypeError:
            self._steps = None
        first = next(iter(loader), None)
        if first is None:
            raise ValueError("expected a DataLoader that gives at least one batch, got none")
        x, c = self.check(first)
        self.features, self.context = x.shape[1], 0 if c is None else c.shape[1]

    def steps(self, batch_size: int) -> int | None:  # noqa: D102
        return self._steps

    def batches(  # noqa: D102
        self,
        batch_size: int,
        world: World,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
        epoch: int = 0,
    ) -> Iterator[Batch]:
        sampler = getattr(self.loader, "sampler", None)
        if generator is not None and hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a DistributedSampler reshuffles by epoch
        for batch in self.loader:
            x, c = self.check(batch)
            yield (x if noise is None else noise(x)), c


class ParquetRows(Rows):
    """A :class:`~arflows.data.ParquetStream`, read by every process, dealt out per batch."""

    def __init__(self, stream: ParquetStream, dtype: torch.dtype):
        self.stream, self.dtype = stream, dtype
        self.rows = stream.rows
        self.features, self.context = stream.features, stream.context
        if self.rows == 0:
            raise ValueError(f"expected rows in {stream!r}, got none")

    def fingerprint(self) -> tuple:  # noqa: D102
        return (*super().fingerprint(), repr(self.stream))

    def split(self, fraction: float, generator: torch.Generator) -> tuple[Rows, Rows]:  # noqa: D102
        seed = int(torch.randint(2**62, (), generator=generator))
        if self.stream._seed is not None:
            seed = self.stream._seed  # a part splits further by its own assignment
        train, valid = self.stream.split([1 - fraction, fraction], seed)
        if valid.rows == 0 or train.rows < 2:
            raise ValueError(
                f"too few rows ({self.rows}) to hold out a validation fraction {fraction}"
            )
        return ParquetRows(train, self.dtype), ParquetRows(valid, self.dtype)

    def batches(  # noqa: D102
        self,
        batch_size: int,
        world: World,
        generator: torch.Generator | None = None,
        noise: Noise | None = None,
        epoch: int = 0,
    ) -> Iterator[Batch]:
        for x, c in self.stream.batches(
            batch_size, shuffle=generator is not None, generator=generator
        ):
            x, c = x.to(self.dtype), None if c is None else c.to(self.dtype)
            x = x if noise is None else noise(x)
            yield world.part(x), None if c is None else world.part(c)


def as_rows(
    name: str,
    x: object,
    c: object,
    dtype: torch.dtype,
    device: torch.device,
    batch_size: int = 256,
    workers: int = 0,
) -> Rows:
    r"""The rows of ``x``, whatever holds them.

    Args:
        name: The argument's name, for errors.
        x: A tensor or array :math:`(N, D)`; a map-style Dataset or an IterableDataset whose
            items are ``x_n`` or ``(x_n, c_n)``; a DataLoader of such batches; a
            :class:`~arflows.data.ParquetStream` or the path of a ``.parquet`` file.
        c: The contexts :math:`(N, C)` of in-memory rows; ``None`` for the others (their
            items carry them).
        dtype: The floating point type of the rows.
        device: Where in-memory rows are kept (a map-style Dataset's batches are pinned
            for a CUDA device).
        batch_size: The batch size of the DataLoader wrapped around an IterableDataset.
        workers: The worker processes that load the items of a map-style Dataset.
    """
    if isinstance(x, str | os.PathLike) and Path(x).suffix.lower() == ".parquet":
        x = ParquetStream(x, dtype=dtype)
    streamed = isinstance(x, ParquetStream | DataLoader | Dataset)
    if streamed and c is not None:
        raise ValueError(
            f"`context` goes with in-memory rows; a {type(x).__name__} for `{name}` carries its "
            "own contexts (items `(x, c)` or context columns)"
        )
    if isinstance(x, ParquetStream):
        return ParquetRows(x, dtype)
    if isinstance(x, IterableDataset):
        x = DataLoader(x, batch_size=batch_size)
    if isinstance(x, DataLoader):
        return LoaderRows(x, dtype)
    if isinstance(x, Dataset):
        if not hasattr(x, "__len__"):
            raise TypeError(f"expected a Dataset with a length for `{name}`, got {x!r}")
        return DatasetRows(x, dtype, workers=workers, pin=torch.device(device).type == "cuda")
    if isinstance(x, str | os.PathLike):
        raise TypeError(
            f"expected `{name}` to hold numbers or be a `.parquet` file to stream (read other "
            f"files with arflows.data.read_table), got {str(x)!r}"
        )
    x = as_tensor(name, x, dtype).to(device)
    if c is not None:
        where = "context" if name == "x" else f"{name} context"
        c = as_tensor(where, c, dtype, rows=len(x)).to(device)
    return TensorRows(x, c)


def is_fraction(value: object) -> bool:
    """Whether ``value`` is a number (a fraction of rows), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
