import numpy as np
import pytest
import torch

import arflows
from arflows.data import figure1, figure1_log_prob
from arflows.diagnostics import (
    calibration,
    gaussianize,
    gaussianized_figure,
    joint_normality,
    normality,
    pit,
    qq_figure,
)
from arflows.flows import quantiles
from arflows.plot import calibration_figure, loss_figure, save_figure
from tests.helpers import randomize

PNG = b"\x89PNG\r\n\x1a\n"


def test_identity_flow_gives_z_equal_x():
    flow = arflows.MAF(3, transforms=2, hidden_features=(8,))  # zero-initialised: identity
    x = torch.randn(300, 3)
    assert torch.allclose(gaussianize(flow, x), x, atol=1e-6)


def test_gaussianize_includes_the_standardisation_and_matches_log_prob():
    flow = randomize(arflows.MAF(2, transforms=2, hidden_features=(8,)))
    x = torch.randn(500, 2) * torch.tensor([3.0, 0.5]) + torch.tensor([10.0, -2.0])
    flow.standardize_(x)
    z = gaussianize(flow, x)
    dist = flow()
    base = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(-1)
    ladj = dist.transform.log_abs_det_jacobian(x, z)
    assert torch.allclose(base + ladj, dist.log_prob(x), atol=1e-5)
    assert (z.mean(0).abs() < 2).all()  # standardised before the (random) layers


def test_gaussianize_conditional_and_chunked():
    flow = randomize(arflows.MAF(2, context=1, transforms=1, hidden_features=(8,)))
    x, c = torch.randn(9000, 2), torch.randn(9000, 1)  # more rows than one chunk
    z = gaussianize(flow, x, c)
    assert torch.allclose(z, flow(c).transform(x), atol=1e-6)
    with pytest.raises(ValueError, match="`c`"):
        gaussianize(flow, x, c[:5])


def test_normality_of_gaussian_samples():
    z = torch.randn(4000, 3, generator=torch.Generator().manual_seed(1))
    table = normality(z, ["a", "b", "c"])
    assert list(table.index) == ["a", "b", "c"]
    assert (table["ks"] < 0.03).all() and (table["ks_pvalue"] > 1e-3).all()
    assert (table["skew"].abs() < 0.2).all() and (table["kurtosis"].abs() < 0.3).all()
    joint = joint_normality(z)
    assert joint["mean_error"] < 0.1 and joint["cov_error"] < 0.1
    assert joint["max_abs_corr"] < 0.1


def test_normality_flags_skewed_and_shifted_data():
    gen = torch.Generator().manual_seed(2)
    z = torch.stack(
        [torch.randn(4000, generator=gen), torch.empty(4000).exponential_(generator=gen)], -1
    )
    table = normality(z)
    assert list(table.index) == ["z0", "z1"]
    assert table.loc["z1", "skew"] > 1.5 and table.loc["z1", "ks"] > 0.2
    assert table.loc["z1", "ks_pvalue"] < 1e-10 and abs(table.loc["z0", "skew"]) < 0.2
    assert joint_normality(z)["mean_error"] > 0.5


def test_joint_normality_sees_correlation_that_marginals_miss():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(4000, generator=gen)
    z = torch.stack([a, 0.8 * a + 0.6 * torch.randn(4000, generator=gen)], -1)
    assert (normality(z)["ks_pvalue"] > 1e-3).all()
    assert joint_normality(z)["max_abs_corr"] > 0.7


@pytest.mark.parametrize(
    "z, match",
    [(torch.randn(10), "shape"), (torch.full((5, 2), float("nan")), "NaN")],
    ids=["1-d", "nan"],
)
def test_normality_rejects_bad_input(z, match):
    with pytest.raises(ValueError, match=match):
        normality(z)


