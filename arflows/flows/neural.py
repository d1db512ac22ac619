r"""Neural autoregressive flows: deep sigmoidal transformers with a numerical inverse."""

from __future__ import annotations

__all__ = ["NAF"]

from collections.abc import Sequence

from ..transforms.sigmoidal import MonotonicSigmoidalTransform
from .autoregressive import MAF


class NAF(MAF):
    r"""Neural autoregressive flow: a :class:`MAF` with deep sigmoidal transformers.

    Each layer maps :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` with

    .. math:: h(x) = \operatorname{logit} \sum_{k=1}^K w_k \, \sigma(a_k x + b_k),

    :math:`K` = ``components`` sigmoids with slopes :math:`a_k > 0` and weights
    :math:`w = \operatorname{softmax}(\cdot)` (see
    :class:`~arflows.transforms.MonotonicSigmoidalTransform`); all-zero MADE outputs give the
    identity, so the flow starts as :math:`\mathcal{N}(0, I)`.

    Direction costs (per layer): ``log_prob`` is **one** MADE pass (closed form, parallel).
    ``sample`` is one sweep (about one pass, sequential in the features;
    ``inverse="sweep"``) plus, for every feature, a safeguarded Newton root solve
    (:func:`~arflows.transforms.monotone_root`, typically 4-8 iterations of :math:`O(K)`
    work per element, each element stopping at its own tolerance). Gradients of samples
    (``rsample``) come from the implicit function theorem, not from the iterations.

    Args:
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for unconditional).
        transforms: The number of autoregressive layers.
        hidden_features: The hidden widths of each MADE.
        components: The number of sigmoids :math:`K` per feature and layer (the mixture
            size of a ``base="mog"`` base keeps :class:`MAF`'s default).
        support: The support of each data column: a list with one entry per feature, each
            ``None`` (unbounded), ``(lower, upper)``, ``(lower, None)`` or ``(None, upper)``; a
            ``None`` (or infinite) bound leaves that side unbounded. Bounded columns are mapped
            to the real line before everything else (see
            :class:`~arflows.transforms.SupportTransform`): ``log_prob`` is :math:`-\infty`
            outside the open support (and on a bound), and samples lie strictly inside.
            ``None`` (the default): every column unbounded.
        kwargs: Further :class:`MAF` options (``randperm``, ``residual``, ``inverse``,
            ``linear``, ``actnorm``, ...).

    References:
        Neural Autoregressive Flows (Huang et al., 2018)
        https://arxiv.org/abs/1804.00779

    Example:
        >>> flow = NAF(3, context=2, transforms=2, hidden_features=(16, 16), components=4)
        >>> dist = flow(torch.randn(5, 2))
        >>> dist.log_prob(torch.randn(5, 3)).shape, dist.sample((4,)).shape
        (torch.Size([5]), torch.Size([4, 5, 3]))
    """

    def __init__(
        self,
        features: int,
        context: int = 0,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        *,
        components: int = 8,
        **kwargs,
    ):
        MonotonicSigmoidalTransform.param_shapes(components)  # a clear error before any MADE
        super().__init__(
            features,
            context,
            transforms,
            hidden_features,
            univariate=MonotonicSigmoidalTransform,
            univariate_kwargs=dict(components=components),
            **kwargs,
        )
