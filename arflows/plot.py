r"""Figures of 2-D flows (matplotlib is imported only when a figure is drawn)."""

from __future__ import annotations

__all__ = ["density_figure"]

from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from .flows import Flow


def _grid(data: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if data.dim() != 2 or data.shape[1] != 2:
        raise ValueError(f"expected 2-D data with shape (N, 2), got {tuple(data.shape)}")
    param = next(flow.parameters())
    data = data.detach().to("cpu", param.dtype)
    xx, yy, grid = _grid(data, resolution)
    with torch.no_grad():
        learned = flow().log_prob(grid.to(param.device)).exp().cpu().view_as(xx)
        drawn = flow().sample((samples,)).cpu()

    panels = [("data", data[:samples])]
    if true_log_prob is not None:
        panels.append(("true density", true_log_prob(grid).exp().view_as(xx)))
    panels += [("learned density", learned), ("flow samples", drawn)]
    xx, yy = xx.numpy(), yy.numpy()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
