r"""Training checkpoints as one atomic safetensors file, without pickle; fit's resume.

A checkpoint is a (nested) state of dicts, lists, tuples, numbers, strings and tensors (a
model's and an optimizer's ``state_dict``, RNG states, counters, the history). The tensors
go to the safetensors body under generated names; the rest is JSON in the safetensors
header's metadata, with each tensor replaced by ``{"__tensor__": name}``. Writing goes to a
temporary file next to the target, is flushed to disk (``fsync``) and renamed over the
target, so a reader (or a resumed run after a kill) sees the old checkpoint or the new one,
never half of one.

:func:`read_saved`, :func:`resume_state` and :class:`Saver` are what :func:`arflows.fit` writes
to and reads from a checkpoint: weights, optimizer and schedule, history, best weights, the
position in the epoch and the random states.

Example:
    >>> import tempfile, pathlib
    >>> state = {"step": 3, "opt": {0: {"m": torch.ones(2)}}, "betas": (0.9, 0.99)}
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = pathlib.Path(tmp) / "ckpt.safetensors"
    ...     _ = write_checkpoint(path, state)
    ...     back = read_checkpoint(path)
    >>> back["step"], back["opt"][0]["m"].tolist(), back["betas"]
    (3, [1.0, 1.0], (0.9, 0.99))
"""

from __future__ import annotations

__all__ = [
    "CheckpointError",
    "Saver",
    "Start",
    "read_checkpoint",
    "read_saved",
    "resume_state",
    "write_checkpoint",
]

import json
import math
import numbers
import os
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..flows import Flow
from .distributed import World
from .history import History
from .step import Step
from .validation import Best

