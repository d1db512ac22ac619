r"""Data-dependent initialisation: an untrained flow that already is a classical density."""

from __future__ import annotations

__all__ = ["initialize_"]

import numbers

import torch
from torch import Tensor

from .gmm import COMPONENTS, GaussianMixture, fit_gaussian_mixture, select_gaussian_mixture
from .lazy import Flow
from .marginal import MarginalSpline
from .normalization import ActNorm

# Rows per pass through the flow's layers, so large tables do not hold every activation.
_ROWS = 1 << 16


def _rows(name: str, value: object, like: Tensor | None, width: int | None) -> Tensor:
    """``value`` as finite rows (N, width) of ``like``'s dtype and device, or an error."""
    if not isinstance(value, Tensor) or value.dim() != 2:
        shape = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"expected `{name}` to be a 2-d tensor of rows, got {shape}")
    if width is not None and value.shape[1] != width:
        raise ValueError(f"expected `{name}` with {width} columns, got {value.shape[1]}")
    value = value.detach().to(
        dtype=like.dtype if like is not None else torch.get_default_dtype(),
        device=like.device if like is not None else None,
    )
    if not bool(value.isfinite().all()):
        raise ValueError(f"expected finite values in `{name}`")
    return value


def _chunks(x: Tensor, c: Tensor | None) -> list[tuple[Tensor, Tensor | None]]:
    return [
        (x[i : i + _ROWS], None if c is None else c[i : i + _ROWS])
        for i in range(0, len(x), _ROWS)
    ]


def _noise(flow: Flow, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor]:
    """The flow's noise :math:`z = f(x; c)`, (N, D), and log-determinant, (N,)."""
    zs, ladjs = [], []
    for xi, ci in _chunks(x, c):
        z, ladj = flow(ci).transform.call_and_ladj(xi)
        ladj = torch.as_tensor(ladj, dtype=z.dtype, device=z.device)
        zs.append(z)
        ladjs.append(ladj.sum(-1) if ladj.dim() == 2 else ladj.expand(len(z)))
    return torch.cat(zs), torch.cat(ladjs)


def _mean_log_prob(flow: Flow, x: Tensor, c: Tensor | None) -> float:
    return torch.cat([flow(ci).log_prob(xi) for xi, ci in _chunks(x, c)]).mean().item()


def _initialize_marginals(flow: Flow, x: Tensor, c: Tensor | None) -> int:
    """Initialises every MarginalSpline on the rows it receives; returns how many."""
    positions = [i for i, t in enumerate(flow.transforms) if isinstance(t, MarginalSpline)]
    if not positions:
        return 0
    h = flow.support()(x) if flow.support is not None else x
    h = flow.standardization.apply(h)
    ctx = flow.embed_context(c)
    for i, layer in enumerate(flow.transforms[: positions[-1] + 1]):
        if i in positions:
            layer.initialize_(h)
        if i < positions[-1]:
            h = torch.cat([layer(ci)(hi) for hi, ci in _chunks(h, ctx)])
    return len(positions)


