r"""Saving and loading flows: safetensors weights plus a JSON config, never pickle.

A model directory holds ``model.safetensors`` (the state dict: weights, masks, degrees,
orders, standardisation) and ``config.json``::

    {"format": "arflows-model", "format_version": 1, "arflows_version": "0.1.0",
     "flow": "MAF", "arguments": {"features": 3, ...}, "dtype": "float32",
     "columns": [...], "context_columns": [...], "metadata": {...}}

Loading rebuilds the flow from its class name (looked up among the :class:`~arflows.Flow`
subclasses in :mod:`arflows.flows`) and constructor arguments, then loads the weights. Random
structure (random orders, degrees, permutations) lives in the state dict, so generators are
not saved.

Example:
    >>> import tempfile
    >>> import arflows
    >>> flow = arflows.MAF(3, transforms=2, hidden_features=(8, 8), randperm=True)
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     path = save(flow, f"{tmp}/model", columns=["a", "b", "c"])
    ...     loaded = load(path)
    >>> x = torch.randn(5, 3)
    >>> torch.allclose(loaded().log_prob(x), flow().log_prob(x)), loaded.columns
    (True, ['a', 'b', 'c'])
"""

from __future__ import annotations

__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "ModelError",
    "is_model_dir",
    "load",
    "read_config",
    "save",
]

import inspect
import json
import math
import os
import shutil
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

import arflows.transforms as _transforms

from ._version import __version__
from .flows import Flow, flow_classes

FORMAT = "arflows-model"
FORMAT_VERSION = 1
CONFIG = "config.json"
WEIGHTS = "model.safetensors"
_DTYPES = {"float16", "bfloat16", "float32", "float64"}
# Classes that may appear as arguments (``univariate=``, ``activation=``), by namespace. A
# loaded name is resolved only inside these, so a config cannot reach arbitrary code.
_CLASS_SPACES = {
    "arflows.transforms": (_transforms, _transforms.Transform),
    "torch.nn": (nn, nn.Module),
}


class ModelError(ValueError):
    """A model directory that cannot be loaded: missing files, bad config, mismatched weights."""


def _version() -> str:
    return __version__


# --- arguments to and from JSON -------------------------------------------------------------


