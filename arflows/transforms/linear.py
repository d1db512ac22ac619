r"""Invertible linear maps in LU form."""

from __future__ import annotations

__all__ = ["LULinearTransform"]

import torch
from torch import LongTensor, Tensor
from torch.distributions import constraints

from ..checks import check_last_dim
from .base import Transform


class LULinearTransform(Transform):
    r"""Invertible linear map :math:`y = P L (U + \operatorname{diag}(e^{s}))\, x + b`.

    .. math:: x = (U + \operatorname{diag}(e^{s}))^{-1} L^{-1} P^{\top} (y - b), \qquad
              \log |\det J| = \sum_i s_i.

    :math:`P` is a fixed permutation (:math:`(P w)_i = w_{\pi(i)}`), :math:`L` unit lower
    triangular and :math:`U` strictly upper triangular, taken from the strict triangles of
    ``lower`` and ``upper``. The forward map is two triangular products, :math:`O(D^2)` per
    point; the inverse is two triangular solves, also :math:`O(D^2)`. All-zero parameters and
    the identity permutation give the identity.

    Args:
        lower: Holds :math:`L` below its diagonal, with shape :math:`(D, D)` (the rest is
            ignored).
        upper: Holds :math:`U` above its diagonal, with shape :math:`(D, D)` (the rest is
            ignored).
        log_diag: The unconstrained log-diagonal :math:`s`, with shape :math:`(D,)`.
        bias: The shift :math:`b`, with shape :math:`(D,)`.
        order: The permutation :math:`\pi`, with shape :math:`(D,)`. Defaults to the identity.

    Example:
        >>> d = 3
        >>> t = LULinearTransform(torch.randn(d, d), torch.randn(d, d), torch.randn(d),
        ...                       torch.randn(d), order=torch.tensor([2, 0, 1]))
        >>> x = torch.randn(5, d)
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(
        self,
        lower: Tensor,
        upper: Tensor,
        log_diag: Tensor,
        bias: Tensor,
        order: LongTensor | None = None,
    ):
        super().__init__()
        d = log_diag.shape[-1]
        if log_diag.shape != (d,) or bias.shape != (d,):
            raise ValueError(
                f"expected `log_diag` and `bias` with shape (D,), got {tuple(log_diag.shape)} "
                f"and {tuple(bias.shape)}"
            )
        if lower.shape != (d, d) or upper.shape != (d, d):
            raise ValueError(
                f"expected `lower` and `upper` with shape ({d}, {d}), got "
                f"{tuple(lower.shape)} and {tuple(upper.shape)}"
            )
        eye = torch.eye(d, dtype=lower.dtype, device=lower.device)
        self.lower = lower.tril(-1) + eye  # L
        self.upper = upper.triu(1) + torch.diag(log_diag.exp())  # U + diag(e^s)
        self.log_diag, self.bias, self.order = log_diag, bias, order

    def _check(self, x: Tensor) -> None:
        check_last_dim(x, self.bias.numel())

    @property
    def weight(self) -> Tensor:
        r"""The matrix :math:`W = P L (U + \operatorname{diag}(e^{s}))`, with shape (D, D)."""
        w = self.lower @ self.upper
        return w if self.order is None else w[self.order]

    def _call(self, x: Tensor) -> Tensor:
        self._check(x)
        w = x @ self.upper.T @ self.lower.T  # rows: (L U x)^T
        return (w if self.order is None else w[..., self.order]) + self.bias

    def _inverse(self, y: Tensor) -> Tensor:
        self._check(y)
        w = y - self.bias
        if self.order is not None:
            w = w[..., self.order.argsort()]
        batch = w.shape[:-1]
        w = w.reshape(-1, w.shape[-1])  # (N, D)
        # Row systems v L^T = w, then x U^T = v.
        v = torch.linalg.solve_triangular(
            self.lower.T, w, upper=True, left=False, unitriangular=True
        )
        x = torch.linalg.solve_triangular(self.upper.T, v, upper=False, left=False)
        return x.reshape(*batch, x.shape[-1])

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self.log_diag.sum().expand(x.shape[:-1])

    def __repr__(self) -> str:
        return f"LULinearTransform(features={self.bias.numel()})"
