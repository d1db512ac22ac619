"""FlowRegressor: probabilistic regression p(y | x) with the scikit-learn API, and its start.

The start is checked against a linear-Gaussian regression computed here with numpy (ridge,
penalty and noise covariance from leave-one-out errors), so a wrong sign, row or scale in
the flow's regression start fails.
"""

import pickle
from functools import partial

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from scipy.stats import multivariate_normal  # noqa: E402
from sklearn.linear_model import LinearRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV, cross_val_score  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

from arflows.flows import MAF, initialize_  # noqa: E402
from arflows.sklearn import FlowDensity, FlowRegressor  # noqa: E402
from arflows.sklearn.regression import SKLEARN_CHECKS_NOT_APPLICABLE  # noqa: E402

TINY = dict(hidden_features=(4,), epochs=1, samples=50, folds=None, base="gaussian")
RIDGE = (0.0, 1e-4, 1e-3, 1e-2, 0.03, 0.1, 0.3, 1.0, 3.0)  # as flows.initialize tries them


def small(**kwargs):
    options = dict(hidden_features=(8,), epochs=3, folds=None, base="gaussian", samples=200)
    return FlowRegressor(**{**options, **kwargs})


def linear(n=300, targets=1, seed=0):
    """y = X B + a + correlated Gaussian noise: the linear-Gaussian model holds exactly."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, -1.0]
    B = rng.normal(size=(3, targets)) * [[1.0], [0.1], [10.0]]
    noise = rng.normal(size=(n, targets)) @ np.triu(np.full((targets, targets), 0.5) + 0.5)
    y = X @ B + 3.0 + noise
    return X, (y[:, 0] if targets == 1 else y)


def heteroscedastic(n, seed):
    """y = sin(x) + (0.05 + 0.5 x) e on x in (0, 2): the noise grows tenfold along x."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 2, size=(n, 1))
    return x, np.sin(x[:, 0]) + (0.05 + 0.5 * x[:, 0]) * rng.normal(size=n)


def ridge_loo_gaussian(X, Y):
    """The linear-Gaussian start computed independently: its log-density of (Xt, Yt)."""
    n = len(X)
    xm, xs, ym, ys = X.mean(0), X.std(0), Y.mean(0), Y.std(0)
    C, U = (X - xm) / xs, (Y - ym) / ys  # as the flow standardises
    best = None
    for p in RIDGE:
        inverse = np.linalg.inv(C.T @ C + p * n * np.eye(C.shape[1]))
        coef = inverse @ C.T @ U
        hat = np.einsum("ij,jk,ik->i", C, inverse, C) + 1.0 / n
        loo = (U - C @ coef) / (1 - hat)[:, None]
        score = np.linalg.slogdet(loo.T @ loo / n)[1]
        if best is None or score < best[0]:
            best = (score, coef, loo)
    _, coef, loo = best
    # The Gaussian base is the maximum-likelihood fit to the leave-one-out residuals.
    mean, cov = loo.mean(0), np.cov(loo.T, bias=True).reshape(Y.shape[1], -1)

    def logpdf(Xt, Yt):
        z = (Yt - ym) / ys - (Xt - xm) / xs @ coef
        return multivariate_normal(mean, cov).logpdf(z) - np.log(ys).sum()

    return logpdf


# --- scikit-learn's estimator checks -------------------------------------------------------


