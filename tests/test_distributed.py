"""Data-parallel training: two processes under torchrun (gloo) against one process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import arflows
from arflows.cli import main

sys.path.insert(0, str(Path(__file__).parent / "scripts"))
from fit_ranks import data  # noqa: E402

SCRIPT = Path(__file__).parent / "scripts" / "fit_ranks.py"
SOURCES = ["tensor", "dataset", "parquet", "actnorm", "loader", "uneven", "mismatch"]
pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available(), reason="torch.distributed is not available"
)


def environment():
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(arflows.__file__).parents[1]), str(SCRIPT.parent), env.get("PYTHONPATH", "")]
    )
    return env


def launch(args, processes, cwd):
    """Runs ``args`` under torchrun with ``processes`` processes (plain python for 1)."""
    runner = [sys.executable]
    if processes > 1:
        runner += ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    # A hang (a collective that one process never reaches) fails the test instead of CI.
    return subprocess.run(
        runner + args, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=300
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The script on every source, once with one process and once with two."""
    out = {}
    for processes in (1, 2):
        folder = tmp_path_factory.mktemp(f"world{processes}")
        x, c = data()
        frame = pd.DataFrame({"a": x[:, 0].numpy(), "b": x[:, 1].numpy(), "t": c[:, 0].numpy()})
        frame.to_parquet(folder / "data.parquet", row_group_size=70)
        done = launch([str(SCRIPT), str(folder), *SOURCES], processes, folder)
        assert done.returncode == 0, done.stderr[-3000:]
        out[processes] = folder
    return out


def result(folder, source, rank):
    record = json.loads((folder / f"{source}-rank{rank}.json").read_text())
    path = folder / f"{source}-rank{rank}.safetensors"
    return record, (load_file(path) if path.exists() else None)


@pytest.mark.parametrize("source", ["tensor", "dataset", "parquet", "actnorm"])
def test_two_processes_follow_one_process_on_the_combined_batch(runs, source):
    one, one_weights = result(runs[1], source, 0)
    first, weights0 = result(runs[2], source, 0)
    second, weights1 = result(runs[2], source, 1)
    assert first["size"] == second["size"] == 2 and one["size"] == 1
    # Identical weights on both ranks, bit for bit.
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    assert first["train"] == second["train"] and first["valid"] == second["valid"]
    # The same path as one process (float64: only summation order differs).
    for k in one_weights:
        assert torch.allclose(weights0[k], one_weights[k], rtol=0, atol=1e-9), k
    assert np.allclose(first["train"], one["train"], rtol=0, atol=1e-10)
    assert np.allclose(first["valid"], one["valid"], rtol=0, atol=1e-10)
    assert one["valid"][-1] > one["valid"][0]  # it trained


@pytest.mark.parametrize("source", ["loader", "uneven"])
def test_each_process_iterates_its_own_loader_and_they_stay_in_step(runs, source):
    first, weights0 = result(runs[2], source, 0)
    second, weights1 = result(runs[2], source, 1)
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)
    assert first["train"] == second["train"] and len(first["train"]) == 4
    assert np.isfinite(first["train"]).all()


def test_processes_given_different_rows_are_refused_not_deadlocked(runs):
    for rank in (0, 1):
        record, weights = result(runs[2], "mismatch", rank)
        assert weights is None
        assert "every process of a distributed fit needs the same data" in record["error"]
    assert "error" not in result(runs[1], "mismatch", 0)[0]


def test_fit_refuses_distributed_without_a_process_group():
    with pytest.raises(ValueError, match="process group"):
        arflows.fit(arflows.MAF(2, transforms=1), torch.randn(10, 2), distributed=True)


def test_cli_under_torchrun_trains_like_one_process_and_rank_0_writes(tmp_path):
    g = np.random.default_rng(0)
    t = g.normal(size=600)
    frame = pd.DataFrame({"a": g.normal(size=600) + t, "b": g.integers(0, 5, 600), "t": t})
    frame.to_csv(tmp_path / "d.csv", index=False)
    args = ["fit", "d.csv", "--context-columns", "t", "--epochs", "3", "--hidden", "16"]
    args += ["--transforms", "2", "--batch-size", "64", "--no-progress"]
    done = launch(["-m", "arflows", *args, "-o", "two"], 2, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    # One process printed, rank 0 wrote the model and nothing else was left behind.
    assert done.stdout.count("model: two") == 1 and "processes: 2" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv", "two"]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main([*args, "-o", "one"]) == 0
    finally:
        os.chdir(cwd)
    two = json.loads((tmp_path / "two" / "report.json").read_text())
    one = json.loads((tmp_path / "one" / "report.json").read_text())
    for split in ("train", "valid", "test"):
        assert two["scores"][split] == pytest.approx(one["scores"][split], abs=1e-4)
    assert np.allclose(two["history"]["train"], one["history"]["train"], atol=1e-4)