@torch.no_grad()
def initialize_(
    flow: Flow,
    x: Tensor,
    c: Tensor | None = None,
    *,
    valid: Tensor | None = None,
    valid_c: Tensor | None = None,
    components: int | str = "auto",
    marginals: bool = True,
    holdout: float = 0.2,
    max_rows: int | None = 20_000,
    seed: int = 0,
    **kwargs,
) -> dict:
    r"""Fits a flow's standardisation, marginal maps and Gaussian mixture base to rows.

    In this order: the flow's standardisation (:meth:`~arflows.flows.Flow.standardize_`), each
    :class:`~arflows.flows.MarginalSpline` (to Gaussianise the columns it receives), then the
    base, if it is a :class:`~arflows.flows.GaussianMixture`: a full-covariance Gaussian
    mixture is fitted by EM (:func:`~arflows.flows.fit_gaussian_mixture`) to the noise
    :math:`z = f(x; c)` of the training rows. The flow's other layers are left as they are;
    built, they are the identity, so the untrained flow's density then **is** the fitted
    classical density: with :math:`K = 1` and no marginal maps, the maximum likelihood
    full-covariance Gaussian of ``x``.

    ``components="auto"`` fits the sizes :data:`~arflows.flows.gmm.COMPONENTS` up to the
    base's ``max_components`` (its ``components`` when built) and keeps the best on the
    validation rows: ``valid`` if given, else a seeded ``holdout`` share of ``x``; the chosen
    size is then refitted on all of ``x``. The base takes the chosen number of
    components (build optimisers after this call). Any other base (standard normal, MADE
    MoG) is kept: only the standardisation and the marginal maps are set, and the summary
    says so. A conditional flow works the same way: the context is standardised and its
    layers, at the identity, give the same noise for every context, so the base starts as
    the mixture of the data's marginal distribution.

    The layers are evaluated in evaluation mode (batch normalisation with its running
    averages), and ActNorm layers not yet initialised are marked initialised at the
    identity, since the data reaching them are already standardised; the flow's training
    mode is restored afterwards.

    Args:
        flow: The flow, changed in place.
        x: The training rows, with shape :math:`(N, D)`.
        c: Their contexts, with shape :math:`(N, C)`, for a conditional flow.
        valid: Validation rows to choose the number of components on, with shape
            :math:`(M, D)`; not fitted to.
        valid_c: Their contexts, with shape :math:`(M, C)`.
        components: ``"auto"`` (chosen on validation rows) or the number of components.
        marginals: Whether to initialise the flow's marginal maps (if it has any).
        holdout: The share of ``x`` held out to choose the number of components when
            ``valid`` is not given.
        max_rows: The most training rows (a seeded sample) the sizes are compared on, to
            bound the time EM takes on large tables; the chosen size is then fitted on all of
            ``x``. ``None``: all rows.
        seed: The seed of the hold-out split and the EM restarts.
        kwargs: Options of :func:`~arflows.flows.fit_gaussian_mixture` (``max_iter``,
            ``tol``, ``reg``, ``restarts``).

    Returns:
        A summary for reports: ``"base"`` (the base's class name), ``"fitted"`` (whether the
        base was fitted), ``"marginals"`` (the number of marginal maps initialised),
        ``"components"`` (the chosen :math:`K`, or ``None``), ``"scores"`` (the mean
        validation log-likelihood of the data under each size tried, by :math:`K`; empty
        when none was chosen), ``"selected_on"`` (``"valid"``, ``"holdout"`` or ``None``),
        ``"mixture"`` (the :class:`~arflows.flows.gmm.MixtureFit` of the noise, when the
        base was fitted), ``"log_prob"`` (the mean log-likelihood of ``x`` under the
        initialised flow) and ``"valid_log_prob"`` (that of ``valid``, or ``None``).

    Raises:
        ValueError: For rows or contexts of the wrong shape, non-finite values, a
            conditional flow without ``c`` (or ``valid_c``), or a bad ``components``.

    Example:
        >>> from arflows.flows import MAF
        >>> flow = MAF(2, transforms=1, base="gaussian").double()
        >>> mixing = torch.tensor([[1.0, 0.9], [0.0, 0.3]], dtype=torch.float64)
        >>> x = torch.randn(500, 2, dtype=torch.float64) @ mixing
        >>> summary = initialize_(flow, x)
        >>> summary["components"], round(summary["log_prob"], 6) == round(
        ...     flow().log_prob(x).mean().item(), 6)
        (1, True)
    """
    if components != "auto" and (
        isinstance(components, bool) or not isinstance(components, numbers.Integral)
    ):
        raise ValueError(f'expected `components` "auto" or an int >= 1, got {components!r}')
    if components != "auto" and components < 1:
        raise ValueError(f"expected `components >= 1`, got {components}")
    if not 0 < holdout < 1:
        raise ValueError(f"expected `holdout` in (0, 1), got {holdout}")
    like = next((p for p in flow.parameters() if p.is_floating_point()), None)
    x = _rows("x", x, like, None)
    if len(x) < 2:
        raise ValueError(f"expected at least 2 rows to initialise a flow on, got {len(x)}")
    d = x.shape[1]
    if valid is not None:
        valid = _rows("valid", valid, like, d)
    conditional = c is not None
    if conditional:
        c = _rows("c", c, like, None)
        if len(c) != len(x):
            raise ValueError(f"expected as many contexts as rows, got {len(c)} and {len(x)}")
        if valid is not None and valid_c is None:
            raise ValueError("expected `valid_c`, the contexts of `valid`, for a conditional flow")
        if valid is not None:
            valid_c = _rows("valid_c", valid_c, like, c.shape[1])
            if len(valid_c) != len(valid):
                raise ValueError("expected as many `valid_c` contexts as `valid` rows")

    training = flow.training
    flow.eval()
    try:
        flow.standardize_(x, c)
        for module in flow.modules():
            if isinstance(module, ActNorm):
                module.initialized.fill_(True)
        count = _initialize_marginals(flow, x, c) if marginals else 0
        summary = {
            "base": type(flow.base).__name__,
            "fitted": False,
            "marginals": count,
            "components": None,
            "scores": {},
            "selected_on": None,
        }
        if isinstance(flow.base, GaussianMixture):
            options = dict(components=components, holdout=holdout, max_rows=max_rows, seed=seed)
            summary.update(_fit_base(flow, x, c, valid, valid_c, **options, kwargs=kwargs))
        summary["log_prob"] = _mean_log_prob(flow, x, c)
        summary["valid_log_prob"] = None
        if valid is not None:
            summary["valid_log_prob"] = _mean_log_prob(flow, valid, valid_c)
    finally:
        flow.train(training)
    return summary


