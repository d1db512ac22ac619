r"""scikit-learn estimators backed by flows; they need the extra ``arflows[sklearn]``.

* :class:`FlowDensity` (:mod:`~arflows.sklearn.density`): a density :math:`p(x)`, like
  :class:`sklearn.mixture.GaussianMixture`.
* :class:`FlowRegressor` (:mod:`~arflows.sklearn.regression`): probabilistic regression,
  the conditional density :math:`p(y \mid x)` of one or several targets, with means,
  medians, quantiles, intervals and draws.
* :mod:`~arflows.sklearn.validation`: the input checks and seeding both share.
"""

__all__ = ["FlowDensity", "FlowRegressor"]

try:
    import sklearn  # noqa: F401
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "arflows.sklearn needs scikit-learn; install it with `pip install 'arflows[sklearn]'`"
    ) from error

from .density import FlowDensity  # noqa: E402
from .regression import FlowRegressor  # noqa: E402
