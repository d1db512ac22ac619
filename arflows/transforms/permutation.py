r"""Fixed permutations of the features."""

from __future__ import annotations

__all__ = ["PermutationTransform"]

from collections.abc import Sequence

import torch
from torch import LongTensor, Tensor
from torch.distributions import constraints

from ..checks import check_int, check_last_dim, is_integer_dtype
from .base import Transform


class PermutationTransform(Transform):
    r"""Permutation :math:`y_i = x_{\pi(i)}` of the last dimension.

    Its log-determinant is 0.

    Args:
        order: The permutation :math:`\pi`, with shape :math:`(D,)`.

    Example:
        >>> t = PermutationTransform.reverse(3)
        >>> t(torch.tensor([1.0, 2.0, 3.0])).tolist()
        [3.0, 2.0, 1.0]
    """

    domain = constraints.real_vector
    codomain = constraints.real_vector

    def __init__(self, order: Sequence[int] | LongTensor):
        super().__init__()
        try:
            tensor = torch.as_tensor(order)
        except (TypeError, ValueError, RuntimeError):
            raise TypeError(f"expected `order` to be a permutation, got {order!r}") from None
        if tensor.numel() == 0:
            raise ValueError(
                "expected `order` to be a permutation of at least one feature, got []"
            )
        # Floats and bools are refused rather than cast: [0.5, 1.0] would become [0, 1].
        if not is_integer_dtype(tensor):
            raise TypeError(
                f"expected `order` to hold integers, got {tensor.tolist()} of dtype {tensor.dtype}"
            )
        order = tensor.long()
        features = order.numel()
        if order.dim() != 1 or not torch.equal(
            order.sort().values, torch.arange(features, device=order.device)
        ):
            raise ValueError(
                f"expected `order` to be a permutation of 0..{features - 1}, got {order.tolist()}"
            )
        self.order = order
        self.inverse_order = torch.argsort(order)

    @classmethod
    def reverse(cls, features: int) -> PermutationTransform:
        """The reversal of ``features`` features."""
        check_int("features", features, 1)
        return cls(torch.arange(features - 1, -1, -1))

    @classmethod
    def random(
        cls, features: int, generator: torch.Generator | None = None
    ) -> PermutationTransform:
        """A uniformly random permutation drawn with ``generator``."""
        check_int("features", features, 1)
        return cls(torch.randperm(features, generator=generator))

    def _call(self, x: Tensor) -> Tensor:
        check_last_dim(x, self.order.numel(), name=None)
        return x[..., self.order]

    def _inverse(self, y: Tensor) -> Tensor:
        check_last_dim(y, self.order.numel(), name=None)
        return y[..., self.inverse_order]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return x.new_zeros(x.shape[:-1])

    def __repr__(self) -> str:
        return f"PermutationTransform({self.order.tolist()})"
