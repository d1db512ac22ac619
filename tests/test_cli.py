import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

import arflows
import arflows.cli
from arflows.cli import main
from arflows.io import load

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--epochs", "2", "--hidden", "8", "8", "--transforms", "2", "--no-progress"]


def write_csv(path, n=300, seed=0, context=False, integer=False):
    gen = np.random.default_rng(seed)
    a = gen.normal(size=n)
    frame = {"a": a, "b": a**2 / 2 + gen.normal(size=n), "label": ["r"] * n}
    if context:
        frame["t"] = gen.uniform(-1, 1, size=n)
    if integer:
        frame["k"] = gen.integers(0, 5, size=n)
    pd.DataFrame(frame).to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err):
    lines = err.strip().splitlines()
    return len(lines) == 1 and "error:" in lines[0]


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A tiny unconditional model of columns a, b (fit once per module)."""
    root = tmp_path_factory.mktemp("fitted")
    data = write_csv(root / "data.csv")
    model = root / "model"
    assert main(["fit", str(data), "--columns", "a", "b", *TINY, "-o", str(model)]) == 0
    return data, model


def test_fit_prints_scores_and_writes_the_model_and_report(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv")
    code, out, _ = run(["fit", data, "--columns", "a", "b", *TINY, "-o", tmp_path / "m"], capsys)
    assert code == 0
    line = next(x for x in out.splitlines() if x.startswith("average log-likelihood"))
    assert "train -" in line and "valid -" in line and "test -" in line
    model = tmp_path / "m"
    for name in ("config.json", "model.safetensors", "report.json", "report.md"):
        assert (model / name).is_file(), name
    assert (model / "loss.png").read_bytes()[:8] == PNG
    report = json.loads((model / "report.json").read_text())
    assert report["rows"] == {"train": 240, "valid": 30, "test": 30}
    assert all(np.isfinite(report["scores"][k]) for k in ("train", "valid", "test"))
    assert len(report["history"]["train"]) == 2 and report["flow"]["flow"] == "MAF"
    assert "| test | 30 |" in (model / "report.md").read_text()
    flow = load(model)
    assert flow.columns == ["a", "b"] and flow.metadata["scores"] == report["scores"]


def test_fit_without_data_uses_the_builtin_figure1(tmp_path, capsys):
    code, out, _ = run(["fit", "--points", "400", *TINY, "-o", tmp_path / "m"], capsys)
    assert code == 0 and "figure1" in out
    assert load(tmp_path / "m").metadata["dataset"] == "figure1"
    code, out, _ = run(["diagnose", tmp_path / "m"], capsys)  # fresh rows of figure1
    assert code == 0 and "ks_pvalue" in out
    assert (tmp_path / "m" / "diagnostics" / "gaussianized.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_sample_writes_the_model_columns(fitted, tmp_path, suffix, capsys):
    _, model = fitted
    out = tmp_path / f"s{suffix}"
    code, _, _ = run(["sample", model, "-n", "25", "--seed", "1", "-o", out], capsys)
    assert code == 0
    if suffix == ".npy":
        values = np.load(out)
    else:
        frame = pd.read_csv(out) if suffix == ".csv" else pd.read_parquet(out)
        assert list(frame.columns) == ["a", "b"]
        values = frame.to_numpy()
    assert values.shape == (25, 2) and np.isfinite(values).all()


def test_sample_to_stdout_is_seeded(fitted, capsys):
    _, model = fitted
    first = run(["sample", model, "-n", "5", "--seed", "3"], capsys)[1]
    again = run(["sample", model, "-n", "5", "--seed", "3"], capsys)[1]
    other = run(["sample", model, "-n", "5", "--seed", "4"], capsys)[1]
    assert first.splitlines()[0] == "a,b" and len(first.splitlines()) == 6
    assert first == again and first != other


def test_score_matches_the_model_log_density(fitted, tmp_path, capsys):
    data, model = fitted
    code, out, _ = run(["score", model, data, "-o", tmp_path / "scores.csv"], capsys)
    assert code == 0 and "scored 300 rows" in out
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert list(scores.columns) == ["log_prob"] and len(scores) == 300
    flow = load(model)
    x = torch.tensor(pd.read_csv(data)[["a", "b"]].to_numpy(), dtype=torch.float32)
    with torch.no_grad():
        expected = flow().log_prob(x).numpy()
    assert np.allclose(scores["log_prob"].to_numpy(), expected, atol=1e-4)


def test_score_with_wrong_dimensions_names_both(fitted, tmp_path, capsys):
    _, model = fitted
    np.save(tmp_path / "three.npy", np.zeros((10, 3)))
    code, _, err = run(["score", model, tmp_path / "three.npy"], capsys)
    assert code == 2 and one_line_error(err)
    assert "3 data" in err and "a, b" in err
    pd.DataFrame({"a": [0.0], "z": [1.0]}).to_csv(tmp_path / "other.csv", index=False)
    code, _, err = run(["score", model, tmp_path / "other.csv"], capsys)
    assert code == 2 and one_line_error(err) and "a, b" in err


def test_diagnose_writes_table_and_figures(fitted, tmp_path, capsys):
    data, model = fitted
    code, out, _ = run(["diagnose", model, data, "-o", tmp_path / "d"], capsys)
    assert code == 0 and "kurtosis" in out and "joint:" in out
    table = pd.read_csv(tmp_path / "d" / "normality.csv", index_col=0)
    assert list(table.index) == ["a", "b"] and (table["ks"] > 0).all()
    for name in ("qq.png", "gaussianized.png"):
        assert (tmp_path / "d" / name).read_bytes()[:8] == PNG


def test_conditional_fit_and_sample(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", context=True)
    model = tmp_path / "m"
    argv = ["fit", data, "--columns", "a", "b", "--context-columns", "t", *TINY, "-o", model]
    assert run(argv, capsys)[0] == 0
    code, _, _ = run(
        ["sample", model, "-n", "4", "--context", "0.5", "-o", tmp_path / "s.csv"], capsys
    )
    frame = pd.read_csv(tmp_path / "s.csv")
    assert code == 0 and list(frame.columns) == ["t", "a", "b"] and (frame["t"] == 0.5).all()
    pd.DataFrame({"t": [-0.5, 0.25, 0.75]}).to_csv(tmp_path / "ctx.csv", index=False)
    argv = ["sample", model, "-n", "4", "--context-file", tmp_path / "ctx.csv"]
    code, out, _ = run([*argv, "-o", tmp_path / "s2.csv"], capsys)
    frame = pd.read_csv(tmp_path / "s2.csv")
    assert code == 0 and len(frame) == 12 and list(frame["t"][::4]) == [-0.5, 0.25, 0.75]
    assert run(["score", model, data], capsys)[0] == 0
    for bad in (["sample", model, "-n", "3"], ["sample", model, "-n", "3", "--context", "1", "2"]):
        code, _, err = run(bad, capsys)
        assert code == 2 and one_line_error(err) and "t" in err


def test_integer_columns_are_dequantized_and_sampled_as_integers(tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", integer=True)
    model = tmp_path / "m"
    assert run(["fit", data, "--columns", "a", "k", *TINY, "-o", model], capsys)[0] == 0
    assert load(model).metadata["dequantized_columns"] == [1]
    assert run(["sample", model, "-n", "50", "-o", tmp_path / "s.csv"], capsys)[0] == 0
    k = pd.read_csv(tmp_path / "s.csv")["k"].to_numpy()
    assert np.array_equal(k, np.round(k))
    one, many = tmp_path / "one.csv", tmp_path / "many.csv"
    assert run(["score", model, data, "-o", one], capsys)[0] == 0
    assert run(["score", model, data, "--draws", "50", "-o", many], capsys)[0] == 0
    one, many = pd.read_csv(one)["log_prob"], pd.read_csv(many)["log_prob"]
    assert many.mean() > one.mean()  # Jensen: log E p(k + u) >= E log p(k + u)
    argv = ["fit", data, "--columns", "a", "k", "--dequantize", "none", *TINY, "--force"]
    argv += ["-o", model]
    assert run(argv, capsys)[0] == 0
    assert load(model).metadata["dequantized_columns"] == []


@pytest.mark.parametrize("flow", ["iaf", "nsf", "realnvp"])
def test_fit_other_flows(flow, tmp_path, capsys):
    data = write_csv(tmp_path / "data.csv", n=120)
    extra = ["--bins", "4"] if flow == "nsf" else []
    argv = ["fit", data, "--columns", "a", "b", "--flow", flow, *extra, *TINY]
    code, _, err = run([*argv, "-o", tmp_path / "m"], capsys)
    if flow == "realnvp" and not hasattr(arflows.flows, "RealNVP"):
        assert code == 2 and "available: " in err and "maf" in err
        return
    assert code == 0, err
    assert load(tmp_path / "m").config["flow"].lower() == flow


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["nope"],
        ["fit", "--epochs", "0"],
        ["fit", "--bogus"],
        ["fit", "--valid-fraction", "1.5"],
        ["fit", "--flow", "nope"],
        ["fit", "--flow", "maf", "--bins", "4", "--points", "50"],
        ["fit", "missing.csv"],
        ["fit", "x.csv", "--dataset", "moons"],
        ["sample", "m"],
        ["sample", "no-such-model", "-n", "3"],
        ["score", "no-such-model", "x.csv"],
        ["diagnose"],
    ],
    ids=" ".join,
)
def test_bad_arguments_give_one_line_and_exit_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(argv, capsys)
    assert code == 2 and one_line_error(err), err
    assert "Traceback" not in err


def test_runtime_failures_exit_1(tmp_path, capsys, monkeypatch):
    def diverge(*args, **kwargs):
        raise FloatingPointError("the loss became nan at epoch 0, step 3")

    monkeypatch.setattr(arflows.cli.fit, "fit", diverge)
    code, _, err = run(["fit", "--points", "400", "-o", tmp_path / "m"], capsys)
    assert code == 1 and one_line_error(err) and "epoch 0, step 3" in err
    assert not (tmp_path / "m").exists()  # nothing saved after a failed fit


@pytest.mark.parametrize("command", ["fit", "sample", "score", "diagnose", "demo"])
def test_every_command_has_help(command, capsys):
    code, out, _ = run([command, "--help"], capsys)
    assert code == 0 and f"usage: arflows {command}" in out and "examples:" in out
    assert len(out.split()) > 60  # an explanation, not just the usage line


def test_demo_runs_and_writes_figures(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--points", "500", "--epochs", "2", "-o", str(out), "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "held-out average log-likelihood" in text and "exact average log-likelihood" in text
    for name in ("figure1.png", "gaussianized.png"):
        assert (out / name).read_bytes()[:8] == PNG


def test_subprocess_fit_then_sample(tmp_path):
    write_csv(tmp_path / "data.csv", n=200)
    root = pathlib.Path(arflows.__file__).parent.parent
    env = dict(os.environ, PYTHONPATH=str(root))
    fit = subprocess.run(
        [sys.executable, "-m", "arflows", "fit", "data.csv", "--columns", "a", "b", *TINY],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert fit.returncode == 0, fit.stderr
    assert "average log-likelihood" in fit.stdout and (tmp_path / "model" / "config.json").exists()
    sample = subprocess.run(
        [sys.executable, "-m", "arflows", "sample", "model", "-n", "7", "-o", "s.npy"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert sample.returncode == 0, sample.stderr
    assert np.load(tmp_path / "s.npy").shape == (7, 2)
    bad = subprocess.run(
        [sys.executable, "-m", "arflows", "sample", "model"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert bad.returncode == 2 and one_line_error(bad.stderr)
