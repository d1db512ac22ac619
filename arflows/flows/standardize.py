r"""Per-feature standardisation stored inside a flow, so saved models carry it."""

from __future__ import annotations

__all__ = ["Moments", "Standardization", "StandardizeTransform"]

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import constraints

from ..transforms import Transform


class StandardizeTransform(Transform):
    r"""The affine map :math:`y = (x - \mu) / \sigma`, elementwise on :math:`(*, D)`.

    .. math:: \log |\det J| = -\sum_i \log \sigma_i.

    Args:
        loc: The means :math:`\mu`, with shape :math:`(D,)`.
        scale: The positive scales :math:`\sigma`, with shape :math:`(D,)`.
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    sign = 1

    def __init__(self, loc: Tensor, scale: Tensor):
        super().__init__()
        self.loc, self.scale = loc, scale

    def _call(self, x: Tensor) -> Tensor:
        return (x - self.loc) / self.scale

    def _inverse(self, y: Tensor) -> Tensor:
        return y * self.scale + self.loc

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return (-self.scale.log().sum()).expand(x.shape[:-1])


@dataclass(frozen=True)
class Moments:
    r"""Column means and sums of squared deviations of rows seen so far, in float64.

    Moments of disjoint batches add up (Chan et al.'s pairwise update), so statistics of data
    read in batches, or spread over processes, equal those of all the rows at once.

    Example:
        >>> x = torch.randn(100, 3, dtype=torch.float64)
        >>> m = Moments.of(x[:30]) + Moments.of(x[30:])
        >>> torch.allclose(m.mean, x.mean(0)), torch.allclose(m.var, x.var(0, correction=0))
        (True, True)

    Attributes:
        count: The number of rows :math:`N`.
        mean: The column means, with shape :math:`(D,)`.
        m2: The column sums of squared deviations from the mean, with shape :math:`(D,)`.
    """

    count: int
    mean: Tensor
    m2: Tensor

    @staticmethod
    def of(x: Tensor) -> Moments:
        r"""The moments of the rows of ``x``, with shape :math:`(N, D)`."""
        x = x.detach().to(torch.float64)
        mean = x.mean(0) if len(x) else x.new_zeros(x.shape[1:])
        return Moments(len(x), mean, ((x - mean) ** 2).sum(0))

    def __add__(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        if self.mean.shape != other.mean.shape:
            raise ValueError(
                f"expected moments of rows with the same columns, got {tuple(self.mean.shape)} "
                f"and {tuple(other.mean.shape)}"
            )
        count = self.count + other.count
        delta = other.mean.to(self.mean.device) - self.mean
        mean = self.mean + delta * (other.count / count)
        m2 = self.m2 + other.m2.to(self.m2.device)
        return Moments(count, mean, m2 + delta**2 * (self.count * other.count / count))

    @property
    def var(self) -> Tensor:
        """The column variances (normalised by :math:`N`)."""
        return self.m2 / max(self.count, 1)

    @property
    def constant(self) -> Tensor:
        r"""Which columns hold one value in every row, with shape :math:`(D,)`.

        A constant column's deviations from its float64 mean are rounding errors, some
        :math:`10^{-16}` of the value; real spreads of float32 or float64 data are far above
        the :math:`10^{-12}` (relative) this allows.
        """
        return self.var.sqrt() <= 1e-12 * (1 + self.mean.abs())


class Standardization(nn.Module):
    r"""Stored means and scales of data or context columns; the identity until :meth:`set_`.

    The buffers start empty (no statistics), take their size from :meth:`set_` or from a
    loaded state dict, and are saved with the model.

    Example:
        >>> s = Standardization()
        >>> s.set_(torch.tensor([[0.0, 10.0], [2.0, 30.0]]))
        >>> s.apply(torch.tensor([[1.0, 20.0]])).tolist()
        [[0.0, 0.0]]
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("loc", torch.zeros(0))
        self.register_buffer("scale", torch.ones(0))

    @property
    def active(self) -> bool:
        """Whether statistics have been set."""
        return self.loc.numel() > 0

    @torch.no_grad()
    def set_(self, x: Tensor | Moments, eps: float = 1e-8) -> None:
        r"""Sets the statistics from data, or from the :class:`Moments` of data.

        Constant columns get scale 1 rather than 0, so they stay finite.

        Args:
            x: The data, with shape :math:`(N, D)`, :math:`N \ge 1`, or their moments.
            eps: Scales below ``eps`` (relative to the column's magnitude) count as constant.
        """
        dtype = self.loc.dtype if self.loc.is_floating_point() else torch.get_default_dtype()
        if not isinstance(x, Moments):
            if x.dim() != 2 or x.shape[0] < 1:
                raise ValueError(
                    f"expected data with shape (rows >= 1, columns), got {tuple(x.shape)}"
                )
            # In float64: float32 sums of large values overflow, and batches' moments add
            # up to exactly these.
            x = Moments.of(x)
        if x.count < 1 or x.mean.dim() != 1:
            raise ValueError(
                f"expected moments of at least 1 row of a table, got {x.count} rows of "
                f"shape {tuple(x.mean.shape)}"
            )
        loc, scale = x.mean, x.var.sqrt()
        tiny = scale <= eps * (1 + loc.abs())
        scale = torch.where(tiny, torch.ones_like(scale), scale)
        self.loc = loc.to(device=self.loc.device, dtype=dtype)
        self.scale = scale.to(device=self.scale.device, dtype=dtype)

    def reset_(self) -> None:
        """Removes the statistics (back to the identity)."""
        self.loc = self.loc.new_zeros(0)
        self.scale = self.scale.new_ones(0)

    def apply(self, x: Tensor) -> Tensor:
        r"""Standardises ``x`` with shape :math:`(*, D)` (unchanged while inactive)."""
        return (x - self.loc) / self.scale if self.active else x

    def transform(self) -> StandardizeTransform | None:
        """The standardisation as a transform, or ``None`` while inactive."""
        return StandardizeTransform(self.loc, self.scale) if self.active else None

    def _load_from_state_dict(
        self, state_dict: dict, prefix: str, *args: object, **kwargs: object
    ) -> None:
        # The sizes are only known once set: take them from the incoming state.
        for name in ("loc", "scale"):
            value = state_dict.get(prefix + name)
            if isinstance(value, Tensor):
                setattr(self, name, torch.empty_like(value, dtype=getattr(self, name).dtype))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