def _encode(value: object, where: str) -> object:
    """A JSON-safe copy of a constructor argument; ``where`` names it in errors."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"cannot save {where}={value}: JSON has no NaN or infinity")
        return value
    if isinstance(value, Tensor):
        if value.is_floating_point() and not bool(value.isfinite().all()):
            raise TypeError(f"cannot save {where}: the tensor holds NaN or infinity")
        return value.tolist()
    if isinstance(value, (list, tuple)):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise TypeError(f"cannot save {where}: a dict needs string keys, got {list(value)}")
        return {
            k: _encode(v, f"{where}[{k!r}]")
            for k, v in value.items()
            if not isinstance(v, torch.Generator)
        }
    if isinstance(value, type):
        for space, (module, base) in _CLASS_SPACES.items():
            if issubclass(value, base) and getattr(module, value.__name__, None) is value:
                return {"$class": f"{space}.{value.__name__}"}
        raise TypeError(
            f"cannot save {where}={value.__module__}.{value.__qualname__}: only classes of "
            f"{' and '.join(_CLASS_SPACES)} can be stored in config.json; use one of those, "
            "or save the state dict yourself and rebuild the flow in code"
        )
    if isinstance(value, nn.Module):
        raise TypeError(
            f"cannot save {where}={type(value).__name__}(...): a module passed as an argument "
            "cannot be rebuilt from config.json; build the flow without it, or save "
            "flow.state_dict() yourself (e.g. with safetensors) and rebuild the flow in code"
        )
    raise TypeError(
        f"cannot save {where}: a {type(value).__name__} cannot be stored in config.json "
        "(expected numbers, strings, lists, dicts, tensors or arflows.transforms/torch.nn "
        "classes)"
    )


def _decode(value: object, where: str) -> object:
    if isinstance(value, list):
        return [_decode(v, where) for v in value]
    if isinstance(value, dict):
        if set(value) == {"$class"}:
            return _resolve_class(value["$class"], where)
        return {k: _decode(v, where) for k, v in value.items()}
    return value


def _resolve_class(name: object, where: str) -> type:
    space, _, short = str(name).rpartition(".")
    module, base = _CLASS_SPACES.get(space, (None, None))
    cls = getattr(module, short, None) if module is not None and short[:1] != "_" else None
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise ModelError(
            f"{where}: unknown class {name!r}; expected a class of {' or '.join(_CLASS_SPACES)}"
        )
    return cls


def _arguments(flow: Flow) -> dict:
    arguments = dict(flow.config["arguments"])
    for name, value in list(arguments.items()):
        if isinstance(value, torch.Generator):
            del arguments[name]  # random structure is in the state dict
    return {name: _encode(value, f"argument `{name}`") for name, value in arguments.items()}


def _metadata(value: object, where: str) -> object:
    try:
        return _encode(value, where)
    except TypeError as error:
        raise TypeError(f"{error} (in `metadata`)") from None


# --- save ----------------------------------------------------------------------------------


def _dtype(flow: Flow) -> str:
    for tensor in (*flow.parameters(), *flow.buffers()):
        if tensor.is_floating_point():
            return str(tensor.dtype).removeprefix("torch.")
    return str(torch.get_default_dtype()).removeprefix("torch.")


def _names(value: Sequence[str] | None, argument: str, size: object) -> list[str] | None:
    if value is None:
        return None
    names = list(value) if isinstance(value, Iterable) and not isinstance(value, str) else None
    if names is None or not all(isinstance(v, str) for v in names):
        raise TypeError(f"expected `{argument}` to be a list of strings, got {value!r}")
    value = names
    if isinstance(size, int) and not isinstance(size, bool) and len(value) != size:
        raise ValueError(f"expected {size} names in `{argument}`, got {len(value)}: {value}")
    return value


def is_model_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an arflows model directory (its ``config.json`` says so)."""
    path = Path(path)
    try:
        with open(path / CONFIG) as file:
            return json.load(file).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def save(
    flow: Flow,
    directory: str | os.PathLike,
    *,
    columns: Sequence[str] | None = None,
    context_columns: Sequence[str] | None = None,
    metadata: dict | None = None,
    extras: Callable[[Path], None] | None = None,
    overwrite: bool = False,
) -> Path:
    r"""Saves a flow as a model directory: ``model.safetensors`` and ``config.json``.

    The directory is written next to its final place and renamed into it, so a reader never
    sees a half-written model. An existing model directory is replaced (moved aside, then
    deleted) only with ``overwrite=True``; other existing directories are never touched.

    Args:
        flow: The flow; built by a :class:`~arflows.Flow` subclass of :mod:`arflows.flows`
            (such as :class:`~arflows.MAF`) whose arguments are numbers, strings, lists,
            tensors or classes of :mod:`arflows.transforms` / :mod:`torch.nn`.
        directory: The model directory.
        columns: The names of the :math:`D` data columns; defaults to ``flow.columns``.
        context_columns: The names of the :math:`C` context columns; defaults to
            ``flow.context_columns``.
        metadata: JSON-safe information to keep with the model (training summary, ...);
            defaults to ``flow.metadata``.
        extras: Writes more files (a report, figures) into the directory while it is still
            being assembled; called with the staging folder before the rename, so the extra
            files appear together with the model or not at all.
        overwrite: Replace an existing model directory.

    Returns:
        The model directory.

    Raises:
        TypeError: For an argument that cannot be stored as JSON (a module passed as
            ``embedding=``, a class from outside the allowed namespaces, ...).
        ModelError: When ``directory`` exists and is not a model directory.
        FileExistsError: When ``directory`` is a model directory and ``overwrite`` is false.
    """
    from safetensors.torch import save_file

    if not isinstance(flow, Flow):
        raise TypeError(f"expected `flow` to be an arflows Flow, got {type(flow).__name__}")
    name = type(flow).__name__
    if flow_classes().get(name.lower()) is not type(flow):
        raise TypeError(
            f"cannot save a {name}: only flows of arflows.flows can be rebuilt from config.json "
            "(define the flow there, or save flow.state_dict() yourself)"
        )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arflows_version": _version(),
        "flow": name,
        "arguments": _arguments(flow),
        "dtype": _dtype(flow),
        "columns": _names(flow.columns if columns is None else columns, "columns", flow.features),
        "context_columns": _names(
            flow.context_columns if context_columns is None else context_columns,
            "context_columns",
            flow.context,
        ),
        "metadata": _metadata((flow.metadata or {}) if metadata is None else metadata, "metadata"),
    }
    if not isinstance(config["metadata"], dict):
        raise TypeError(f"expected `metadata` to be a dict, got {type(metadata).__name__}")
    # Own contiguous CPU copies: safetensors refuses views and tensors sharing memory.
    state = {
        key: value.detach().to("cpu", copy=True).contiguous()
        for key, value in flow.state_dict().items()
    }
    # Buffers may hold infinities on purpose (unbounded support); NaN is never valid.
    parameters = {name for name, _ in flow.named_parameters()}
    for key, value in state.items():
        ok = value.isfinite() if key in parameters else ~value.isnan()
        if value.is_floating_point() and not bool(ok.all()):
            raise ValueError(f"cannot save the flow: its tensor {key!r} holds NaN or infinity")

    target = Path(directory)
    if target.exists() and not target.is_dir():
        raise ModelError(f"cannot save to {target}: it is a file, not a directory")
    if target.is_dir() and any(target.iterdir()) and not is_model_dir(target):
        raise ModelError(
            f"cannot save to {target}: it is a non-empty directory that is not an arflows "
            "model; choose another directory"
        )
    if is_model_dir(target) and not overwrite:
        raise FileExistsError(
            f"cannot save to {target}: a model is there; pass overwrite=True to replace it"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    # Next to the target, so the rename stays on one file system; mkdir applies the umask.
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir()
    try:
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        # safetensors creates the file private; give it the directory's (umask) permissions.
        (tmp / WEIGHTS).chmod(tmp.stat().st_mode & 0o666)
        with open(tmp / CONFIG, "w") as file:
            json.dump(config, file, indent=2, allow_nan=False)
            file.write("\n")
        if extras is not None:
            extras(tmp)
        _replace_dir(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _replace_dir(new: Path, target: Path) -> None:
    """Renames ``new`` to ``target``; an existing ``target`` is moved aside, then deleted."""
    if not target.exists():
        os.rename(new, target)
        return
    aside = target.with_name(f".{target.name}.{uuid.uuid4().hex}.old")
    os.rename(target, aside)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(aside, target)  # put the old model back
        raise
    shutil.rmtree(aside, ignore_errors=True)


# --- load ----------------------------------------------------------------------------------


def read_config(directory: str | os.PathLike) -> dict:
    r"""Reads and checks a model directory's ``config.json``, without building the flow.

    Args:
        directory: The model directory.

    Returns:
        The config (see the module description).

    Raises:
        ModelError: For a missing directory or file, JSON that does not parse, another format
            or a newer format version.
    """
    path = Path(directory)
    if not path.is_dir():
        what = "is a file, not a model directory" if path.exists() else "does not exist"
        raise ModelError(f"cannot load a model from {path}: it {what}")
    try:
        with open(path / CONFIG, encoding="utf-8") as file:
            # save() writes strict JSON; NaN or Infinity can only come from an edit.
            config = json.load(file, parse_constant=_no_constant)
    except FileNotFoundError:
        raise ModelError(f"cannot load a model from {path}: no {CONFIG}") from None
    except (OSError, ValueError) as error:
        raise ModelError(f"cannot load {path / CONFIG}: {error}") from None
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ModelError(f"{path / CONFIG} is not an arflows model config (no format {FORMAT!r})")
    version = config.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelError(f"{path / CONFIG}: invalid format_version {version!r}")
    if version > FORMAT_VERSION:
        raise ModelError(
            f"{path} was saved in model format {version} (arflows "
            f"{config.get('arflows_version', '?')}); this arflows {_version()} reads format "
            f"{FORMAT_VERSION} and older: upgrade arflows"
        )
    for key, kind in (("flow", str), ("arguments", dict), ("dtype", str)):
        if not isinstance(config.get(key), kind):
            raise ModelError(f"{path / CONFIG}: expected {key!r} to be a {kind.__name__}")
    if config["dtype"] not in _DTYPES:
        raise ModelError(f"{path / CONFIG}: unknown dtype {config['dtype']!r}")
    return config


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON (arflows writes strict JSON)")


# Constructor arguments that count something the state dict holds at least one value of per
# unit: a config claiming more of any of them than the weights file stores values was edited,
# and building it could take unbounded time and memory before the weights are compared.
_SIZES = ("features", "context", "transforms", "hidden_features", "bins", "components", "orders")


def _check_sizes(arguments: dict, stored: int, where: Path) -> None:
    def ints(value: object) -> list[int]:
        if isinstance(value, list):
            return [i for v in value for i in ints(v)]
        return [value] if isinstance(value, int) and not isinstance(value, bool) else []

    for name in (*_SIZES, "args"):  # `args`: IAF's positional hidden widths
        big = [v for v in ints(arguments.get(name)) if v > stored]
        if big:
            raise ModelError(
                f"{where}: argument `{name}` = {arguments[name]!r} does not fit the weights "
                f"file, which holds {stored} values in all (was the config edited?)"
            )


def _check_state(state: dict[str, Tensor], flow: Flow, where: Path) -> None:
    """Refuses weights that load without error but are not a saved flow's (as save refuses)."""
    own = flow.state_dict()
    parameters = {name for name, _ in flow.named_parameters()}
    for key, value in state.items():
        if key in own and value.is_floating_point() != own[key].is_floating_point():
            raise ModelError(
                f"{where}: tensor {key!r} is {value.dtype} but the flow's is {own[key].dtype} "
                "(not weights saved by arflows)"
            )
        ok = value.isfinite() if key in parameters else ~value.isnan()
        if value.is_floating_point() and not bool(ok.all()):
            raise ModelError(f"{where}: tensor {key!r} holds NaN or infinity")


def _check_loaded(flow: Flow, config: dict, where: Path) -> None:
    """Checks what the strict state dict load cannot: sizes taken from the file, names."""
    for attribute, size, names in (
        ("standardization", flow.features, "columns"),
        ("context_standardization", flow.context, "context_columns"),
    ):
        # The standardisation's buffers take their size from the file (0: not set).
        n = getattr(flow, attribute).loc.numel()
        if isinstance(size, int) and n not in (0, size):
            raise ModelError(
                f"{where / WEIGHTS}: the stored {attribute} has {n} columns, the flow {size}"
            )
        try:
            _names(config.get(names), names, size)
        except (TypeError, ValueError) as error:
            raise ModelError(f"{where / CONFIG}: {error}") from None
    if not isinstance(config.get("metadata") or {}, dict):
        raise ModelError(f"{where / CONFIG}: expected 'metadata' to be a dict")


def _flow_class(name: str, where: Path) -> type[Flow]:
    # By class name as saved, case and all: config.json is written by save, not typed.
    classes = {cls.__name__: cls for cls in flow_classes().values()}
    if name not in classes:
        known = ", ".join(sorted(classes))
        raise ModelError(f"{where}: unknown flow {name!r}; expected one of {known}")
    return classes[name]


def _describe(error: BaseException) -> str:
    """An error's message, prefixed with its type when that is unusual (an AttributeError)."""
    if isinstance(error, TypeError | ValueError | RuntimeError):
        return str(error)
    return f"{type(error).__name__}: {error}"


def _build(cls: type[Flow], arguments: dict) -> Flow:
    """``cls(**arguments)``, passing a recorded ``*args`` and what precedes it by position."""
    params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    arguments = dict(arguments)
    star = next((p for p in params if p.kind is p.VAR_POSITIONAL), None)
    if star is None or star.name not in arguments:
        return cls(**arguments)
    before = [p.name for p in params[: params.index(star)]]
    positional = [arguments.pop(name) for name in before]
    return cls(*positional, *arguments.pop(star.name), **arguments)


def load(directory: str | os.PathLike, device: str | torch.device = "cpu") -> Flow:
    r"""Loads a flow saved by :func:`save`, in evaluation mode and its saved dtype.

    Nothing is unpickled: the weights are read with ``safetensors`` and the flow is rebuilt
    from ``config.json``. The saved ``columns``, ``context_columns`` and ``metadata`` are
    set on the flow (see :class:`~arflows.Flow`). A model directory holds CPU tensors
    whatever device the flow was trained on, so a flow trained on a GPU loads anywhere.

    Args:
        directory: The model directory.
        device: Where to put the flow (``"cpu"``, ``"cuda"``, ``"cuda:1"``, a
            :class:`torch.device`).

    Returns:
        The flow.

    Raises:
        ModelError: For a missing or broken directory: missing files, a config that does not
            parse or fit, an unknown flow, weights that are not safetensors or do not fit the
            rebuilt flow.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    device = _device(device)
    path = Path(directory)
    config = read_config(path)
    cls = _flow_class(config["flow"], path / CONFIG)
    arguments = _decode(config["arguments"], str(path / CONFIG))
    if not (path / WEIGHTS).is_file():
        raise ModelError(f"cannot load a model from {path}: no {WEIGHTS}")
    try:
        state = load_file(str(path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelError(
            f"cannot read {path / WEIGHTS}: not a safetensors file ({error})"
        ) from None
    # Before building: the sizes in the config must be possible for the weights file.
    _check_sizes(config["arguments"], sum(t.numel() for t in state.values()), path / CONFIG)
    try:
        # Building draws throwaway initial weights; keep the caller's random stream as it was.
        with torch.random.fork_rng(devices=[]):
            flow = _build(cls, arguments)
    except Exception as error:  # any failure: the config does not fit
        raise ModelError(
            f"{path / CONFIG}: the arguments do not fit {cls.__name__}: {_describe(error)}"
        ) from None
    flow = flow.to(getattr(torch, config["dtype"]))
    _check_state(state, flow, path / WEIGHTS)
    try:
        flow.load_state_dict(state, strict=True)
        # Degrees and masks are buffers: the file could make the networks non-autoregressive.
        for module in flow.modules():
            # MADE conditioners check theirs; io knows flows, not the networks' classes.
            check = getattr(module, "check_structure", None)
            if callable(check):
                check()
    except Exception as error:  # any failure: the weights do not fit
        raise ModelError(
            f"the weights in {path / WEIGHTS} do not fit the {cls.__name__} rebuilt from "
            f"{CONFIG} (was the config edited?): {_describe(error)}"
        ) from None
    _check_loaded(flow, config, path)
    flow.columns = config.get("columns")
    flow.context_columns = config.get("context_columns")
    flow.metadata = config.get("metadata") or {}
    return flow.to(device).eval()


def _device(device: object) -> torch.device:
    """``device`` as a torch device that exists here, or a ``ValueError``."""
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"expected a device such as 'cpu' or 'cuda', got {device!r}") from error
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        available = torch.cuda.device_count()
        raise ValueError(f"cannot load onto {device}: {available} CUDA device(s) available")
    return device
