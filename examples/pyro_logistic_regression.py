r"""Bayesian logistic regression with Pyro's SVI: an arflows IAF guide against Pyro's own.

The model: weights :math:`w \sim \mathcal{N}(0, I)`, bias :math:`b \sim \mathcal{N}(0, 5^2)`,
labels :math:`y_n \sim \mathrm{Bernoulli}(\sigma(x_n^\top w + b))` on the breast-cancer data
(569 rows, 30 standardised columns). Three guides get the same steps, particles and
optimizer: ``arflows.pyro.AutoFlow`` (an IAF), Pyro's ``AutoIAFNormal`` and ``AutoNormal``.
The final ELBO (higher is better, a lower bound on the log evidence) is estimated with 500
guide samples.

Usage::

    python examples/pyro_logistic_regression.py [--steps 1000]
"""

from __future__ import annotations

import argparse

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoIAFNormal, AutoNormal
from sklearn.datasets import load_breast_cancer

from arflows.pyro import AutoFlow


def data() -> tuple[torch.Tensor, torch.Tensor]:
    """The standardised features (569, 30) and the labels (569,)."""
    raw = load_breast_cancer()
    x = torch.tensor(raw.data, dtype=torch.float32)
    return (x - x.mean(0)) / x.std(0), torch.tensor(raw.target, dtype=torch.float32)


def model(x: torch.Tensor, y: torch.Tensor) -> None:
    """Logistic regression with normal priors on the weights and the bias."""
    w = pyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[1]]).to_event(1))
    b = pyro.sample("b", dist.Normal(0.0, 5.0))
    with pyro.plate("data", len(y)):
        pyro.sample("y", dist.Bernoulli(logits=x @ w + b), obs=y)


def fit(guide: object, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Runs SVI with ``guide``, then returns its ELBO estimated with 500 samples."""
    optimizer = pyro.optim.ClippedAdam({"lr": 3e-3, "clip_norm": 1.0, "lrd": 0.01 ** (1 / steps)})
    svi = SVI(model, guide, optimizer, Trace_ELBO(num_particles=8))
    for _ in range(steps):
        svi.step(x, y)
    with torch.no_grad():
        return -Trace_ELBO(num_particles=500).loss(model, guide, x, y)


def main() -> None:
    """Fits the three guides and prints their ELBOs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000)
    steps = parser.parse_args().steps
    x, y = data()
    guides = {
        "arflows AutoFlow (IAF)": lambda: AutoFlow(model, "iaf", transforms=3, skip=True),
        "pyro AutoIAFNormal": lambda: AutoIAFNormal(model, hidden_dim=[64, 64], num_transforms=3),
        "pyro AutoNormal": lambda: AutoNormal(model),
    }
    for name, make in guides.items():
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        print(f"{name:24s} ELBO = {fit(make(), x, y, steps):9.2f}")


if __name__ == "__main__":
    main()
