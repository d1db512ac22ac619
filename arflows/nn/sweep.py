r"""The one-sweep exact inverse of a MADE-based autoregressive transform.

An autoregressive transform :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` with a :class:`MADE`
conditioner is inverted feature by feature: :math:`x_i = h^{-1}(y_i; \theta_i(x_{<i}, c))`.
Peers recompute the whole network for every feature (:math:`D` passes). Here the hidden units
are sorted by degree, so every masked weight is block lower-triangular in degree space: a unit
of degree :math:`d` reads only units of degree :math:`\le d` below it (:math:`< d` into the
outputs). For :math:`d = 0, \dots, D - 1`, once the features of degree :math:`\le d` are
known,

1. the hidden units of degree :math:`d` are computed in every layer, from the already-known
   prefixes of the layer below (units of degree 0 read the context only);
2. the output rows of the feature of degree :math:`d + 1` follow from the last hidden layer's
   known prefix (and, with ``skip``, the known inputs);
3. that feature's scalar map is inverted by the caller's ``solve``.

Each weight block is used once, so the inverse costs about one masked forward pass, done as
:math:`D` small block products per layer. The context's projection is computed once per call.

Small products are memory-bound: each re-reads the known prefix of the layer below. So the
degrees are taken in groups of :math:`G` (a blocked triangular solve): at a group's start
everything known reaches all the group's units in one product per layer, and the per-degree
steps add only the contributions from inside the group. Each layer's activations are then
read about :math:`D / G + G` times rather than :math:`D / 2`.
"""

from __future__ import annotations

__all__ = ["made_sweep"]

import functools
from collections.abc import Callable

import torch
from torch import LongTensor, Tensor, nn
from torch.autograd.function import FunctionCtx

from ..checks import check_at_least, check_last_dim
from .made import MADE, broadcast_context

Solve = Callable[[int, tuple[Tensor, ...], Tensor], Tensor]


