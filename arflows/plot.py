r"""Figures of flows and fits (matplotlib, the optional extra ``arflows[plot]``).

matplotlib is imported only when a figure is drawn. Figures are built with
:class:`matplotlib.figure.Figure` directly, never through ``pyplot``, so drawing one neither
picks nor changes the user's backend and leaves no global state behind.
"""

from __future__ import annotations

__all__ = [
    "calibration_figure",
    "density_figure",
    "density_grid",
    "loss_figure",
    "new_figure",
    "save_figure",
]

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from .files import atomic_path
from .flows import Flow

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .diagnostics import Calibration


def new_figure(**kwargs: object) -> Figure:
    """A new matplotlib figure, not attached to ``pyplot``.

    Args:
        kwargs: Arguments of :class:`matplotlib.figure.Figure` (``figsize``, ``dpi``, ...).

    Raises:
        ImportError: If matplotlib is missing, with the command that installs it.
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(
            "drawing figures needs matplotlib, which is not installed: pip install 'arflows[plot]'"
        ) from error
    return Figure(**kwargs)


def save_figure(fig: Figure, path: str | Path, *, dpi: int = 100) -> Path:
    """Writes a figure (creating the folder) and returns the path.

    The image is written to a temporary name and renamed into place, so an existing file is
    never left half-written. The format follows the suffix (PNG without one).

    Args:
        fig: The figure.
        path: Where to write it.
        dpi: The resolution.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".").lower() or "png")
    return path


def density_grid(data: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    r"""A square grid covering the bulk of 2-D data (0.5% to 99.5% quantiles, padded 15%).

    Args:
        data: The points, with shape :math:`(N, 2)`.
        n: The points per axis.

    Returns:
        The coordinates ``xx`` and ``yy``, each with shape :math:`(n, n)`, and the grid
        points, with shape :math:`(n^2, 2)`.

    Example:
        >>> xx, yy, grid = density_grid(torch.randn(100, 2), 5)
        >>> xx.shape, grid.shape
        (torch.Size([5, 5]), torch.Size([25, 2]))
    """
    if data.dim() != 2 or data.shape[1] != 2:
        raise ValueError(f"expected 2-D data with shape (N, 2), got {tuple(data.shape)}")
    lo, hi = data.quantile(0.005, dim=0), data.quantile(0.995, dim=0)
    pad = 0.15 * (hi - lo)
    a = torch.linspace(float(lo[0] - pad[0]), float(hi[0] + pad[0]), n, dtype=data.dtype)
    b = torch.linspace(float(lo[1] - pad[1]), float(hi[1] + pad[1]), n, dtype=data.dtype)
    xx, yy = torch.meshgrid(a, b, indexing="xy")
    return xx, yy, torch.stack((xx, yy), dim=-1).reshape(-1, 2)


def density_figure(
    flow: Flow,
    data: Tensor,
    path: str | Path,
    *,
    true_log_prob: Callable[[Tensor], Tensor] | None = None,
    samples: int = 2000,
    resolution: int = 200,
    title: str | None = None,
) -> Path:
    r"""Saves a PNG of a 2-D unconditional flow: data, (true density,) learned density, samples.

    Args:
        flow: An unconditional flow with 2 features.
        data: The data, with shape :math:`(N, 2)`.
        path: Where to write the PNG.
        true_log_prob: The exact log-density, if known, drawn for comparison.
        samples: The number of flow samples drawn.
        resolution: The density grid's points per axis.
        title: The figure's title.

    Returns:
        The path written.
    """
    if data.dim() != 2 or data.shape[1] != 2:
        raise ValueError(f"expected 2-D data with shape (N, 2), got {tuple(data.shape)}")
    param = next(flow.parameters())
    data = data.detach().to("cpu", param.dtype)
    xx, yy, grid = density_grid(data, resolution)
    with torch.no_grad():
        learned = flow().log_prob(grid.to(param.device)).exp().cpu().view_as(xx)
        drawn = flow().sample((samples,)).cpu()

    panels = [("data", data[:samples])]
    if true_log_prob is not None:
        panels.append(("true density", true_log_prob(grid).exp().view_as(xx)))
    panels += [("learned density", learned), ("flow samples", drawn)]
    xx, yy = xx.numpy(), yy.numpy()
    fig = new_figure(figsize=(4 * len(panels), 4))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for ax, (name, tensor) in zip(axes[0], panels, strict=True):
        value = tensor.numpy()
        if name in ("data", "flow samples"):
            ax.scatter(value[:, 0], value[:, 1], s=2, alpha=0.4)
            ax.set_xlim(float(xx.min()), float(xx.max()))
            ax.set_ylim(float(yy.min()), float(yy.max()))
        else:
            ax.pcolormesh(xx, yy, value, shading="auto", cmap="viridis")
        ax.set_title(name)
        ax.set_xlabel("$x_1$")
        ax.set_ylabel("$x_2$")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path)


