r"""Degrees and masks of masked autoregressive networks (MADE).

Every unit carries a degree. Input feature :math:`i` has degree ``order[i] + 1`` in
:math:`1..D`; context inputs have degree 0; hidden units have degrees in :math:`0..D-1`.
A connection :math:`a \to b` is kept when :math:`\deg(a) \le \deg(b)` between hidden layers
and when :math:`\deg(a) < \deg(b)` into the outputs, so output :math:`i` sees :math:`x_{<i}`
(in the given order) and the context only.

References:
    MADE: Masked Autoencoder for Distribution Estimation (Germain et al., 2015)
    https://arxiv.org/abs/1502.03509
"""

from __future__ import annotations

__all__ = ["hidden_degrees", "input_degrees", "mask"]

from collections.abc import Sequence

import torch
from torch import BoolTensor, LongTensor

from ..checks import check_choice, is_integer_dtype


def input_degrees(features: int, order: Sequence[int] | LongTensor | None = None) -> LongTensor:
    r"""Degrees of the input features: ``order[i] + 1``.

    Args:
        features: The number of features :math:`D`.
        order: The rank of each feature in the autoregressive order, a permutation of
            :math:`0..D-1` with shape :math:`(D,)`; feature ``i`` is generated ``order[i]``-th.
            Defaults to the natural order.

    Returns:
        The degrees, with shape :math:`(D,)`, a permutation of :math:`1..D`.

    Example:
        >>> input_degrees(3, order=[2, 0, 1]).tolist()
        [3, 1, 2]
    """
    if order is None:
        return torch.arange(1, features + 1)
    expected = f"expected `order` to be a permutation of 0..{features - 1}"
    try:
        ranks = torch.as_tensor(order)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{expected}, got {order!r}") from None
    # Floats and bools are refused, not cast: casting would turn [0.5, 1, 2] into a permutation.
    if not is_integer_dtype(ranks):
        raise TypeError(f"{expected} (integers), got {ranks.tolist()} of dtype {ranks.dtype}")
    ranks = ranks.to("cpu", torch.long)
    if ranks.shape != (features,) or not torch.equal(ranks.sort().values, torch.arange(features)):
        raise ValueError(f"{expected}, got {ranks.tolist()}")
    return ranks + 1


def hidden_degrees(
    width: int,
    features: int,
    *,
    context: bool = False,
    method: str = "sequential",
    low: int | None = None,
    generator: torch.Generator | None = None,
) -> LongTensor:
    r"""Degrees of one hidden layer, sorted ascending.

    Sorting is what makes the layer's weight matrices block triangular, which the one-sweep
    inverse relies on.

    Args:
        width: The number of hidden units :math:`H`.
        features: The number of features :math:`D`.
        context: Whether a context exists. If so, degree 0 is allowed: such units read the
            context only, and every output (the first included) can depend on the context
            through them.
        method: ``"sequential"`` spreads the degrees evenly (deterministic); ``"random"``
            draws them uniformly between ``low`` and :math:`D - 1`, as in the MADE paper,
            but with every degree present at least once when the layer is wide enough.
        low: The smallest degree allowed, for ``"random"`` the smallest degree of the previous
            layer (so no unit is dead). Defaults to 0 with context and 1 without.
        generator: The random generator for ``"random"``.

    Returns:
        The degrees, with shape :math:`(H,)`.

    Example:
        >>> hidden_degrees(6, 4).tolist()
        [1, 1, 2, 2, 3, 3]
        >>> hidden_degrees(4, 4, context=True).tolist()
        [0, 1, 2, 3]
    """
    if width < 1:
        raise ValueError(f"expected hidden widths >= 1, got {width}")
    check_choice("hidden_degrees", method, ("sequential", "random"))
    first = 0 if context else 1
    low = first if low is None else max(low, first)
    # With D = 1 and no context there is no useful degree; degree 1 units feed no output.
    high = max(features - 1, low)
    span = high - low + 1
    if method == "sequential":
        return low + torch.arange(width) * span // width
    degrees = torch.randint(low, high + 1, (width,), generator=generator)
    if width >= span:  # cover every degree once, so no output loses its inputs by chance
        degrees[:span] = torch.arange(low, high + 1)
    return degrees.sort().values


def mask(in_degrees: LongTensor, out_degrees: LongTensor, strict: bool = False) -> BoolTensor:
    r"""The MADE connectivity mask between two layers.

    Args:
        in_degrees: The input units' degrees, with shape :math:`(I,)`.
        out_degrees: The output units' degrees, with shape :math:`(O,)`.
        strict: Whether to keep :math:`\deg(a) < \deg(b)` (into outputs) rather than
            :math:`\deg(a) \le \deg(b)` (between hidden layers).

    Returns:
        A boolean mask with shape :math:`(O, I)`, laid out as a ``nn.Linear`` weight.

    Example:
        >>> mask(torch.tensor([1, 2]), torch.tensor([1, 2]), strict=True).int().tolist()
        [[0, 0], [1, 0]]
    """
    if strict:
        return out_degrees[:, None] > in_degrees[None, :]
    return out_degrees[:, None] >= in_degrees[None, :]
