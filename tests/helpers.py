"""Shared test helpers: perturbed weights and autograd Jacobians."""

import shutil

import torch
from torch import nn

from arflows.nn import MADE
from arflows.nn.packed import pack

# Tolerances, float64.
LADJ_ATOL = 1e-8
ROUND_TRIP_ATOL = 1e-6


def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Adds noise to every parameter, so zero-initialised layers stop being the identity.

    A MADE's packed weights get the noise that dense weights would get, drawn in the order of
    the layers' former parameters (each layer's weight then bias, the context layer's, the skip
    layer's): a seed gives the same network as before the weights were packed.
    """
    gen = torch.Generator().manual_seed(seed)
    done = set()

    def noise(shape, like):
        return scale * torch.randn(shape, generator=gen, dtype=like.dtype).to(like.device)

    def add(p):
        p.add_(noise(p.shape, p))
        done.add(id(p))

    with torch.no_grad():
        made_of = {id(m.packed): m for m in module.modules() if isinstance(m, MADE)}
        for p in module.parameters():
            if id(p) in done:
                continue
            made = made_of.get(id(p))
            if made is None:
                add(p)
                continue
            weights = []
            for layer in made.layers:
                weights.append(noise(layer.mask.shape, p))
                add(layer.bias)
            if made.context_layer is not None:
                add(made.context_layer.weight)
            if made.skip_layer is not None:
                weights.append(noise(made.skip_layer.mask.shape, p))
            p.add_(pack(weights, made._storage()))
    return module


def jacobian(f, x: torch.Tensor) -> torch.Tensor:
    """The Jacobian of f at a single point x of shape (D,)."""
    return torch.autograd.functional.jacobian(f, x)


def autograd_ladj(t, x: torch.Tensor) -> torch.Tensor:
    """log|det J| of a transform at a single point x of shape (D,), from autograd."""
    return torch.linalg.slogdet(jacobian(t, x)).logabsdet


def keep_checkpoint_copies(monkeypatch, folder) -> list:
    """Makes arflows.fit keep a copy of every checkpoint it writes; returns their paths."""
    import arflows.train.checkpoint

    copies, real = [], arflows.train.checkpoint.write_checkpoint

    def write_and_copy(path, state):
        real(path, state)
        copies.append(shutil.copy(path, folder / f"copy{len(copies)}"))

    monkeypatch.setattr(arflows.train.checkpoint, "write_checkpoint", write_and_copy)
    return copies
