r"""Input checks and seeding shared by the estimators of :mod:`arflows.sklearn`.

Every estimator refuses bad input the same way: ``X`` (and ``y``) become finite float64
arrays through scikit-learn's own validation, so NaN, infinities, wrong shapes and
mismatched lengths raise a :class:`ValueError` naming the problem, and a fitted estimator
refuses a different number of features than it was fitted with.
"""

from __future__ import annotations

__all__ = ["as_tensor", "check_count", "forked_seed", "validate_rows", "validate_targets"]

import contextlib
import numbers
from collections.abc import Iterator

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state


def _validate(estimator: BaseEstimator, *args: object, **options: object) -> object:
    try:
        from sklearn.utils.validation import validate_data
    except ImportError:  # scikit-learn < 1.6
        return estimator._validate_data(*args, **options)
    return validate_data(estimator, *args, **options)


def validate_rows(estimator: BaseEstimator, X: object, reset: bool) -> np.ndarray:
    r"""``X`` as a 2-D finite float64 array; records (``reset``) or checks its features.

    Args:
        estimator: The estimator, which records ``n_features_in_`` (and
            ``feature_names_in_``) when ``reset``, and checks them otherwise.
        X: Array-like with shape :math:`(N, D)`; :math:`N \ge 2` when ``reset``.
        reset: Whether this is ``fit``.

    Returns:
        The rows, with shape :math:`(N, D)`.
    """
    return _validate(
        estimator, X, reset=reset, dtype=np.float64, ensure_min_samples=2 if reset else 1
    )


def validate_targets(
    estimator: BaseEstimator, X: object, y: object, reset: bool, targets: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    r"""``X`` and ``y`` as finite float64 arrays of the same length, ``y`` made 2-D.

    Args:
        estimator: The estimator, which records or checks the features of ``X``.
        X: Array-like with shape :math:`(N, C)`.
        y: Array-like with shape :math:`(N,)` (one target) or :math:`(N, T)`.
        reset: Whether this is ``fit`` (then :math:`N \ge 2`).
        targets: The number of targets :math:`T` the estimator was fitted with, checked when
            given.

    Returns:
        ``X`` with shape :math:`(N, C)` and ``y`` with shape :math:`(N, T)`.

    Raises:
        ValueError: For NaN or infinite values, ``y`` of more than two dimensions or with
            another number of targets, or ``X`` and ``y`` of different lengths.
    """
    if y is None:
        name = type(estimator).__name__
        raise ValueError(f"{name} requires y to be passed, but the target y is None")
    X, y = _validate(
        estimator,
        X,
        y,
        reset=reset,
        dtype=np.float64,
        multi_output=True,
        y_numeric=True,
        ensure_min_samples=2 if reset else 1,
    )
    y = y.reshape(len(y), -1) if y.ndim < 2 else y
    if y.ndim != 2 or y.shape[1] < 1:
        raise ValueError(f"expected `y` with shape (N,) or (N, T), got {y.shape}")
    if targets is not None and y.shape[1] != targets:
        raise ValueError(f"expected `y` with {targets} target(s), as in fit, got {y.shape[1]}")
    return X, y


def as_tensor(values: np.ndarray) -> torch.Tensor:
    """A float64 tensor copy of ``values`` (which may be a read-only memory map)."""
    return torch.tensor(values, dtype=torch.float64)


def check_count(name: str, value: object, low: int = 1) -> int:
    """``value`` as an int of at least ``low``, or a :class:`ValueError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise ValueError(f"expected an integer `{name} >= {low}`, got {value!r}")
    return int(value)


@contextlib.contextmanager
def forked_seed(random_state: int | np.random.RandomState | None) -> Iterator[int]:
    """Seeds torch's global generator from ``random_state`` inside, restores it after.

    Yields:
        The seed drawn from ``random_state`` (an int, a RandomState, or ``None`` for numpy's
        global generator), which also seeds any generator made inside.
    """
    seed = int(check_random_state(random_state).randint(2**31 - 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield seed