def _fit_base(
    flow: Flow,
    x: Tensor,
    c: Tensor | None,
    valid: Tensor | None,
    valid_c: Tensor | None,
    *,
    components: int | str,
    holdout: float,
    max_rows: int | None,
    seed: int,
    kwargs: dict,
) -> dict:
    """Fits the GaussianMixture base to the noise of ``x``; the summary's base entries."""
    base = flow.base
    z, ladj = _noise(flow, x, c)
    kwargs = dict(kwargs, seed=seed)
    sizes = [k for k in COMPONENTS if k <= base.max_components]
    sizes += [] if base.max_components in sizes else [base.max_components]
    if components != "auto" or len(sizes) == 1:
        fit = fit_gaussian_mixture(z, 1 if components == "auto" else components, **kwargs)
        base.set_(fit.weights, fit.means, fit.covariances)
        return {"fitted": True, "mixture": fit, "components": fit.components}
    generator = torch.Generator().manual_seed(seed)
    if valid is not None:
        train, (z_valid, ladj) = z, _noise(flow, valid, valid_c)
    else:
        order = torch.randperm(len(z), generator=generator).to(z.device)
        held = max(1, round(holdout * len(z)))
        train, z_valid, ladj = z[order[held:]], z[order[:held]], ladj[order[:held]]
    if max_rows is not None and len(train) > max_rows:
        train = train[torch.randperm(len(train), generator=generator)[:max_rows].to(z.device)]
    chosen, scores = select_gaussian_mixture(train, z_valid, sizes, **kwargs)
    fit = chosen if len(train) == len(z) else fit_gaussian_mixture(z, chosen.components, **kwargs)
    base.set_(fit.weights, fit.means, fit.covariances)
    return {
        "fitted": True,
        "mixture": fit,
        "components": fit.components,
        # Of the data: the noise's log-likelihood plus the layers' log-determinant.
        "scores": {k: score + ladj.mean().item() for k, score in scores.items()},
        "selected_on": "valid" if valid is not None else "holdout",
    }
