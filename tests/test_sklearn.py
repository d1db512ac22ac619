import pickle

import numpy as np
import pytest
import torch

pytest.importorskip("sklearn")

from scipy.stats import multivariate_normal  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402
from sklearn.preprocessing import StandardScaler  # noqa: E402
from sklearn.utils.estimator_checks import parametrize_with_checks  # noqa: E402

import arflows.flows  # noqa: E402
from arflows.data import figure1  # noqa: E402
from arflows.sklearn import FlowDensity  # noqa: E402

TINY = dict(transforms=1, hidden_features=(4,), epochs=2, batch_size=64)


def small(**kwargs):
    return FlowDensity(**{**dict(transforms=2, hidden_features=(8,), epochs=3), **kwargs})


def gaussian(n=400, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 2)) @ np.array([[1.0, 0.8], [0.0, 0.6]]) + np.array([3.0, -1.0])


# Every applicable check passes: none is marked as an expected failure.
@parametrize_with_checks([FlowDensity(**TINY)])
def test_sklearn_estimator_checks(estimator, check):
    check(estimator)


def test_fit_learns_a_gaussian():
    cov = np.array([[1.0, 0.8], [0.0, 0.6]])
    cov = cov.T @ cov
    x, test = gaussian(2000, seed=0), gaussian(2000, seed=1)
    model = small(epochs=15, lr=5e-3).fit(x)
    exact = multivariate_normal([3.0, -1.0], cov).logpdf(test).mean()
    assert abs(model.score(test) - exact) < 0.05
    assert model.history_.train and model.n_features_in_ == 2


def test_score_is_the_mean_of_score_samples_and_sample_shapes():
    x = gaussian()
    model = small().fit(x)
    scores = model.score_samples(x)
    assert scores.dtype == np.float64 and scores.shape == (400,)
    assert model.score(x) == pytest.approx(scores.mean(), rel=1e-12)
    samples = model.sample(7, random_state=3)
    assert samples.shape == (7, 2) and samples.dtype == np.float64
    np.testing.assert_array_equal(samples, model.sample(7, random_state=3))
    assert not np.array_equal(samples, model.sample(7, random_state=4))


def test_sampling_and_fitting_leave_torchs_generator_alone():
    state = torch.get_rng_state()
    model = small().fit(gaussian())
    model.sample(5, random_state=0)
    assert torch.equal(state, torch.get_rng_state())


def test_seed_makes_fits_reproducible():
    x = gaussian()
    a, b, c = small(seed=1).fit(x), small(seed=1).fit(x), small(seed=2).fit(x)
    np.testing.assert_array_equal(a.score_samples(x), b.score_samples(x))
    assert not np.array_equal(a.score_samples(x), c.score_samples(x))


def test_pipeline_after_standard_scaler_matches_built_in_standardization():
    x = 100.0 * gaussian()
    raw = small(valid=None).fit(x)
    pipe = make_pipeline(StandardScaler(), small(valid=None, standardize=False)).fit(x)
    scaler = pipe[0]
    np.testing.assert_allclose(
        pipe.score_samples(x), pipe[-1].score_samples(scaler.transform(x)), rtol=1e-12
    )
    # The same fit on the same standardised data; the built-in one adds the log-det.
    log_det = np.log(scaler.scale_).sum()
    np.testing.assert_allclose(raw.score_samples(x), pipe.score_samples(x) - log_det, atol=1e-6)
    assert pipe.score(x) == pytest.approx(raw.score(x) + log_det, abs=1e-6)


def test_grid_search_prefers_the_model_that_learns():
    x = figure1(600, generator=torch.Generator().manual_seed(0)).double().numpy()
    # lr=1e-9 keeps the initial flow (a Gaussian after standardisation); lr=1e-2 learns.
    grid = GridSearchCV(small(epochs=8, patience=None), {"lr": [1e-9, 1e-2]}, cv=2)
    grid.fit(x)
    means = grid.cv_results_["mean_test_score"]
    assert grid.best_params_ == {"lr": 1e-2}
    assert means[1] > means[0] + 0.1
    assert np.isfinite(means).all()


def test_feature_names_from_a_data_frame():
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(gaussian(), columns=["a", "b"])
    model = small(epochs=1).fit(frame)
    assert list(model.feature_names_in_) == ["a", "b"]
    assert model.score_samples(frame).shape == (400,)


FLOWS = {"maf": "MAF", "iaf": "IAF", "nsf": "NSF", "realnvp": "RealNVP"}


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow_families(name):
    if not hasattr(arflows.flows, FLOWS[name]):
        pytest.skip(f"arflows.flows.{FLOWS[name]} is not available yet")
    model = FlowDensity(flow=name.upper(), **{**TINY, "bins": 5}).fit(gaussian(100))
    assert type(model.flow_).__name__ == FLOWS[name]
    assert model.flow_.config["arguments"]["transforms"] == 1
    if name == "nsf":
        assert model.flow_.config["arguments"]["bins"] == 5
    assert next(model.flow_.parameters()).dtype == torch.float64
    assert np.isfinite(model.score_samples(gaussian(10))).all()


def test_fitted_estimator_pickles():
    x = gaussian()
    model = small().fit(x)
    again = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(model.score_samples(x), again.score_samples(x))


@pytest.mark.parametrize(
    "params, error, match",
    [
        (dict(flow="nope"), ValueError, r"expected `flow` in \[.*'maf'.*got 'nope'"),
        (dict(flow=3), TypeError, "flow name"),
        (dict(transforms=0), ValueError, "transforms >= 1"),
        (dict(hidden_features=("a",)), ValueError, "hidden_features"),
        (dict(epochs=0), ValueError, "epochs >= 1"),
        (dict(valid=2.0), ValueError, "valid"),
    ],
)
def test_bad_parameters_fail_in_fit_not_in_init(params, error, match):
    model = FlowDensity(**{**TINY, **params})  # no error yet, as scikit-learn requires
    with pytest.raises(error, match=match):
        model.fit(gaussian(50))


def test_sample_bad_count():
    model = small(epochs=1).fit(gaussian(50))
    with pytest.raises(ValueError, match="n_samples >= 1"):
        model.sample(0)
