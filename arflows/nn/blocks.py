r"""Block-triangular products of masked layers, in a transposed (features, N) layout.

A MADE layer's mask keeps :math:`a \to b` when :math:`\deg(a) \le \deg(b)` (or :math:`<`,
into the outputs). With the rows and the columns ordered by degree, each row reads a prefix of
the columns (a suffix if the columns are in descending order) that grows with the row's
degree, so the masked weight :math:`W \odot M` is block triangular and about half of it is
zero. :func:`block_linear` computes :math:`(W \odot M) x + b` skipping those zeros: the rows
are cut into :math:`B` blocks and each block is one product with the range of columns
:math:`[l, h)` its rows read,

.. math:: y_{r_0:r_1} = (W \odot M)_{r_0:r_1,\, l:h} \, x_{l:h} + b_{r_0:r_1},

which does about :math:`(1 + 1 / B) / 2` of the dense work. The activations are laid out
:math:`(\text{features}, N)`: a row block of the output and a column range of the input are
then contiguous row ranges, so every block product reads and writes its operands in place
(``torch.addmm(..., out=...)``), with no slicing copies. The backward pass is blocked the same
way: the weight's gradient only inside the blocks, the input's gradient by column segments,
each read by a contiguous run of row blocks.

Degrees in ascending or descending order (a MADE's hidden layers; the inputs and outputs of
its natural and reversed orders) are used as they are; other orders are sorted by a
:class:`Permutation` first.

Within a block the mask still zeroes entries, so the weight given must be :math:`W \odot M`;
the blocks only skip entries the mask zeroes anyway, and the result equals the dense product
up to the order of summation.

The end of the module applies this to a :class:`~arflows.nn.MADE`: :func:`made_blocks` picks
the blocks of each layer, :class:`MADEPlans` holds the network's plans, and :class:`BlockPath`
supplies the products of the MADE's forward loop (whose other path is dense).
"""

from __future__ import annotations

__all__ = [
    "BlockPath",
    "BlockPlan",
    "MADEPlans",
    "Permutation",
    "auto_blocks",
    "block_linear",
    "block_plan",
    "made_blocks",
]

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import LongTensor, Tensor
from torch.autograd.function import FunctionCtx

from ..checks import check_at_least, check_int
from .masks import mask
from .packed import Layout, block_layout, block_products, packed_block_linear, unpack

if TYPE_CHECKING:  # the MADE module imports this one
    from .made import MADE


def split_params(out: Tensor, param_dims: tuple[int, ...]) -> tuple[Tensor, ...]:
    r"""Splits a ``(*, D, P)`` output into one tensor per ``param_dims`` entry.

    An entry ``k`` gives a ``(*, D)`` tensor if ``k == 1`` and a ``(*, D, k)`` tensor otherwise.
    """
    parts = out.split(tuple(param_dims), dim=-1)
    return tuple(p.squeeze(-1) if k == 1 else p for p, k in zip(parts, param_dims, strict=True))


@dataclass(frozen=True)
class Permutation:
    r"""A permutation of one dimension, applied by gathers in both passes.

    Advanced indexing would scatter its gradient back with an accumulating ``index_put``,
    several times slower than the gather by the inverse permutation used here.

    Attributes:
        index: Where each entry comes from (position to source), with shape :math:`(n,)`.
        inverse: The inverse permutation, with shape :math:`(n,)`.
    """

    index: LongTensor
    inverse: LongTensor

    @classmethod
    def sorting(cls, degrees: LongTensor) -> Permutation | None:
        """The stable sort of ``degrees``, or ``None`` if they are monotone already."""
        steps = degrees.diff()
        if bool((steps >= 0).all()) or bool((steps <= 0).all()):
            return None
        index = degrees.argsort(stable=True)
        return cls(index, index.argsort())

    def __call__(self, t: Tensor, dim: int) -> Tensor:
        """``t.index_select(dim, index)``."""
        return _Gather.apply(t, dim, self.index, self.inverse)

    def undo(self, t: Tensor, dim: int) -> Tensor:
        """``t.index_select(dim, inverse)``, the inverse map."""
        return _Gather.apply(t, dim, self.inverse, self.index)

    def to(self, device: torch.device) -> Permutation:
        """The same permutation on ``device``."""
        return Permutation(self.index.to(device), self.inverse.to(device))


