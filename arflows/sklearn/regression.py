r"""Probabilistic regression with a conditional flow: :class:`FlowRegressor`.

A scikit-learn regressor whose model is the whole conditional density :math:`p(y \mid x)`
of one or several targets, not only a point prediction: ``predict`` gives its mean (or
median), ``predict_quantiles`` and ``predict_interval`` its quantiles, ``sample_y`` draws from
it, and ``score_samples`` / ``score`` the log-likelihood of observed targets.

The defaults start the flow **at the linear-Gaussian regression** of :math:`y` on
:math:`x` (see :func:`arflows.flows.initialize_`): a ridge regression whose penalty and
residual covariance come from leave-one-out errors, so the untrained model already is that
classical model, then let training learn what it misses (a scale that depends on
:math:`x`, skewed or multimodal noise, non-linear means), keeping the start unless training
beats it on held-out rows.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 3))
    >>> y = X @ np.array([1.0, -2.0, 0.5]) + rng.normal(size=200)
    >>> model = FlowRegressor(epochs=2, folds=None).fit(X, y)
    >>> model.predict(X[:5]).shape, model.predict_interval(X[:5]).shape
    ((5,), (5, 2))
    >>> model.predict_quantiles(X[:5], [0.1, 0.5, 0.9]).shape, model.sample_y(X[:5], 7).shape
    ((5, 3), (5, 7))
"""

from __future__ import annotations

__all__ = ["FlowRegressor", "SKLEARN_CHECKS_NOT_APPLICABLE"]

import contextlib
import numbers
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.utils.validation import check_is_fitted

from ..flows import (
    MAF,
    Flow,
    GaussianMixture,
    StandardNormal,
    build,
    flow_classes,
    flow_options,
    log_prob,
    quantiles,
)
from ..train import History, fit, fit_cv, training_options
from .validation import as_tensor, check_count, forked_seed, validate_rows, validate_targets

_POINTS = ("mean", "median")
_BASES = ("gmm", "gaussian", "normal")
# scikit-learn's estimator checks that do not apply, with the reason: pass it as
# `expected_failed_checks` to check_estimator or parametrize_with_checks.
_NEEDS_Y = (
    "the check calls score_samples(X) without y, but a regressor's score_samples(X, y) scores "
    "the targets; predict passes it (each row's draws do not depend on the other rows)"
)
SKLEARN_CHECKS_NOT_APPLICABLE = {
    "check_methods_sample_order_invariance": _NEEDS_Y,
    "check_methods_subset_invariance": _NEEDS_Y,
}
# Drawn values (draws x rows) per pass through the flow: a few MB of activations at a time.
_DRAWS = 1 << 16


@contextlib.contextmanager
def _threads(batch_size: int) -> Iterator[None]:
    # Small batches only lose time to threading (as `arflows fit`); put back as found.
    threads = torch.get_num_threads()
    if batch_size < 256:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


