r"""Training checkpoints as one atomic safetensors file, without pickle.

A checkpoint is a (nested) state of dicts, lists, tuples, numbers, strings and tensors (a
model's and an optimizer's ``state_dict``, RNG states, counters, the history). The tensors
go to the safetensors body under generated names; the rest is JSON in the safetensors
header's metadata, with each tensor replaced by ``{"__tensor__": name}``. Writing goes to a
temporary file next to the target, is flushed to disk (``fsync``) and renamed over the
target, so a reader (or a resumed run after a kill) sees the old checkpoint or the new one,
never half of one.

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

__all__ = ["CheckpointError", "read_checkpoint", "write_checkpoint"]

import json
import math
import os
import uuid
from pathlib import Path

from torch import Tensor

_FORMAT = "arflows-checkpoint"
_VERSION = 1


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