class _Gather(torch.autograd.Function):
    """``t.index_select(dim, index)`` for a permutation ``index``, whose gradient is a gather."""

    @staticmethod
    def forward(  # noqa: D102
        ctx: FunctionCtx, t: Tensor, dim: int, index: LongTensor, inverse: LongTensor
    ) -> Tensor:
        ctx.dim, ctx.index, ctx.inverse = dim, index, inverse
        return t.index_select(dim, index)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        return _Gather.apply(grad, ctx.dim, ctx.inverse, ctx.index), None, None, None


@dataclass(frozen=True)
class BlockPlan:
    r"""The static block layout of one masked layer.

    Rows and columns are in the layer's own order, or sorted by degree where a permutation is
    given.

    Attributes:
        rows: The permutation sorting the output rows by degree, or ``None`` if their order is
            monotone already.
        columns: The same for the input columns.
        bounds: The row block boundaries :math:`0 = r_0 < \dots < r_B = O`.
        ranges: The range of columns :math:`[l, h)` each row block reads (``(0, 0)`` for
            none).
        segments: For the input's gradient: column segments :math:`[s_0, s_1)` with the row
            ranges :math:`[a, b)` of the blocks that read them (segments no block reads are
            left out).
    """

    rows: Permutation | None
    columns: Permutation | None
    bounds: tuple[int, ...]
    ranges: tuple[tuple[int, int], ...]
    segments: tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]

    def to(self, device: torch.device) -> BlockPlan:
        """The same plan with its permutations on ``device``."""
        rows = None if self.rows is None else self.rows.to(device)
        columns = None if self.columns is None else self.columns.to(device)
        return BlockPlan(rows, columns, self.bounds, self.ranges, self.segments)


def block_plan(
    in_degrees: LongTensor, out_degrees: LongTensor, strict: bool = False, blocks: int = 4
) -> BlockPlan:
    r"""The block layout of the masked layer ``mask(in_degrees, out_degrees, strict)``.

    The rows, in degree order, are cut into about ``blocks`` groups of about equal row counts,
    each cut moved to the nearest place where the columns read change, so that no two blocks
    read the same columns (asking for more blocks than there are distinct degrees gives one
    block per degree).

    Args:
        in_degrees: The input units' degrees, with shape :math:`(I,)`.
        out_degrees: The output units' degrees, with shape :math:`(O,)`.
        strict: Whether the mask keeps :math:`\deg(a) < \deg(b)` rather than :math:`\le`.
        blocks: The number of row blocks :math:`B` wanted.

    Returns:
        The plan.

    Example:
        >>> in_deg, out_deg = torch.tensor([1, 2, 3, 4]), torch.tensor([1, 1, 2, 2, 3, 3])
        >>> plan = block_plan(in_deg, out_deg, blocks=3)
        >>> plan.bounds, plan.ranges
        ((0, 2, 4, 6), ((0, 1), (0, 2), (0, 3)))
    """
    check_at_least("blocks", blocks, 1)
    in_degrees, out_degrees = in_degrees.cpu(), out_degrees.cpu()
    rows, columns = Permutation.sorting(out_degrees), Permutation.sorting(in_degrees)
    if rows is not None:
        out_degrees = out_degrees[rows.index]
    if columns is not None:
        in_degrees = in_degrees[columns.index]
    reads = mask(in_degrees, out_degrees, strict)  # (O, I), each row a prefix or a suffix
    n_rows = reads.shape[0]
    count = reads.sum(1).tolist()
    steps = [r for r in range(1, n_rows) if count[r] != count[r - 1]]  # where the reads change
    cuts = set()
    for b in range(1, blocks if steps else 1):
        target = b * n_rows / blocks
        cuts.add(min(steps, key=lambda r: abs(r - target)))
    bounds = (0, *sorted(cuts), n_rows) if n_rows else (0,)
    ranges = []
    for r0, r1 in zip(bounds[:-1], bounds[1:], strict=True):
        read = reads[r0:r1].any(0).nonzero().flatten().tolist()
        ranges.append((read[0], read[-1] + 1) if read else (0, 0))
    return BlockPlan(rows, columns, bounds, tuple(ranges), _segments(bounds, ranges))


def _segments(
    bounds: tuple[int, ...], ranges: list[tuple[int, int]]
) -> tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]:
    # Cut the columns at every range end; each piece is read by some row blocks, grouped into
    # runs of consecutive blocks (one run when the ranges are nested, as in MADE layers).
    ends = sorted({e for lo, hi in ranges if hi > lo for e in (lo, hi)})
    segments = []
    for s0, s1 in zip(ends[:-1], ends[1:], strict=False):
        runs: list[list[int]] = []
        for b, (lo, hi) in enumerate(ranges):
            if lo <= s0 and s1 <= hi:
                if runs and runs[-1][1] == bounds[b]:
                    runs[-1][1] = bounds[b + 1]
                else:
                    runs.append([bounds[b], bounds[b + 1]])
        if runs:
            segments.append((s0, s1, tuple((a, b) for a, b in runs)))
    return tuple(segments)


