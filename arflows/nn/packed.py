r"""A MADE's weights stored as one vector of its connections, laid out per call.

A MADE's masks zero about half of every weight matrix. Stored as dense matrices multiplied
by their masks on every call, the masked zeros still get a gradient, an optimizer state and
an update (Adam's square root of a zero second moment is also several times slower than of a
nonzero one on some CPUs). A :class:`~arflows.nn.MADE` keeps instead one parameter vector,
``packed``: for each masked layer the entries its mask keeps, row-major (``W[M]``). Each call
lays the vector out as its products need it (a :class:`Layout`):

* :func:`dense_layout`: every layer's dense masked weight :math:`W \odot M`, shape
  :math:`(O, I)`, for plain products;
* :func:`block_layout`: every layer's blocks of a block plan
  (:class:`~arflows.nn.blocks.BlockPlan`), one after the other, for the block-triangular
  products (:func:`packed_block_linear`).

A layout is one gather from the vector (a zero where a mask drops an entry), and its gradient
one gather back (:func:`unpack`). So the gradient and the optimizer state have exactly one
entry per connection, and an optimizer sees one weight tensor per network rather than one per
layer. The biases stay parameters of the layers (:class:`MaskedLayer`).

With several mask sets (order-agnostic training) the sets read different entries of one
weight, so every entry is stored (the "storage" mask is all true) and each set's layout
inserts its own zeros.
"""

from __future__ import annotations

__all__ = [
    "Layout",
    "MaskedLayer",
    "PackedWeights",
    "block_layout",
    "dense_layout",
    "linear_init",
    "pack",
    "packed_block_linear",
    "unpack",
]

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import BoolTensor, LongTensor, Size, Tensor, nn
from torch.autograd.function import FunctionCtx

if TYPE_CHECKING:  # the blocks module imports this one
    from .blocks import BlockPlan


class MaskedLayer(nn.Module):
    r"""One masked layer of a MADE: its mask and bias; its weights are in the MADE's ``packed``.

    Args:
        mask: The mask :math:`M`, with shape :math:`(O, I)` (a ``nn.Linear`` weight's layout).
        bias: Whether the layer has a bias.

    Attributes:
        mask: The mask, a buffer.
        bias: The bias, a parameter with shape :math:`(O,)`, or ``None``.
        out_features: :math:`O`.
        in_features: :math:`I`.
    """

    def __init__(self, mask: BoolTensor, bias: bool = True):
        super().__init__()
        self.register_buffer("mask", mask.bool())
        self.out_features, self.in_features = mask.shape
        self.bias = nn.Parameter(torch.zeros(self.out_features)) if bias else None

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"connections={int(self.mask.sum())}, bias={self.bias is not None}"
        )


def linear_init(out_features: int, in_features: int, bias: bool) -> tuple[Tensor, Tensor | None]:
    """A weight (O, I) and bias (O,) drawn as :class:`torch.nn.Linear` draws them, in order."""
    weight = torch.empty(out_features, in_features)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if not bias:
        return weight, None
    bound = 1 / math.sqrt(in_features) if in_features > 0 else 0
    return weight, nn.init.uniform_(torch.empty(out_features), -bound, bound)


@dataclass(frozen=True)
class Layout:
    r"""Where the entries of a packed vector go in a flat layout of tensors.

    Attributes:
        gather: For each position of the layout, the index of the packed entry there, or
            :math:`n` (the packed length) for a zero, with shape :math:`(L,)`.
        scatter: For each packed entry, its position in the layout, or :math:`L` for an entry
            the layout leaves out (another mask set's connection: its gradient is zero), with
            shape :math:`(n,)`.
        shapes: The shape of each tensor of the layout, in order (they fill it).
        sizes: Their numbers of entries.
        zeros: Whether the layout holds zeros (``gather`` has the index :math:`n`).
        complete: Whether every packed entry has a place in the layout.
    """

    gather: LongTensor
    scatter: LongTensor
    shapes: tuple[Size, ...]
    sizes: tuple[int, ...]
    zeros: bool
    complete: bool

    def to(self, device: torch.device) -> Layout:
        """The same layout with its indices on ``device``."""
        gather, scatter = self.gather.to(device), self.scatter.to(device)
        return Layout(gather, scatter, self.shapes, self.sizes, self.zeros, self.complete)


