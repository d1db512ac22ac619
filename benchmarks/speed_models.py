"""The flows that ``sampling.py`` times, one adapter per library, all behind one interface.

Every library builds the same flow: 5 autoregressive layers, each conditioned by a MADE with
two hidden layers of width H (D -> H -> H -> P D), alternating feature orders, a standard
normal base. Each adapter returns a :class:`Model`, whose ``log_prob``, ``sample`` and
``train_step`` are what is timed.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

TRANSFORMS = 5
LR = 1e-3
BINS = 8


class Unsupported(Exception):
    """A library or option is not available in this environment."""


class Model(nn.Module):
    """A built flow with the common interface: ``log_prob(x)``, ``sample(n)``, ``train_step(x)``.

    Subclasses define ``log_prob`` and ``sample``; ``train_step`` is the same for all: the
    negative mean log-likelihood, its gradient and one Adam step (torch's defaults).
    """

    can_sample = True
    optimizer: torch.optim.Optimizer | None = None

    def prepare(self, device: torch.device) -> Model:
        """Moves the model to ``device``, then makes its optimizer (on the moved parameters)."""
        self.to(device)
        self.optimizer = torch.optim.Adam(self.parameters(), lr=LR)
        return self

    def log_prob(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, n: int) -> Tensor:
        raise NotImplementedError

    def diagnostics(self) -> str:
        """A note on how this model computed its results (empty by default)."""
        return ""

    def loss(self, x: Tensor) -> Tensor:
        return -self.log_prob(x).mean()

    def train_step(self, x: Tensor) -> Tensor:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.loss(x)
        loss.backward()
        self.optimizer.step()
        return loss.detach()


class LazyFlowModel(Model):
    """arflows and zuko: a lazy flow module; ``flow()`` returns a torch distribution."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow().log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.flow().sample((n,))


class ArflowsModel(LazyFlowModel):
    """arflows: a lazy flow, plus the fixed-point passes its inverses use (a diagnostic)."""

    def diagnostics(self) -> str:
        used = []
        with torch.no_grad():
            z = self.flow().base.sample((64,))
            for lazy in reversed(self.flow.transforms):
                transform = lazy()
                z = transform.inv(z)
                used.append(getattr(transform, "passes_used", None))
        if all(u is None for u in used):
            return ""
        return "fixed-point passes used per layer: " + ", ".join(map(str, used))


class NflowsModel(Model):
    """nflows: ``Flow.log_prob(inputs)`` and ``Flow.sample(num_samples)``."""

    def __init__(self, flow: nn.Module):
        super().__init__()
        self.flow = flow

    def log_prob(self, x: Tensor) -> Tensor:
        return self.flow.log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.flow.sample(n)


class NormflowsModel(Model):
    """normflows: ``MaskedAffineAutoregressive`` layers used in the MAF direction.

    A normflows ``NormalizingFlow`` scores with each layer's ``inverse``, which for these
    layers is the D-pass loop (an IAF's direction). For a MAF (one pass for ``log_prob``, as
    in every other library here) the layers' one-pass ``forward`` maps data to noise here,
    and sampling runs their D-pass ``inverse``; the order is reversed between layers.
    """

    def __init__(self, layers: list[nn.Module], base: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.base = base

    def log_prob(self, x: Tensor) -> Tensor:
        total = 0
        for i, layer in enumerate(self.layers):
            if i > 0:
                x = x.flip(-1)
            x, log_det = layer(x)
            total = total + log_det
        return total + self.base.log_prob(x)

    def sample(self, n: int) -> Tensor:
        z, _ = self.base(n)
        for i in reversed(range(len(self.layers))):
            z, _ = self.layers[i].inverse(z)
            if i > 0:
                z = z.flip(-1)
        return z


class PyroModel(Model):
    """Pyro: a ``TransformedDistribution`` rebuilt around the layers on every call."""

    def __init__(self, layers: list[nn.Module], features: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.register_buffer("loc", torch.zeros(features))

    def dist(self):  # noqa: ANN201
        import pyro.distributions as pdist

        base = pdist.Normal(self.loc, torch.ones_like(self.loc)).to_event(1)
        # Pyro's AffineAutoregressive maps x -> y = mu(x) + sigma(x) * x: its forward is the
        # parallel direction and its inverse the sequential one (D passes). A Pyro
        # TransformedDistribution samples with the forward maps and scores with the inverses,
        # so using the layers as given would be an IAF (fast sample, slow log_prob). For the
        # MAF direction (fast log_prob, as in every other library here) we hand it the
        # inverses `.inv`, last layer first: log_prob(x) then runs each layer forward on x
        # (data -> noise, one pass) and sample runs each layer's D-pass inverse.
        return pdist.TransformedDistribution(base, [t.inv for t in reversed(self.layers)])

    def log_prob(self, x: Tensor) -> Tensor:
        return self.dist().log_prob(x)

    def sample(self, n: int) -> Tensor:
        return self.dist().sample((n,))


class DenseModel(Model):
    """Reference: 5 unmasked MLPs D -> H -> H -> P D applied to the points (no sampling)."""

    can_sample = False

    def __init__(self, features: int, hidden: int, params: int = 2):
        super().__init__()
        self.mlps = nn.ModuleList(
            nn.Sequential(
                nn.Linear(features, hidden),
                nn.ReLU(),
                nn.Linear(hidden, hidden),
                nn.ReLU(),
                nn.Linear(hidden, params * features),
            )
            for _ in range(TRANSFORMS)
        )

    def log_prob(self, x: Tensor) -> Tensor:
        return sum(mlp(x).sum(-1) for mlp in self.mlps)

    def loss(self, x: Tensor) -> Tensor:
        return sum(mlp(x).square().mean() for mlp in self.mlps)


# --------------------------------------------------------------------------- adapters


def build_arflows(features: int, hidden: int) -> Model:
    import arflows

    return ArflowsModel(
        arflows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    )


def build_arflows_passes(features: int, hidden: int) -> Model:
    import arflows

    try:
        flow = arflows.MAF(
            features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, inverse="passes"
        )
    except TypeError as error:
        raise Unsupported(
            f"arflows.MAF(..., inverse='passes') is not available ({error}); "
            "the default inverse is timed as `arflows`"
        ) from error
    return ArflowsModel(flow)


def build_arflows_dense(features: int, hidden: int) -> Model:
    import arflows
    from arflows.nn import MADE

    flow = arflows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    for module in flow.modules():
        if isinstance(module, MADE):
            module.blocks = None  # always the dense masked products, never the block path
    return ArflowsModel(flow)


def build_zuko(features: int, hidden: int) -> Model:
    import zuko

    return LazyFlowModel(
        zuko.flows.MAF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2)
    )


def build_nflows(features: int, hidden: int) -> Model:
    from nflows.distributions.normal import StandardNormal
    from nflows.flows.base import Flow
    from nflows.transforms.autoregressive import MaskedAffineAutoregressiveTransform
    from nflows.transforms.base import CompositeTransform
    from nflows.transforms.permutations import ReversePermutation

    layers = []
    for i in range(TRANSFORMS):
        if i > 0:
            layers.append(ReversePermutation(features))
        # num_blocks=1 without residual blocks is D -> H -> H -> 2D, the others' layer shapes
        # (nflows' default, 2 residual blocks, has 5 linear layers); nflows applies no
        # activation after its first layer, one ReLU fewer (~5 us a step at D=8, batch 512).
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features, hidden, num_blocks=1, use_residual_blocks=False
            )
        )
    return NflowsModel(Flow(CompositeTransform(layers), StandardNormal([features])))