# Every applicable check passes; the two that call score_samples(X) without y are expected
# to fail, for the reason the module gives.
@parametrize_with_checks(
    [FlowRegressor(**TINY)], expected_failed_checks=lambda _: SKLEARN_CHECKS_NOT_APPLICABLE
)
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_predictions_of_a_row_do_not_depend_on_the_other_rows():
    # What the two inapplicable checks would test of predict, and of sample_y and quantiles.
    for targets in (1, 2):
        X, y = linear(60, targets)
        model = small(samples=64).fit(X, y)
        order = np.random.default_rng(0).permutation(60)
        for method in (model.predict, partial(model.predict_quantiles, q=[0.2, 0.7])):
            whole = method(X)
            np.testing.assert_allclose(method(X[order]), whole[order], rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(method(X[7:9]), whole[7:9], rtol=1e-12, atol=1e-12)


# --- shapes, seeding, model selection --------------------------------------------------------


@pytest.mark.parametrize("targets", [1, 2], ids=["one-target", "two-targets"])
def test_prediction_shapes_follow_y(targets):
    X, y = linear(120, targets)
    model = small().fit(X, y)
    n, q = 7, [0.1, 0.5, 0.9]
    tail = () if targets == 1 else (targets,)
    assert model.n_targets_ == targets and model.n_features_in_ == 3
    assert model.predict(X[:n]).shape == (n, *tail)
    assert model.predict_quantiles(X[:n], q).shape == (n, 3, *tail)
    assert model.predict_interval(X[:n]).shape == (n, 2, *tail)
    assert model.sample_y(X[:n], 5).shape == (n, 5) if targets == 1 else (n, targets, 5)
    assert model.score_samples(X[:n], y[:n]).shape == (n,)
    median = FlowRegressor(**{**model.get_params(), "point": "median"}).fit(X, y)
    np.testing.assert_allclose(
        median.predict(X[:n]), median.predict_quantiles(X[:n], [0.5])[:, 0], rtol=1e-12
    )


def test_column_vector_y_keeps_its_axis():
    X, y = linear(80)
    model = small().fit(X, y[:, None])
    assert model.predict(X[:4]).shape == (4, 1)
    assert model.sample_y(X[:4], 3).shape == (4, 1, 3)


def test_score_is_the_mean_log_likelihood_not_r2():
    X, y = linear(150)
    model = small().fit(X, y)
    scores = model.score_samples(X, y)
    assert scores.dtype == np.float64
    assert model.score(X, y) == pytest.approx(scores.mean(), rel=1e-12)
    weights = np.arange(150.0)
    assert model.score(X, y, weights) == pytest.approx(np.average(scores, weights=weights))


def test_seeding_is_reproducible_and_leaves_torch_alone():
    X, y = linear(100)
    state = torch.get_rng_state()
    a, b, c = small(seed=1).fit(X, y), small(seed=1).fit(X, y), small(seed=2).fit(X, y)
    np.testing.assert_array_equal(a.score_samples(X, y), b.score_samples(X, y))
    assert not np.array_equal(a.score_samples(X, y), c.score_samples(X, y))
    np.testing.assert_array_equal(a.predict(X), a.predict(X))  # seeded draws
    draws = a.sample_y(X[:5], 4, random_state=3)
    np.testing.assert_array_equal(draws, a.sample_y(X[:5], 4, random_state=3))
    assert not np.array_equal(draws, a.sample_y(X[:5], 4, random_state=4))
    assert torch.equal(state, torch.get_rng_state())


def test_pipeline_grid_search_and_cross_validation():
    X, y = linear(160)
    pipe = make_pipeline(StandardScaler(), small(epochs=1)).fit(X, y)
    assert pipe.predict(X[:3]).shape == (3,) and np.isfinite(pipe.score(X, y))
    # lr=1e-12 stays at the linear-Gaussian start, which is the true model here.
    grid = GridSearchCV(small(epochs=2, base="gaussian"), {"base": ["normal", "gaussian"]}, cv=2)
    assert grid.fit(X, y).best_params_ == {"base": "gaussian"}
    scores = cross_val_score(small(epochs=1), X, y, cv=3)
    r2 = cross_val_score(small(epochs=1), X, y, cv=3, scoring="r2")
    least_squares = cross_val_score(LinearRegression(), X, y, cv=3, scoring="r2")
    assert scores.shape == (3,) and np.all(np.isfinite(scores))
    np.testing.assert_allclose(r2, least_squares, atol=0.02)  # the start predicts as well


def test_fitted_regressor_pickles():
    X, y = linear(80)
    model = small().fit(X, y)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(model.score_samples(X, y), again.score_samples(X, y))
    np.testing.assert_array_equal(model.predict(X), again.predict(X))


# --- the start and the quantiles -----------------------------------------------------------


@pytest.mark.parametrize("targets", [1, 2], ids=["one-target", "two-targets"])
def test_untrained_flow_is_the_linear_gaussian_regression(targets):
    X, Y = linear(200, targets, seed=1)
    Y = Y.reshape(len(Y), -1)
    Xt, Yt = linear(50, targets, seed=2)
    Yt = Yt.reshape(len(Yt), -1)
    flow = MAF(targets, context=3, transforms=2, hidden_features=(8,), base="gaussian", skip=True)
    flow = flow.double()
    as_t = torch.as_tensor
    summary = initialize_(flow, as_t(Y), as_t(X))
    assert summary["regression"]["layer"] == 0
    expected = ridge_loo_gaussian(X, Y)(Xt, Yt)
    with torch.no_grad():
        got = flow(as_t(Xt)).log_prob(as_t(Yt)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_quantiles_are_monotone_and_intervals_cover_heteroscedastic_noise():
    X, y = heteroscedastic(1000, seed=0)
    Xt, yt = heteroscedastic(4000, seed=10)
    options = dict(epochs=30, batch_size=64, lr=2e-3, patience=None, folds=None)
    model = FlowRegressor(**options).fit(X, y)
    q = model.predict_quantiles(Xt[:200], np.linspace(0.02, 0.98, 9))
    assert np.all(np.diff(q, axis=1) > 0)
    low, high = model.predict_interval(Xt).T
    inside = (yt >= low) & (yt <= high)
    # 90% in each half of x: a constant noise scale would give ~100% and ~80%.
    for part in (Xt[:, 0] < 1, Xt[:, 0] >= 1):
        assert 0.85 <= inside[part].mean() <= 0.95


# --- bad input -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "X, y, match",
    [
        (np.ones((10, 2)), np.full(10, np.nan), "NaN"),
        (np.full((10, 2), np.inf), np.ones(10), "infinity"),
        (np.ones((10, 2)), np.ones(9), "inconsistent numbers of samples"),
        (np.ones((10, 2)), np.ones((10, 2, 2)), "y"),
        (np.ones((3, 2)), np.ones(3), "at least 4 rows"),
    ],
    ids=["nan-y", "inf-x", "lengths", "3d-y", "few-rows"],
)
def test_bad_data_is_refused(X, y, match):
    with pytest.raises(ValueError, match=match):
        small().fit(X, y)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(point="mode"), "point"),
        (dict(flow="nope"), "flow"),
        (dict(base="student"), "base"),
        (dict(valid=1.5), "valid"),
        (dict(folds=1), "folds >= 2"),
        (dict(samples=0), "samples >= 1"),
        (dict(epochs=0), "epochs >= 1"),
        (dict(hidden_features=(0,)), "hidden_features >= 1"),
    ],
)
def test_bad_options_fail_in_fit_not_in_init(params, match):
    X, y = linear(40)
    model = small(**params)  # no error yet, as scikit-learn requires
    with pytest.raises(ValueError, match=match):
        model.fit(X, y)


