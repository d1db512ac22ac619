"""``arflows predict`` (conditional quantiles and means) and ``diagnose``'s calibration."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

import arflows
from arflows.cli import main
from arflows.flows import cdf, quantiles
from arflows.io import load

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "2", "--hidden", "8", "8", "--transforms", "2", "--no-progress"]
QUANTILE_COLUMNS = ["a_q0.05", "a_q0.5", "a_q0.95"]
# The exact path's precision in the model's float32, through a CSV's decimals.
EXACT_ATOL = 1e-4


def write_csv(path, n=200, seed=0):
    gen = np.random.default_rng(seed)
    t = gen.uniform(-1, 1, size=n)
    a = 2 * t + 0.5 * gen.normal(size=n)
    k = gen.poisson(2 + t)
    pd.DataFrame({"t": t, "a": a, "k": k, "label": ["r"] * n}).to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and "error:" in lines[0]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A model of a | t (one target) and one of a, k | t (k on the integer grid)."""
    root = tmp_path_factory.mktemp("predict")
    data = write_csv(root / "data.csv")
    one, two = root / "one", root / "two"
    base = ["fit", data, "--context-columns", "t", *TINY]
    assert main([str(a) for a in [*base, "--columns", "a", "-o", one]]) == 0
    assert main([str(a) for a in [*base, "--columns", "a", "k", "-o", two]]) == 0
    return data, one, two


def contexts(data):
    return torch.tensor(pd.read_csv(data)[["t"]].to_numpy(), dtype=torch.float32)


def test_one_target_gets_the_exact_quantiles(models, tmp_path, capsys):
    data, one, _ = models
    out = tmp_path / "p.csv"
    code, text, _ = run(["predict", one, data, "-o", out], capsys)
    assert code == 0 and "predicted 200 rows" in text
    frame = pd.read_csv(out)
    assert list(frame.columns) == QUANTILE_COLUMNS and len(frame) == 200
    values = frame.to_numpy()
    assert (np.diff(values, axis=1) > 0).all()  # increasing in q, row by row
    flow = load(one).eval()
    c = contexts(data)
    expected = quantiles(flow, [0.05, 0.5, 0.95], c)[:, :, 0].numpy()
    assert np.allclose(values, expected, atol=EXACT_ATOL)
    # The model's CDF at a predicted quantile is its level.
    u = cdf(flow, torch.tensor(values[:, 1:2], dtype=torch.float32), c)
    assert np.allclose(u.numpy(), 0.5, atol=EXACT_ATOL)


def test_the_mean_and_chosen_quantiles_to_stdout(models, capsys):
    data, one, _ = models
    code, out, err = run(
        ["predict", one, data, "--quantiles", "0.25", "0.75", "--mean", "--samples", "500"],
        capsys,
    )
    assert code == 0 and "predicted 200 rows" in err
    lines = out.splitlines()
    assert lines[0] == "a_q0.25,a_q0.75,a_mean" and len(lines) == 201
    frame = pd.read_csv(pd.io.common.StringIO(out))
    # The mean of a near-Gaussian fit lies between its quartiles for nearly every row.
    inside = (frame["a_q0.25"] < frame["a_mean"]) & (frame["a_mean"] < frame["a_q0.75"])
    assert inside.mean() > 0.9
    code, out, _ = run(["predict", one, data, "--quantiles", "--mean"], capsys)
    assert code == 0 and out.splitlines()[0] == "a_mean"


@pytest.mark.parametrize("suffix", [".npy", ".parquet"])
def test_other_formats(models, tmp_path, suffix, capsys):
    data, one, _ = models
    out = tmp_path / f"p{suffix}"
    assert run(["predict", one, data, "--mean", "-o", out], capsys)[0] == 0
    if suffix == ".npy":
        values = np.load(out)
    else:
        frame = pd.read_parquet(out)
        assert list(frame.columns) == [*QUANTILE_COLUMNS, "a_mean"]
        values = frame.to_numpy()
    assert values.shape == (200, 4) and np.isfinite(values).all()


def test_contexts_by_position_from_npy(models, tmp_path, capsys):
    data, one, _ = models
    np.save(tmp_path / "c.npy", pd.read_csv(data)[["t"]].to_numpy()[:7])
    code, out, _ = run(["predict", one, tmp_path / "c.npy"], capsys)
    assert code == 0 and len(out.splitlines()) == 8