def build_normflows(features: int, hidden: int) -> Model:
    import normflows

    # The same MADE as nflows' (normflows carries a copy): num_blocks=1, no residual blocks.
    layers = [
        normflows.flows.MaskedAffineAutoregressive(
            features, hidden, num_blocks=1, use_residual_blocks=False
        )
        for _ in range(TRANSFORMS)
    ]
    base = normflows.distributions.DiagGaussian(features, trainable=False)
    return NormflowsModel(layers, base)


def build_pyro(features: int, hidden: int) -> Model:
    from pyro.distributions.transforms import AffineAutoregressive
    from pyro.nn import AutoRegressiveNN

    # Alternating natural and reversed orders, as the other libraries, not Pyro's random ones.
    orders = [torch.arange(features), torch.arange(features - 1, -1, -1)]
    layers = [
        AffineAutoregressive(
            AutoRegressiveNN(features, [hidden, hidden], permutation=orders[i % 2])
        )
        for i in range(TRANSFORMS)
    ]
    return PyroModel(layers, features)


def build_dense(features: int, hidden: int) -> Model:
    return DenseModel(features, hidden)


def build_arflows_nsf(features: int, hidden: int) -> Model:
    import arflows

    return ArflowsModel(
        arflows.NSF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, bins=BINS)
    )


