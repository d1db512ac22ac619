r"""The transform base class, its inverse and composition."""

from __future__ import annotations

__all__ = ["ComposedTransform", "InverseTransform", "Transform"]

from torch import Tensor
from torch.distributions import constraints
from torch.distributions import transforms as torch_transforms


def _sum_rightmost(value: Tensor, dims: int) -> Tensor:
    return value.sum(tuple(range(-dims, 0))) if dims > 0 else value


class Transform(torch_transforms.Transform):
    r"""A bijection :math:`y = f(x)` that returns its log-determinant with its value.

    A :class:`torch.distributions.Transform` with one more method, :meth:`call_and_ladj`, that
    subclasses override when :math:`y` and :math:`\log |\det J_f(x)|` share work. Its
    :attr:`inv` keeps that method. Parameters are plain tensors given to ``__init__``.
    """

    bijective = True

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:
        r"""Returns :math:`y = f(x)` and :math:`\log |\det J_f(x)|`.

        Args:
            x: The input, with shape :math:`(*, D)` (:math:`(*)` for elementwise maps).

        Returns:
            :math:`y` with the shape of ``x``, and the log-determinant with the batch shape
            (elementwise maps: the shape of ``x``).
        """
        y = self(x)
        return y, self.log_abs_det_jacobian(x, y)

    @property
    def inv(self) -> Transform:
        """The inverse transform :math:`f^{-1}`, which keeps :meth:`call_and_ladj`."""
        return InverseTransform(self)


class InverseTransform(Transform):
    r"""The inverse :math:`x = f^{-1}(y)` of a transform.

    Its log-determinant is :math:`\log |\det J_{f^{-1}}(y)| = -\log |\det J_f(x)|`.

    Args:
        transform: The transform :math:`f` to invert.
    """

    def __init__(self, transform: Transform):
        super().__init__()
        self.base = transform

    @property
    def domain(self) -> constraints.Constraint:  # noqa: D102
        return self.base.codomain

    @property
    def codomain(self) -> constraints.Constraint:  # noqa: D102
        return self.base.domain

    @property
    def sign(self) -> int:  # noqa: D102
        return self.base.sign

    @property
    def inv(self) -> Transform:  # noqa: D102
        return self.base

    def _call(self, y: Tensor) -> Tensor:
        return self.base._inverse(y)

    def _inverse(self, x: Tensor) -> Tensor:
        return self.base(x)

    def log_abs_det_jacobian(self, y: Tensor, x: Tensor) -> Tensor:  # noqa: D102
        return -self.base.log_abs_det_jacobian(x, y)

    def call_and_ladj(self, y: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        x = self.base._inverse(y)
        return x, -self.base.log_abs_det_jacobian(x, y)

    def __repr__(self) -> str:
        return f"{self.base!r}.inv"


class ComposedTransform(Transform):
    r"""Composition :math:`f = f_n \circ \dots \circ f_1`.

    The log-determinants of the parts are summed over each part's extra event dimensions.

    Args:
        transforms: The parts :math:`f_1, \dots, f_n`, applied in this order.

    Example:
        >>> from arflows.transforms import MonotonicAffineTransform
        >>> t = ComposedTransform(
        ...     MonotonicAffineTransform(torch.ones(3), torch.zeros(3)),
        ...     MonotonicAffineTransform(-torch.ones(3), torch.zeros(3)),
        ... )
        >>> x = torch.randn(3)
        >>> torch.allclose(t(x), x)
        True
    """

    def __init__(self, *transforms: Transform):
        super().__init__()
        if not transforms:
            raise ValueError("expected at least one transform to compose, got none")
        self.transforms = transforms
        self._event_dim = max(t.domain.event_dim for t in transforms)

    @property
    def domain(self) -> constraints.Constraint:  # noqa: D102
        return constraints.independent(constraints.real, self._event_dim)

    codomain = domain

    @property
    def inv(self) -> ComposedTransform:
        r"""The inverse :math:`f_1^{-1} \circ \dots \circ f_n^{-1}`, composed part by part.

        Composing the parts' inverses (rather than wrapping the whole) lets each part compute
        its inverse and log-determinant together: an IAF samples with its log-density in one
        network pass per layer.
        """
        return ComposedTransform(*(t.inv for t in reversed(self.transforms)))

    def _call(self, x: Tensor) -> Tensor:
        for t in self.transforms:
            x = t(x)
        return x

    def _inverse(self, y: Tensor) -> Tensor:
        for t in reversed(self.transforms):
            y = t.inv(y)
        return y

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        total = 0
        for t in self.transforms:
            x, ladj = t.call_and_ladj(x)
            total = total + _sum_rightmost(ladj, self._event_dim - t.domain.event_dim)
        return x, total

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return self.call_and_ladj(x)[1]

    def __repr__(self) -> str:
        inner = ",\n  ".join(repr(t) for t in self.transforms)
        return f"ComposedTransform(\n  {inner}\n)"