def block_linear(x: Tensor, weight: Tensor, bias: Tensor | None, plan: BlockPlan) -> Tensor:
    r"""The masked layer :math:`(W \odot M) x + b` by block products, in the transposed layout.

    Args:
        x: The input, with shape :math:`(I, N)`, its rows in the plan's column order (sorted
            by ``plan.columns`` if given).
        weight: The masked weight :math:`W \odot M`, with shape :math:`(O, I)`, in the layer's
            own layout; it is permuted here, differentiably, where the plan says so.
        bias: The bias, with shape :math:`(O,)` in the layer's layout, or ``None``.
        plan: The layer's :func:`block_plan`, with its permutations on ``x``'s device.

    Returns:
        The output, with shape :math:`(O, N)`, its rows in the plan's row order.

    Example:
        >>> in_deg, out_deg = torch.tensor([2, 1, 3]), torch.tensor([1, 1, 2, 3])
        >>> m = mask(in_deg, out_deg)
        >>> w, x = torch.randn(4, 3) * m, torch.randn(3, 5)
        >>> plan = block_plan(in_deg, out_deg, blocks=2)
        >>> x_sorted = plan.columns(x, 0)  # the inputs sorted by degree
        >>> torch.allclose(block_linear(x_sorted, w, None, plan), w @ x, atol=1e-6)
        True
    """
    if plan.rows is not None:
        weight = plan.rows(weight, 0)
        bias = None if bias is None else plan.rows(bias, 0)
    if plan.columns is not None:
        weight = plan.columns(weight, 1)
    if len(plan.ranges) == 1:  # one block: a plain product, with autograd's own backward
        lo, hi = plan.ranges[0]
        if (lo, hi) != (0, x.shape[0]):  # (a slice's gradient costs a zero-filled copy)
            weight, x = weight[:, lo:hi], x[lo:hi]
        return weight @ x if bias is None else torch.addmm(bias[:, None], weight, x)
    return _BlockLinear.apply(weight, bias, x, plan)


