r"""Masked autoregressive networks: :class:`MaskedLinear` and :class:`MADE`."""

from __future__ import annotations

__all__ = ["MADE", "MaskedLinear", "broadcast_context", "split_params"]

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import BoolTensor, LongTensor, Tensor, nn

# check_int is imported from here by flows modules not yet moved to arflows.checks.
from ..checks import INT_AT_LEAST, check_activation, check_int, check_ints, check_last_dim
from .blocks import BlockPath, MADEPlans, made_blocks, split_params
from .masks import hidden_degrees, input_degrees, mask
from .orders import MaskSets
from .packed import Layout, MaskedLayer, PackedWeights, linear_init, pack


class MaskedLinear(nn.Linear):
    r"""Linear layer :math:`y = (W \odot M) x + b` with a fixed binary mask :math:`M`.

    The mask is fixed: it is set at construction and by loading a state dict.

    Args:
        mask: The mask :math:`M`, with shape :math:`(O, I)` (a ``nn.Linear`` weight's layout).
        bias: Whether to learn a bias.

    Example:
        >>> layer = MaskedLinear(torch.tensor([[True, False], [True, True]]))
        >>> x = torch.randn(7, 2)
        >>> layer(x).shape
        torch.Size([7, 2])
    """

    def __init__(self, mask: BoolTensor, bias: bool = True):
        if not isinstance(mask, Tensor) or mask.dim() != 2 or 0 in mask.shape:
            what = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
            raise ValueError(f"expected `mask` to be a non-empty 2-D tensor (O, I), got {what}")
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("expected `mask` to hold booleans (or only 0 and 1), got others")
        out_features, in_features = mask.shape
        super().__init__(in_features, out_features, bias=bias)
        self.register_buffer("mask", mask.bool())
        # The mask in the weight's dtype (it follows ``.to``, not in the state dict): a
        # product with the boolean mask would cast it on every call, forward and backward.
        self.register_buffer("_float_mask", self.mask.to(self.weight.dtype), persistent=False)
        self.register_load_state_dict_post_hook(_refresh_mask)

    def masked_weight(self) -> Tensor:
        r"""The masked weight :math:`W \odot M`, with shape :math:`(O, I)`."""
        return self.weight * self._float_mask

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return F.linear(x, self.masked_weight(), self.bias)


def _refresh_mask(module: MaskedLinear, incompatible_keys: object) -> None:
    with torch.no_grad():
        module._float_mask.copy_(module.mask)


def broadcast_context(x: Tensor, c: Tensor | None, context: int) -> tuple[Tensor, Tensor | None]:
    r"""Checks a context against a network's ``context`` size and broadcasts batch dimensions.

    Args:
        x: The input, with shape :math:`(*, I)`.
        c: The context, with shape :math:`(*, C)`, or ``None``.
        context: The expected context size :math:`C` (0 for none).

    Returns:
        ``x`` and ``c`` expanded to a common batch shape.
    """
    if context == 0:
        if c is not None:
            raise ValueError("this network has no context (context=0) but a context was given")
        return x, None
    if c is None:
        raise ValueError(f"this network expects a context of size {context}, got None")
    if c.shape[-1:] != (context,):
        raise ValueError(f"expected a context with shape (*, {context}), got {tuple(c.shape)}")
    batch = torch.broadcast_shapes(x.shape[:-1], c.shape[:-1])
    return x.expand(*batch, x.shape[-1]), c.expand(*batch, context)