def pack(weights: Sequence[Tensor], storage: Sequence[BoolTensor]) -> Tensor:
    r"""The packed vector: each weight's entries where ``storage`` is true, row-major.

    Args:
        weights: The layers' weights, each with shape :math:`(O_k, I_k)`.
        storage: Which entries of each weight are stored, with the weight's shape.

    Returns:
        The vector, with shape :math:`(n,)`.
    """
    parts = [w[s.to(w.device)] for w, s in zip(weights, storage, strict=True)]
    return torch.cat(parts)


def _positions(storage: Sequence[BoolTensor]) -> list[LongTensor]:
    """Each layer's (O, I) matrix of packed indices, -1 where nothing is stored."""
    out, start = [], 0
    for s in storage:
        s = s.cpu()
        pos = torch.full(s.shape, -1, dtype=torch.long)
        pos[s] = torch.arange(start, start + int(s.sum()))
        start += int(s.sum())
        out.append(pos)
    return out


def _layout(parts: list[Tensor], n: int, shapes: list[Size] | None = None) -> Layout:
    """A layout from the packed index of each position of each tensor (-1 for a zero)."""
    shapes = [p.shape for p in parts] if shapes is None else shapes
    gather = torch.cat([p.reshape(-1) for p in parts])
    gather = torch.where(gather < 0, n, gather)
    kept = (gather < n).nonzero().flatten()
    scatter = torch.full((n,), len(gather), dtype=torch.long)
    scatter[gather[kept]] = kept
    sizes = tuple(p.numel() for p in parts)
    return Layout(gather, scatter, tuple(shapes), sizes, len(kept) < len(gather), len(kept) == n)


def dense_layout(
    storage: Sequence[BoolTensor],
    masks: Sequence[BoolTensor],
    rows: Sequence[LongTensor | None] | None = None,
) -> Layout:
    r"""The dense layout: each layer's masked weight :math:`W \odot M`, shape :math:`(O, I)`.

    Args:
        storage: Which entries of each layer's weight are stored (true where ``masks`` is).
        masks: The layers' masks :math:`M`, each with shape :math:`(O_k, I_k)`.
        rows: For each layer, an order of its rows (row ``r`` of the layout is row
            ``rows[r]`` of the layer), or ``None`` to keep it.

    Returns:
        The layout, on the CPU.

    Example:
        >>> m = torch.tensor([[True, False], [True, True]])
        >>> layout = dense_layout([m], [m])
        >>> layout.gather.tolist(), layout.scatter.tolist()  # 3 stands for a zero
        ([0, 3, 1, 2], [0, 2, 3])
    """
    rows = [None] * len(masks) if rows is None else rows
    parts = []
    for pos, m, order in zip(_positions(storage), masks, rows, strict=True):
        pos = torch.where(m.cpu(), pos, -1)
        parts.append(pos if order is None else pos[order.cpu()])
    return _layout(parts, _length(storage))


def block_layout(
    storage: Sequence[BoolTensor], masks: Sequence[BoolTensor], plans: Sequence[BlockPlan]
) -> Layout:
    r"""The block layout: each layer's blocks of its plan, one after the other, flat.

    The blocks hold rows ``r0:r1`` and columns ``lo:hi`` of the weight with its rows and
    columns sorted as the plan says, row-major (as :func:`packed_block_linear` reads them).

    Args:
        storage: Which entries of each layer's weight are stored.
        masks: The layers' masks, each with shape :math:`(O_k, I_k)`.
        plans: Each layer's :func:`~arflows.nn.blocks.block_plan`.

    Returns:
        The layout, on the CPU: per layer its blocks, with shape :math:`(L_k,)`.
    """
    parts = []
    for pos, m, plan in zip(_positions(storage), masks, plans, strict=True):
        pos = torch.where(m.cpu(), pos, -1)
        if plan.rows is not None:
            pos = pos[plan.rows.index.cpu()]
        if plan.columns is not None:
            pos = pos[:, plan.columns.index.cpu()]
        bounds = zip(plan.bounds[:-1], plan.bounds[1:], plan.ranges, strict=True)
        parts.append(torch.cat([pos[r0:r1, lo:hi].reshape(-1) for r0, r1, (lo, hi) in bounds]))
    return _layout(parts, _length(storage))