_FORMAT = "arflows-checkpoint"
_VERSION = 1
# What a checkpoint of fit holds (``seen`` is optional: older checkpoints lack it).
_FIT_KEYS = frozenset(
    "options seed model optimizer scheduler best best_score history epoch step total done "
    "finished seconds generator noise_generator".split()
)


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read (not a checkpoint, or of another version)."""


def _encode(value: object, tensors: dict[str, Tensor]) -> object:
    """``value`` as JSON-safe data; tensors are moved into ``tensors``."""
    if isinstance(value, Tensor):
        name = f"t{len(tensors)}"
        # Own contiguous CPU copies: safetensors refuses views and shared storage.
        tensors[name] = value.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else {"__float__": repr(value)}
    if isinstance(value, dict):
        # Items, not an object: optimizer state dicts are keyed by integers.
        return {"__dict__": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    raise TypeError(
        f"cannot store a {type(value).__name__} in a checkpoint: expected tensors, numbers, "
        "strings, None, lists, tuples or dicts"
    )


def _decode(value: object, tensors: dict[str, Tensor]) -> object:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__float__" in value:
        return float(value["__float__"])
    if "__tuple__" in value:
        return tuple(_decode(v, tensors) for v in value["__tuple__"])
    return {_decode(k, tensors): _decode(v, tensors) for k, v in value["__dict__"]}


def write_checkpoint(path: str | os.PathLike, state: dict) -> Path:
    """Writes ``state`` atomically to the file ``path`` (temporary file, fsync, rename).

    Args:
        path: The checkpoint file; its folder is created if missing.
        state: Nested dicts (any JSON-scalar keys), lists, tuples, tensors (any shape,
            dtype and device; stored on the CPU), numbers (NaN and infinities included),
            strings and ``None``.

    Returns:
        The checkpoint file's path.

    Raises:
        TypeError: For a ``state`` that is not a dict, or a value of another type.
    """
    from safetensors.torch import save

    if not isinstance(state, dict):  # read_checkpoint returns a dict, and refuses all else
        raise TypeError(f"expected `state` to be a dict, got {type(state).__name__}")
    tensors: dict[str, Tensor] = {}
    header = {"format": _FORMAT, "version": _VERSION, "state": _encode(state, tensors)}
    data = save(tensors, metadata={"arflows": json.dumps(header, allow_nan=False)})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    # The rename itself must reach the disk too, or a crash could bring the old file back.
    if hasattr(os, "O_DIRECTORY"):
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Reads a checkpoint written by :func:`write_checkpoint`.

    Args:
        path: The checkpoint file.

    Returns:
        The state, with tensors on the CPU.

    Raises:
        FileNotFoundError: If there is no file at ``path``.
        CheckpointError: If the file is not an arflows checkpoint of this version, or is
            damaged (truncated, or a header that does not decode).
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as file:
            metadata = file.metadata() or {}
            tensors = {name: file.get_tensor(name) for name in file.keys()}  # noqa: SIM118
    except (SafetensorError, OSError) as error:
        if isinstance(error, FileNotFoundError):
            raise
        raise CheckpointError(f"cannot read the checkpoint {path}: {error}") from None
    try:
        header = json.loads(metadata["arflows"])
    except (KeyError, ValueError, RecursionError):
        raise CheckpointError(f"{path} is not an arflows checkpoint") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path} is not an arflows checkpoint (its header is no object)")
    if header.get("format") != _FORMAT or header.get("version") != _VERSION:
        raise CheckpointError(
            f"{path} is a checkpoint of format {header.get('format')!r} version "
            f"{header.get('version')!r}; expected {_FORMAT!r} version {_VERSION}"
        )
    # The header is data from the file: any structure other than _encode's is damage.
    try:
        state = _decode(header["state"], tensors)
    except (KeyError, TypeError, ValueError, RecursionError) as error:
        raise CheckpointError(
            f"{path}: damaged checkpoint state ({type(error).__name__}: {error})"
        ) from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: damaged checkpoint state (not a dict)")
    return state


# --- fit's checkpoints ----------------------------------------------------------------------


def read_saved(
    checkpoint: str | os.PathLike | None, checkpoint_every: int | None, resume: bool
) -> dict | None:
    """Checks fit's checkpoint options; the state to resume from, or ``None`` to start afresh.

    Raises:
        ValueError: For a bad ``checkpoint_every``, ``resume`` without a file name, or a
            file that is not a checkpoint of :func:`arflows.fit`.
    """
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
        missing = _FIT_KEYS - set(saved) if isinstance(saved, dict) else _FIT_KEYS
        if missing:
            raise ValueError(
                f"cannot resume from {checkpoint}: not a checkpoint of arflows.fit (it has no "
                f"{', '.join(sorted(missing))})"
            )
    return saved


@dataclass
class Start:
    """Where a fit's epochs begin: at the start, or where a checkpoint left off.

    Attributes:
        epoch: The first epoch to run.
        step: Its first step (the ones before were taken).
        total: The sum of the log-likelihoods of its steps before ``step``.
        seen: The rows of its steps before ``step``.
        finished: Whether the fit had ended (nothing is left to run).
        seconds: The time the fit took before.
        done: The good steps taken before.
    """

    epoch: int = 0
    step: int = 0
    total: float = 0.0
    seen: int = 0
    finished: bool = False
    seconds: float = 0.0
    done: int = 0


def resume_state(
    saved: dict | None,
    checkpoint: str | os.PathLike | None,
    options: dict,
    flow: Flow,
    optimizer: torch.optim.Optimizer,
    scheduler: object,
    best: Best,
    history: History,
    generators: tuple[torch.Generator, torch.Generator],
    batch_size: int,
) -> Start:
    """Restores the fit saved in ``saved`` (weights, optimizer, history, random states).

    Args:
        saved: What :func:`read_saved` returned; ``None``: a fresh start, nothing changes.
        checkpoint: The checkpoint's file, for errors.
        options: What must match between the saved fit and this one.
        flow: The flow, given the saved weights.
        optimizer: The optimizer, given the saved state.
        scheduler: The schedule (``None``: none), given the saved state.
        best: Given the saved best weights and score.
        history: Given the saved history.
        generators: The order's and the noise's generators, set to their states at the
            start of the saved epoch (its order and noise are drawn again).
        batch_size: The batch size, for older checkpoints that do not count rows.

    Returns:
        Where the epochs begin.

    Raises:
        ValueError: If the checkpoint does not fit this flow or fit.
    """
    if saved is None:
        return Start()
    if saved["options"] != options:
        raise ValueError(
            f"cannot resume from {checkpoint}: it was written by a fit with {saved['options']}"
            f", this one has {options}"
        )
    generator, noise_generator = generators
    try:
        flow.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(saved["scheduler"])
        best.state, best.score = saved["best"], saved["best_score"]
        for name, value in saved["history"].items():
            setattr(history, name, value)
        start = Start(
            saved["epoch"],
            saved["step"],
            saved["total"],
            saved.get("seen", saved["step"] * batch_size),
            saved["finished"],
            saved["seconds"],
            saved["done"],
        )
        generator.set_state(saved["generator"])
        # Every generator's state is a CPU tensor, a CUDA generator's too.
        noise_generator.set_state(saved["noise_generator"])
    except (AttributeError, KeyError, RuntimeError, TypeError, ValueError) as error:
        message = " ".join(str(error).split())[:300]
        raise ValueError(
            f"cannot resume from {checkpoint}: it does not fit this flow or fit (another "
            f"architecture?): {type(error).__name__}: {message}"
        ) from None
    return start


@dataclass
class Saver:
    """Writes fit's whole state to its checkpoint file (rank 0 only; nothing without a file).

    Attributes:
        path: The checkpoint file, or ``None`` for none.
        every: Write every this many good steps (and at the end); ``None``: after every epoch.
        world: The processes taking part; only rank 0 writes.
        options: What must match for a checkpoint to continue the fit.
        seed: The fit's seed.
        flow, optimizer, scheduler, best, history, stepper: Saved as they are when writing.
        generators: The order's and the noise's generators.
        seconds: The time the fit took before this run.
        started: When this run started (:func:`time.perf_counter`).
    """

    path: str | os.PathLike | None
    every: int | None
    world: World
    options: dict
    seed: int
    flow: Flow
    optimizer: torch.optim.Optimizer
    scheduler: object
    best: Best
    history: History
    stepper: Step
    generators: tuple[torch.Generator, torch.Generator]
    seconds: float
    started: float

    def rng(self) -> tuple[Tensor, Tensor]:
        """The generators' states now."""
        return self.generators[0].get_state(), self.generators[1].get_state()

    def save(
        self,
        epoch: int,
        step: int,
        total: float,
        seen: int,
        rng: tuple[Tensor, Tensor],
        finished: bool,
    ) -> None:
        """Writes the state at ``step`` of ``epoch`` (``rng``: the states at its start)."""
        if not self.world.main:
            return  # one writer
        write_checkpoint(
            self.path,
            {
                "options": self.options,
                "seed": self.seed,
                "model": self.flow.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
                "best": self.best.state,
                "best_score": self.best.score,
                "history": vars(self.history),
                "epoch": epoch,
                "step": step,
                "total": total,
                "seen": seen,
                "done": self.stepper.done,
                "finished": finished,
                "seconds": self.seconds + time.perf_counter() - self.started,
                "generator": rng[0],
                "noise_generator": rng[1],
            },
        )

    def after_step(
        self, epoch: int, rng: tuple[Tensor, Tensor]
    ) -> Callable[[int, float, int], None] | None:
        """What the step calls after each good step of ``epoch``: saves every ``every``."""
        if self.path is None or self.every is None:
            return None
        every = self.every

        def after_step(step: int, total: float, seen: int) -> None:
            if self.stepper.done % every == 0:
                self.save(epoch, step + 1, total, seen, rng, False)

        return after_step

    def end_of_epoch(self, epoch: int, epochs: int, finished: bool) -> None:
        """Saves after ``epoch`` (at the end only, when saving every few steps)."""
        if self.path is not None and (self.every is None or finished):
            self.save(epoch + 1, 0, 0.0, 0, self.rng(), finished or epoch + 1 == epochs)

    def end_of_fit(self, epochs: int, finished: bool) -> None:
        """Saves the end of a fit that ran all ``epochs`` while saving every few steps."""
        if self.path is not None and self.every is not None and not finished:
            self.save(epochs, 0, 0.0, 0, self.rng(), True)