class MADE(MaskSets, PackedWeights, nn.Module):
    r"""Masked autoencoder for distribution estimation, with context, residual and skip options.

    The network maps :math:`x \in \mathbb{R}^D` (and a context :math:`c`) to parameters
    :math:`\theta_i(x_{<i}, c)` for every feature :math:`i`, where :math:`<` follows ``order``.
    Hidden pre-activations are

    .. math:: h_1 = (W_1 \odot M_1) x + V_1 c + b_1, \quad
              h_{k+1} = [h_k +]\, (W_{k+1} \odot M_{k+1}) \sigma(h_k) + V_{k+1} c + b_{k+1},

    with the bracketed term for ``residual=True``, and the output is
    :math:`(W_o \odot M_o) \sigma(h_L) + b_o` (plus a masked linear map of :math:`x` and a
    linear map of :math:`c` with ``skip=True``). Hidden units are stored sorted by degree, so
    every masked weight is block lower-triangular. The last layer starts at zero, so the
    parameters start at zero and a flow built on it starts at the identity.

    Only the connections are parameters: :attr:`packed` holds the entries every mask keeps
    (:mod:`arflows.nn.packed`), so gradients and optimizer states skip the masked zeros, and
    ``layers[k]`` (:class:`~arflows.nn.packed.MaskedLayer`) hold the masks and the biases. The
    state dict holds dense weights ``layers.{k}.weight`` as dense masked layers do, so models
    saved before packing load, and :meth:`masked_weights` gives the dense weights.

    Large inputs are computed in a transposed :math:`(\text{features}, N)` layout by
    block-triangular products (:func:`~arflows.nn.packed.packed_block_linear`) that skip the
    masked-out half of every weight, in both the forward and the backward pass. The result
    equals the dense masked products up to the order of summation. The attribute ``blocks``
    chooses the path: ``"auto"`` (the default) takes the block path on CPU when the work is
    large enough to pay (:func:`~arflows.nn.blocks.auto_blocks`), ``None`` always takes the
    dense path, and an integer :math:`B \ge 1` always takes the block path with about
    :math:`B` row blocks per layer. It is not part of the state dict. Both paths run the same
    loop over the layers; only the products differ (:class:`~arflows.nn.blocks.BlockPath`).

    With ``orders=K > 1`` the network holds :math:`K` mask sets for order-agnostic training
    (:mod:`arflows.nn.orders`): set 0 uses ``order``, the others random orders drawn with
    ``generator``. One set is active (:attr:`mask_index`) and everything that reads the degrees
    or masks uses it; :meth:`select` and :meth:`cycle` switch it, the network never does.
    :class:`~arflows.flows.OrderAgnosticMAF` switches once per flow call in training mode and
    averages over the sets in evaluation mode.

    Args:
        features: The number of features :math:`D`.
        hidden_features: The hidden layer widths.
        param_dims: The number of parameters per feature for each output; ``k == 1`` gives a
            ``(*, D)`` tensor and ``k > 1`` a ``(*, D, k)`` tensor.
        context: The context size :math:`C` (0 for none). The context feeds every hidden
            layer; context-only units of degree 0 let every output depend on it.
        order: The rank of each feature in the autoregressive order, a permutation of
            :math:`0..D-1` (see :func:`arflows.nn.masks.input_degrees`). Defaults to natural.
        hidden_degrees: ``"sequential"`` (deterministic, evenly spread) or ``"random"``.
        activation: The activation class.
        residual: Whether hidden layers after the first are residual (equal widths needed).
        skip: Whether to add direct (masked) connections from the input to the outputs.
        generator: The random generator for ``hidden_degrees="random"`` and the orders of the
            mask sets after the first.
        orders: The number :math:`K` of mask sets (orders) held.

    Example:
        >>> made = MADE(5, hidden_features=(32, 32), param_dims=(1, 3))
        >>> loc, bins = made(torch.randn(7, 5))
        >>> loc.shape, bins.shape
        (torch.Size([7, 5]), torch.Size([7, 5, 3]))
    """

    def __init__(
        self,
        features: int,
        hidden_features: Sequence[int] = (64, 64),
        param_dims: Sequence[int] = (1, 1),
        context: int = 0,
        order: Sequence[int] | LongTensor | None = None,
        hidden_degrees: str = "sequential",
        activation: Callable[[], nn.Module] = nn.ReLU,
        residual: bool = False,
        skip: bool = False,
        generator: torch.Generator | None = None,
        orders: int = 1,
    ):
        super().__init__()
        features = check_int("features", features, 1)
        context = check_int("context", context, 0)
        if isinstance(hidden_features, Sequence) and len(hidden_features) == 0:
            raise ValueError("expected at least one hidden layer in `hidden_features`, got ()")
        hidden_features = check_ints("hidden_features", hidden_features, 1)
        param_dims = check_ints("param_dims", param_dims, 1, empty=False)
        check_activation(activation)
        check_int("orders", orders, 1, message=INT_AT_LEAST)
        if residual and len(set(hidden_features)) > 1:
            raise ValueError(
                f"residual=True needs equal hidden widths, got hidden_features={hidden_features}"
            )

        self.features, self.context, self.param_dims = features, context, param_dims
        self.hidden_features, self.residual, self.skip = hidden_features, residual, skip
        self.activation = activation()

        sets = []  # (input degrees, hidden degrees) of each mask set; set 0 uses `order`
        for k in range(orders):
            ranks = order if k == 0 else torch.randperm(features, generator=generator)
            in_deg = input_degrees(features, ranks)
            hidden = _layer_degrees(
                hidden_features, features, context > 0, hidden_degrees, residual, generator
            )
            sets.append((in_deg, hidden))
        in_deg, degrees = sets[0]
        self.register_buffer("input_degrees", in_deg)
        for k, deg in enumerate(degrees):
            self.register_buffer(f"degrees_{k}", deg)
        self._hold_sets(sets)

        masks = self._masks(in_deg, degrees)
        n_layers = len(hidden_features) + 1
        self.layers = nn.ModuleList(MaskedLayer(m) for m in masks[:n_layers])
        # The weights are drawn as nn.Linear layers draw them, in the same order as when each
        # layer held its own (a seed gives the same network), then packed (arflows.nn.packed).
        params = [linear_init(*m.shape, bias=True) for m in masks[:n_layers]]
        # One projection of the context for every hidden layer (and the outputs with skip),
        # so it can be computed once per call.
        ctx_width = sum(hidden_features) + (features * sum(param_dims) if skip else 0)
        self.context_layer = nn.Linear(context, ctx_width, bias=False) if context else None
        self.skip_layer = MaskedLayer(masks[-1], bias=False) if skip else None
        if skip:
            params.append(linear_init(*masks[-1].shape, bias=False))
        params[n_layers - 1][0].zero_()  # the outputs start at zero: a flow at the identity
        params[n_layers - 1][1].zero_()
        if skip:
            params[-1][0].zero_()
        with torch.no_grad():
            for layer, (_, bias) in zip(self.layers, params, strict=False):
                layer.bias.copy_(bias)
        self.packed = nn.Parameter(pack([w for w, _ in params], self._storage()))
        if self.context_layer is not None and skip:
            with torch.no_grad():  # the context's direct path to the outputs starts at zero too
                self.context_layer.weight[sum(hidden_features) :].zero_()
        for k in range(orders):
            self._activate_set(k)
            self._check_paths()
        self._activate_set(0)
        self.blocks: int | str | None = "auto"
        # Block plans and dense layouts by (mask set, [blocks,] device), derived from the degree
        # buffers; loading a state dict may replace those, so it clears them.
        self._plans: dict[tuple[int, tuple[int, ...], torch.device], MADEPlans] = {}
        self._layouts: dict[tuple[int, torch.device, bool | str], Layout] = {}
        self._choices: dict[int, tuple[int, ...] | None] = {}  # "auto" blocks, by row count
        # The outputs' parameter-major order (see masked_weights), on the module's device.
        self.register_buffer("_output_order", self._param_major(), persistent=False)
        self.register_load_state_dict_post_hook(_clear_plans)

    @property
    def order(self) -> LongTensor:
        """The rank of each feature in the autoregressive order, with shape :math:`(D,)`."""
        return self.input_degrees - 1

    @property
    def degrees(self) -> list[LongTensor]:
        """The sorted degrees of each hidden layer."""
        return [getattr(self, f"degrees_{k}") for k in range(len(self.hidden_features))]

    def _masked_layers(self) -> list[MaskedLayer]:
        """The masked layers: the hidden and output layers, then the skip layer if any."""
        return [*self.layers, *([] if self.skip_layer is None else [self.skip_layer])]

    def _masks(self, in_deg: LongTensor, degrees: list[LongTensor]) -> list[BoolTensor]:
        """The mask of each of :meth:`_masked_layers` for these input and hidden degrees."""
        out_deg = in_deg.repeat_interleave(sum(self.param_dims))  # feature-major: i * P + p
        sources, targets = [in_deg, *degrees], [*degrees, out_deg]
        masks = [mask(a, b, strict=b is out_deg) for a, b in zip(sources, targets, strict=True)]
        if self.skip:
            masks.append(mask(in_deg, out_deg, strict=True))
        return masks

    def _use_degrees(self, in_deg: LongTensor, degrees: list[LongTensor]) -> None:
        """Makes these degrees and their masks the network's (see :class:`MaskSets`)."""
        # New tensors are assigned rather than written in place: autograd may still hold the
        # previous masks for a backward pass through another set.
        self.input_degrees = in_deg
        for j, deg in enumerate(degrees):
            setattr(self, f"degrees_{j}", deg)
        for layer, new in zip(self._masked_layers(), self._masks(in_deg, degrees), strict=True):
            layer.mask = new

    def connectivity(self) -> BoolTensor:
        r"""Which inputs can reach which features' outputs, from the product of the masks.

        Returns:
            A boolean matrix :math:`R` with shape :math:`(D, D)`; :math:`R_{ij}` is true when
            the parameters of feature :math:`i` can depend on :math:`x_j`.
        """
        reach = self.layers[0].mask.double()
        for layer in self.layers[1:]:
            reach = (layer.mask.double() @ reach).clamp(max=1)
        if self.skip_layer is not None:
            reach = (reach + self.skip_layer.mask.double()).clamp(max=1)
        n_params = sum(self.param_dims)
        return reach.view(self.features, n_params, self.features).amax(dim=1).bool()

    def _check_paths(self) -> None:
        reach = self.connectivity()
        blind = [
            i for i in range(self.features) if self.input_degrees[i] > 1 and not reach[i].any()
        ]
        if blind:
            raise ValueError(
                f"hidden_features={self.hidden_features} are too narrow for {self.features} "
                f"features: the outputs of features {blind} cannot see any earlier feature; "
                f"use hidden widths of at least {self.features}"
            )

    def check_structure(self) -> None:
        """Checks that the degrees and masks (buffers) still make an autoregressive network.

        A foreign or edited state dict can replace them with values of the right shapes but no
        autoregressive meaning: outputs that read the inputs they model give wrong densities
        without any error. :func:`arflows.load` calls this after loading the weights.

        Raises:
            ValueError: If the input degrees of a mask set are not a permutation of
                :math:`1..D`, hidden degrees are not sorted (the one-sweep inverse and the block
                products rely on it), the active set's index is out of range, or (with one set)
                the masks are not those of the degrees (with several, loading rebuilds them).
        """
        expected = torch.arange(1, self.features + 1, device=self.input_degrees.device)
        self._check_index()
        for in_deg, degrees in self._degree_sets():
            if not torch.equal(in_deg.sort().values, expected):
                raise ValueError(
                    f"the input degrees {in_deg.tolist()} are not a permutation of "
                    f"1..{self.features}: not the state of an autoregressive network"
                )
            if any(bool((deg[1:] < deg[:-1]).any()) for deg in degrees):
                raise ValueError("the hidden degrees are not sorted")
        if self.orders == 1:
            masks = self._masks(self.input_degrees, self.degrees)
            if not all(
                torch.equal(layer.mask, m)
                for layer, m in zip(self._masked_layers(), masks, strict=True)
            ):
                raise ValueError(
                    "the masks do not match the degrees: the network would not be autoregressive"
                )

    def context_terms(self, c: Tensor | None) -> list[Tensor | None]:
        r"""The context's contribution to each hidden layer (and the outputs with ``skip``).

        Args:
            c: The context, with shape :math:`(*, C)`, or ``None``.

        Returns:
            One tensor per hidden layer, with shape :math:`(*, H_k)`, then one for the outputs
            with shape :math:`(*, D P)` (``None`` entries without context or skip).
        """
        n_out = len(self.hidden_features) + 1
        if self.context_layer is None or c is None:
            return [None] * n_out
        widths = list(self.hidden_features)
        if self.skip:
            widths.append(self.features * sum(self.param_dims))
        terms = list(self.context_layer(c).split(widths, dim=-1))
        return terms + [None] * (n_out - len(terms))

    def forward(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, ...]:
        r"""Computes the parameters of every feature.

        Args:
            x: The input, with shape :math:`(*, D)`.
            c: The context, with shape :math:`(*, C)`, broadcast against ``x``.

        Returns:
            One tensor per ``param_dims`` entry ``k``: :math:`(*, D)` if ``k == 1``, else
            :math:`(*, D, k)`.
        """
        check_last_dim(x, self.features)
        x, c = broadcast_context(x, c, self.context)
        path, batch = self._path(x), x.shape[:-1]
        x, ctx, n_layers = path.inputs(x), path.context(c), len(self.layers)
        h = path.linear(0, x)
        if ctx[0] is not None:
            h = h + ctx[0]
        for k in range(1, n_layers - 1):
            update = path.linear(k, self._activate(h, last=False))
            if ctx[k] is not None:
                update = update + ctx[k]
            h = h + update if self.residual else update
        out = path.linear(n_layers - 1, self._activate(h, last=True))
        if self.skip_layer is not None:
            out = out + path.linear(n_layers, x)
            if ctx[-1] is not None:
                out = out + ctx[-1]
        return path.outputs(out, batch)

    def _path(self, x: Tensor) -> _DensePath | BlockPath:
        """How to compute the layers' products for ``x``: dense, or by blocks (same math)."""
        blocks = made_blocks(self, x)
        if blocks is None:
            return _DensePath(self)
        key = (self._mask_index, blocks, x.device)
        if key not in self._plans:
            self._plans[key] = MADEPlans.build(self, blocks).to(x.device)
        return BlockPath(self, self._plans[key])

    def _activate(self, h: Tensor, last: bool) -> Tensor:
        """The activation of the fresh pre-activations ``h``, in place unless ``h`` is reused.

        Only a residual sum reads ``h`` again (after every layer but the last). In place saves
        a fresh buffer per layer, and with it most of the memory traffic of the activation;
        autograd allows it, as no product saves its output.
        """
        inplace = _INPLACE.get(type(self.activation))
        if inplace is None or (self.residual and not last):
            return self.activation(h)
        return inplace(h)

    def extra_repr(self) -> str:  # noqa: D102
        orders = (
            "" if self.orders == 1 else f", orders={self.orders}, mask_index={self.mask_index}"
        )
        return (
            f"features={self.features}, context={self.context}, param_dims={self.param_dims}, "
            f"residual={self.residual}, skip={self.skip}, order={self.order.tolist()}{orders}"
        )


