"""Shared test helpers: perturbed weights and autograd Jacobians."""

import shutil

import torch
from torch import nn

# Tolerances, float64.
LADJ_ATOL = 1e-8
ROUND_TRIP_ATOL = 1e-6


def randomize(module: nn.Module, scale: float = 0.3, seed: int = 0) -> nn.Module:
    """Adds noise to every parameter, so zero-initialised layers stop being the identity."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
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
