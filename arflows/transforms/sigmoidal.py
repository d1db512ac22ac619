r"""Deep sigmoidal monotone maps (neural autoregressive flows), inverted by a root finder."""

from __future__ import annotations

__all__ = ["MonotonicSigmoidalTransform"]

import math

import torch
import torch.nn.functional as F
from torch import LongTensor, Size, Tensor
from torch.distributions import constraints

from ..checks import AN_INTEGER, check_int
from .base import Transform
from .roots import RootResult, monotone_root

# Smallest sigmoid slope: the tails are linear with slope >= MIN_SLOPE, so the inverse's slope
# stays below 1 / MIN_SLOPE.
MIN_SLOPE = 1e-3
# MIN_SLOPE + softplus(0 + _UNIT_SHIFT) = 1: zero parameters give unit slopes.
_UNIT_SHIFT = math.log(math.expm1(1 - MIN_SLOPE))


def _log_sigmoids(z: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`\log \sigma(z)` and :math:`\log \sigma(-z)`, sharing one exponential.

    :math:`\log \sigma(\pm z) = \pm z / 2 - |z| / 2 - \log(1 + e^{-|z|})`: exact in both
    tails, with the derivative :math:`\sigma(\mp z)` everywhere (1/2 at 0, where ``abs`` has
    gradient 0). Faster than ``F.logsigmoid``, whose CPU kernel is slow on small tensors.
    """
    half, mag = 0.5 * z, 0.5 * z.abs()
    common = mag + torch.log1p(torch.exp(-2 * mag))
    return half - common, -half - common


def _sigmoidal(
    x: Tensor, a: Tensor, log_a: Tensor, b: Tensor, log_w: Tensor, log_norm: Tensor
) -> tuple[Tensor, Tensor]:
    r"""The map and its log-slope at ``x`` (*), for constrained parameters (*, K).

    ``log_w`` are unnormalised log-weights and ``log_norm`` (*) their log-sum: the value does
    not depend on the normalisation, and leaving it out of the two log-sums of :math:`y` makes
    equal components give bit-equal sums.

    With :math:`z_k = a_k x + b_k`, :math:`j = \arg\max_k z_k` and :math:`i = \arg\min_k z_k`,
    every log-sum is taken relative to its largest term (:math:`\log \sigma(z_j)`,
    :math:`\log \sigma(-z_i)`), so :math:`A \propto S / \sigma(z_j)` and
    :math:`B \propto (1 - S) / \sigma(-z_i)` (both scaled by the weights' sum) are of order one
    and

    .. math::
        y = z_i + \log \sigma(z_j) - \log \sigma(z_i) + \log A - \log B
          = z_j + \log \sigma(-z_j) - \log \sigma(-z_i) + \log A - \log B.

    The first form is used right of the middle, where :math:`\log \sigma(z) \approx 0`, the
    second left of it: no large terms cancel in either tail, and equal components (zero
    parameters) give :math:`y = z` to the last bit.
    """
    z = a * x[..., None] + b  # (*, K)
    pos, neg = _log_sigmoids(z)
    j, i = z.argmax(-1, keepdim=True), z.argmin(-1, keepdim=True)  # (*, 1)
    z_j, z_i = z.gather(-1, j)[..., 0], z.gather(-1, i)[..., 0]
    pos_j, pos_i = pos.gather(-1, j), pos.gather(-1, i)  # (*, 1)
    neg_j, neg_i = neg.gather(-1, j), neg.gather(-1, i)
    log_a_rel = torch.logsumexp(log_w + pos - pos_j, -1)  # log S - log sigma(z_j)
    log_b_rel = torch.logsumexp(log_w + neg - neg_i, -1)  # log(1 - S) - log sigma(-z_i)
    right = (z_j + z_i) > 0
    y = torch.where(
        right,
        z_i + (pos_j - pos_i)[..., 0],
        z_j + (neg_j - neg_i)[..., 0],
    )
    y = y + (log_a_rel - log_b_rel)
    # log sum_k w_k a_k sigma(z_k) sigma(-z_k) relative to log sigma(z_j) + log sigma(-z_i)
    log_slope = torch.logsumexp(log_w + log_a + (pos - pos_j) + (neg - neg_i), -1)
    return y, log_slope - log_a_rel - log_b_rel + log_norm


class MonotonicSigmoidalTransform(Transform):
    r"""Deep sigmoidal map :math:`y = \operatorname{logit} \sum_k w_k \sigma(a_k x + b_k)`.

    One hidden layer of :math:`K` sigmoids (the DSF transformer of neural autoregressive
    flows), applied elementwise. With :math:`z_k = a_k x + b_k` and
    :math:`S = \sum_k w_k \sigma(z_k)`,

    .. math::
        y = \log S - \log (1 - S), \qquad
        \log \frac{dy}{dx} = \log \sum_k w_k a_k \sigma(z_k) \sigma(-z_k)
                             - \log S - \log (1 - S),

    with :math:`\log S = \operatorname{logsumexp}_k(\log w_k + \log \sigma(z_k))` and
    :math:`\log(1 - S) = \operatorname{logsumexp}_k(\log w_k + \log \sigma(-z_k))`, each taken
    relative to its largest term so that values and gradients stay finite and accurate
    far in the tails (:math:`|x| = 10^4` in float32). The tails are linear: :math:`y \approx
    a_{\min} x + \mathrm{const}` as :math:`x \to \pm \infty`, so the map is a bijection of
    :math:`\mathbb{R}`.

    The slopes are :math:`a_k = 10^{-3} + \operatorname{softplus}(\tilde a_k + u)` with
    :math:`u = \operatorname{softplus}^{-1}(1 - 10^{-3})`, computed as
    :math:`1 + \operatorname{softplus}(\tilde a_k + u) - \operatorname{softplus}(u)` so that
    :math:`\tilde a = 0` gives :math:`a = 1` exactly, and the weights
    :math:`w = \operatorname{softmax}(\tilde w)`. All-zero parameters give :math:`K` equal
    sigmoids, :math:`y = \operatorname{logit} \sigma(x) = x`: the identity, to the last bit.

    **Inverse.** :math:`y \mapsto x` has no closed form; :meth:`solve` finds it with the
    safeguarded Newton method :func:`~arflows.transforms.monotone_root`, from the bracket
    :math:`\min_k (y - b_k) / a_k \le x \le \max_k (y - b_k) / a_k` (since :math:`y` lies
    between :math:`\min_k z_k` and :math:`\max_k z_k`). Gradients of the inverse come from the
    implicit function theorem, not from the iterations: with :math:`x^*` solved without
    gradients and :math:`r = h(x^*; \theta) - y`, the inverse returns
    :math:`x^* - (r - \operatorname{stop}(r)) / \operatorname{stop}(h'(x^*))`, whose value is
    exactly :math:`x^*` and whose gradients are

    .. math:: \frac{\partial x}{\partial y} = \frac{1}{h'(x^*)}, \qquad
              \frac{\partial x}{\partial \theta}
              = -\frac{\partial h / \partial \theta}{h'(x^*)}.

    Only first-order gradients of the inverse are exact (the slope is detached).

    Args:
        slopes: The unconstrained slopes :math:`\tilde a`, with shape :math:`(*, K)`.
        shifts: The shifts :math:`b`, with shape :math:`(*, K)`.
        weights: The unconstrained weights (logits) :math:`\tilde w`, with shape
            :math:`(*, K)`.
        components: The number of sigmoids :math:`K`, if given checked against the
            parameters.

    References:
        Neural Autoregressive Flows (Huang et al., 2018)
        https://arxiv.org/abs/1804.00779

    Example:
        >>> t = MonotonicSigmoidalTransform(*torch.zeros(3, 4, 8))
        >>> x = torch.randn(4)
        >>> torch.allclose(t(x), x)   # zero parameters give the identity
        True
        >>> t = MonotonicSigmoidalTransform(*torch.randn(3, 4, 8))
        >>> torch.allclose(t.inv(t(x)), x, atol=1e-5)
        True
    """

    domain = constraints.real
    codomain = constraints.real
    sign = 1

    def __init__(
        self,
        slopes: Tensor,
        shifts: Tensor,
        weights: Tensor,
        components: int | None = None,
    ):
        super().__init__()
        shapes = [tuple(p.shape) for p in (slopes, shifts, weights)]
        k = shapes[0][-1] if shapes[0] else None
        if any(not s or s[-1] != k for s in shapes) or components not in (None, k):
            raise ValueError(
                f"expected slopes, shifts and weights with shape (*, K), K = {components or k}, "
                f"got {shapes[0]}, {shapes[1]} and {shapes[2]}"
            )
        self.slopes, self.shifts, self.weights = slopes, shifts, weights
        # 1 + softplus(s + u) - softplus(u) > MIN_SLOPE, and exactly 1 (not 1 + rounding) at
        # s = 0: zero parameters then give y = x to the last bit.
        unit = F.softplus(torch.full((), _UNIT_SHIFT, dtype=slopes.dtype, device=slopes.device))
        self.a = 1 + (F.softplus(slopes + _UNIT_SHIFT) - unit)
        self.log_a = self.a.log()
        self.log_w = weights - weights.detach().amax(-1, keepdim=True)  # unnormalised
        self.log_norm = self.log_w.logsumexp(-1)

    @staticmethod
    def param_shapes(components: int = 8) -> tuple[Size, ...]:
        """The shape of each parameter per feature: slopes, shifts and weights, K each."""
        check_int("components", components, 1, message=AN_INTEGER)
        return Size((components,)), Size((components,)), Size((components,))

    def _params(self) -> tuple[Tensor, ...]:
        return self.a, self.log_a, self.shifts, self.log_w, self.log_norm

    def _call(self, x: Tensor) -> Tensor:
        return _sigmoidal(x, *self._params())[0]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:  # noqa: D102
        return _sigmoidal(x, *self._params())[1]

    def call_and_ladj(self, x: Tensor) -> tuple[Tensor, Tensor]:  # noqa: D102
        return _sigmoidal(x, *self._params())

    def solve(
        self,
        y: Tensor,
        *,
        atol: float | Tensor | None = None,
        rtol: float | Tensor | None = None,
        max_iter: int = 100,
    ) -> RootResult:
        r"""Solves :math:`h(x) = y` without gradients, reporting the iterations.

        Args:
            y: The values :math:`y`, with shape :math:`(*)` broadcast against the parameters'
                batch shape.
            atol: The absolute tolerance on :math:`x` (see
                :func:`~arflows.transforms.monotone_root`), a float or a tensor broadcast to
                the result.
            rtol: The relative tolerance on :math:`x`, like ``atol``.
            max_iter: The most Newton or bisection iterations per element.

        Returns:
            A :class:`~arflows.transforms.RootResult` with the broadcast shape. Non-finite
            values pass through: :math:`y = \pm\infty` or NaN gives :math:`x = y`.
        """
        k = self.shifts.shape[-1]
        shape = torch.broadcast_shapes(y.shape, self.shifts.shape[:-1])
        with torch.no_grad():
            # One row per element of the flattened target, gathered by the solver.
            *per_sigmoid, log_norm = self._params()
            params = [p.detach().expand(*shape, k).reshape(-1, k) for p in per_sigmoid]  # (N, K)
            params.append(log_norm.detach().expand(shape).reshape(-1))  # (N,)
            target = y.detach().expand(shape)
            a, _, b, _, _ = params
            ends = (target.reshape(-1, 1) - b) / a  # (N, K): where each z_k equals y
            # Infinite or NaN targets get finite bounds here and a NaN or infinite result below.
            ends = ends.nan_to_num(0.0)

            def f(x: Tensor, index: LongTensor) -> tuple[Tensor, Tensor]:
                value, log_slope = _sigmoidal(x, *(p[index] for p in params))
                return value, log_slope.exp()

            root = monotone_root(
                f,
                target,
                ends.amin(-1).view(shape),
                ends.amax(-1).view(shape),
                atol=atol,
                rtol=rtol,
                max_iter=max_iter,
            )
            return root._replace(x=torch.where(target.isfinite(), root.x, target))

    def _inverse(self, y: Tensor) -> Tensor:
        x = self.solve(y).x
        tracked = (y, self.slopes, self.shifts, self.weights)
        if not (torch.is_grad_enabled() and any(t.requires_grad for t in tracked)):
            return x
        value, log_slope = _sigmoidal(x, *self._params())
        residual = value - y  # zero up to the tolerance; carries the gradients
        slope = log_slope.detach().exp().clamp(min=torch.finfo(y.dtype).tiny)
        return x - (residual - residual.detach()) / slope

    def __repr__(self) -> str:
        return f"MonotonicSigmoidalTransform(components={self.shifts.shape[-1]})"