def loss_figure(
    train: Sequence[float], valid: Sequence[float], *, best_epoch: int | None = None
) -> Figure:
    """Training and validation average log-likelihood (nats per row) against the epoch.

    Args:
        train: The training average log-likelihood of each epoch.
        valid: The validation average log-likelihood of each epoch.
        best_epoch: The epoch whose weights were kept, marked with a vertical line.

    Returns:
        A matplotlib figure.
    """
    fig = new_figure(figsize=(6, 4))
    ax = fig.subplots()
    ax.plot(range(1, len(train) + 1), list(train), label="train")
    ax.plot(range(1, len(valid) + 1), list(valid), label="valid")
    if best_epoch is not None and best_epoch >= 0:
        ax.axvline(best_epoch + 1, color="k", ls="--", lw=0.8, label="best")
    ax.set_xlabel("epoch")
    ax.set_ylabel("average log-likelihood (nats)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def calibration_figure(result: Calibration, *, max_panels: int = 8) -> Figure:
    """Per target: the PIT histogram against the uniform, and coverage against nominal.

    Each target gets a row of two panels: the histogram of its PIT values as densities, with
    the uniform's level 1 dashed, and the coverage of its central intervals against their
    nominal levels, with the diagonal and a band of two standard errors of a calibrated
    model. The targets with the largest KS distance are drawn first when there are more than
    ``max_panels``.

    Args:
        result: The :class:`~arflows.diagnostics.Calibration` of
            :func:`~arflows.diagnostics.calibration`.
        max_panels: The most targets drawn.

    Returns:
        A matplotlib figure (save it with :func:`save_figure`).
    """
    if max_panels < 1:
        raise ValueError(f"expected `max_panels >= 1`, got {max_panels}")
    order = np.argsort(-result.ks, kind="stable")[:max_panels]
    if len(order) == len(result.columns):
        order = np.sort(order)
    fig = new_figure(figsize=(8, 3 * len(order)))
    axes = fig.subplots(len(order), 2, squeeze=False)
    width = np.diff(result.edges)
    band = 2 * result.coverage_se
    for (hist, cover), j in zip(axes, order, strict=True):
        density = result.counts[j] / max(result.rows, 1) / width
        hist.bar(result.edges[:-1], density, width=width, align="edge", alpha=0.7)
        hist.axhline(1.0, color="k", ls="--", lw=0.8)
        hist.set_xlim(0, 1)
        hist.set_title(f"{result.columns[j]}: PIT (KS {result.ks[j]:.3f})", fontsize=9)
        hist.set_xlabel("u = F(y | c)", fontsize=8)
        hist.set_ylabel("density", fontsize=8)
        cover.fill_between(result.levels, result.levels - band, result.levels + band,
                           color="0.85", label="±2 s.e.")  # fmt: skip
        cover.plot([0, 1], [0, 1], "k--", lw=0.8)
        cover.plot(result.levels, result.coverage[j], "o-", ms=4, label="observed")
        cover.set_xlim(0, 1)
        cover.set_ylim(0, 1)
        cover.set_title(f"{result.columns[j]}: central interval coverage", fontsize=9)
        cover.set_xlabel("nominal level", fontsize=8)
        cover.set_ylabel("coverage", fontsize=8)
        cover.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig
