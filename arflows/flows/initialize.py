r"""Data-dependent initialisation: an untrained flow that already is a classical density."""

from __future__ import annotations

__all__ = ["FOLDS_BELOW", "RIDGE", "initialize_", "ridge_loo"]

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from ..transforms import MonotonicAffineTransform
from .autoregressive import MaskedAutoregressiveTransform
from .gmm import COMPONENTS, GaussianMixture, fit_gaussian_mixture, select_gaussian_mixture
from .lazy import Flow
from .marginal import MarginalSpline
from .normalization import ActNorm

# Rows per pass through the flow's layers, so large tables do not hold every activation.
_ROWS = 1 << 16
# Mixture sizes are compared by cross-validation (_FOLDS folds of the training rows) when
# fewer validation rows than this are held out: so few rows cannot tell a mixture's
# gain from noise, and EM on so few rows is cheap enough to repeat.
FOLDS_BELOW = 100
_FOLDS = 5


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


def _regression_layer(flow: Flow) -> int | None:
    """The position of the first layer that can hold a linear regression on the context.

    That is a MADE layer with a monotone affine map (shift first) and a direct context path
    to its outputs (``skip=True``): its shift is then :math:`t = -B c` for a matrix :math:`B`.
    """
    for i, layer in enumerate(flow.transforms):
        if not isinstance(layer, MaskedAutoregressiveTransform):
            continue
        made = layer.made
        affine = layer.univariate is MonotonicAffineTransform
        shift_first = layer.univariate_kwargs.get("scale", "softclip") != "stable"
        if affine and shift_first and made.skip and made.context_layer is not None:
            return i
        return None  # only the first MADE layer sees the context's linear part first-hand
    return None


# Ridge penalties tried, as multiples of the number of rows (0: least squares).
RIDGE = (0.0, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)


def ridge_loo(ctx: Tensor, u: Tensor, penalties: Sequence[float] = RIDGE) -> dict:
    r"""Ridge regression of ``u`` on ``ctx``, the penalty chosen by leave-one-out likelihood.

    For each penalty :math:`\lambda = p N`, the ridge fit :math:`u pprox a + B c` (the
    intercept unpenalised) has the hat matrix :math:`H` and the leave-one-out residuals
    :math:`e_i / (1 - H_{ii})` in closed form. The penalty kept maximises the leave-one-out
    Gaussian log-likelihood, that is it minimises :math:`\log\det \hat\Sigma` of the
    leave-one-out residuals' covariance :math:`\hat\Sigma`: the error of predicting a new
    row, not of fitting the rows (which least squares on few rows understates).

    Args:
        ctx: The contexts, with shape :math:`(N, C)`.
        u: The targets, with shape :math:`(N, D)`.
        penalties: The penalties :math:`p` to try, as multiples of :math:`N`.

    Returns:
        ``"coef"`` (:math:`B^\top`, with shape :math:`(C, D)`), ``"intercept"`` (:math:`(D,)`),
        ``"residual"`` and ``"loo"`` (the in-sample and leave-one-out residuals,
        :math:`(N, D)`) and ``"penalty"`` (the :math:`p` kept).
    """
    n = len(u)
    c_mean, u_mean = ctx.mean(0), u.mean(0)
    cc, uc = ctx - c_mean, u - u_mean
    left, sv, right_t = torch.linalg.svd(cc, full_matrices=False)  # (N, r), (r,), (r, C)
    kept = sv > sv.max() * 1e-10 if len(sv) else sv.bool()  # directions the rows determine
    left, sv, right_t = left[:, kept], sv[kept], right_t[kept]
    rotated = left.T @ uc  # (r, D)
    best = None
    for p in penalties:
        if p == 0.0 and n <= ctx.shape[1] + 1:
            continue  # least squares interpolates: no leave-one-out error
        shrink = sv.square() / (sv.square() + p * n)  # (r,)
        fitted = left @ (shrink[:, None] * rotated)
        leverage = 1.0 / n + (left.square() * shrink).sum(1)  # the hat matrix's diagonal
        residual = uc - fitted
        loo = residual / (1.0 - leverage).clamp_min(1e-6)[:, None]
        cov = loo.T @ loo / n
        floor = 1e-12 * cov.diagonal().mean() + torch.finfo(cov.dtype).tiny
        score = torch.linalg.slogdet(
            cov + floor * torch.eye(len(cov), dtype=cov.dtype, device=cov.device)
        ).logabsdet
        if best is None or score.item() < best[0]:
            coef = right_t.T @ ((shrink / sv)[:, None] * rotated)  # (C, D)
            best = (score, p, coef, residual, loo)
    _, p, coef, residual, loo = best
    return {
        "coef": coef,
        "intercept": u_mean - c_mean @ coef,
        "residual": residual,
        "loo": loo,
        "penalty": p,
    }