def test_qq_figure_draws_the_worst_dimensions(tmp_path):
    pytest.importorskip("matplotlib")
    gen = torch.Generator().manual_seed(4)
    z = torch.randn(500, 20, generator=gen)
    z[:, 7] = z[:, 7].exp()  # the least Gaussian: drawn first
    fig = qq_figure(z, [f"c{i}" for i in range(20)], max_panels=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert len(titles) == 4 and titles[0].startswith("c7 ")
    path = save_figure(fig, tmp_path / "sub" / "qq.png")
    assert path.read_bytes()[:8] == PNG


def test_gaussianized_figure_written(tmp_path):
    pytest.importorskip("matplotlib")
    flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
    x = figure1(400, generator=torch.Generator().manual_seed(0))
    fig = gaussianized_figure(flow, x, true_log_prob=figure1_log_prob, resolution=20)
    assert len([ax for ax in fig.axes if ax.get_title()]) == 4
    assert save_figure(fig, tmp_path / "g.png").read_bytes()[:8] == PNG
    with pytest.raises(ValueError, match=r"\(N, 2\)"):
        gaussianized_figure(flow, torch.randn(10, 3))


def test_loss_figure(tmp_path):
    pytest.importorskip("matplotlib")
    fig = loss_figure([-3.0, -2.5, -2.4], [-2.9, -2.6, -2.7], best_epoch=1)
    lines = fig.axes[0].get_lines()
    assert np.allclose(lines[1].get_ydata(), [-2.9, -2.6, -2.7])
    assert save_figure(fig, tmp_path / "loss.png").read_bytes()[:8] == PNG


# --- calibration: the PIT of held-out targets -----------------------------------------------


def conditional_model_and_data(n=2000, features=1, seed=0):
    """A random conditional MAF whose location moves with the context, and rows drawn from it."""
    flow = randomize(arflows.MAF(features, context=1, transforms=2, hidden_features=(8,)))
    flow = flow.double().eval()
    gen = torch.Generator().manual_seed(seed)
    c = 3 * torch.randn(n, 1, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        torch.manual_seed(seed)
        y = flow(c).sample()
    return flow, y, c


def within(result, sigmas=4.0):
    """Whether every coverage is its nominal level up to ``sigmas`` standard errors."""
    return bool((np.abs(result.coverage - result.levels) < sigmas * result.coverage_se).all())


def test_a_correct_model_gives_uniform_pit_and_nominal_coverage():
    flow, y, c = conditional_model_and_data()
    u = pit(flow, y, c)
    result = calibration(u, ["y"])
    assert result.counts.shape == (1, 10) and result.counts.sum() == 2000
    assert result.ks_pvalue[0] > 1e-3 and within(result)
    assert np.abs(result.counts - 200).max() < 4 * 200**0.5
    # Rows scored against another row's context are not calibrated: the context is used.
    shuffled = calibration(pit(flow, y, c.roll(1, 0)))
    assert shuffled.ks_pvalue[0] < 1e-6


def test_too_narrow_and_biased_predictions_are_flagged():
    flow, y, c = conditional_model_and_data()
    lower, median, upper = quantiles(flow, [0.25, 0.5, 0.75], c).unbind(1)
    wide = median + 2 * (y - median)  # the model's scale is half the data's
    result = calibration(pit(flow, wide, c))
    assert (result.coverage[0] < result.levels - 0.15).all()  # intervals too narrow
    assert result.counts[0, 0] + result.counts[0, -1] > 2 * 2 * 200  # U-shaped histogram
    shifted = calibration(pit(flow, y + (upper - lower) / 2, c))  # half an IQR up
    assert shifted.counts[0, -1] > 2 * shifted.counts[0, 0]  # the data lie above the model


def test_pit_of_several_targets_by_draws():
    flow, y, c = conditional_model_and_data(n=600, features=2)
    u = pit(flow, y, c, samples=400, generator=torch.Generator().manual_seed(0))
    assert u.shape == (600, 2)
    result = calibration(u, ["a", "b"])
    assert (result.ks_pvalue > 1e-3).all() and within(result)
    assert list(result.table().columns) == ["ks", "ks_pvalue", "coverage_0.5", "coverage_0.8",
                                            "coverage_0.9", "coverage_0.95"]  # fmt: skip


def test_calibration_counts_by_hand():
    u = torch.tensor([[0.5], [0.01], [0.99], [0.3], [0.76]], dtype=torch.float64)
    result = calibration(u, levels=(0.5, 0.98), bins=4)
    assert result.coverage[0].tolist() == [0.4, 0.8]  # [0.25, 0.75] and [0.01, 0.99]
    assert result.counts[0].tolist() == [1, 1, 1, 2]
    summary = result.to_dict()
    assert summary["columns"]["z0"]["histogram"] == [1, 1, 1, 2]
    assert summary["levels"] == [0.5, 0.98] and len(summary["edges"]) == 5


@pytest.mark.parametrize(
    "u, kwargs, match",
    [
        (torch.full((5, 1), 1.5), {}, r"\[0, 1\]"),
        (torch.rand(5, 1), {"levels": (0.5, 1.0)}, "levels"),
        (torch.rand(5, 1), {"bins": 0}, "bins"),
        (torch.rand(5), {}, "shape"),
    ],
    ids=["outside", "level-1", "no-bins", "1-d"],
)
def test_calibration_rejects_bad_input(u, kwargs, match):
    with pytest.raises(ValueError, match=match):
        calibration(u, **kwargs)


def test_calibration_figure(tmp_path):
    pytest.importorskip("matplotlib")
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(500, 3, generator=gen, dtype=torch.float64)
    u[:, 1] = u[:, 1] ** 3  # the least uniform: drawn first
    fig = calibration_figure(calibration(u, ["a", "b", "c"]), max_panels=2)
    titles = [ax.get_title() for ax in fig.axes]
    assert len(titles) == 4 and titles[0].startswith("b: PIT")
    assert save_figure(fig, tmp_path / "calibration.png").read_bytes()[:8] == PNG
