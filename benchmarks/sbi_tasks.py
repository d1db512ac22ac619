r"""Two simulation-based inference tasks with exact reference posteriors (sbibm's definitions).

**Two moons** (2 parameters, 2 data): :math:`\theta \sim U(-1, 1)^2`,
:math:`a \sim U(-\pi/2, \pi/2)`, :math:`r \sim N(0.1, 0.01^2)`,
:math:`p = (r\cos a + 0.25,\ r\sin a)` and

.. math::

    x = p + \left(-|\theta_1 + \theta_2| / \sqrt 2,\ (-\theta_1 + \theta_2) / \sqrt 2\right).

*Likelihood.* For a given :math:`\theta`, :math:`u = x - (0.25, 0) - s(\theta)` (with
:math:`s` the shift above) is the point :math:`(r\cos a, r\sin a)`. The map
:math:`(a, r) \mapsto u` is the polar map, with Jacobian determinant :math:`r`, and it is
one-to-one from :math:`(-\pi/2, \pi/2) \times (0, \infty)` onto the half-plane
:math:`u_1 > 0`. So

.. math::

    p(x \mid \theta) = \frac{1}{\pi}\, \frac{N(|u|;\ 0.1, 0.01^2)}{|u|}\ [u_1 > 0],

which leaves out only the :math:`r < 0` draws (probability :math:`\Phi(-10) \approx 10^{-23}`).
The posterior on the prior's box is proportional to it. :func:`TwoMoons.reference` evaluates
it at the centres of a fine grid over :math:`[-1, 1]^2`, draws cells with probabilities
proportional to density times area, and places each draw uniformly in its cell.

Two checks of this reference (:func:`TwoMoons.check_likelihood`,
:func:`TwoMoons.exact_sample`): the likelihood integrates to 1 over ``x`` and matches a
histogram of simulations; and an exact sampler by inversion (draw :math:`(a, r)` from their
prior, solve for :math:`\theta` on one of the two branches of :math:`|\theta_1 + \theta_2|`
chosen at random, keep draws inside the box: :math:`s` is a rotation on each branch, so this
is the posterior exactly) gives samples the grid's cannot be told from.

**Gaussian linear** (10 parameters, 10 data): :math:`\theta \sim N(0, 0.1 I)` and
:math:`x \mid \theta \sim N(\theta, 0.1 I)`, so :math:`\theta \mid x \sim N(x / 2, 0.05 I)`
(precisions add: 10 + 10 = 20; the mean is :math:`10 x / 20`).
"""

from __future__ import annotations

__all__ = ["TASKS", "GaussianLinear", "TwoMoons"]

import math

import numpy as np
import torch

GRID_CELLS = 4000  # per axis: cells of 0.0005, 20 per standard deviation of r
GRID_CHUNK = 250  # grid rows evaluated at once (memory)
GRID_FLOOR = 40.0  # cells more than 40 nats below the peak are left out (mass < 1e-17 each)


