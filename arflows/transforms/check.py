r"""A check, from the Jacobian, that a conditioner or transform really is autoregressive."""

from __future__ import annotations

__all__ = ["AutoregressiveReport", "check_autoregressive"]

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import BoolTensor, Tensor, nn
from torch.distributions import Transform as TorchTransform


@dataclass
class AutoregressiveReport:
    r"""What :func:`check_autoregressive` found; true when the check passed.

    Attributes:
        autoregressive: Whether every output depends only on the inputs the order allows.
        order: The order checked (the rank of each feature), or the one found when none was
            given; ``None`` when no order makes the map autoregressive.
        violations: ``(i, j)`` pairs: output ``i`` depends on input ``j`` against the order.
        context_blind: The outputs that do not depend on the context (when there is one).
        dependence: :math:`(D, D)` boolean matrix, output ``i`` depends on input ``j``.
    """

    autoregressive: bool
    order: list[int] | None
    violations: list[tuple[int, int]] = field(default_factory=list)
    context_blind: list[int] = field(default_factory=list)
    dependence: BoolTensor | None = None

    def __bool__(self) -> bool:
        return self.autoregressive and not self.context_blind

    def __str__(self) -> str:
        lines = []
        if self.autoregressive:
            lines.append(f"autoregressive in the order (ranks) {self.order}")
        else:
            shown = ", ".join(f"{i}<-{j}" for i, j in self.violations[:10])
            more = "" if len(self.violations) <= 10 else f" and {len(self.violations) - 10} more"
            lines.append(
                f"NOT autoregressive: outputs depend on inputs the order forbids "
                f"(output<-input: {shown}{more})"
            )
        if self.context_blind:
            lines.append(f"outputs {self.context_blind} do not depend on the context")
        return "; ".join(lines)


def check_autoregressive(
    meta_or_transform: Callable[..., object],
    features: int,
    context: int = 0,
    *,
    order: Sequence[int] | None = None,
    samples: int = 4,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> AutoregressiveReport:
    r"""Checks, from autograd Jacobians at random points, that a map is autoregressive.

    Three kinds of objects are understood:

    * a transform :math:`y = f(x)` (a :class:`torch.distributions.Transform`): :math:`y_i` may
      depend on :math:`x_j` for :math:`j \le i` in the order;
    * a conditioner :math:`x \mapsto \theta` returning a tensor :math:`(N, D)` or
      :math:`(N, D, k)`, or a tuple of them (such as :class:`arflows.nn.MADE`), or
    * a ``meta`` function :math:`x \mapsto h(\cdot; \theta(x))` returning a transform:
      :math:`\theta_i` may depend on :math:`x_j` for :math:`j < i` only.

    With ``context > 0`` the map is called as ``f(x, c)`` and every output must also depend on
    :math:`c`. Maps that mix the rows of a batch (batch normalisation in training mode) are
    not supported.

    Args:
        meta_or_transform: The map to check.
        features: The number of features :math:`D`.
        context: The context size :math:`C` (0 for none).
        order: The rank of each feature in the intended order. If ``None``, any order is
            accepted and the one found is reported.
        samples: The number of random points.
        generator: The random generator for the points.
        dtype: The floating point type of the points. If ``None``: that of a module's first
            floating parameter or buffer; for anything else, the first of torch's default
            dtype, float64 and float32 that the map accepts (a float64 network inside a plain
            function refuses float32 points).

    Raises:
        TypeError: If ``dtype`` is not a floating point type.

    Returns:
        A report, true when the map is autoregressive (and context-aware).

    Example:
        >>> from arflows.nn import MADE
        >>> bool(check_autoregressive(MADE(4, (16,)), 4))
        True
        >>> net = torch.nn.Linear(4, 8)   # an unmasked conditioner: a common mistake
        >>> report = check_autoregressive(lambda x: net(x).view(-1, 4, 2), 4, order=range(4))
        >>> report.autoregressive
        False
    """
    if dtype is None:
        dtype = _dtype_of(meta_or_transform, samples, features, context)
    elif not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"expected `dtype` to be a floating point torch.dtype, got {dtype!r}")
    x = torch.randn(samples, features, dtype=dtype, generator=generator)
    c = torch.randn(samples, context, dtype=dtype, generator=generator) if context else None
    is_transform = isinstance(meta_or_transform, TorchTransform)

    def outputs(x: Tensor, c: Tensor | None = None) -> Tensor:
        out = meta_or_transform(x) if c is None else meta_or_transform(x, c)
        if is_transform:
            return out.unsqueeze(-1)
        if isinstance(out, TorchTransform):  # a meta: evaluate h(.; theta(x)) at a fixed point
            out = out(x0)
        parts = out if isinstance(out, tuple | list) else (out,)
        return torch.cat([p.reshape(samples, features, -1) for p in parts], dim=-1)

    x0 = torch.randn(samples, features, dtype=dtype, generator=generator)
    inputs = (x,) if c is None else (x, c)
    jac = torch.autograd.functional.jacobian(
        lambda *args: outputs(*args).sum(0), inputs
    )  # per input: (D, P, N, D) or (D, P, N, C), rows do not interact
    dependence = (jac[0] != 0).any(dim=1).any(dim=1)  # (D, D)
    blind = []
    if c is not None:
        blind = [i for i in range(features) if not (jac[1][i] != 0).any()]

    strict = not is_transform
    if order is None:
        ranks = _topological_ranks(dependence, strict)
        violations = [] if ranks is not None else _cycle_edges(dependence, strict)
    else:
        ranks = [int(r) for r in order]
        if sorted(ranks) != list(range(features)):
            raise ValueError(f"expected `order` to be a permutation of 0..{features - 1}")
        violations = [
            (i, j)
            for i in range(features)
            for j in range(features)
            if dependence[i, j] and (ranks[j] > ranks[i] or (strict and ranks[j] == ranks[i]))
        ]
    return AutoregressiveReport(
        autoregressive=ranks is not None and not violations,
        order=ranks,
        violations=violations,
        context_blind=blind,
        dependence=dependence,
    )


