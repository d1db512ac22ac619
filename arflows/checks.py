r"""Argument checks, with the error messages users see; the one utility module below every layer.

Every layer of arflows may import this module: ``nn`` (which imports nothing else of
arflows), ``transforms``, ``flows`` and the product modules. It imports nothing of arflows
itself, so it never closes an import cycle; keep it that way (``tests/test_checks.py`` checks
it). A check here is written once and named for what it refuses; callers do not restate it.

The messages say what was expected and what arrived, naming the argument
("expected `features >= 1`, got 0"): a value of the wrong kind raises a :class:`TypeError`,
a value of the right kind out of range a :class:`ValueError`. Callers whose documented
wording reports both faults alike pass their own ``message`` to :func:`check_int`.
"""

from __future__ import annotations

__all__ = [
    "AN_INTEGER",
    "INT_AT_LEAST",
    "check_activation",
    "check_at_least",
    "check_choice",
    "check_finite_positive",
    "check_int",
    "check_ints",
    "check_last_dim",
    "check_positive",
    "is_int",
    "is_integer_dtype",
    "is_real",
    "set_value_checks",
    "unchecked_values",
    "values_checked",
]

import contextlib
import math
import numbers
import threading
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

INT_AT_LEAST = "expected `{name}` to be an int >= {low}, got {value!r}"
"""What :func:`check_int` says of a non-integer; as its ``message``, of any bad value."""
AN_INTEGER = "expected an integer `{name} >= {low}`, got {value!r}"
"""A :func:`check_int` ``message`` that reports a non-integer and a small integer alike."""


def is_int(value: object) -> bool:
    """Whether ``value`` is an integer (any :class:`numbers.Integral`), bools excluded.

    Floats and bools are refused rather than truncated: ``int(2.7)`` would silently build
    another network than the one asked for, and ``True`` is a flag, not a size.

    Example:
        >>> is_int(3), is_int(3.0), is_int(True)
        (True, False, False)
    """
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number (any :class:`numbers.Real`), bools excluded."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def is_integer_dtype(t: Tensor) -> bool:
    """Whether ``t`` holds integers: neither floating point, complex nor boolean."""
    return not (t.is_floating_point() or t.is_complex() or t.dtype == torch.bool)


def check_at_least(name: str, value: object, low: float) -> None:
    """Refuses ``value < low`` with a ValueError naming ``name``; the type is not checked.

    Example:
        >>> check_at_least("passes", 0, 1)
        Traceback (most recent call last):
        ...
        ValueError: expected `passes >= 1`, got 0
    """
    if value < low:
        raise ValueError(f"expected `{name} >= {low}`, got {value}")


def check_positive(name: str, value: object) -> None:
    """Refuses a ``value`` that is not ``> 0`` (NaN included); the type is not checked."""
    if not value > 0:
        raise ValueError(f"expected `{name} > 0`, got {value}")


def check_finite_positive(name: str, value: object) -> float:
    """``value`` as a float, finite and ``> 0``; a TypeError or ValueError naming ``name``.

    Example:
        >>> check_finite_positive("bound", 5)
        5.0
    """
    if not is_real(value):
        raise TypeError(f"expected `{name}` to be a number > 0, got {value!r}")
    if not 0 < value < math.inf:
        raise ValueError(f"expected a finite `{name} > 0`, got {value}")
    return float(value)


def check_int(name: str, value: object, low: int, *, message: str | None = None) -> int:
    """``value`` as an int ``>= low`` (see :func:`is_int`); an error naming ``name`` otherwise.

    Args:
        name: The argument's name, for the message.
        value: The value.
        low: The smallest value allowed.
        message: If given, every fault raises one ValueError with this message, formatted with
            ``name``, ``low`` and ``value`` (:data:`INT_AT_LEAST`, :data:`AN_INTEGER` or
            another wording). By default a
            non-integer raises a TypeError and a small integer a ValueError.

    Returns:
        The value, as a Python int.

    Raises:
        TypeError: If ``value`` is not an integer (without ``message``).
        ValueError: If ``value < low`` (or any fault, with ``message``).

    Example:
        >>> check_int("features", 3, 1)
        3
        >>> check_int("features", 2.5, 1)
        Traceback (most recent call last):
        ...
        TypeError: expected `features` to be an int >= 1, got 2.5
    """
    if message is not None and not (is_int(value) and value >= low):
        raise ValueError(message.format(name=name, low=low, value=value))
    if not is_int(value):
        raise TypeError(INT_AT_LEAST.format(name=name, low=low, value=value))
    check_at_least(name, value, low)
    return int(value)


