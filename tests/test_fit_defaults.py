"""Density estimation by default (issue 13): the classical start, sizing, --auto, ties."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

import arflows
from arflows.io import load
from arflows.train import training_options
from arflows.train.sizing import model_warning

from .test_cli import run


def correlated_gaussian(n, d=5, seed=0):
    gen = np.random.default_rng(seed)
    a = gen.normal(size=(d, d))
    return gen.normal(size=(n, d)) @ a.T + gen.normal(size=d) * 3


def gaussian_test_log_likelihood(train, test):
    train, test = torch.as_tensor(train), torch.as_tensor(test)
    cov = torch.cov(train.T, correction=0)
    mvn = torch.distributions.MultivariateNormal(train.mean(0), cov)
    return mvn.log_prob(test).mean().item()


def test_default_fit_is_at_least_the_fitted_gaussian(tmp_path, capsys):
    x = correlated_gaussian(400)
    columns = [f"v{j}" for j in range(x.shape[1])]
    pd.DataFrame(x[:320], columns=columns).to_csv(tmp_path / "train.csv", index=False)
    pd.DataFrame(x[320:], columns=columns).to_csv(tmp_path / "test.csv", index=False)
    argv = ["fit", tmp_path / "train.csv", "--test-fraction", "0", "--no-progress"]
    assert run([*argv, "-o", tmp_path / "m"], capsys)[0] == 0
    assert (
        run(["score", tmp_path / "m", tmp_path / "test.csv", "-o", tmp_path / "s.csv"], capsys)[0]
        == 0
    )
    flow_score = pd.read_csv(tmp_path / "s.csv")["log_prob"].mean()
    # The Gaussian fitted to the same rows the flow saw (its own validation rows included).
    gaussian = gaussian_test_log_likelihood(x[:320], x[320:])
    assert flow_score >= gaussian - 0.1, (flow_score, gaussian)
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["history"]["start"]["base"] == "GaussianMixture"
    assert report["training"]["batch_size"] == 29  # a tenth of the 288 training rows


def test_the_start_is_kept_when_training_does_not_beat_it():
    x = torch.as_tensor(correlated_gaussian(300, d=3, seed=1), dtype=torch.float32)
    flow = arflows.MAF(3, transforms=1, hidden_features=(8,), base="gaussian")
    # A learning rate that only makes things worse: the start must survive.
    history = arflows.fit(flow, x, epochs=3, lr=1.0, progress=False, clip_grad=None)
    assert history.start is not None and history.start_valid is not None
    if history.best_epoch < 0:
        assert all(v <= history.start_valid for v in history.valid if math.isfinite(v))
    assert max([history.start_valid, *history.valid]) == pytest.approx(
        history.start_valid if history.best_epoch < 0 else history.valid[history.best_epoch]
    )


def test_flows_without_a_fitted_base_are_unaffected():
    x = torch.randn(200, 2)
    history = arflows.fit(arflows.MAF(2, transforms=1), x, epochs=2, progress=False)
    assert history.start is None and history.start_valid is None


def test_training_is_sized_in_steps():
    small, large = training_options(142, 13), training_options(100_000, 20)
    assert small.batch_size == 16 and large.batch_size == 256
    # About 4,000 steps and 400 steps of patience whatever the rows.
    for sized in (small, large):
        steps = sized.epochs * sized.steps_per_epoch
        assert 3_000 <= steps <= 8_000 or sized.epochs == 20
        assert sized.patience * sized.steps_per_epoch >= 400
    assert small.weight_decay > large.weight_decay
    assert model_warning(10, 20, 13) is not None  # fewer than 5 rows per column
    assert model_warning(1_000_000, 200, 2) is not None and model_warning(1000, 5000, 4) is None


def test_auto_writes_and_prints_the_candidates(tmp_path, capsys):
    pd.DataFrame(correlated_gaussian(250, d=3), columns=list("abc")).to_csv(
        tmp_path / "d.csv", index=False
    )
    argv = ["fit", tmp_path / "d.csv", "--auto", "--budget", "10", "--no-progress"]
    code, out, _ = run([*argv, "-o", tmp_path / "m"], capsys)
    assert code == 0
    table = pd.read_csv(tmp_path / "m" / "candidates.csv")
    assert list(table["candidate"]) == ["maf", "nsf", "maf-small", "maf-wide", "nsf-deep"]
    assert table["selected"].sum() == 1
    winner = table.loc[table["selected"], "candidate"].item()
    assert (
        f"selected: {winner}" in out
        and table["valid"].max() == table.loc[table["selected"], "valid"].item()
    )
    assert "## Candidates (--auto)" in (tmp_path / "m" / "report.md").read_text()
    assert load(tmp_path / "m").config["flow"] == table.loc[table["selected"], "flow"].item()
    code, _, err = run([*argv, "--valid-fraction", "0", "-o", tmp_path / "m2"], capsys)
    assert code == 2 and "--auto needs rows in memory" in err


def test_ties_and_point_masses_are_reported_and_grids_dequantized(tmp_path, capsys):
    gen = np.random.default_rng(0)
    n = 400
    frame = pd.DataFrame(
        {
            "income": 1000 * gen.integers(10, 60, n),  # a coarse grid: multiples of 1000
            "rating": 0.5 * gen.integers(0, 10, n),  # a grid of 0.5
            "rain": np.where(gen.uniform(size=n) < 0.6, 0.0, gen.exponential(size=n)),
            "z": gen.normal(size=n),
        }
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    argv = ["fit", tmp_path / "d.csv", "--epochs", "2", "--no-progress", "-o", tmp_path / "m"]
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "note: column 'rain' takes the value 0 in" in out
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert report["grid_steps"] == {"0": 1000.0, "1": 0.5}
    assert any("income" in note and "1000" in note for note in report["notes"])
    assert "## Notes on the data" in (tmp_path / "m" / "report.md").read_text()
    out_file = tmp_path / "s.csv"
    assert run(["sample", tmp_path / "m", "-n", "300", "-o", out_file], capsys)[0] == 0
    samples = pd.read_csv(out_file)
    assert np.allclose(samples["income"] % 1000, 0) and np.allclose(samples["rating"] % 0.5, 0)


def test_cross_validation_picks_the_training_length_and_refits(tmp_path, capsys):
    from arflows.train import fit_cv

    x = torch.as_tensor(correlated_gaussian(150, d=3, seed=2), dtype=torch.float32)

    def make():
        torch.manual_seed(0)
        return arflows.MAF(3, transforms=1, hidden_features=(8,), base="gaussian")

    flow, history, cv = fit_cv(make, x, folds=3, epochs=5, progress=False)
    assert len(cv["curve"]) == 6 and cv["curve"][cv["epochs"]] == max(cv["curve"])
    assert len(history.train) == cv["epochs"]  # refitted for exactly the chosen epochs
    with pytest.raises(ValueError, match="folds >= 2"):
        fit_cv(make, x, folds=1)
    pd.DataFrame(x.numpy(), columns=list("abc")).to_csv(tmp_path / "d.csv", index=False)
    argv = ["fit", tmp_path / "d.csv", "--folds", "3", "--epochs", "4", "--no-progress"]
    code, out, _ = run([*argv, "-o", tmp_path / "m"], capsys)
    assert code == 0 and "cross-validation (3 folds)" in out
    report = json.loads((tmp_path / "m" / "report.json").read_text())
    assert (
        report["cross_validation"]["folds"] == 3 and len(report["cross_validation"]["curve"]) == 5
    )


def test_bounds_check_the_cells_of_a_grid_column(tmp_path, capsys):
    gen = np.random.default_rng(0)
    share = 0.5 * gen.integers(0, 4, 300)  # values 0 .. 1.5, cells of width 0.5
    pd.DataFrame({"share": share, "z": gen.normal(size=300)}).to_csv(
        tmp_path / "d.csv", index=False
    )
    argv = ["fit", tmp_path / "d.csv", "--epochs", "1", "--no-progress"]
    # The top cell [1.5, 2) fits in (0, 2); it does not fit in (0, 1.9).
    assert run([*argv, "--bounds", "share=0:2", "-o", tmp_path / "a"], capsys)[0] == 0
    code, _, err = run([*argv, "--bounds", "share=0:1.9", "-o", tmp_path / "b"], capsys)
    assert code == 2 and "--bounds share" in err