def _dtype_of(obj: object, samples: int, features: int, context: int) -> torch.dtype:
    """The dtype of a module's first floating tensor, else the first dtype the map accepts."""
    default = torch.get_default_dtype()
    if isinstance(obj, nn.Module):
        tensors = itertools.chain(obj.parameters(), obj.buffers())
        return next((t.dtype for t in tensors if t.is_floating_point()), default)
    if isinstance(obj, TorchTransform):  # elementwise maths promotes: any dtype works
        return default
    for dtype in dict.fromkeys((default, torch.float64, torch.float32)):
        x = torch.full((samples, features), 0.5, dtype=dtype)
        args = (x,) if not context else (x, torch.full((samples, context), 0.5, dtype=dtype))
        try:
            with torch.no_grad():
                obj(*args)
        except RuntimeError:  # e.g. "mat1 and mat2 must have the same dtype"
            continue
        return dtype
    return default  # the real call then raises the map's own error


def _topological_ranks(dependence: BoolTensor, strict: bool) -> list[int] | None:
    """A rank per feature such that each output depends on lower ranks only, if one exists."""
    features = dependence.shape[0]
    dep = dependence.clone()
    if strict and dep.diagonal().any():
        return None
    dep.fill_diagonal_(False)
    ranks, remaining, rank = [0] * features, set(range(features)), 0
    while remaining:
        ready = [i for i in sorted(remaining) if not any(dep[i, j] for j in remaining)]
        if not ready:
            return None
        for i in ready:
            ranks[i], rank = rank, rank + 1
        remaining -= set(ready)
    return ranks


def _cycle_edges(dependence: BoolTensor, strict: bool) -> list[tuple[int, int]]:
    """The dependencies that keep the map from being autoregressive in any order."""
    features = dependence.shape[0]
    dep = dependence.clone()
    edges = [(i, i) for i in range(features) if strict and dep[i, i]]
    dep.fill_diagonal_(False)
    # Peel off features that depend on nothing left; what remains lies on or behind a cycle.
    remaining = set(range(features))
    while True:
        ready = {i for i in remaining if not any(dep[i, j] for j in remaining)}
        if not ready:
            break
        remaining -= ready
    edges += [(i, j) for i in sorted(remaining) for j in sorted(remaining) if dep[i, j]]
    return edges
