r"""The coupling transform: an autoregressive transform with two groups."""

from __future__ import annotations

__all__ = ["CouplingTransform", "check_coupling_mask"]

from collections.abc import Callable

import torch
from torch import BoolTensor, Tensor
from torch.distributions import constraints

from ..checks import check_last_dim
from .base import InverseTransform, Transform
from .univariate import MonotonicAffineTransform  # noqa: F401 (the doctest uses it)


def check_coupling_mask(mask: Tensor, features: int | None = None) -> None:
    """Checks a coupling mask: boolean, shape :math:`(D,)`, at least one transformed feature."""
    expected = "(D,)" if features is None else f"({features},)"
    if mask.dtype != torch.bool or mask.dim() != 1:
        raise ValueError(
            f"expected `mask` a boolean tensor of shape {expected}, got dtype {mask.dtype} and "
            f"shape {tuple(mask.shape)}"
        )
    if features is not None and mask.numel() != features:
        raise ValueError(f"expected `mask` of shape {expected}, got {tuple(mask.shape)}")
    if not mask.any():
        raise ValueError("expected `mask` with at least one True (transformed) feature, got none")


class CouplingTransform(Transform):
    r"""Coupling map :math:`y_A = x_A,\ y_B = h(x_B; \theta(x_A))`.

    The features split into an identity group :math:`A` (``mask`` False) and a transformed
    group :math:`B` (``mask`` True); ``meta(x_A)`` returns the elementwise monotone map
    :math:`h(\cdot; \theta(x_A))` of the :math:`|B|` transformed features. This is an
    autoregressive transform with two groups (every feature of :math:`A` ranked before every
    feature of :math:`B`), whose Jacobian is block triangular with an identity block, so

    .. math:: x_A = y_A, \qquad x_B = h^{-1}(y_B; \theta(y_A)), \qquad
              \log |\det J(x)| = \sum_{i \in B} \log h'(x_i; \theta(x_A)).

    Both directions, each with its log-determinant, cost **one** call of ``meta``.

    Args:
        meta: A function :math:`x_A \mapsto h(\cdot; \theta(x_A))`, :math:`x_A` with shape
            :math:`(*, |A|)`, returning an elementwise transform of :math:`(*, |B|)` values.
        mask: Which features are transformed (group :math:`B`), with shape :math:`(D,)`.

    References:
        Density estimation using Real NVP (Dinh et al., 2017)
        https://arxiv.org/abs/1605.08803

    Example:
        >>> def meta(x_a):
        ...     return MonotonicAffineTransform(x_a.sin(), x_a.cos())
        >>> t = CouplingTransform(meta, torch.tensor([False, True]))
        >>> x = torch.randn(5, 2)
        >>> torch.equal(t(x)[:, 0], x[:, 0]), torch.allclose(t.inv(t(x)), x)
        (True, True)
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector
    sign = 1

    def __init__(self, meta: Callable[[Tensor], Transform], mask: BoolTensor):
        super().__init__()
        check_coupling_mask(mask)
        self.meta, self.mask = meta, mask
        self._a, self._b = (~mask).nonzero()[:, 0], mask.nonzero()[:, 0]
        self._position = torch.cat((self._a, self._b)).argsort()  # x_i = merged[..., position[i]]

    def _apply(self, v: Tensor, inverse: bool) -> tuple[Tensor, Tensor]:
        """Maps ``v`` one way or the other; returns the result and the forward-signed ladj."""
        check_last_dim(v, self.mask.numel(), name=None)
        v_a, v_b = v.index_select(-1, self._a), v.index_select(-1, self._b)
        h = self.meta(v_a)
        out_b, ladj = (h.inv if inverse else h).call_and_ladj(v_b)  # (*, |B|) each
        batch = torch.broadcast_shapes(v_a.shape[:-1], out_b.shape[:-1])
        merged = torch.cat((v_a.expand(*batch, -1), out_b.expand(*batch, -1)), dim=-1)
        return merged.index_select(-1, self._position), ladj.sum(dim=-1)

    def _call(self, x: Tensor) -> Tensor:
        return self._apply(x, inverse=False)[0]

    def _inverse(self, y: Tensor) -> Tensor:
        return self._apply(y, inverse=True)[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self._apply(x, inverse=False)[1]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return self._apply(x, inverse=False)

    @property
    def inv(self) -> Transform:
        """The inverse, whose value and log-determinant come from one ``meta`` call."""
        return _InverseCoupling(self)

    def __repr__(self) -> str:
        return f"CouplingTransform(mask={self.mask.int().tolist()})"


class _InverseCoupling(InverseTransform):
    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.base._apply(y, inverse=True)