def check_ints(name: str, values: object, low: int, *, empty: bool = True) -> tuple[int, ...]:
    """``values`` as a tuple of ints ``>= low`` (at least one unless ``empty``), or an error.

    A sequence or a 1-D tensor is accepted (``hidden_features``, ``param_dims``); a string is
    not, though it is a sequence.

    Example:
        >>> check_ints("hidden_features", [64, 64], 1)
        (64, 64)
    """
    if isinstance(values, str | bytes) or not isinstance(values, Sequence | Tensor):
        raise TypeError(f"expected `{name}` to be a sequence of ints, got {values!r}")
    values = tuple(values.tolist() if isinstance(values, Tensor) else values)
    if not all(is_int(v) for v in values):
        raise TypeError(f"expected `{name}` to be a sequence of ints, got {values!r}")
    if not values and not empty:
        raise ValueError(f"expected at least one entry in `{name}`, got ()")
    if any(v < low for v in values):
        raise ValueError(f"expected `{name}` entries >= {low}, got {values}")
    return tuple(int(v) for v in values)


def check_choice(name: str, value: object, choices: tuple[object, ...]) -> None:
    """Refuses a ``value`` that is not one of ``choices``, listing them.

    Example:
        >>> check_choice("scale", "tanh", ("exp", "softplus"))
        Traceback (most recent call last):
        ...
        ValueError: expected `scale` in ('exp', 'softplus'), got 'tanh'
    """
    if value not in choices:
        raise ValueError(f"expected `{name}` in {choices}, got {value!r}")


def check_activation(activation: object) -> None:
    """Refuses an ``activation`` that is not a class or function returning a module."""
    if not callable(activation) or isinstance(activation, nn.Module):
        raise TypeError(
            "expected `activation` to be a module class such as torch.nn.ReLU (called once "
            f"per layer), got {activation!r}"
        )


def check_last_dim(x: Tensor, size: int, name: str | None = "x") -> None:
    """Refuses a tensor ``x`` whose shape is not ``(*, size)``.

    Args:
        x: The tensor.
        size: The last dimension expected.
        name: The tensor's name in the message, or ``None`` for a message without one.

    Example:
        >>> check_last_dim(torch.zeros(4, 2), 3)
        Traceback (most recent call last):
        ...
        ValueError: expected x with shape (*, 3), got (4, 2)
    """
    if x.shape[-1:] != (size,):
        what = "shape" if name is None else f"{name} with shape"
        raise ValueError(f"expected {what} (*, {size}), got {tuple(x.shape)}")


class _ValueChecks(threading.local):
    """The process's switch, and each thread's count of open :func:`unchecked_values` blocks."""

    enabled = True  # class attribute: one value for every thread

    def __init__(self) -> None:
        self.suspended = 0


_VALUE_CHECKS = _ValueChecks()


def values_checked() -> bool:
    """Whether flows refuse NaN and infinite values passed to ``log_prob`` in this thread.

    arflows keeps its own switch rather than following torch's
    :meth:`~torch.distributions.Distribution.set_default_validate_args`: other libraries turn
    torch's off for the whole process (importing ``sbi.inference`` does, through
    ``torch._dynamo``), and a NaN in a user's data must not then pass unseen.
    """
    return _VALUE_CHECKS.enabled and not _VALUE_CHECKS.suspended


def set_value_checks(enabled: bool) -> None:
    """Turns the refusal of non-finite values on or off for every thread (on by default).

    Example:
        >>> set_value_checks(False); values_checked()
        False
        >>> set_value_checks(True); values_checked()
        True
    """
    if not isinstance(enabled, bool):
        raise TypeError(f"expected `enabled` to be a bool, got {enabled!r}")
    _ValueChecks.enabled = enabled


@contextlib.contextmanager
def unchecked_values() -> Iterator[None]:
    """Within the block, this thread's flows skip the finite-value checks (blocks nest).

    For loops that checked their data once already (``fit`` checks every row before the
    first epoch); other threads keep their checks.
    """
    _VALUE_CHECKS.suspended += 1
    try:
        yield
    finally:
        _VALUE_CHECKS.suspended -= 1