def test_bad_prediction_arguments_are_refused():
    X, y = linear(60, targets=2)
    model = small().fit(X, y)
    with pytest.raises(ValueError, match="strictly between 0 and 1"):
        model.predict_quantiles(X, [0.5, 1.0])
    with pytest.raises(ValueError, match="alpha"):
        model.predict_interval(X, alpha=0)
    with pytest.raises(ValueError, match="n_samples >= 1"):
        model.sample_y(X, 0)
    with pytest.raises(ValueError, match="2 target"):
        model.score(X, y[:, 0])
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :2])


def test_density_estimator_still_imports_from_the_package():
    assert FlowDensity.__module__ == "arflows.sklearn.density"


def test_cli_conditional_fit_starts_at_the_linear_gaussian_regression(tmp_path, capsys):
    pd = pytest.importorskip("pandas")
    from arflows.cli import main
    from arflows.io import load

    X, y = linear(700, seed=3)
    X, y, Xt, yt = X[:300], y[:300], X[300:], y[300:]
    frame = pd.DataFrame(np.c_[y, X], columns=["y", "c0", "c1", "c2"])
    frame.to_csv(tmp_path / "data.csv", index=False)
    argv = ["fit", tmp_path / "data.csv", "--columns", "y", "--context-columns", "c0", "c1"]
    argv += ["c2", "--base", "gaussian", "--no-marginals", "--epochs", "1", "--lr", "1e-12"]
    argv += ["--test-fraction", "0", "--no-progress", "-o", tmp_path / "m"]
    assert main([str(a) for a in argv]) == 0
    capsys.readouterr()
    flow = load(tmp_path / "m").double()
    assert flow.config["arguments"]["skip"] is True
    with torch.no_grad():
        got = flow(torch.as_tensor(Xt)).log_prob(torch.as_tensor(yt[:, None])).mean().item()
    # The same model fitted to all 300 rows (the CLI's start saw its 270 training rows).
    expected = ridge_loo_gaussian(X, y[:, None])(Xt, yt[:, None]).mean()
    assert got == pytest.approx(expected, abs=0.05)
    assert expected > multivariate_normal(y.mean(), y.var()).logpdf(yt).mean() + 0.2


def test_fit_cv_refuses_an_unknown_rule():
    from arflows.train import fit_cv

    with pytest.raises(ValueError, match='"best" or "clear"'):
        fit_cv(lambda: MAF(1), torch.randn(10, 1), rule="median")
