r"""Unmasked conditioners: :class:`DenseNN`, for coupling layers and context embeddings."""

from __future__ import annotations

__all__ = ["DenseNN"]

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from ..checks import check_activation, check_int, check_ints, check_last_dim
from .made import broadcast_context, split_params


class DenseNN(nn.Module):
    r"""Fully connected network :math:`(x, c) \mapsto \theta`, the context concatenated to x.

    The last layer starts at zero, so the parameters start at zero and a flow built on it starts
    at the identity.

    Args:
        in_features: The input size :math:`I`.
        out_features: The number of outputs :math:`O` (with ``param_dims``, the number of
            parameterised features).
        hidden_features: The hidden layer widths.
        context: The context size :math:`C` (0 for none).
        param_dims: If given, return one tensor per entry ``k``: :math:`(*, O)` if ``k == 1``,
            else :math:`(*, O, k)`. If ``None``, return a single :math:`(*, O)` tensor.
        activation: The activation class.

    Example:
        >>> net = DenseNN(2, 3, hidden_features=(16,), context=4, param_dims=(1, 1))
        >>> shift, log_scale = net(torch.randn(7, 2), torch.randn(7, 4))
        >>> shift.shape, bool((shift == 0).all())
        (torch.Size([7, 3]), True)
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        hidden_features: Sequence[int] = (64, 64),
        context: int = 0,
        param_dims: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ReLU,
    ):
        super().__init__()
        in_features = check_int("in_features", in_features, 0)
        out_features = check_int("out_features", out_features, 1)
        context = check_int("context", context, 0)
        if in_features + context == 0:
            raise ValueError("expected `in_features + context >= 1`, got 0")
        hidden_features = check_ints("hidden_features", hidden_features, 1)
        check_activation(activation)
        self.in_features, self.out_features, self.context = in_features, out_features, context
        self.param_dims = (
            None if param_dims is None else check_ints("param_dims", param_dims, 1, empty=False)
        )
        n_out = out_features * (1 if self.param_dims is None else sum(self.param_dims))
        widths = [in_features + context, *hidden_features, n_out]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(a, b), activation()]
        self.net = nn.Sequential(*layers[:-1])
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor | tuple[Tensor, ...]:
        r"""Computes the outputs.

        Args:
            x: The input, with shape :math:`(*, I)`.
            c: The context, with shape :math:`(*, C)`, broadcast against ``x``.

        Returns:
            A :math:`(*, O)` tensor, or one tensor per ``param_dims`` entry.
        """
        check_last_dim(x, self.in_features)
        x, c = broadcast_context(x, c, self.context)
        out = self.net(x if c is None else torch.cat((x, c), dim=-1))
        if self.param_dims is None:
            return out
        return split_params(out.unflatten(-1, (self.out_features, -1)), self.param_dims)