class _DensePath:
    """A MADE's layers as dense masked products, in the ``(*, features)`` layout.

    Layer ``k`` is ``made.layers[k]``, and ``len(made.layers)`` the skip layer; each method
    mirrors one of :class:`~arflows.nn.blocks.BlockPath`'s.
    """

    def __init__(self, made: MADE):
        # One unpack per call; the outputs in parameter-major order, so that each param_dims
        # entry is a contiguous slice of the output.
        self.made, self.weights = made, made.masked_weights(param_major=True)

    def inputs(self, x: Tensor) -> Tensor:
        return x

    def context(self, c: Tensor | None) -> list[Tensor | None]:
        terms = self.made.context_terms(c)
        if self.made.skip and terms[-1] is not None:  # the outputs' term, as the rows are
            terms[-1] = terms[-1].index_select(-1, self.made._output_order)
        return terms

    def linear(self, k: int, h: Tensor) -> Tensor:
        return F.linear(h, *self.weights[k])

    def outputs(self, out: Tensor, batch: torch.Size) -> tuple[Tensor, ...]:
        d = self.made.features
        parts = out.split([d * k for k in self.made.param_dims], dim=-1)
        return tuple(
            p if k == 1 else p.unflatten(-1, (d, k))
            for p, k in zip(parts, self.made.param_dims, strict=True)
        )


# Parameter-free elementwise activations and their in-place versions.
_INPLACE: dict[type[nn.Module], Callable[[Tensor], Tensor]] = {
    nn.ReLU: torch.relu_,
    nn.Tanh: torch.tanh_,
    nn.Sigmoid: torch.sigmoid_,
}


def _clear_plans(module: nn.Module, incompatible_keys: object) -> None:
    module._plans.clear()
    module._layouts.clear()


def _layer_degrees(
    widths: tuple[int, ...],
    features: int,
    context: bool,
    method: str,
    residual: bool,
    generator: torch.Generator | None,
) -> list[LongTensor]:
    degrees, low = [], None
    for k, width in enumerate(widths):
        if residual and k > 0:
            # A residual sum h + f(h) keeps the masks only if both sides share degrees.
            degrees.append(degrees[0])
            continue
        deg = hidden_degrees(
            width, features, context=context, method=method, low=low, generator=generator
        )
        if context and method == "random":
            # The first output reads the context only through degree-0 units: keep one.
            deg[0] = 0
        degrees.append(deg)
        low = int(deg.min())
    return degrees