def _initialize_regression(flow: Flow, x: Tensor, c: Tensor) -> tuple[dict, Tensor] | None:
    r"""Puts the ridge regression of a layer's output on the context into its shift.

    The layer :math:`k` of :func:`_regression_layer` maps its input :math:`h` to
    :math:`u = h e^{s} + t`. The ridge fit :math:`u \approx a + B \tilde c`
    (:func:`ridge_loo`) on the standardised, embedded contexts :math:`\tilde c` of the
    training rows is subtracted by adding :math:`-B \tilde c` to :math:`t` through the
    context's direct path to the shifts. The layer's output is then the regression residual
    (the intercept :math:`a` is left to the base's mean), and a Gaussian base fitted to the
    residuals makes the flow the linear-Gaussian regression of the data on the context.

    Returns:
        A summary (``"layer"``, ``"penalty"``, ``"r2"``: the share of each column's variance
        explained on the training rows) and the leave-one-out residuals' excess over the
        residuals, :math:`(N, D)`, for the base to be fitted to prediction errors; or ``None``
        when the flow has no such layer.
    """
    k = _regression_layer(flow)
    if k is None:
        return None
    h = flow.support()(x) if flow.support is not None else x
    h = flow.standardization.apply(h)
    ctx = flow.embed_context(c)
    for layer in flow.transforms[:k]:
        h = torch.cat([layer(ci)(hi) for hi, ci in _chunks(h, ctx)])
    u = torch.cat([flow.transforms[k](ci)(hi) for hi, ci in _chunks(h, ctx)])  # (N, D)
    fit = ridge_loo(ctx, u)
    made = flow.transforms[k].made
    params = sum(made.param_dims)
    start = sum(made.hidden_features)  # the context's direct path to the outputs
    rows = start + torch.arange(made.features, device=u.device) * params  # the shifts
    made.context_layer.weight[rows] -= fit["coef"].T.to(made.context_layer.weight.dtype)
    r2 = 1 - fit["residual"].var(0) / u.var(0).clamp_min(torch.finfo(u.dtype).tiny)
    summary = {"layer": k, "penalty": fit["penalty"], "r2": [round(v, 6) for v in r2.tolist()]}
    return summary, fit["loo"] - fit["residual"]


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
    regression: bool = True,
    holdout: float = 0.2,
    max_rows: int | None = 20_000,
    seed: int = 0,
    **kwargs,
) -> dict:
    r"""Fits a flow's standardisation, marginal maps and Gaussian mixture base to rows.

    In this order: the flow's standardisation (:meth:`~arflows.flows.Flow.standardize_`), each
    :class:`~arflows.flows.MarginalSpline` (to Gaussianise the columns it receives), the
    regression on the context (a conditional flow whose first MADE layer is affine with
    ``skip=True``, see below), then the base, if it is a
    :class:`~arflows.flows.GaussianMixture`: a full-covariance Gaussian mixture is fitted by
    EM (:func:`~arflows.flows.fit_gaussian_mixture`) to the noise :math:`z = f(x; c)` of the
    training rows. The flow's other layers are left as they are; built, they are the
    identity, so the untrained flow's density then **is** the fitted classical density: with
    :math:`K = 1` and no marginal maps, the maximum likelihood full-covariance Gaussian of
    ``x``.

    ``components="auto"`` fits the sizes :data:`~arflows.flows.gmm.COMPONENTS` up to the
    base's ``max_components`` (its ``components`` when built) and keeps the best on the
    validation rows: ``valid`` if given, else a seeded ``holdout`` share of ``x``; when those
    are fewer than :data:`FOLDS_BELOW` rows, by 5-fold cross-validation of ``x`` instead. A
    mixture must beat one Gaussian by more than one standard error of the per-row gains, or
    one Gaussian is kept (on few rows a mixture's narrow components fit noise and cost dearly
    on new rows). The chosen size is then refitted on all of ``x``, and the base takes it
    (build optimisers after this call). Any other base (standard normal, MADE MoG) is kept:
    only the standardisation, the marginal maps and the regression are set, and the summary
    says so. A conditional flow works the same way: the context is standardised and its
    layers, at the identity, give the same noise for every context, so the base starts as
    the mixture of the data's marginal distribution. Unless its first MADE layer can hold a
    regression (a :class:`~arflows.flows.MAF` built with ``skip=True``, whose affine shifts
    :math:`t` then get a direct linear path from the context): that layer's shift is set to
    :math:`t = -B \tilde c`, the ridge regression of the data on the standardised context
    :math:`\tilde c` (:func:`ridge_loo`, the penalty chosen by leave-one-out likelihood), and
    the base is fitted to the leave-one-out residuals (the errors of predicting new rows, not
    the smaller ones of fitting these). With the ``"gaussian"`` base and no marginal maps the
    untrained flow then **is** the linear-Gaussian regression
    :math:`y \mid c \sim \mathcal{N}(a + B \tilde c, \Sigma)`.

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
        regression: Whether to start a conditional flow at the linear-Gaussian regression of
            the data on the context, where its first MADE layer is affine with ``skip=True``
            (see above).
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
        ``"regression"`` (``None``, or the layer, the ridge ``"penalty"`` and each column's
        training ``"r2"`` of the regression start),
        ``"components"`` (the chosen :math:`K`, or ``None``), ``"scores"`` (the mean
        validation log-likelihood of the data under each size tried, by :math:`K`; empty
        when none was chosen), ``"selected_on"`` (``"valid"``, ``"holdout"``, ``"folds"`` or
        ``None``),
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
        fitted = _initialize_regression(flow, x, c) if regression and conditional else None
        regressed, excess = (None, None) if fitted is None else fitted
        summary = {
            "base": type(flow.base).__name__,
            "fitted": False,
            "marginals": count,
            "regression": regressed,
            "components": None,
            "scores": {},
            "selected_on": None,
        }
        if isinstance(flow.base, GaussianMixture):
            options = dict(components=components, holdout=holdout, max_rows=max_rows, seed=seed)
            options.update(excess=excess, kwargs=kwargs)
            summary.update(_fit_base(flow, x, c, valid, valid_c, **options))
        summary["log_prob"] = _mean_log_prob(flow, x, c)
        summary["valid_log_prob"] = None
        if valid is not None:
            summary["valid_log_prob"] = _mean_log_prob(flow, valid, valid_c)
    finally:
        flow.train(training)
    return summary


def _clearly_better(new: Tensor, old: Tensor) -> bool:
    r"""Whether per-row scores ``new`` beat ``old`` by more than one standard error.

    The mixture of the best validation score wins by chance on few validation rows, and its
    narrow components then cost dearly on new rows: it must beat one Gaussian by more than
    the noise of the comparison, :math:`\bar d > s_d / \sqrt{M}` for the per-row gains
    :math:`d` (a one-standard-error rule).
    """
    gain = (new - old).double()
    if len(gain) < 2 or not bool(gain.isfinite().all()):
        return len(gain) >= 2 and bool((gain == torch.inf).any())
    return gain.mean().item() > gain.std().item() / len(gain) ** 0.5


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
    excess: Tensor | None,
    kwargs: dict,
) -> dict:
    """Fits the GaussianMixture base to the noise of ``x``; the summary's base entries.

    ``excess`` (with shape :math:`(N, D)`) is added to the training rows' noise: the
    leave-one-out residuals' excess over the residuals of a regression start, whose later
    layers are still the identity, so the base fits the errors of predicting new rows.
    """
    base = flow.base
    z, ladj = _noise(flow, x, c)
    if excess is not None:
        z = z + excess
    kwargs = dict(kwargs, seed=seed)
    sizes = [k for k in COMPONENTS if k <= base.max_components]
    sizes += [] if base.max_components in sizes else [base.max_components]
    if components != "auto" or len(sizes) == 1:
        fit = fit_gaussian_mixture(z, 1 if components == "auto" else components, **kwargs)
        base.set_(fit.weights, fit.means, fit.covariances)
        return {"fitted": True, "mixture": fit, "components": fit.components}
    generator = torch.Generator().manual_seed(seed)
    held = len(valid) if valid is not None else max(1, round(holdout * len(z)))
    if held < FOLDS_BELOW:
        # Too few held-out rows to tell a mixture's gain from noise: every training row (of
        # at most max_rows) is held out once instead.
        rows = z
        if max_rows is not None and len(z) > max_rows:
            rows = z[torch.randperm(len(z), generator=generator)[:max_rows].to(z.device)]
        chosen, scores, per_row = _select_by_folds(rows, sizes, generator, kwargs)
        selected_on = "folds"
    else:
        if valid is not None:
            train, (z_valid, ladj) = z, _noise(flow, valid, valid_c)
        else:
            order = torch.randperm(len(z), generator=generator).to(z.device)
            train, z_valid, ladj = z[order[held:]], z[order[:held]], ladj[order[:held]]
        if max_rows is not None and len(train) > max_rows:
            keep = torch.randperm(len(train), generator=generator)[:max_rows].to(z.device)
            train = train[keep]
        best, scores = select_gaussian_mixture(train, z_valid, sizes, **kwargs)
        single = best if best.components == 1 else fit_gaussian_mixture(train, 1, **kwargs)
        chosen = best.components
        per_row = {1: single.log_prob(z_valid), chosen: best.log_prob(z_valid)}
        selected_on = "valid" if valid is not None else "holdout"
    if chosen > 1 and not _clearly_better(per_row[chosen], per_row[1]):
        chosen = 1
    fit = fit_gaussian_mixture(z, chosen, **kwargs)
    base.set_(fit.weights, fit.means, fit.covariances)
    return {
        "fitted": True,
        "mixture": fit,
        "components": fit.components,
        # Of the data: the noise's log-likelihood plus the layers' log-determinant.
        "scores": {k: score + ladj.mean().item() for k, score in scores.items()},
        "selected_on": selected_on,
    }


def _select_by_folds(
    z: Tensor, sizes: list[int], generator: torch.Generator, kwargs: dict
) -> tuple[int, dict[int, float], dict[int, Tensor]]:
    """The mixture size of the best out-of-fold log-likelihood of ``z``, (N, D), by K folds.

    Returns:
        The size, the mean out-of-fold log-likelihood of each size tried, and the per-row
        out-of-fold log-likelihoods of each (for the one-standard-error rule).
    """
    n, d = z.shape
    folds = min(_FOLDS, n)
    order = torch.randperm(n, generator=generator).to(z.device)
    held = [order[f::folds] for f in range(folds)]
    smallest = n - max(len(h) for h in held)  # the fewest rows a fold's fit sees
    per_component = d + 1 + d * (d + 1) // 2
    per_row, scores, worse = {}, {}, 0
    for k in sizes:
        if k > 1 and k * per_component > smallest:
            break  # fewer than one row per free parameter
        out = torch.empty(n, dtype=torch.float64, device=z.device)  # MixtureFit: float64
        for rows in held:
            keep = torch.ones(n, dtype=torch.bool, device=z.device)
            keep[rows] = False
            out[rows] = fit_gaussian_mixture(z[keep], k, **kwargs).log_prob(z[rows])
        per_row[k], scores[k] = out, out.mean().item()
        best = max(scores, key=scores.get)
        worse = 0 if best == k else worse + 1
        if worse >= 2:
            break
    return max(scores, key=scores.get), scores, per_row