def test_several_targets_by_seeded_draws_on_their_grid(models, tmp_path, capsys):
    data, _, two = models
    argv = ["predict", two, data, "--mean", "--samples", "200"]
    first = run([*argv, "--seed", "1"], capsys)[1]
    assert first == run([*argv, "--seed", "1"], capsys)[1]
    assert first != run([*argv, "--seed", "2"], capsys)[1]
    frame = pd.read_csv(pd.io.common.StringIO(first))
    assert list(frame.columns) == [*QUANTILE_COLUMNS, "a_mean", "k_q0.05", "k_q0.5", "k_q0.95",
                                   "k_mean"]  # fmt: skip
    k = frame[["k_q0.05", "k_q0.5", "k_q0.95"]].to_numpy()
    assert np.array_equal(k, np.round(k)) and (np.diff(k, axis=1) >= 0).all()
    assert (np.diff(frame[QUANTILE_COLUMNS].to_numpy(), axis=1) > 0).all()
    continuous = run([*argv, "--seed", "1", "--continuous"], capsys)[1]
    k = pd.read_csv(pd.io.common.StringIO(continuous))["k_q0.5"].to_numpy()
    assert not np.array_equal(k, np.round(k))


def test_refusals(models, tmp_path, capsys):
    data, one, _ = models
    plain = tmp_path / "plain"
    arflows.save(arflows.MAF(1, transforms=1, hidden_features=(4,)), plain, columns=["a"])
    code, _, err = run(["predict", plain, data], capsys)
    assert code == 2 and one_line_error(err) and "unconditional" in err and "sample" in err
    pd.DataFrame({"u": [0.0, 1.0]}).to_csv(tmp_path / "other.csv", index=False)
    code, _, err = run(["predict", one, tmp_path / "other.csv"], capsys)
    assert code == 2 and one_line_error(err) and "context t" in err
    for bad in (["--quantiles", "0"], ["--quantiles", "1.5"], ["--quantiles", "x"],
                ["--quantiles"], ["--quantiles", "0.5", "0.5"], ["--samples", "0"]):  # fmt: skip
        code, _, err = run(["predict", one, data, *bad], capsys)
        assert code == 2 and one_line_error(err), bad


def test_an_existing_output_is_kept_without_force(models, tmp_path, capsys):
    data, one, _ = models
    out = tmp_path / "p.csv"
    out.write_text("mine\n")
    code, _, err = run(["predict", one, data, "-o", out], capsys)
    assert code != 0 and "--force" in err and out.read_text() == "mine\n"
    assert run(["predict", one, data, "-o", out, "--force"], capsys)[0] == 0
    assert pd.read_csv(out).shape == (200, 3)


def test_help_explains_the_command(capsys):
    code, out, _ = run(["predict", "--help"], capsys)
    assert code == 0 and "usage: arflows predict" in out and "examples:" in out
    assert "Monte Carlo" in out and "grid" in out


@pytest.mark.parametrize("which", ["one", "two"])
def test_diagnose_reports_the_calibration_of_a_conditional_model(models, tmp_path, which, capsys):
    data, one, two = models
    model, targets = (one, ["a"]) if which == "one" else (two, ["a", "k"])
    out = tmp_path / "d"
    argv = ["diagnose", model, data, "-o", out, "--samples", "200"]
    code, text, _ = run(argv, capsys)
    assert code == 0 and "calibration: PIT" in text and "coverage_0.9" in text
    report = json.loads((out / "diagnostics.json").read_text())
    assert "mean_error" in report  # the joint normality scores stay at the top
    result = report["calibration"]
    assert result["rows"] == 200 and result["levels"] == [0.5, 0.8, 0.9, 0.95]
    assert list(result["columns"]) == targets
    for column in result["columns"].values():
        assert sum(column["histogram"]) == 200 and len(column["coverage"]) == 4
        assert 0 <= column["ks"] <= 1 and 0 <= column["ks_pvalue"] <= 1
    table = pd.read_csv(out / "calibration.csv", index_col=0)
    assert list(table.index) == targets and "coverage_0.95" in table.columns
    assert (out / "calibration.png").read_bytes()[:8] == PNG
    # Refused over the files without --force; with it, the draws repeat (seeded).
    code, _, err = run(argv, capsys)
    assert code != 0 and "--force" in err
    if which == "two":
        assert run([*argv, "--force"], capsys)[0] == 0
        assert json.loads((out / "diagnostics.json").read_text())["calibration"] == result


def test_diagnose_without_data_calibrates_the_held_out_rows(models, capsys):
    _, one, _ = models
    code, text, _ = run(["diagnose", one], capsys)
    assert code == 0 and "calibration: PIT u = F(y | context) of 20 rows" in text
    assert (one / "diagnostics" / "calibration.png").is_file()