def made_sweep(
    made: MADE,
    y: Tensor,
    solve: Solve,
    c: Tensor | None = None,
    *,
    chunk_size: int = 16384,
    group: int | None = None,
) -> Tensor:
    r"""Inverts :math:`y_i = h(x_i; \theta_i(x_{<i}, c))` in one degree-ordered sweep of a MADE.

    The features are solved in the MADE's order. For feature :math:`i` the sweep computes
    :math:`\theta_i(x_{<i}, c)` from the already-solved features only, then calls
    ``solve(i, params, y_i)``, which must return :math:`x_i = h^{-1}(y_i; \theta_i)`. The result
    equals the naive inverse (:math:`D` full passes, or the fixed-point iteration) up to
    floating-point rounding, and costs about one masked forward pass.

    Without gradients the sweep writes into preallocated buffers, in place. With gradients
    (when ``y``, ``c`` or the MADE's parameters require them) it records a graph whose saved
    tensors are the per-degree blocks themselves (no prefix copies, no in-place writes to
    saved tensors), so reparameterised samples get exact gradients with respect to ``y``,
    ``c`` and the parameters, at :math:`O(N \sum_k H_k)` memory like a forward pass. Both
    paths give the same values (to the bit on one machine: the same products).

    Args:
        made: The conditioner.
        y: The target :math:`y`, with shape :math:`(*, D)`.
        solve: A function ``(i, params, y_i) -> x_i`` inverting feature ``i``'s scalar map.
            ``params`` holds one tensor per ``made.param_dims`` entry ``k``, with shape
            :math:`(N,)` if ``k == 1`` and :math:`(N, k)` otherwise (MADE's output layout
            restricted to feature ``i``), ``y_i`` has shape :math:`(N,)` and ``x_i`` must too;
            :math:`N` is the number of rows in the current chunk of the flattened batch.
        c: The context, with shape :math:`(*, C)`, broadcast against ``y``'s batch shape.
        chunk_size: The most rows swept at once; larger batches are cut into equal chunks so
            that the activations held stay bounded (without gradients; with gradients every
            chunk's graph is kept for the backward pass). Chunks agree with the whole batch to
            rounding (BLAS may pick other kernels for other shapes).
        group: The number of consecutive degrees :math:`G` whose units get the contribution of
            everything already known in one product per layer, before the per-degree steps
            add the rest (a blocked triangular solve). This reads each layer's activations
            about :math:`D / G + G` times instead of :math:`D / 2`; it changes rounding only.
            Defaults to the integer nearest :math:`\sqrt{D}`.

    Returns:
        The inverse :math:`x`, with shape :math:`(*, D)` (the broadcast batch shape).

    Example:
        >>> made = MADE(4, hidden_features=(16, 16), param_dims=(1,))
        >>> def solve(i, params, y_i):  # y_i = x_i + shift_i
        ...     return y_i - params[0]
        >>> y = torch.randn(10, 4)
        >>> x = made_sweep(made, y, solve)
        >>> torch.allclose(x + made(x)[0], y)
        True
    """
    d = made.features
    check_last_dim(y, d, "y")
    check_at_least("chunk_size", chunk_size, 1)
    if group is None:
        group = max(1, round(d**0.5))
    check_at_least("group", group, 1)
    y_empty, _ = broadcast_context(y[..., :0], c, made.context)  # checks c, broadcasts
    batch = y_empty.shape[:-1]
    y = y.expand(*batch, d).reshape(-1, d)  # (N, D)
    n = y.shape[0]
    # Project the context before broadcasting it (a few contexts for many rows are projected
    # once each), then gather each chunk's rows.
    terms = made.context_terms(c)
    index = None
    if c is not None and c.shape[:-1] != batch:
        cells = c.shape[:-1].numel()
        index = torch.arange(cells, device=c.device).reshape(c.shape[:-1]).expand(batch).ravel()
    terms = [None if t is None else t.reshape(-1, t.shape[-1]) for t in terms]  # (N_c, H)

    if n == 0:  # nothing to solve
        return y.new_zeros(*batch, d)
    plan = _Plan(made)
    bases = plan.bases(terms)
    track = torch.is_grad_enabled() and (
        y.requires_grad
        or (c is not None and c.requires_grad)
        or any(p.requires_grad for p in made.parameters())
    )
    chunks = []
    size = -(-n // -(-n // chunk_size))  # equal chunks of at most chunk_size rows
    for start in range(0, n, size):
        stop = min(start + size, n)
        cols = torch.arange(start, stop, device=y.device) if index is None else index[start:stop]
        # Each chunk's columns of the bases, gathered into fresh (H_k, N) tensors that the
        # sweep may fill in place; a (H_k, 1) base (a bias, or one context) is shared.
        chunk_bases = [b if b.shape[1] == 1 else b.index_select(1, cols) for b in bases]
        chunks.append(plan.sweep(y[start:stop], chunk_bases, solve, track, group))
    x = chunks[0] if len(chunks) == 1 else torch.cat(chunks)
    return x.reshape(*batch, d)


class _Plan:
    """The masked weights and degree-block boundaries of a MADE, in sorted-degree layout."""

    def __init__(self, made: MADE):
        d, n_params = made.features, sum(made.param_dims)
        self.features, self.param_dims = d, made.param_dims
        self.activation, self.residual = made.activation, made.residual
        self.activate_into = _INTO.get(type(made.activation))
        self.perm: LongTensor = made.input_degrees.argsort()  # feature solved at step j
        out_perm = (self.perm[:, None] * n_params + torch.arange(n_params).to(self.perm)).ravel()
        self.out_perm = out_perm  # output rows, feature of degree 1 first
        # Units of degree j in hidden layer k are rows bounds[k][j]:bounds[k][j + 1]; those
        # of degree >= D feed no output and are never computed.
        levels = torch.arange(d + 1, device=self.perm.device)
        self.bounds = [torch.searchsorted(deg, levels).tolist() for deg in made.degrees]

        layers = made.masked_weights()  # hidden layers, output layer, skip layer
        hidden, (last, last_bias) = layers[: len(made.degrees)], layers[len(made.degrees)]
        self.weights = [w for w, _ in hidden]  # (H_k, H_{k-1})
        self.weights[0] = self.weights[0][:, self.perm]  # inputs sorted by degree
        self.biases = [b for _, b in hidden]
        self.out_weight = last[out_perm]  # (D P, H_L)
        self.out_bias = last_bias[out_perm]
        self.skip_weight = None
        if made.skip_layer is not None:
            self.skip_weight = layers[-1][0][out_perm][:, self.perm]  # (D P, D)

    def bases(self, terms: list[Tensor | None]) -> list[Tensor]:
        """Each hidden layer's, then the outputs', bias plus context term, sweep's layout.

        Shapes (rows, N_c) for the context terms' N_c rows, or (rows, 1) without context.
        """
        biases = [*self.biases, self.out_bias]
        terms = [*terms[:-1], None if terms[-1] is None else terms[-1][:, self.out_perm]]
        return [
            b[:, None] if t is None else (t + b).T.contiguous()
            for b, t in zip(biases, terms, strict=True)
        ]

    def sweep(
        self, y: Tensor, bases: list[Tensor], solve: Solve, track: bool, group: int
    ) -> Tensor:
        """Inverts one chunk: ``y`` with shape (N, D).

        ``bases`` come from :meth:`bases`, each with shape (rows, N) when gathered for this
        chunk (then filled in place), or a shared (rows, 1) to broadcast (never written).
        """
        d, n, perm = self.features, y.shape[0], self.perm
        # Columns are rows of the batch, so every degree prefix is one contiguous slab.
        y_sorted = y.T[perm]  # (D, N)
        # A shared (rows, 1) base is copied before it accumulates, even when N is 1.
        shared = [b.shape[1] == 1 for b in bases]
        bases, out_base = bases[:-1], bases[-1]

        empty = dict(dtype=y.dtype, device=y.device)
        # Sources: 0 the inputs (solved features, by degree), k + 1 hidden layer k's
        # activations. The buffers hold their values; with gradients the per-degree blocks are
        # also kept, as the graph's nodes.
        bufs = [torch.empty(d, n, **empty)] + [
            torch.empty(w.shape[0], n, **empty) for w in self.weights
        ]
        blocks: list[list[Tensor]] = [[] for _ in bufs]
        # Hidden layer k: rows of degree j, read from source k (units of degree <= j).
        consumers = [
            (bounds, [(weight, k)], base)
            for k, (bounds, weight, base) in enumerate(
                zip(self.bounds, self.weights, bases, strict=True)
            )
        ]
        # Outputs: rows of the feature of degree j + 1, read from hidden units of degree <= j
        # (and with skip from the inputs of degree <= j).
        n_params = sum(self.param_dims)
        terms = [(self.out_weight, len(self.weights))]
        if self.skip_weight is not None:
            terms.append((self.skip_weight, 0))
        consumers.append((list(range(0, (d + 1) * n_params, n_params)), terms, out_base))
        features = perm.tolist()

        def affine(base: Tensor, weight: Tensor, s: int, lo: int, hi: int, nodes: list) -> Tensor:
            # base + weight @ rows lo:hi of source s, whose blocks are `nodes`; without
            # gradients base is a (rows, N) accumulator, updated in place.
            if not track:
                return base.addmm_(weight, bufs[s][lo:hi]) if lo < hi else base
            if lo == hi:
                return base.expand(weight.shape[0], n)
            return _PrefixAffine.apply(base, weight, bufs[s][lo:hi], *nodes)

        # Slices of graph nodes cost a full-size zero gradient each in the backward pass, so
        # weights, bases and accumulators are cut with one split per level instead: rows by
        # group, columns into known / in-group / unused, rows again by degree.
        groups = [(g0, min(g0 + group, d)) for g0 in range(0, d, group)]

        def by_group(t: Tensor, bounds: list[int]) -> tuple[Tensor, ...]:
            sizes = [bounds[g1] - bounds[g0] for g0, g1 in groups]
            return t.split([*sizes, t.shape[0] - bounds[d]])  # and the rows of degree >= D

        tiles = [
            ([by_group(weight, bounds) for weight, _ in terms], by_group(base, bounds))
            for bounds, terms, base in consumers
        ]
        y_rows = y_sorted.unbind()

        for g, (g0, g1) in enumerate(groups):
            # Everything of degree < g0 (inputs: <= g0) is known: one product per layer
            # brings it to all the group's rows at once, the per-degree steps add the rest.
            known = [self.known(s, g0) for s in range(len(bufs))]
            old = [len(nodes) for nodes in blocks]
            accs, news = [], []  # per consumer: rows by degree; in-group weight columns
            for (bounds, terms, _), (weight_tiles, base_tiles), copy in zip(
                consumers, tiles, shared, strict=True
            ):
                acc = base_tiles[g]
                if not track and copy:
                    acc = acc.expand(-1, n).clone(memory_format=torch.contiguous_format)
                sizes = [bounds[j + 1] - bounds[j] for j in range(g0, g1)]
                new = []
                for (weight, s), tile in zip(terms, weight_tiles, strict=True):
                    last = self.needed(s, g1 - 1)
                    columns = [known[s], last - known[s], weight.shape[1] - last]
                    w_known, w_new, _ = tile[g].split(columns, dim=1)
                    acc = affine(acc, w_known, s, 0, known[s], blocks[s])
                    new.append(w_new.split(sizes))
                accs.append(acc.split(sizes))
                news.append(new)

            for j in range(g0, g1):
                h = None  # the layer below's degree-j pre-activations, for residual sums
                for k, (bounds, terms, _) in enumerate(consumers):
                    if bounds[j] == bounds[j + 1]:  # no unit of degree j in this layer
                        continue
                    out = accs[k][j - g0]
                    for (_, s), w_new in zip(terms, news[k], strict=True):
                        upto = self.needed(s, j)
                        weight = w_new[j - g0][:, : upto - known[s]]
                        out = affine(out, weight, s, known[s], upto, blocks[s][old[s] :])
                    if k == len(consumers) - 1:
                        break
                    if self.residual and k > 0:
                        out = h + out if track else out.add_(h)
                    h = out  # (units of degree j, N)
                    into = bufs[k + 1][bounds[j] : bounds[j + 1]]
                    if track:
                        a = self.activation(h)
                        into.copy_(a.detach())
                        blocks[k + 1].append(a)
                    elif self.activate_into is not None:
                        self.activate_into(h, out=into)  # one pass, h kept for residual sums
                    else:
                        into.copy_(self.activation(h))

                out = out.expand(n_params, n)  # (P, N): the feature of degree j + 1
                params = tuple(
                    p[0] if k == 1 else p.T
                    for p, k in zip(out.split(self.param_dims), self.param_dims, strict=True)
                )
                x = solve(features[j], params, y_rows[j])  # (N,)
                bufs[0][j] = x.detach()
                if track:
                    blocks[0].append(x[None])

        x = torch.cat(blocks[0]) if track else bufs[0]  # (D, N)
        return x[perm.argsort()].T.contiguous()

    def known(self, s: int, j: int) -> int:
        """How many units of source ``s`` are known before step ``j``."""
        return j if s == 0 else self.bounds[s - 1][j]

    def needed(self, s: int, j: int) -> int:
        """How many units of source ``s`` step ``j`` reads (and has computed)."""
        return j if s == 0 else self.bounds[s - 1][j + 1]


# Parameter-free activations that write into a given buffer (``out=``).
_INTO: dict[type[nn.Module], Callable[..., Tensor]] = {
    nn.ReLU: functools.partial(torch.clamp_min, min=0),
    nn.Tanh: torch.tanh,
    nn.Sigmoid: torch.sigmoid,
}


class _PrefixAffine(torch.autograd.Function):
    r"""The affine map :math:`B + W A` of the prefix :math:`A` of a layer (``torch.addmm``).

    ``prefix`` holds the values of ``blocks`` concatenated (a view of the sweep's buffer, not
    part of the graph); the blocks are the graph nodes. Saving the blocks rather than the
    prefix keeps the sweep's memory linear in the layer width instead of quadratic in
    :math:`D`, and the forward is the same ``addmm`` as without gradients, so both give the
    same values to the bit. The backward pass uses differentiable operations only, so double
    backward works.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: FunctionCtx, base: Tensor, weight: Tensor, prefix: Tensor, *blocks: Tensor
    ) -> Tensor:
        ctx.save_for_backward(weight, *blocks)
        ctx.prefix = prefix  # only rows past the prefix are written later
        ctx.base_shape = base.shape
        return torch.addmm(base, weight, prefix)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        weight, *blocks = ctx.saved_tensors
        grad_base = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_base = grad.sum_to_size(ctx.base_shape)
        if ctx.needs_input_grad[1]:
            # Under create_graph the prefix must carry the blocks' history.
            prefix = torch.cat(blocks) if torch.is_grad_enabled() else ctx.prefix
            grad_weight = grad @ prefix.T
        grad_blocks = [None] * len(blocks)
        if any(ctx.needs_input_grad[3:]):
            grad_blocks = (weight.T @ grad).split([b.shape[0] for b in blocks])
        return grad_base, grad_weight, None, *grad_blocks