def build_zuko_nsf(features: int, hidden: int) -> Model:
    import zuko

    return LazyFlowModel(
        zuko.flows.NSF(features, transforms=TRANSFORMS, hidden_features=(hidden,) * 2, bins=BINS)
    )


def build_dense_nsf(features: int, hidden: int) -> Model:
    # A spline of K bins has 3K - 1 parameters per feature (widths, heights, inner slopes).
    return DenseModel(features, hidden, params=3 * BINS - 1)


ADAPTERS: dict[str, Callable[[int, int], Model]] = {
    "arflows": build_arflows,
    "arflows-passes": build_arflows_passes,
    "arflows-dense": build_arflows_dense,
    "zuko": build_zuko,
    "nflows": build_nflows,
    "normflows": build_normflows,
    "pyro": build_pyro,
    "dense": build_dense,
    "arflows-nsf": build_arflows_nsf,
    "zuko-nsf": build_zuko_nsf,
    "dense-nsf": build_dense_nsf,
}
#: The peers' rows, by the module each needs.
PEER_MODULES = {
    "zuko": "zuko",
    "nflows": "nflows",
    "normflows": "normflows",
    "pyro": "pyro",
    "zuko-nsf": "zuko",
}
#: The affine MAF rows of other libraries, among which "the fastest peer" is taken.
MAF_PEERS = ("zuko", "nflows", "normflows", "pyro")


def available_adapters(names: list[str]) -> tuple[list[str], list[str]]:
    """The adapters whose library imports, and a note for each one that does not."""
    keep, notes = [], []
    for name in names:
        module = PEER_MODULES.get(name)
        if module is None:
            keep.append(name)
            continue
        try:
            __import__(module)
        except Exception as error:  # any import failure (not only ImportError) means skip
            notes.append(f"{name}: skipped, `import {module}` failed ({error!r})")
            continue
        keep.append(name)
    return keep, notes


def reinitialize(model: nn.Module) -> None:
    """Gives every linear layer (masked ones included) PyTorch's default initialisation.

    Libraries initialise differently: arflows zero-initialises each MADE's last layer, so its
    flows start at the identity, where the fixed-point inverse stops after two passes. Timing
    a non-identity flow, initialised the same way in every library, keeps the comparison fair.
    """
    packed = []
    for module in model.modules():
        if isinstance(module, nn.Linear):
            module.reset_parameters()
        elif isinstance(getattr(module, "packed", None), nn.Parameter):
            packed.append(module)
    for made in packed:  # an arflows MADE that stores only its connections: via its state dict
        state = made.state_dict()
        for key in [k for k in state if k.endswith(".mask")]:
            layer = nn.Linear(*state[key].shape[::-1], bias=key.replace("mask", "bias") in state)
            state[key.replace("mask", "weight")] = layer.weight.detach()
            if layer.bias is not None:
                state[key.replace("mask", "bias")] = layer.bias.detach()
        made.load_state_dict(state)
