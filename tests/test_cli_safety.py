"""The command line never loses a user's file, and its small conveniences (issue 15)."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

import arflows
from arflows.cli import main
from arflows.io import load

from .test_cli import TINY, run, write_csv


def snapshot(path: pathlib.Path) -> dict:
    """Every file under ``path`` (or the file itself) with its bytes."""
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {
        str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    data = write_csv(root / "data.csv")
    model = root / "model"
    assert main(["fit", str(data), "--columns", "a", "b", *TINY, "-o", str(model)]) == 0
    return data, model


def test_score_refuses_to_overwrite_its_own_input(fitted, tmp_path, capsys):
    data, model = fitted
    victim = tmp_path / "victim.csv"
    victim.write_bytes(data.read_bytes())
    before = victim.read_bytes()
    code, _, err = run(["score", model, victim, "-o", victim], capsys)
    assert code == 2 and "exists" in err and "--force" in err
    assert victim.read_bytes() == before
    code, _, _ = run(["score", model, victim, "-o", victim, "--force"], capsys)
    assert code == 0 and list(pd.read_csv(victim).columns) == ["log_prob"]


@pytest.mark.parametrize("suffix", [".csv", ".npy", ".parquet"])
def test_sample_refuses_to_overwrite_data(fitted, tmp_path, suffix, capsys):
    _, model = fitted
    target = tmp_path / f"data{suffix}"
    target.write_bytes(b"precious rows\n" * 200)
    code, _, err = run(["sample", model, "-n", "5", "-o", target], capsys)
    assert code == 2 and f"{target} exists; add --force" in err
    assert target.read_bytes() == b"precious rows\n" * 200
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]  # no leftovers


def test_a_failed_write_leaves_the_old_file_whole(fitted, tmp_path, capsys, monkeypatch):
    _, model = fitted
    target = tmp_path / "samples.csv"
    target.write_text("a,b\n1,2\n")

    def full_disk(self, file, *args, **kwargs):
        file.write(b"a,b\n0.5")  # a partial write, then the disk is full
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pd.DataFrame, "to_csv", full_disk)
    code, _, err = run(["sample", model, "-n", "5", "-o", target, "--force"], capsys)
    assert code == 1 and "No space left" in err
    assert target.read_text() == "a,b\n1,2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["samples.csv"]


def test_fit_refuses_to_replace_a_model_unless_asked(fitted, tmp_path, capsys):
    data, model = fitted
    mine = tmp_path / "model"
    assert run(["fit", data, "--columns", "a", "b", *TINY, "-o", mine], capsys)[0] == 0
    before = snapshot(mine)
    argv = ["fit", data, "--columns", "a", *TINY, "-o", mine]
    code, out, err = run(argv, capsys)
    assert code == 2 and f"a model is already in {mine}; add --force" in err
    assert "average log-likelihood" not in out  # refused before any training
    assert snapshot(mine) == before
    assert run([*argv, "--force"], capsys)[0] == 0
    assert load(mine).columns == ["a"]


def test_fit_into_a_folder_of_other_files_is_refused_even_with_force(fitted, tmp_path, capsys):
    data, _ = fitted
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, err = run(["fit", data, *TINY, "--force", "-o", tmp_path], capsys)
    assert code == 2 and "not an arflows model" in err
    assert (tmp_path / "notes.txt").read_text() == "keep me"
    file = tmp_path / "notes.txt"
    code, _, err = run(["fit", data, *TINY, "--force", "-o", file], capsys)
    assert code == 2 and "it is a file" in err and file.read_text() == "keep me"


def test_an_interrupted_fit_is_not_restarted_over_without_asking(fitted, tmp_path, capsys):
    data, _ = fitted
    partial = tmp_path / "m.partial"
    partial.mkdir()
    (partial / "checkpoint.safetensors").write_bytes(b"an old checkpoint")
    code, _, err = run(["fit", data, *TINY, "-o", tmp_path / "m"], capsys)
    assert code == 2 and "--resume" in err and "--force" in err
    assert (partial / "checkpoint.safetensors").read_bytes() == b"an old checkpoint"
    assert run(["fit", data, *TINY, "--force", "-o", tmp_path / "m"], capsys)[0] == 0
    assert not partial.exists()


def test_dash_and_devices_are_written_in_place(fitted, capsys):
    _, model = fitted
    code, out, _ = run(["sample", model, "-n", "4", "--seed", "0", "-o", "-"], capsys)
    assert code == 0 and out.splitlines()[0] == "a,b" and len(out.splitlines()) == 5
    if os.path.exists(os.devnull):
        code, out, err = run(["sample", model, "-n", "4", "-o", os.devnull], capsys)
        assert code == 0 and "unknown format" not in err
        assert run(["score", model, fitted[0], "-o", os.devnull], capsys)[0] == 0


def test_unknown_output_format_is_refused_before_sampling(fitted, tmp_path, capsys):
    _, model = fitted
    code, _, err = run(["sample", model, "-n", "4", "-o", tmp_path / "s.txt"], capsys)
    assert code == 2 and "unknown format '.txt'" in err and not (tmp_path / "s.txt").exists()


def test_a_closed_pipe_ends_quietly(fitted):
    _, model = fitted
    shell = f"{sys.executable} -m arflows sample {model} -n 100000 | head -2"
    result = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell], capture_output=True, text=True, timeout=120
    )
    assert result.stdout.splitlines()[0] == "a,b" and len(result.stdout.splitlines()) == 2
    assert result.stderr == "" and result.returncode == 0


def test_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"arflows {arflows.__version__}"


def test_fractions_that_add_up_to_one_or_more_say_so(fitted, tmp_path, capsys):
    data, _ = fitted
    argv = ["fit", data, "--valid-fraction", "0.95", "--test-fraction", "0.1", *TINY]
    code, _, err = run([*argv, "-o", tmp_path / "m"], capsys)
    assert code == 2 and "add up to 1.05" in err and "too few rows" not in err


def test_bounds_keep_samples_inside(tmp_path, capsys):
    gen = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "income": gen.lognormal(0, 1, 400),
            "share": gen.beta(2, 5, 400),
            "z": gen.normal(size=400),
        }
    )
    frame.to_csv(tmp_path / "d.csv", index=False)
    argv = ["fit", tmp_path / "d.csv", "--bounds", "income=0:", "share=0:1", *TINY]
    assert run([*argv, "-o", tmp_path / "m"], capsys)[0] == 0
    support = load(tmp_path / "m").config["arguments"]["support"]
    assert support[0][0] == 0 and support[1] == [0, 1] and support[2] is None
    out = tmp_path / "s.csv"
    assert run(["sample", tmp_path / "m", "-n", "2000", "--seed", "0", "-o", out], capsys)[0] == 0
    samples = pd.read_csv(out)
    assert (samples["income"] > 0).all()
    assert ((samples["share"] > 0) & (samples["share"] < 1)).all()


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (["z=0:"], "lie on or outside the open interval (0, inf)"),
        (["nope=0:"], "not a data column"),
        (["z=1:0"], "expected LOW < HIGH"),
        (["z=:"], "at least one numeric bound"),
        (["z0:1"], "expected COLUMN=LOW:HIGH"),
    ],
)
def test_bad_bounds_are_refused(tmp_path, bounds, message, capsys):
    pd.DataFrame({"z": np.linspace(-1, 1, 50), "w": np.linspace(0, 1, 50) ** 2}).to_csv(
        tmp_path / "d.csv", index=False
    )
    code, _, err = run(["fit", tmp_path / "d.csv", "--bounds", *bounds, *TINY], capsys)
    assert code == 2 and message in err and not (tmp_path / "model").exists()


def test_diagnose_without_data_uses_the_recorded_test_rows(fitted, tmp_path, capsys):
    data, _ = fitted
    mine, copy = tmp_path / "m", tmp_path / "data.csv"
    copy.write_bytes(data.read_bytes())
    assert run(["fit", copy, "--columns", "a", "b", *TINY, "-o", mine], capsys)[0] == 0
    code, out, _ = run(["diagnose", mine], capsys)
    assert code == 0 and f"on 30 held-out test rows of {copy.resolve()}" in out
    # Run again: the diagnostics written the first time are not replaced without --force.
    before = snapshot(mine / "diagnostics")
    code, _, err = run(["diagnose", mine], capsys)
    assert code == 2 and "exists; add --force" in err and snapshot(mine / "diagnostics") == before
    assert run(["diagnose", mine, "--force"], capsys)[0] == 0
    copy.write_text(copy.read_text() + "0.1,0.2,r\n")  # the file changed: rows unknown
    code, _, err = run(["diagnose", mine, "-o", tmp_path / "d2"], capsys)
    assert code == 2 and "changed since" in err and "give DATA" in err
    report = json.loads((mine / "report.json").read_text())
    assert report["split"] == {
        "valid_fraction": 0.1,
        "test_fraction": 0.1,
        "seed": 0,
        "stream": False,
    }


def test_demo_refuses_to_replace_figures_before_fitting(tmp_path, capsys):
    (tmp_path / "figure1.png").write_bytes(b"my figure")
    code, out, err = run(["demo", "--points", "200", "--epochs", "1", "-o", tmp_path], capsys)
    assert code == 2 and "figure1.png exists; add --force" in err and "fitting" not in out
    assert (tmp_path / "figure1.png").read_bytes() == b"my figure"
