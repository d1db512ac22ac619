r"""Built-in datasets: figure 1 of the MAF paper, the 2-D toys and scikit-learn's digits.

Every generator has the form ``f(n, *, generator=None, dtype=None) -> Tensor (n, 2)``; the
toys follow the FFJORD paper's scales (most points within :math:`[-4, 4]^2`).

Example:
    >>> x = figure1(1000, generator=torch.Generator().manual_seed(0))
    >>> x.shape, figure1_log_prob(x).shape
    (torch.Size([1000, 2]), torch.Size([1000]))
    >>> table = load_dataset("moons", 500)
    >>> table.x.shape, table.columns, table.c is None
    (torch.Size([500, 2]), ['x0', 'x1'], True)
"""

from __future__ import annotations

__all__ = [
    "DATASETS",
    "DIGITS_SPLIT",
    "checkerboard",
    "digits",
    "digits_splits",
    "eight_gaussians",
    "figure1",
    "figure1_log_prob",
    "load_dataset",
    "moons",
    "pinwheel",
    "rings",
    "spirals",
]

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from .dequantization import integer_columns
from .splits import split_indices
from .tables import Table

Generator = torch.Generator | None


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"expected `n >= 1` points, got {n!r}")


def figure1(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Samples the 2-D density of the MAF paper's figure 1.

    .. math:: x_2 \sim \mathcal{N}(0, 4), \qquad x_1 \mid x_2 \sim \mathcal{N}(x_2^2 / 4, 1).

    A single autoregressive affine layer in the order :math:`(x_1, x_2)` cannot fit it (the
    mean of :math:`x_1` depends on the later :math:`x_2`); the reversed order or a stack of
    layers can.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points :math:`(x_1, x_2)`, with shape :math:`(n, 2)`.

    References:
        Masked Autoregressive Flow for Density Estimation (Papamakarios et al., 2017)
        https://arxiv.org/abs/1705.07057
    """
    _check_n(n)
    noise = torch.randn(n, 2, generator=generator, dtype=dtype)
    x2 = 2.0 * noise[:, 1]
    x1 = x2.square() / 4.0 + noise[:, 0]
    return torch.stack((x1, x2), dim=-1)


def figure1_log_prob(x: Tensor) -> Tensor:
    r"""The exact log-density of :func:`figure1`.

    .. math:: \log p(x) = \log \mathcal{N}(x_2; 0, 4) + \log \mathcal{N}(x_1; x_2^2 / 4, 1).

    Args:
        x: The points, with shape :math:`(*, 2)`.

    Returns:
        The log-densities, with shape :math:`(*)`.
    """
    if x.shape[-1:] != (2,):
        raise ValueError(f"expected points with shape (*, 2), got {tuple(x.shape)}")
    x1, x2 = x.unbind(-1)
    half_log_2pi = 0.5 * math.log(2 * math.pi)
    log_p2 = -0.5 * (x2 / 2.0).square() - math.log(2.0) - half_log_2pi
    log_p1 = -0.5 * (x1 - x2.square() / 4.0).square() - half_log_2pi
    return log_p1 + log_p2


# --- 2-D toys (the FFJORD paper's set; formulas re-derived, scales kept) ----------------


def moons(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Two interleaved half circles with Gaussian noise (std 0.1 before scaling by 2).

    Upper moon :math:`(\cos t, \sin t)`, lower moon :math:`(1 - \cos t, 1/2 - \sin t)`,
    :math:`t \sim U(0, \pi)`, each point's moon a fair coin; then :math:`2x - (1, 0.2)`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    t = math.pi * torch.rand(n, generator=generator, dtype=dtype)
    lower = torch.rand(n, generator=generator, dtype=dtype) < 0.5
    x = torch.where(lower, 1 - t.cos(), t.cos())
    y = torch.where(lower, 0.5 - t.sin(), t.sin())
    points = torch.stack((x, y), -1) + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)
    return 2 * points - points.new_tensor([1.0, 0.2])


def eight_gaussians(
    n: int, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Eight Gaussians of std :math:`0.5/\sqrt 2` centred on a circle of radius :math:`2\sqrt 2`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    k = torch.randint(8, (n,), generator=generator)
    angle = (k * (math.pi / 4)).to(dtype or torch.get_default_dtype())
    centres = 4 * torch.stack((angle.cos(), angle.sin()), -1)
    points = centres + 0.5 * torch.randn(n, 2, generator=generator, dtype=dtype)
    return points / math.sqrt(2)


def checkerboard(
    n: int, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""Uniform on the black squares of a 4 x 4 checkerboard on :math:`[-4, 4]^2`.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    x = 4 * torch.rand(n, generator=generator, dtype=dtype) - 2
    row = torch.randint(2, (n,), generator=generator).to(x.dtype)
    # Each column x in [j, j + 1) has its black squares shifted by j mod 2.
    y = torch.rand(n, generator=generator, dtype=dtype) - 2 * row + x.floor().remainder(2)
    return 2 * torch.stack((x, y), -1)


def pinwheel(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Five curved arms: radial std 0.3, tangential std 0.1, each arm bent by its radius.

    A point of arm :math:`k` is :math:`r = 1 + 0.3 \epsilon_1`, :math:`s = 0.1 \epsilon_2`,
    rotated by :math:`2\pi k / 5 + e^{r} / 4`, then scaled by 2.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    eps = torch.randn(n, 2, generator=generator, dtype=dtype)
    r, s = 1 + 0.3 * eps[:, 0], 0.1 * eps[:, 1]
    arm = torch.randint(5, (n,), generator=generator).to(r.dtype)
    angle = 2 * math.pi * arm / 5 + 0.25 * r.exp()
    cos, sin = angle.cos(), angle.sin()
    return 2 * torch.stack((cos * r - sin * s, sin * r + cos * s), -1)


def spirals(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Two interleaved spirals of 1.5 turns, :math:`\pm(-t \cos t, t \sin t) / 3` plus noise.

    :math:`t = 3\pi \sqrt{u}`, :math:`u \sim U(0, 1)`, uniform jitter of 0.5 before scaling
    and Gaussian noise of std 0.1 after.

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    t = 3 * math.pi * torch.rand(n, generator=generator, dtype=dtype).sqrt()
    jitter = 0.5 * torch.rand(n, 2, generator=generator, dtype=dtype)
    arm = torch.stack((-t.cos() * t, t.sin() * t), -1) + jitter
    sign = torch.where(torch.rand(n, 1, generator=generator, dtype=dtype) < 0.5, -1.0, 1.0)
    return sign * arm / 3 + 0.1 * torch.randn(n, 2, generator=generator, dtype=dtype)


def rings(n: int, *, generator: Generator = None, dtype: torch.dtype | None = None) -> Tensor:
    r"""Four concentric circles of radii 0.75, 1.5, 2.25, 3 with Gaussian noise (std 0.08).

    Args:
        n: The number of points.
        generator: The random generator.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The points, with shape :math:`(n, 2)`.
    """
    _check_n(n)
    ring = torch.randint(4, (n,), generator=generator)
    radius = 0.75 * (1 + ring).to(dtype or torch.get_default_dtype())
    angle = 2 * math.pi * torch.rand(n, generator=generator, dtype=dtype)
    points = radius[:, None] * torch.stack((angle.cos(), angle.sin()), -1)
    return points + 0.08 * torch.randn(n, 2, generator=generator, dtype=dtype)


# --- digits --------------------------------------------------------------------------------

DIGITS_SPLIT = (1257, 180, 360)


def digits(
    n: int | None = None, *, generator: Generator = None, dtype: torch.dtype | None = None
) -> Tensor:
    r"""scikit-learn's bundled 8 x 8 digits: 1797 images, 64 integer pixels in 0..16.

    Needs scikit-learn (``pip install 'arflows[sklearn]'``); the data ships with it, nothing
    is downloaded. The pixels are integers: dequantize them before fitting a density.

    Args:
        n: The number of images, drawn without replacement; all 1797 in their file order if
            ``None``.
        generator: The random generator for the draw.
        dtype: The floating point type; defaults to torch's default.

    Returns:
        The pixel values, with shape :math:`(n, 64)`.
    """
    x = torch.as_tensor(_load_digits(), dtype=dtype or torch.get_default_dtype())
    if n is None:
        return x
    _check_n(n)
    if n > len(x):
        raise ValueError(f"expected `n <= {len(x)}` digit images, got {n}")
    return x[torch.randperm(len(x), generator=generator)[:n]]


def _load_digits() -> np.ndarray:
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise ImportError(
            "the digits dataset needs scikit-learn: pip install 'arflows[sklearn]'"
        ) from error
    return load_digits().data


def digits_splits(seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    r"""The fixed train/valid/test split of :func:`digits`: 1257/180/360 images.

    Args:
        seed: The seed of the random permutation of the 1797 images.

    Returns:
        The integer pixel values (float tensors) of the train, valid and test images, with
        shapes :math:`(1257, 64)`, :math:`(180, 64)` and :math:`(360, 64)`.
    """
    x = digits()
    train, valid, test = split_indices(len(x), DIGITS_SPLIT, torch.Generator().manual_seed(seed))
    return x[train], x[valid], x[test]


DATASETS: dict[str, Callable[..., Tensor]] = {
    "figure1": figure1,
    "moons": moons,
    "8gaussians": eight_gaussians,
    "checkerboard": checkerboard,
    "pinwheel": pinwheel,
    "spirals": spirals,
    "rings": rings,
    "digits": digits,
}
"""The built-in datasets by name: ``f(n, *, generator=None, dtype=None) -> Tensor (n, D)``."""


def load_dataset(name: str, n: int | None = None, *, seed: int = 0) -> Table:
    r"""A built-in dataset as a :class:`Table`.

    Args:
        name: One of :data:`DATASETS`: ``"figure1"``, ``"moons"``, ``"8gaussians"``,
            ``"checkerboard"``, ``"pinwheel"``, ``"spirals"``, ``"rings"``, ``"digits"``.
        n: The number of points of a generated dataset (default 10 000). ``"digits"`` ignores
            it and returns all 1797 images (integer pixels, not yet dequantized).
        seed: The seed of the draw.

    Returns:
        The table, with columns ``x0, x1, ...`` (``pixel_<row>_<col>`` for digits).
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASETS)}")
    if name == "digits":
        x = digits()
        columns = [f"pixel_{i}_{j}" for i in range(8) for j in range(8)]
    else:
        gen = torch.Generator().manual_seed(seed)
        x = DATASETS[name](10_000 if n is None else n, generator=gen)
        columns = [f"x{j}" for j in range(x.shape[1])]
    return Table(x, None, columns, [], integer_columns(x.double()))