class _BlockLinear(torch.autograd.Function):
    r""":math:`y = W x + b` for a block-structured :math:`W`, following a :class:`BlockPlan`.

    Entries of :math:`W` outside the blocks are never read and get a zero gradient: they are
    masked to zero by the caller, so their gradient is zeroed by the mask anyway. Under
    ``create_graph`` the backward pass uses dense differentiable products instead (equal, since
    :math:`W` is zero outside the blocks), so double backward works.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: FunctionCtx, weight: Tensor, bias: Tensor | None, x: Tensor, plan: BlockPlan
    ) -> Tensor:
        ctx.save_for_backward(weight, x)
        ctx.plan = plan
        bounds = zip(plan.bounds[:-1], plan.bounds[1:], plan.ranges, strict=True)
        blocks = [(r0, r1, lo, hi, weight[r0:r1, lo:hi]) for r0, r1, (lo, hi) in bounds]
        return block_products(x, bias, blocks, weight.shape[0])

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        weight, x = ctx.saved_tensors
        plan = ctx.plan
        need_w, need_b, need_x = ctx.needs_input_grad[:3]
        grad_w = grad_b = grad_x = None
        if need_b:
            grad_b = grad.sum(1)
        if torch.is_grad_enabled():  # create_graph: differentiable (dense) products
            if need_w:
                grad_w = grad @ x.T
            if need_x:
                grad_x = weight.T @ grad
            return grad_w, grad_b, grad_x, None
        if need_w:
            grad_w = weight.new_empty(weight.shape)  # (O, I)
            for r0, r1, (lo, hi) in zip(
                plan.bounds[:-1], plan.bounds[1:], plan.ranges, strict=True
            ):
                rows = grad_w[r0:r1]
                if hi > lo:
                    torch.mm(grad[r0:r1], x[lo:hi].T, out=rows[:, lo:hi])
                if lo > 0:  # entries the block never reads
                    rows[:, :lo].zero_()
                if max(lo, hi) < rows.shape[1]:
                    rows[:, max(lo, hi) :].zero_()
        if need_x:
            grad_x = x.new_empty(x.shape)  # (I, N)
            done = 0
            for s0, s1, runs in plan.segments:
                if s0 > done:  # columns no block reads
                    grad_x[done:s0].zero_()
                out = grad_x[s0:s1]
                (a, b), *more = runs
                torch.mm(weight[a:b, s0:s1].T, grad[a:b], out=out)
                for a, b in more:
                    out.addmm_(weight[a:b, s0:s1].T, grad[a:b])
                done = s1
            if done < grad_x.shape[0]:
                grad_x[done:].zero_()
        return grad_w, grad_b, grad_x, None


# Measured on 2 CPU cores (float32, MKL) with MADE layers: a block product pays once each
# block's product does about this many multiply-adds (with the whole input width as its
# range) and has this many rows; below, the smaller products run less efficiently than one
# dense product, and the blocks' overhead (more, smaller calls) eats the saving. Training
# blocks the backward products the same way (each the size of the forward one) and, with
# packed weights (arflows.nn.packed), no longer pays for the masked half of the weight
# gradient: the same sizes pay (measured at width 512 and batch 512: 0.8x the dense time).
_WORK = 32 * 2**20
_ROWS = 128
_MAX_BLOCKS = 8  # more blocks save little more work and add small, slow products


def auto_blocks(rows: int, out_features: int, in_features: int) -> int:
    r"""The number of row blocks that makes a masked layer's product fastest, from its size.

    A masked layer with :math:`B` blocks does about :math:`(1 + 1 / B) / 2` of the dense
    work, but in :math:`B` smaller products. This picks the most blocks (at most 8) such that
    each does enough work to run near the machine's peak, :math:`O I N / B \ge W`, and has
    enough rows, :math:`O / B \ge R`, with :math:`W = 2^{25}` and :math:`R = 128`, and uses
    one plain product below two blocks. The backward pass's products have the forward one's
    sizes, so the same choice serves training. These were measured on a 2-core CPU in float32
    on MADE layers; float64 products are slower, so blocks pay there at least as well.

    Args:
        rows: The number of rows :math:`N` the layer is applied to.
        out_features: The layer's output width :math:`O`.
        in_features: The layer's input width :math:`I`.

    Returns:
        The number of blocks :math:`B`; 1 means one plain product.

    Example:
        >>> auto_blocks(10_000, 512, 512), auto_blocks(512, 1024, 1024), auto_blocks(512, 512, 512)
        (4, 8, 4)
        >>> auto_blocks(512, 256, 256), auto_blocks(10_000, 128, 128)  # too small
        (1, 1)
    """
    work = out_features * in_features * rows // _WORK
    blocks = min(_MAX_BLOCKS, out_features // _ROWS, work)
    return blocks if blocks >= 2 else 1


_BLOCKS = "expected `{name}` 'auto', None or an int >= {low}, got {value!r}"


def made_blocks(made: MADE, x: Tensor) -> tuple[int, ...] | None:
    """The row blocks of each of ``made``'s layers (then its skip layer) for ``x``.

    ``made.blocks`` decides (see :class:`~arflows.nn.MADE`): ``None`` means the dense path,
    also returned when ``"auto"`` finds no layer where blocks pay.
    """
    blocks, layers = made.blocks, [*made.layers, made.skip_layer]
    if blocks == "auto":
        # Tuned on CPU, in float32 and float64; elsewhere the dense path is kept.
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            return None
        n = x.shape[:-1].numel()
        if n not in made._choices:  # (a few sizes recur: the batch, the validation chunks)
            if len(made._choices) > 64:
                made._choices.clear()
            choice = tuple(
                1 if layer is None else auto_blocks(n, layer.out_features, layer.in_features)
                for layer in layers
            )
            made._choices[n] = None if max(choice) == 1 else choice
        return made._choices[n]
    if blocks is None:
        return None
    check_int("blocks", blocks, 1, message=_BLOCKS)
    return (blocks,) * len(layers)


@dataclass(frozen=True)
class MADEPlans:
    """The block plans of a MADE's layers, and the permutations into and out of degree order.

    Attributes:
        layers: One :class:`BlockPlan` per layer of ``made.layers``.
        skip: The skip layer's plan, or ``None``.
        inputs: The permutation sorting the inputs by degree, or ``None`` if their order is
            monotone (the same for the first layer's and the skip layer's columns).
        outputs: The same for the output rows (the last layer's and the skip layer's rows).
        layout: Where the MADE's packed weights go for these plans: each layer's blocks
            (:func:`~arflows.nn.packed.block_layout`).
    """

    layers: list[BlockPlan]
    skip: BlockPlan | None
    inputs: Permutation | None
    outputs: Permutation | None
    layout: Layout

    @classmethod
    def build(cls, made: MADE, blocks: tuple[int, ...]) -> MADEPlans:
        """The plans of ``made`` with about ``blocks[k]`` row blocks in layer ``k``.

        The last entry of ``blocks`` is the skip layer's.
        """
        in_deg = made.input_degrees.cpu()
        out_deg = in_deg.repeat_interleave(sum(made.param_dims))
        degrees = [in_deg] + [deg.cpu() for deg in made.degrees]
        layers = [
            block_plan(a, b, blocks=n)
            for a, b, n in zip(degrees[:-1], degrees[1:], blocks[:-2], strict=True)
        ]
        layers.append(block_plan(degrees[-1], out_deg, strict=True, blocks=blocks[-2]))
        skip = None
        if made.skip_layer is not None:
            skip = block_plan(in_deg, out_deg, strict=True, blocks=blocks[-1])
        masks = [layer.mask for layer in made._masked_layers()]
        layout = block_layout(made._storage(), masks, [*layers, *([] if skip is None else [skip])])
        return cls(layers, skip, layers[0].columns, layers[-1].rows, layout)

    def to(self, device: torch.device) -> MADEPlans:
        """The same plans with their permutations on ``device``."""
        return MADEPlans(
            [plan.to(device) for plan in self.layers],
            None if self.skip is None else self.skip.to(device),
            None if self.inputs is None else self.inputs.to(device),
            None if self.outputs is None else self.outputs.to(device),
            self.layout.to(device),
        )


class BlockPath:
    r"""A MADE's layers as block products (:func:`block_linear`), in the :math:`(\cdot, N)` layout.

    The same math as the dense masked products, up to the order of summation: activations are
    transposed to :math:`(\text{features}, N)`, the inputs sorted by degree on the way in and
    the outputs put back in feature-major order on the way out. Layer ``k`` is
    ``made.layers[k]``, and ``len(made.layers)`` the skip layer.

    Args:
        made: The network.
        plans: Its plans, on the device of the inputs.
    """

    def __init__(self, made: MADE, plans: MADEPlans):
        self.made, self.plans = made, plans
        self.layer_plans = [*plans.layers, plans.skip]
        self.blocks = unpack(made.packed, plans.layout)  # one gather per call
        self.biases = [layer.bias for layer in made._masked_layers()]

    def inputs(self, x: Tensor) -> Tensor:
        """The input ``(*, D)`` as the first layer reads it: ``(D, N)``, sorted by degree."""
        x = x.reshape(-1, self.made.features)  # (N, D)
        if self.plans.inputs is not None:
            x = self.plans.inputs(x, 1)
        return x.T  # (D, N), a view: the products read it transposed

    def context(self, c: Tensor | None) -> list[Tensor | None]:
        """:meth:`~arflows.nn.MADE.context_terms` transposed: (H_k, N), then sorted (D P, N)."""
        made = self.made
        n_out = len(made.hidden_features) + 1
        if made.context_layer is None or c is None:
            return [None] * n_out
        weight, widths = made.context_layer.weight, list(made.hidden_features)
        if made.skip:
            hidden, out = weight.split([sum(widths), weight.shape[0] - sum(widths)])
            if self.plans.skip.rows is not None:
                weight = torch.cat([hidden, self.plans.skip.rows(out, 0)])
            widths.append(out.shape[0])
        terms = list((weight @ c.reshape(-1, made.context).T).split(widths))  # (H_k, N)
        return terms + [None] * (n_out - len(terms))

    def linear(self, k: int, h: Tensor) -> Tensor:
        """Layer ``k`` applied to ``h`` with shape (I, N), by block products: (O, N)."""
        plan, bias = self.layer_plans[k], self.biases[k]
        if plan.rows is not None and bias is not None:
            bias = plan.rows(bias, 0)
        return packed_block_linear(h, self.blocks[k], bias, plan)

    def outputs(self, out: Tensor, batch: torch.Size) -> tuple[Tensor, ...]:
        """The outputs ``(D P, N)`` as :meth:`~arflows.nn.MADE.forward` returns them."""
        if self.plans.outputs is not None:
            out = self.plans.outputs.undo(out, 0)  # back to feature-major order
        out = out.T.reshape(*batch, self.made.features, sum(self.made.param_dims))
        return split_params(out, self.made.param_dims)