class PackedWeights:
    """The packed weights of a MADE and their layouts (a base class of the module).

    The module provides ``layers`` and ``skip_layer`` (:class:`MaskedLayer`), ``orders``,
    ``features``, ``param_dims``, ``hidden_features``, the mask-set index ``_mask_index``, the
    parameter ``packed``, the buffer ``_output_order`` (:meth:`_param_major`) and a dict
    ``_layouts`` that loading a state dict clears. This class gives the dense layouts, and a
    state dict in the layout of dense masked layers (``layers.{k}.weight`` with shape
    :math:`(O, I)`), so that saved models read the same before and after packing.
    """

    def _storage(self, masks: list[BoolTensor] | None = None) -> list[BoolTensor]:
        """Which entries of each masked layer's weight :attr:`packed` holds.

        With one mask set, the masks' (the connections); with several, every entry: the sets
        read different entries of one weight. ``masks``: the layers' (by default), or masks
        being loaded.
        """
        if masks is None:
            masks = [layer.mask for layer in self._masked_layers()]
        return masks if self.orders == 1 else [torch.ones_like(m) for m in masks]

    def _weight_names(self) -> list[str]:
        """The state-dict names of the masked layers (as dense ``MaskedLinear`` layers)."""
        return [f"layers.{k}" for k in range(len(self.layers))] + (
            [] if self.skip_layer is None else ["skip_layer"]
        )

    def masked_weights(self, param_major: bool = False) -> list[tuple[Tensor, Tensor | None]]:
        r"""Each masked layer's dense masked weight (from :attr:`packed`) and bias.

        Args:
            param_major: Whether the output and skip layers' rows come in parameter-major
                order (:meth:`_param_major`) rather than feature-major.

        Returns:
            For each hidden layer, the output layer, then the skip layer (if any): the weight
            :math:`W \odot M` with shape :math:`(O, I)`, differentiable with respect to
            :attr:`packed`, and the bias with shape :math:`(O,)` (or ``None``).
        """
        key = (self._mask_index, self.packed.device, param_major)
        if key not in self._layouts:
            masks = [layer.mask for layer in self._masked_layers()]
            rows: list[LongTensor | None] = [None] * len(self.hidden_features)
            rows += [self._output_order if param_major else None] * (len(masks) - len(rows))
            layout = dense_layout(self._storage(), masks, rows)
            self._layouts[key] = layout.to(self.packed.device)
        weights = unpack(self.packed, self._layouts[key])
        biases = [layer.bias for layer in self._masked_layers()]
        if param_major and len(self.param_dims) > 1:
            biases[len(self.layers) - 1] = biases[len(self.layers) - 1][self._output_order]
        return list(zip(weights, biases, strict=True))

    def _param_major(self) -> LongTensor:
        """The output rows (feature-major, ``i * P + p``) in parameter-major order.

        Each ``param_dims`` entry ``k`` gets :math:`D k` consecutive rows, feature-major
        within, so its outputs are one contiguous slice of shape :math:`(*, D, k)`.
        """
        n_params, rows, start = sum(self.param_dims), [], 0
        for k in self.param_dims:
            feature = torch.arange(self.features)[:, None] * n_params
            rows.append((feature + start + torch.arange(k)).reshape(-1))
            start += k
        return torch.cat(rows)

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        # Each layer's dense weight (zeros where nothing is stored) under the keys of
        # MaskedLinear layers: saved models read the same before and after packing.
        super()._save_to_state_dict(destination, prefix, keep_vars)
        del destination[prefix + "packed"]
        for name, weight in zip(self._weight_names(), self._stored(), strict=True):
            destination[f"{prefix}{name}.weight"] = weight

    def _stored(self) -> tuple[Tensor, ...]:
        """Each masked layer's weight (O, I), zeros where nothing is stored, detached."""
        # The layout is kept: state dicts are taken every epoch that improves (the best weights).
        key = (self._mask_index, self.packed.device, "stored")
        if key not in self._layouts:
            storage = self._storage()
            self._layouts[key] = dense_layout(storage, storage).to(self.packed.device)
        with torch.no_grad():
            return unpack(self.packed, self._layouts[key])

    def _load_from_state_dict(
        self,
        state_dict: dict,
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Dense weights (any values where the masks drop entries) are packed with the masks
        # being loaded; a mask that keeps another number of entries (another network's random
        # degrees) resizes the parameter in place, so an optimizer holding it keeps working.
        if prefix + "packed" not in state_dict:
            weights, masks = [], []
            for name, layer, current in zip(
                self._weight_names(), self._masked_layers(), self._stored(), strict=True
            ):
                key = f"{prefix}{name}.weight"
                mask = state_dict.get(f"{prefix}{name}.mask", layer.mask)
                # Another shape is reported (by the weight here, by the mask buffer's own
                # load); the current mask then packs the current weight unchanged.
                masks.append((mask if mask.shape == current.shape else layer.mask).bool())
                weight = state_dict.pop(key, None)
                if weight is None:
                    missing_keys.append(key)
                elif weight.shape != current.shape:
                    error_msgs.append(
                        f"size mismatch for {key}: copying a param with shape "
                        f"{tuple(weight.shape)}, the shape in current model is "
                        f"{tuple(current.shape)}."
                    )
                    weight = None
                weights.append(current if weight is None else weight.to(current.device))
            packed = pack(weights, [m.to(self.packed.device) for m in self._storage(masks)])
            if packed.shape != self.packed.shape:
                self.packed.data = self.packed.data.new_empty(packed.shape)
            state_dict[prefix + "packed"] = packed
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )


def _length(storage: Sequence[BoolTensor]) -> int:
    """The packed length: the stored entries."""
    return sum(int(s.sum()) for s in storage)


class _Gather(torch.autograd.Function):
    """A layout's flat buffer from a packed vector; the gradient is a gather back."""

    @staticmethod
    def forward(ctx: FunctionCtx, packed: Tensor, layout: Layout) -> Tensor:  # noqa: D102
        ctx.layout = layout
        if layout.zeros:  # index n: a zero
            packed = torch.cat([packed, packed.new_zeros(1)])
        return packed.index_select(0, layout.gather)

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        if not ctx.layout.complete:  # position L: a zero for the entries the layout leaves out
            grad = torch.cat([grad, grad.new_zeros(1)])
        return grad.index_select(0, ctx.layout.scatter), None


def unpack(packed: Tensor, layout: Layout) -> tuple[Tensor, ...]:
    """The tensors of ``layout`` filled from ``packed``, differentiably (views of one buffer)."""
    flat = _Gather.apply(packed, layout)
    # One split, one backward node: its gradient is one concatenation of the parts'.
    parts = flat.split(layout.sizes)
    return tuple(
        p if p.shape == s else p.view(s) for p, s in zip(parts, layout.shapes, strict=True)
    )


class _PackedBlockLinear(torch.autograd.Function):
    r""":math:`y = W x + b` by block products, the blocks' weights one after the other.

    The backward pass writes each block's weight gradient into its place of the flat layout,
    and sums the input gradient block by block. Under ``create_graph`` it uses differentiable
    products instead, so double backward works.
    """

    @staticmethod
    def forward(  # noqa: D102
        ctx: FunctionCtx, flat: Tensor, bias: Tensor | None, x: Tensor, plan: BlockPlan
    ) -> Tensor:
        ctx.save_for_backward(flat, x)
        ctx.plan = plan
        return block_products(x, bias, _blocks(flat, plan), plan.bounds[-1])

    @staticmethod
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:  # noqa: D102
        flat, x = ctx.saved_tensors
        need_w, need_b, need_x = ctx.needs_input_grad[:3]
        blocks = [b for b in _blocks(flat, ctx.plan) if b[3] > b[2]]
        grad_w = grad_b = grad_x = None
        if need_b:
            grad_b = grad.sum(1)
        if torch.is_grad_enabled():  # create_graph: differentiable products
            if need_w:
                parts = [(grad[r0:r1] @ x[lo:hi].T).reshape(-1) for r0, r1, lo, hi, _ in blocks]
                grad_w = torch.cat([flat.new_zeros(0), *parts])
            if need_x:
                grad_x = torch.zeros_like(x)
                for r0, r1, lo, hi, w in blocks:
                    grad_x = grad_x + F.pad(w.T @ grad[r0:r1], (0, 0, lo, x.shape[0] - hi))
            return grad_w, grad_b, grad_x, None
        if need_w:
            # Blocks that read nothing hold no weights, so the others fill the whole layout.
            grad_w = flat.new_empty(flat.shape)
            for r0, r1, lo, hi, w in blocks:
                start = w.storage_offset() - flat.storage_offset()
                out = grad_w[start : start + w.numel()].view(w.shape)
                torch.mm(grad[r0:r1], x[lo:hi].T, out=out)
        if need_x:
            grad_x = _input_grad(grad, x, blocks)
        return grad_w, grad_b, grad_x, None