class TwoMoons:
    """sbibm's two moons: simulator, prior, analytic likelihood and reference posteriors."""

    name = "two_moons"
    parameters = 2
    data = 2
    mean_r, sd_r = 0.1, 0.01

    def prior(self) -> torch.distributions.Distribution:
        """The box prior U(-1, 1)^2 as sbi's ``BoxUniform``."""
        from sbi.utils import BoxUniform

        return BoxUniform(-torch.ones(2), torch.ones(2))

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Data ``x`` of shape (N, 2) for parameters ``theta`` of shape (N, 2)."""
        n = theta.shape[0]
        a = (torch.rand(n, generator=generator, dtype=theta.dtype) - 0.5) * math.pi
        r = self.mean_r + self.sd_r * torch.randn(n, generator=generator, dtype=theta.dtype)
        p = torch.stack([r * torch.cos(a) + 0.25, r * torch.sin(a)], -1)
        return p + self._shift(theta)

    @staticmethod
    def _shift(theta):  # noqa: ANN001, ANN205 (torch or numpy, (*, 2) -> (*, 2))
        lib = torch if isinstance(theta, torch.Tensor) else np
        t1, t2 = theta[..., 0], theta[..., 1]
        return lib.stack([-abs(t1 + t2) / math.sqrt(2), (t2 - t1) / math.sqrt(2)], -1)

    def log_likelihood(self, x: np.ndarray, theta: np.ndarray) -> np.ndarray:
        r"""``log p(x | theta)`` (module docstring), broadcast over leading dims; -inf off."""
        u = x - np.array([0.25, 0.0]) - self._shift(theta)
        r = np.hypot(u[..., 0], u[..., 1])
        with np.errstate(divide="ignore"):
            value = (
                -0.5 * ((r - self.mean_r) / self.sd_r) ** 2
                - math.log(self.sd_r * math.sqrt(2 * math.pi))
                - math.log(math.pi)
                - np.log(r)
            )
        return np.where(u[..., 0] > 0, value, -np.inf)

    def reference(self, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` posterior samples (n, 2) for one observation ``x`` (2,) from the grid."""
        h = 2.0 / GRID_CELLS
        centres = -1.0 + h * (np.arange(GRID_CELLS) + 0.5)
        cells, logp = [], []
        for start in range(0, GRID_CELLS, GRID_CHUNK):
            rows = centres[start : start + GRID_CHUNK]
            theta = np.stack(np.meshgrid(rows, centres, indexing="ij"), -1)  # (R, G, 2)
            value = self.log_likelihood(x, theta).ravel()
            keep = np.flatnonzero(np.isfinite(value))
            cells.append(keep + start * GRID_CELLS)
            logp.append(value[keep])
        cells, logp = np.concatenate(cells), np.concatenate(logp)
        keep = logp > logp.max() - GRID_FLOOR
        cells, logp = cells[keep], logp[keep]
        prob = np.exp(logp - logp.max())
        drawn = rng.choice(cells, size=n, p=prob / prob.sum())
        corner = np.stack([drawn // GRID_CELLS, drawn % GRID_CELLS], -1) * h - 1.0
        return corner + h * rng.random((n, 2))

    def exact_sample(self, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` exact posterior samples (n, 2) by inversion (module docstring): the check."""
        out, have = [], 0
        while have < n:
            m = 4 * n
            a = (rng.random(m) - 0.5) * math.pi
            r = self.mean_r + self.sd_r * rng.standard_normal(m)
            s = x - np.stack([r * np.cos(a) + 0.25, r * np.sin(a)], -1)  # the shift s(theta)
            s = s[s[:, 0] <= 0]  # s_1 = -|theta_1 + theta_2| / sqrt 2 cannot be positive
            total = -math.sqrt(2) * s[:, 0] * rng.choice([-1.0, 1.0], len(s))  # theta1+theta2
            difference = math.sqrt(2) * s[:, 1]  # theta2 - theta1
            theta = np.stack([(total - difference) / 2, (total + difference) / 2], -1)
            theta = theta[np.all(np.abs(theta) <= 1, axis=1)]
            out.append(theta)
            have += len(theta)
        return np.concatenate(out)[:n]

    def check_likelihood(self, rng: np.random.Generator, theta=(0.3, -0.2)) -> dict:  # noqa: ANN001
        """The likelihood's integral over ``x`` on a grid, and its distance to simulations.

        Returns the integral (1 if the derivation is right), the total-variation distance
        between the analytic mass of 40 x 40 bins around the ring and a histogram of 10^6
        simulations in them, and the same distance between two independent histograms (the
        Monte Carlo noise the first should match).
        """
        theta = np.asarray(theta, dtype=np.float64)
        centre = np.array([0.25, 0.0]) + self._shift(theta)
        half, fine, bins = 0.16, 1600, 40  # the ring: radius 0.1 +- 6 sd
        edges = np.linspace(-half, half, fine + 1)
        mid = (edges[:-1] + edges[1:]) / 2
        grid = np.stack(np.meshgrid(mid, mid, indexing="ij"), -1) + centre
        density = np.exp(self.log_likelihood(grid, theta))
        cell = (2 * half / fine) ** 2
        mass = (density * cell).reshape(bins, fine // bins, bins, fine // bins).sum((1, 3))

        def histogram(seed: int) -> np.ndarray:
            g = torch.Generator().manual_seed(seed)
            t = torch.as_tensor(np.tile(theta, (1_000_000, 1)))
            sims = self.simulate(t, g).numpy() - centre
            coarse = np.linspace(-half, half, bins + 1)
            counts, _, _ = np.histogram2d(sims[:, 0], sims[:, 1], bins=[coarse, coarse])
            return counts / len(sims)

        first, second = histogram(int(rng.integers(2**31))), histogram(int(rng.integers(2**31)))
        return {
            "theta": theta.tolist(),
            "integral of p(x | theta) over x": float(density.sum() * cell),
            "TV(analytic bins, 1e6 simulations)": float(0.5 * np.abs(mass - first).sum()),
            "TV(two independent sets of 1e6 simulations)": float(
                0.5 * np.abs(first - second).sum()
            ),
        }


class GaussianLinear:
    """sbibm's gaussian_linear in 10 dimensions: theta ~ N(0, 0.1 I), x ~ N(theta, 0.1 I)."""

    name = "gaussian_linear"
    parameters = 10
    data = 10
    variance = 0.1

    def prior(self) -> torch.distributions.Distribution:
        """N(0, 0.1 I) in 10 dimensions."""
        return torch.distributions.MultivariateNormal(
            torch.zeros(self.parameters), self.variance * torch.eye(self.parameters)
        )

    def simulate(self, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Data (N, 10) for parameters (N, 10)."""
        noise = torch.randn(theta.shape, generator=generator, dtype=theta.dtype)
        return theta + math.sqrt(self.variance) * noise

    def reference(self, x: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` samples (n, 10) of the exact posterior N(x / 2, 0.05 I)."""
        return x / 2 + math.sqrt(self.variance / 2) * rng.standard_normal((n, self.parameters))


TASKS = {"two_moons": TwoMoons, "gaussian_linear": GaussianLinear}