class FlowRegressor(RegressorMixin, BaseEstimator):
    r"""Probabilistic regression: a conditional flow :math:`p(y \mid x)` with the scikit-learn API.

    ``fit(X, y)`` builds the flow named by ``flow`` for :math:`T` targets conditioned on the
    :math:`C` features of ``X`` (float64) and trains it with :func:`arflows.fit` (or
    :func:`arflows.train.fit_cv`) by maximum likelihood. By default it starts **at the
    linear-Gaussian regression**: the first layer's direct context path holds the ridge
    coefficients and the Gaussian (mixture) base the leave-one-out residuals' distribution
    (:func:`arflows.flows.initialize_`); that start is scored on held-out rows like an epoch,
    so training only replaces it when it predicts held-out targets better. Options left
    ``None`` are sized to the rows (:func:`arflows.train.training_options`).

    Shapes follow ``y``: a 1-D ``y`` gives 1-D predictions; a 2-D ``y`` of :math:`T` columns
    gives a last axis of :math:`T`.

    Note:
        :meth:`score` is the **mean log-likelihood** :math:`\frac1N \sum_n \log p(y_n \mid
        x_n)` in nats, not :class:`~sklearn.base.RegressorMixin`'s :math:`R^2`, so that
        :class:`~sklearn.model_selection.GridSearchCV` and
        :func:`~sklearn.model_selection.cross_val_score` choose by predictive density. Pass
        ``scoring="r2"`` to them for the :math:`R^2` of :meth:`predict`.

    Args:
        flow: The flow family, by case-insensitive name (``"maf"``, ``"nsf"``, ...). MAF
            flows get ``skip=True`` so their first layer can hold the regression start.
        transforms: The number of flow layers; ``None``: 1 for one target (every layer of
            an affine flow of one target is an affine map of :math:`y`, so more layers only
            add depth to one network), 5 for several.
        hidden_features: The hidden widths of each layer's network; ``None``: sized.
        base: ``"gmm"`` (a Gaussian mixture of up to ``components`` components fitted to the
            residuals, its size chosen on held-out rows), ``"gaussian"`` (one Gaussian) or
            ``"normal"`` (a standard normal: no fitted start), for flows that take ``base``.
        components: The most components of the ``"gmm"`` base.
        marginals: Per-target monotone maps, fitted to Gaussianise each target's marginal
            distribution before the regression (for flows that take them). Off by default:
            the marginal of :math:`y` is not the distribution of the noise, and on few rows
            the maps fit the rows' noise.
        epochs: The most training epochs; ``None``: sized (about 4,000 steps).
        batch_size: The mini-batch size; ``None``: sized (a tenth of the rows, 16 to 256).
        lr: The learning rate (cosine decay, with warm-up).
        weight_decay: AdamW's weight decay; ``None``: sized (larger for fewer rows).
        patience: Epochs without held-out improvement before stopping; ``None``: sized.
        valid: The fraction of rows held out for early stopping when ``folds`` is ``None``.
        folds: ``None``: hold out ``valid``; an int :math:`K \ge 2`: choose the training
            length (or the start) by :math:`K`-fold cross-validation, then refit on all rows
            (:func:`arflows.train.fit_cv`, :math:`K + 1` fits); ``"auto"``: 5 folds when the
            held-out fraction would have fewer than 200 rows, else hold out ``valid``.
        point: What :meth:`predict` returns: ``"mean"`` or ``"median"``.
        samples: Draws per row for the Monte Carlo mean (and quantiles of several targets).
        seed: Seeds the weights, the split, the batch order and the draws of predictions:
            an int, a :class:`numpy.random.RandomState` or ``None`` (a fresh draw each fit).
        progress: Whether to show a progress bar (on a terminal).

    Attributes:
        flow_: The fitted conditional :class:`~arflows.Flow` (float64, evaluation mode).
        history_: The training :class:`~arflows.History` (of the refit with ``folds``).
        cv_: The cross-validation summary of :func:`arflows.train.fit_cv`, or ``None``.
        n_targets_: The number of targets :math:`T`.
        n_features_in_: The number of features :math:`C` of ``X``.
        feature_names_in_: The column names, when ``X`` had string column names.

    Example:
        >>> import numpy as np
        >>> from sklearn.model_selection import cross_val_score
        >>> rng = np.random.default_rng(1)
        >>> X = rng.uniform(-1, 1, size=(120, 2))
        >>> y = np.c_[X.sum(1), X[:, 0] - X[:, 1]] + 0.1 * rng.normal(size=(120, 2))
        >>> model = FlowRegressor(base="gaussian", epochs=1, folds=None)
        >>> cross_val_score(model, X, y, cv=2).shape
        (2,)
        >>> model.fit(X, y).predict_quantiles(X[:4], [0.25, 0.75]).shape
        (4, 2, 2)
    """

    def __init__(
        self,
        flow: str = "maf",
        transforms: int | None = None,
        hidden_features: Sequence[int] | None = None,
        base: str = "gmm",
        components: int = 8,
        marginals: bool = False,
        epochs: int | None = None,
        batch_size: int | None = None,
        lr: float = 1e-3,
        weight_decay: float | None = None,
        patience: int | None = None,
        valid: float = 0.1,
        folds: int | str | None = "auto",
        point: str = "mean",
        samples: int = 1000,
        seed: int | np.random.RandomState | None = 0,
        progress: bool = False,
    ):
        self.flow = flow
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.base = base
        self.components = components
        self.marginals = marginals
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.valid = valid
        self.folds = folds
        self.point = point
        self.samples = samples
        self.seed = seed
        self.progress = progress

    def __sklearn_tags__(self):  # noqa: ANN204, D105 - the return type needs sklearn >= 1.6
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        # The score is a log-likelihood, not R^2: the checks' "R^2 > 0.5" does not apply.
        tags.regressor_tags.poor_score = True
        return tags

    # --- options -----------------------------------------------------------------------------

    def _folds(self, rows: int) -> int | None:
        """The number of folds for ``rows`` rows, or ``None`` to hold out ``valid``."""
        folds = self.folds
        if folds == "auto":
            # A held-out share of under 200 rows judges early stopping on its noise.
            folds = 5 if self.valid * rows < 200 else None
        # Every fold then trains on at least 2 rows, and holds out at least one.
        return None if folds is None else min(check_count("folds", folds, 2), rows // 2)

    def _training(self, rows: int, targets: int, context: int) -> tuple[dict, tuple[int, ...]]:
        """The options of :func:`arflows.fit` and the hidden widths: given, else sized."""
        sized = training_options(max(rows, 1), targets, context=context)
        hidden = self.hidden_features or sized.hidden_features
        if isinstance(hidden, numbers.Integral):
            hidden = (hidden,)
        hidden = tuple(check_count("hidden_features", h) for h in hidden)
        options = dict(
            epochs=self.epochs or sized.epochs,
            batch_size=self.batch_size or sized.batch_size,
            lr=self.lr,
            weight_decay=sized.weight_decay if self.weight_decay is None else self.weight_decay,
            patience=self.patience or sized.patience,
            warmup=sized.warmup,
            progress=self.progress,
        )
        return options, hidden

    def _check_options(self) -> None:
        if self.point not in _POINTS:
            raise ValueError(f"expected `point` in {_POINTS}, got {self.point!r}")
        if not isinstance(self.flow, str) or self.flow.lower() not in flow_classes():
            raise ValueError(
                f"expected `flow` in {sorted(flow_classes())} (the flows of this arflows), "
                f"got {self.flow!r}"
            )
        if self.base not in _BASES:
            raise ValueError(f"expected `base` in {_BASES}, got {self.base!r}")
        if not isinstance(self.valid, numbers.Real) or not 0 < self.valid < 1:
            raise ValueError(f"expected `valid` in (0, 1), got {self.valid!r}")
        if not (self.folds is None or self.folds == "auto"):
            check_count("folds", self.folds, 2)
        check_count("samples", self.samples)
        check_count("components", self.components)
        for name in ("transforms", "epochs", "batch_size"):
            if getattr(self, name) is not None:
                check_count(name, getattr(self, name))
        if self.patience is not None:
            check_count("patience", self.patience)

    def _flow_options(self, targets: int, hidden: tuple[int, ...]) -> dict:
        """The flow's options: those of the estimator that the family takes."""
        cls = flow_classes()[self.flow.lower()]
        accepted = flow_options(cls)
        transforms = self.transforms or (1 if targets == 1 else 5)
        options: dict = {"transforms": transforms, "hidden_features": hidden}
        if "base" in accepted:
            options["base"] = self.base
            if self.base == "gmm":
                options["components"] = self.components
        if self.marginals:
            options["marginals"] = True
        if cls is MAF:
            options["skip"] = True  # the context's direct path holds the regression start
        return {k: v for k, v in options.items() if k in accepted or k == "skip"}

    # --- fit ---------------------------------------------------------------------------------

    def fit(self, X: object, y: object) -> FlowRegressor:
        r"""Fits :math:`p(y \mid x)` to the rows of ``X`` and ``y`` by maximum likelihood.

        Args:
            X: The features, array-like with shape :math:`(N, C)`, :math:`N \ge 4`.
            y: The targets, array-like with shape :math:`(N,)` or :math:`(N, T)`.

        Returns:
            The fitted estimator.

        Raises:
            ValueError: For NaN or infinite values, ``X`` and ``y`` of different lengths,
                ``y`` of more than two dimensions, or a bad option.
        """
        self._check_options()
        one_target = y is not None and np.asarray(y).ndim == 1
        X, Y = validate_targets(self, X, y, reset=True)
        n, targets = Y.shape
        if n < 4:
            raise ValueError(f"expected at least 4 rows to fit and validate on, got {n}")
        folds = self._folds(n)
        options, hidden = self._training(
            n if folds is not None else n - round(self.valid * n), targets, X.shape[1]
        )
        build_options = self._flow_options(targets, hidden)
        x, c = as_tensor(Y), as_tensor(X)
        with forked_seed(self.seed) as seed, _threads(options["batch_size"]):

            def make() -> Flow:
                torch.manual_seed(seed)  # the same weights for every fold and the refit
                return build(self.flow, targets, X.shape[1], **build_options).double()

            cv = None
            if folds is None:
                flow = make()
                history = fit(flow, x, c, valid=self.valid, seed=seed, **options)
            else:
                flow, history, cv = fit_cv(
                    make, x, c, folds=folds, seed=seed, rule="clear", **options
                )
        self.flow_: Flow = flow.eval()
        self.history_: History = history
        self.cv_: dict | None = cv
        self.n_targets_: int = targets
        self._one_target = one_target
        self._draw_seed = seed
        return self

    # --- densities ---------------------------------------------------------------------------

    def score_samples(self, X: object, y: object) -> np.ndarray:
        r"""The log-likelihood :math:`\log p(y_n \mid x_n)` of each row, in nats.

        Args:
            X: The features, array-like with shape :math:`(N, C)`.
            y: The targets, with shape :math:`(N,)` or :math:`(N, T)` as in ``fit``.

        Returns:
            The log-densities, a float64 array with shape :math:`(N,)`.
        """
        check_is_fitted(self)
        X, Y = validate_targets(self, X, y, reset=False, targets=self.n_targets_)
        return log_prob(self.flow_, as_tensor(Y), as_tensor(X)).numpy()

    def score(self, X: object, y: object, sample_weight: object = None) -> float:
        r"""The mean log-likelihood :math:`\frac1N \sum_n \log p(y_n \mid x_n)`, not :math:`R^2`.

        Higher is better, as scikit-learn's model selection expects (see the class's note).

        Args:
            X: The features, array-like with shape :math:`(N, C)`.
            y: The targets, with shape :math:`(N,)` or :math:`(N, T)`.
            sample_weight: Row weights, with shape :math:`(N,)`, for a weighted mean.

        Returns:
            The (weighted) mean log-likelihood in nats.
        """
        scores = self.score_samples(X, y)
        return float(np.average(scores, weights=sample_weight))

    # --- predictions -------------------------------------------------------------------------

    def _context(self, X: object) -> torch.Tensor:
        check_is_fitted(self)
        return as_tensor(validate_rows(self, X, reset=False))

    def _shaped(self, values: torch.Tensor) -> np.ndarray:
        """Drops the last (target) axis for a 1-D ``y``."""
        values = values.numpy()
        return values[..., 0] if self._one_target else values

    @torch.no_grad()
    def _draws(self, c: torch.Tensor, samples: int) -> Iterator[torch.Tensor]:
        r"""``samples`` draws for each chunk of rows of ``c``, with shape :math:`(S, n, T)`.

        The same base draws :math:`z_1, \dots, z_S` go through every row's transform
        (common random numbers), so a row's draws do not depend on the other rows: the
        predictions of a row are the same alone, in any order or in any batch.
        """
        flow, rows = self.flow_, max(1, _DRAWS // samples)
        common = isinstance(flow.base, GaussianMixture | StandardNormal)
        with forked_seed(self._draw_seed):
            z = flow.base().sample((samples,)) if common else None  # (S, T), for all rows
        for i in range(0, len(c), rows):
            part = c[i : i + rows]
            if common:
                yield flow(part).transform.inv(z[:, None].expand(-1, len(part), -1))
            else:  # a base that depends on the context: seeded draws of each chunk
                with forked_seed(self._draw_seed):
                    draws = flow(part).sample((samples,))
                yield draws

    def _summary(self, X: object, reduce: Callable[[torch.Tensor], torch.Tensor]) -> np.ndarray:
        """``reduce`` of each chunk's draws, (S, n, T) to (n, ...), joined over the rows."""
        c = self._context(X)
        parts = [reduce(draws) for draws in self._draws(c, self.samples)]
        if not parts:
            return self._shaped(reduce(torch.zeros(self.samples, 0, self.n_targets_)))
        return self._shaped(torch.cat(parts))

    def predict(self, X: object) -> np.ndarray:
        r"""The conditional mean (or median, with ``point="median"``) of the targets.

        The mean is that of ``samples`` draws per row, seeded by the fit: the same model
        predicts the same values, whatever the other rows (the draws of the base are shared
        by all rows). The median is exact for one target.

        Args:
            X: The features, array-like with shape :math:`(N, C)`.

        Returns:
            The predictions, float64 with shape :math:`(N,)` for a 1-D ``y``, else
            :math:`(N, T)`.
        """
        if self.point == "median":
            return self.predict_quantiles(X, 0.5)[:, 0]
        return self._summary(X, lambda draws: draws.mean(0))

    def predict_quantiles(self, X: object, q: Sequence[float] | float) -> np.ndarray:
        r"""The conditional quantiles :math:`F^{-1}(q_k \mid x_n)` of each target.

        Exact for one target (the base's quantile mapped through the flow); for several, the
        empirical quantiles of ``samples`` seeded draws per row, per target.

        Args:
            X: The features, array-like with shape :math:`(N, C)`.
            q: The probabilities, each strictly between 0 and 1 (a scalar or :math:`Q`).

        Returns:
            The quantiles, non-decreasing in ``q``: shape :math:`(N, Q)` for a 1-D ``y``, else
            :math:`(N, Q, T)`.
        """
        probs = np.atleast_1d(np.asarray(q, dtype=np.float64))
        if probs.ndim != 1 or not np.all((probs > 0) & (probs < 1)):
            raise ValueError(f"expected probabilities `q` strictly between 0 and 1, got {q!r}")
        if self.n_targets_ == 1:
            c = self._context(X)
            return self._shaped(quantiles(self.flow_, probs.tolist(), c))
        probs_t = torch.as_tensor(probs)
        return self._summary(X, lambda draws: torch.quantile(draws, probs_t, 0).transpose(0, 1))

    def predict_interval(self, X: object, alpha: float = 0.1) -> np.ndarray:
        r"""The central :math:`1 - \alpha` interval: the quantiles :math:`\alpha/2, 1 - \alpha/2`.

        Args:
            X: The features, array-like with shape :math:`(N, C)`.
            alpha: The share of the distribution left outside, in :math:`(0, 1)`.

        Returns:
            The lower and upper bounds: shape :math:`(N, 2)` for a 1-D ``y``, else
            :math:`(N, 2, T)`.
        """
        if not isinstance(alpha, numbers.Real) or not 0 < alpha < 1:
            raise ValueError(f"expected `alpha` in (0, 1), got {alpha!r}")
        return self.predict_quantiles(X, [alpha / 2, 1 - alpha / 2])

    @torch.no_grad()
    def sample_y(
        self,
        X: object,
        n_samples: int = 1,
        random_state: int | np.random.RandomState | None = 0,
    ) -> np.ndarray:
        r"""Draws targets from :math:`p(y \mid x_n)` for each row, as scikit-learn's GPs do.

        Args:
            X: The features, array-like with shape :math:`(N, C)`.
            n_samples: The draws :math:`S` per row.
            random_state: An int, a :class:`numpy.random.RandomState`, or ``None`` for
                numpy's global generator; it seeds the draws (torch's global generator is left
                untouched).

        Returns:
            The draws, float64 with shape :math:`(N, S)` for a 1-D ``y``, else
            :math:`(N, T, S)` (the layout of
            :meth:`sklearn.gaussian_process.GaussianProcessRegressor.sample_y`).
        """
        c = self._context(X)
        n_samples = check_count("n_samples", n_samples)
        with forked_seed(random_state):
            draws = self.flow_(c).sample((n_samples,))  # (S, N, T)
        draws = draws.permute(1, 2, 0).numpy()  # (N, T, S)
        return draws[:, 0] if self._one_target else draws