def block_products(
    x: Tensor, bias: Tensor | None, blocks: Sequence[tuple[int, int, int, int, Tensor]], rows: int
) -> Tensor:
    """:math:`W x + b` from the blocks of :math:`W`: rows ``r0:r1`` read columns ``lo:hi``.

    Args:
        x: The input, with shape :math:`(I, N)`.
        bias: The bias, with shape :math:`(O,)`, or ``None``.
        blocks: ``(r0, r1, lo, hi, w)`` for every row block, ``w`` of shape
            :math:`(r_1 - r_0, hi - lo)`; together the blocks cover the :math:`O` rows.
        rows: :math:`O`.

    Returns:
        The output, with shape :math:`(O, N)`.
    """
    y = x.new_empty(rows, x.shape[1])
    for r0, r1, lo, hi, w in blocks:
        out = y[r0:r1]
        if lo == hi and bias is None:  # these rows read nothing
            out.zero_()
        elif lo == hi:
            out.copy_(bias[r0:r1, None])
        elif bias is None:
            torch.mm(w, x[lo:hi], out=out)
        else:
            torch.addmm(bias[r0:r1, None], w, x[lo:hi], out=out)
    return y


def _blocks(flat: Tensor, plan: BlockPlan) -> list[tuple[int, int, int, int, Tensor]]:
    """Each block's rows ``r0:r1``, columns ``lo:hi`` and weight (a view of ``flat``)."""
    blocks, start = [], 0
    for k, (lo, hi) in enumerate(plan.ranges):
        r0, r1 = plan.bounds[k], plan.bounds[k + 1]
        end = start + (r1 - r0) * (hi - lo)
        blocks.append((r0, r1, lo, hi, flat[start:end].view(r1 - r0, hi - lo)))
        start = end
    return blocks


def _input_grad(grad: Tensor, x: Tensor, blocks: list[tuple]) -> Tensor:
    r""":math:`\sum_k W_k^\top g_k`, each block's term on its columns, into a fresh (I, N)."""
    grad_x = x.new_empty(x.shape)
    if not blocks:
        return grad_x.zero_()
    # The widest block first, written rather than added; a MADE's column ranges are nested
    # (prefixes or suffixes of the sorted degrees), so only the rest outside it needs zeros.
    blocks = sorted(blocks, key=lambda b: b[3] - b[2], reverse=True)
    _, _, lo, hi, _ = blocks[0]
    nested = all(lo <= b[2] and b[3] <= hi for b in blocks)
    if nested:
        grad_x[:lo].zero_()
        grad_x[hi:].zero_()
    else:
        grad_x.zero_()
    for k, (r0, r1, lo, hi, w) in enumerate(blocks):
        if k == 0 and nested:
            torch.mm(w.T, grad[r0:r1], out=grad_x[lo:hi])
        else:
            grad_x[lo:hi].addmm_(w.T, grad[r0:r1])
    return grad_x


def packed_block_linear(x: Tensor, blocks: Tensor, bias: Tensor | None, plan: BlockPlan) -> Tensor:
    r"""A masked layer :math:`(W \odot M) x + b` from its blocks' weights, transposed layout.

    The counterpart of :func:`~arflows.nn.blocks.block_linear` for weights already laid out
    by :func:`block_layout`: the products read the blocks in place, and the weight's gradient
    has exactly the blocks' entries.

    Args:
        x: The input, with shape :math:`(I, N)`, its rows in the plan's column order.
        blocks: The blocks' weights, one after the other, with shape :math:`(L,)`.
        bias: The bias in the plan's row order, with shape :math:`(O,)`, or ``None``.
        plan: The layer's block plan.

    Returns:
        The output, with shape :math:`(O, N)`, its rows in the plan's row order.
    """
    if len(plan.ranges) == 1:  # one block: a plain product, with autograd's own backward
        lo, hi = plan.ranges[0]
        weight = blocks.view(plan.bounds[-1], hi - lo)
        if (lo, hi) != (0, x.shape[0]):
            x = x[lo:hi]
        return weight @ x if bias is None else torch.addmm(bias[:, None], weight, x)
    return _PackedBlockLinear.apply(blocks, bias, x, plan)
