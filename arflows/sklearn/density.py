r"""A scikit-learn density estimator backed by a flow.

:class:`FlowDensity` follows :class:`sklearn.neighbors.KernelDensity` and
:class:`sklearn.mixture.GaussianMixture`: ``fit(X)``, ``score_samples(X)`` (log-densities),
``score(X)`` and ``sample(n)``, so it works in :class:`~sklearn.pipeline.Pipeline` and
:class:`~sklearn.model_selection.GridSearchCV`.

Example:
    >>> import numpy as np
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> model = FlowDensity(transforms=1, hidden_features=(8,), epochs=2).fit(X)
    >>> model.score_samples(X[:5]).shape, model.sample(3, random_state=0).shape
    ((5,), (3, 2))
"""

from __future__ import annotations

__all__ = ["FlowDensity"]

import numbers
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ..flows import Flow, build, flow_classes, flow_options, log_prob
from ..train import History, fit
from .validation import as_tensor, validate_rows


class FlowDensity(DensityMixin, BaseEstimator):
    r"""A normalizing-flow density estimator with the scikit-learn API.

    ``fit`` builds the flow named by ``flow`` for the data's number of features, in float64,
    and trains it with :func:`arflows.fit` (maximum likelihood, a held-out validation
    fraction with early stopping, standardisation stored in the flow). ``score_samples``
    returns :math:`\log p(x)` per row, in nats, in the units of ``X``.

    Args:
        flow: The flow family: ``"maf"``, ``"iaf"``, ``"nsf"``, ``"realnvp"`` (any
            :class:`~arflows.Flow` class of :mod:`arflows.flows`, by case-insensitive name).
        transforms: The number of flow layers.
        hidden_features: The hidden widths of each layer's network.
        bins: The number of spline bins (for flows that take ``bins``, such as NSF).
        epochs: The maximum number of training epochs.
        batch_size: The mini-batch size.
        lr: The learning rate (cosine decay).
        weight_decay: AdamW's weight decay.
        patience: Epochs without validation improvement before stopping (``None``: never).
        valid: The fraction of rows held out for early stopping (0 or ``None``: none).
        standardize: Whether the flow stores and applies the data's standardisation.
        seed: Seeds the weights, the split and the batch order: an int, a
            :class:`numpy.random.RandomState` or ``None`` (a fresh draw each fit).
        progress: Whether to show a progress bar (on a terminal).

    ``transforms``, ``hidden_features`` and ``bins`` are passed to the flow class only when
    it takes them.

    Attributes:
        flow_: The fitted :class:`~arflows.Flow` (float64, in evaluation mode).
        history_: The training :class:`~arflows.History`.
        n_features_in_: The number of features seen in ``fit``.
        feature_names_in_: The column names, when ``X`` had string column names.

    Example:
        >>> import numpy as np
        >>> from sklearn.model_selection import GridSearchCV
        >>> X = np.random.default_rng(0).normal(size=(100, 2))
        >>> grid = {"transforms": [1, 2]}
        >>> search = GridSearchCV(FlowDensity(hidden_features=(8,), epochs=1), grid, cv=2)
        >>> search.fit(X).best_params_["transforms"] in (1, 2)
        True
    """

    def __init__(
        self,
        flow: str = "maf",
        transforms: int = 5,
        hidden_features: Sequence[int] = (64, 64),
        bins: int = 8,
        epochs: int = 100,
        batch_size: int = 256,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int | None = 10,
        valid: float | None = 0.1,
        standardize: bool = True,
        seed: int | np.random.RandomState | None = 0,
        progress: bool = False,
    ):
        self.flow = flow
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.bins = bins
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.patience = patience
        self.valid = valid
        self.standardize = standardize
        self.seed = seed
        self.progress = progress

    def _build(self, features: int) -> Flow:
        if not isinstance(self.flow, str):
            raise TypeError(f"expected `flow` to be a flow name, got {self.flow!r}")
        classes = flow_classes()
        if self.flow.lower() not in classes:
            raise ValueError(
                f"expected `flow` in {sorted(classes)} (the flows of this arflows), "
                f"got {self.flow!r}"
            )
        if not isinstance(self.transforms, numbers.Integral) or self.transforms < 1:
            raise ValueError(f"expected an integer `transforms >= 1`, got {self.transforms!r}")
        hidden = self.hidden_features
        if isinstance(hidden, numbers.Integral):
            hidden = (hidden,)
        if not all(isinstance(h, numbers.Integral) and h >= 1 for h in hidden):
            raise ValueError(f"expected `hidden_features` of integers >= 1, got {hidden!r}")
        options = {
            "transforms": int(self.transforms),
            "hidden_features": tuple(int(h) for h in hidden),
            "bins": self.bins,
        }
        accepted = flow_options(self.flow)
        kwargs = {name: value for name, value in options.items() if name in accepted}
        return build(self.flow, features, **kwargs).double()

    def fit(self, X: object, y: None = None) -> FlowDensity:
        r"""Fits the flow to the rows of ``X`` by maximum likelihood.

        Args:
            X: The data, array-like with shape :math:`(N, D)`, :math:`N \ge 2`.
            y: Ignored (present for the API).

        Returns:
            The fitted estimator.
        """
        X = validate_rows(self, X, reset=True)
        seed = int(check_random_state(self.seed).randint(2**31 - 1))
        # The weights come from torch's global generator: seed it without touching the caller's.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            flow = self._build(X.shape[1])
            history = fit(
                flow,
                as_tensor(X),
                valid=self.valid,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                weight_decay=self.weight_decay,
                patience=self.patience,
                standardize=self.standardize,
                seed=seed,
                progress=self.progress,
            )
        self.flow_: Flow = flow.eval()
        self.history_: History = history
        return self

    def score_samples(self, X: object) -> np.ndarray:
        r"""The log-density :math:`\log p(x)` of each row of ``X``.

        Args:
            X: The points, array-like with shape :math:`(N, D)`.

        Returns:
            The log-densities in nats, a float64 array with shape :math:`(N,)`.
        """
        check_is_fitted(self)
        return log_prob(self.flow_, as_tensor(validate_rows(self, X, reset=False))).numpy()

    def score(self, X: object, y: None = None) -> float:
        r"""The average log-likelihood per row, :math:`\frac1N \sum_n \log p(x_n)`.

        The mean, as :meth:`sklearn.mixture.GaussianMixture.score` (not the total, as
        :meth:`sklearn.neighbors.KernelDensity.score`), so scores of different sizes compare.

        Args:
            X: The points, array-like with shape :math:`(N, D)`.
            y: Ignored (present for the API).

        Returns:
            The average log-likelihood in nats.
        """
        return float(np.mean(self.score_samples(X)))

    @torch.no_grad()
    def sample(
        self, n_samples: int = 1, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        r"""Draws points from the fitted density.

        Args:
            n_samples: The number of points.
            random_state: An int, a :class:`numpy.random.RandomState`, or ``None`` for
                numpy's global generator; it seeds the draw (torch's global generator is left
                untouched).

        Returns:
            The points, a float64 array with shape ``(n_samples, n_features_in_)``.
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or n_samples < 1:
            raise ValueError(f"expected an integer `n_samples >= 1`, got {n_samples!r}")
        seed = int(check_random_state(random_state).randint(2**31 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.flow_().sample((int(n_samples),)).numpy()
