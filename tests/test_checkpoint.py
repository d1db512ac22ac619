"""Checkpoints of :func:`arflows.fit`: atomic files, resume, bit-identical results."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import arflows
import arflows.train
from arflows.io import load
from arflows.train import fit
from arflows.train.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from tests.helpers import keep_checkpoint_copies


def test_write_and_read_round_trip_nested_state(tmp_path):
    state = {
        "opt": {"state": {0: {"step": torch.tensor(3.0), "m": torch.randn(2, 3)}}},
        "groups": [{"betas": (0.9, 0.999), "lr": 1e-3, "fused": None, "params": [0, 1]}],
        "score": -float("inf"),
        "rng": torch.Generator().manual_seed(1).get_state(),
        "name": "x",
        "flag": True,
    }
    path = write_checkpoint(tmp_path / "a" / "c.safetensors", state)
    back = read_checkpoint(path)
    assert back["opt"]["state"][0]["m"].equal(state["opt"]["state"][0]["m"])
    assert back["groups"] == state["groups"] and back["score"] == -float("inf")
    assert back["rng"].equal(state["rng"]) and back["name"] == "x" and back["flag"] is True
    assert [p.name for p in path.parent.iterdir()] == ["c.safetensors"]  # no temp file left


def test_bad_values_and_files_are_refused(tmp_path):
    with pytest.raises(TypeError, match="set"):
        write_checkpoint(tmp_path / "c", {"a": {1, 2}})
    (tmp_path / "junk").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk"):
        read_checkpoint(tmp_path / "junk")
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "missing")


def data(n=120, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(n, 1, generator=g)
    return torch.cat([a, a**2 / 2 + torch.randn(n, 1, generator=g)], 1)


def new_flow():
    torch.manual_seed(0)
    return arflows.MAF(2, transforms=2, hidden_features=(8, 8))


OPTIONS = dict(epochs=5, batch_size=32, patience=None, progress=False, seed=3, dequantize=[1])


def weights(flow):
    return {k: v.clone() for k, v in flow.state_dict().items()}


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference():
    flow = new_flow()
    history = fit(flow, data(), **OPTIONS)
    return weights(flow), history


class Killed(Exception):
    pass


@pytest.mark.parametrize("schedule", ["cosine", "plateau"])
def test_resume_after_an_epoch_gives_the_same_weights_and_history(tmp_path, schedule):
    ckpt = tmp_path / "c.safetensors"
    options = OPTIONS | {"schedule": schedule}
    ref = new_flow()
    ref_history = fit(ref, data(), **options)

    def kill(epoch, history, flow):
        if epoch == 2:
            raise Killed

    with pytest.raises(Killed):
        fit(new_flow(), data(), checkpoint=ckpt, callbacks=[kill], **options)
    assert read_checkpoint(ckpt)["epoch"] == 2  # epochs 0 and 1 were saved
    flow = new_flow()
    history = fit(flow, data(), checkpoint=ckpt, resume=True, **options)
    assert same(weights(flow), weights(ref))
    assert history.train == ref_history.train and history.valid == ref_history.valid
    assert history.lr == ref_history.lr and history.best_epoch == ref_history.best_epoch
    assert read_checkpoint(ckpt)["finished"]


def test_resume_mid_epoch_from_a_step_checkpoint(tmp_path, monkeypatch, reference):
    ckpt = tmp_path / "c.safetensors"
    copies = keep_checkpoint_copies(monkeypatch, tmp_path)
    fit(new_flow(), data(), checkpoint=ckpt, checkpoint_every=2, **OPTIONS)
    # 4 steps per epoch (108 training rows, batches of 32): some copies are mid-epoch.
    mid = [p for p in copies if read_checkpoint(p)["step"] != 0]
    assert len(mid) >= 3
    monkeypatch.undo()
    for path in (mid[0], mid[len(mid) // 2]):
        flow = new_flow()
        history = fit(flow, data(), checkpoint=path, resume=True, **OPTIONS)
        assert same(weights(flow), reference[0])
        assert history.train == reference[1].train and history.lr == reference[1].lr


def test_resume_without_a_file_starts_afresh_and_mismatches_are_refused(tmp_path, reference):
    ckpt = tmp_path / "c.safetensors"
    flow = new_flow()
    fit(flow, data(), checkpoint=ckpt, resume=True, **OPTIONS)
    assert same(weights(flow), reference[0])
    with pytest.raises(ValueError, match="cannot resume"):
        fit(new_flow(), data(), checkpoint=ckpt, resume=True, **OPTIONS | {"batch_size": 16})
    with pytest.raises(ValueError, match="resume"):
        fit(new_flow(), data(), resume=True, **OPTIONS)
    with pytest.raises(ValueError, match="checkpoint_every"):
        fit(new_flow(), data(), checkpoint=ckpt, checkpoint_every=0, **OPTIONS)


def test_same_seed_gives_bit_identical_weights_and_history(reference):
    flow = new_flow()
    history = fit(flow, data(), **OPTIONS)
    assert same(weights(flow), reference[0]) and history.train == reference[1].train
    other = new_flow()
    fit(other, data(), **OPTIONS | {"seed": 4})
    assert not same(weights(other), reference[0])


SLOW_FIT = """
import sys, time
import arflows.train.step
from arflows.cli import main

# Slow epochs, so that the kill lands in the middle of the fit.
epoch = arflows.train.step.Step.epoch
def slow(self, *args, **kwargs):
    time.sleep(0.4)
    return epoch(self, *args, **kwargs)
arflows.train.step.Step.epoch = slow
sys.exit(main(sys.argv[1:]))
"""


def test_cli_fit_killed_with_sigkill_resumes_to_the_same_model(tmp_path):
    rows = data(300).numpy()
    (tmp_path / "data.csv").write_text(
        "a,b\n" + "\n".join(f"{a!r},{b!r}" for a, b in rows.tolist()) + "\n"
    )
    argv = ["fit", str(tmp_path / "data.csv"), "--epochs", "8", "--hidden", "8", "8"]
    argv += ["--transforms", "2", "--patience", "100", "--no-progress"]
    # Threads fixed: the same reductions in the killed, resumed and uninterrupted runs.
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [os.path.dirname(os.path.dirname(arflows.__file__)), env.get("PYTHONPATH", "")]
    )
    model = tmp_path / "model"
    checkpoint = tmp_path / "model.partial" / "checkpoint.safetensors"
    process = subprocess.Popen(
        [sys.executable, "-c", SLOW_FIT, *argv, "-o", str(model)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (checkpoint.is_file() and read_checkpoint(checkpoint)["epoch"] >= 2):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "no checkpoint after 60 s"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        process.kill()
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    assert not model.exists()  # nothing half-written where the model goes
    assert 2 <= read_checkpoint(checkpoint)["epoch"] < 8

    resumed = subprocess.run(
        [sys.executable, "-m", "arflows", *argv, "-o", str(model), "--resume"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stdout
    report = json.loads((model / "report.json").read_text())
    assert len(report["history"]["train"]) == 8 and not report["history"]["stopped_early"]
    assert not checkpoint.parent.exists()  # cleaned up once the model is in place

    whole = subprocess.run(
        [sys.executable, "-m", "arflows", *argv, "-o", str(tmp_path / "whole")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert whole.returncode == 0, whole.stderr
    a, b = load(model).state_dict(), load(tmp_path / "whole").state_dict()
    assert same(a, b)
    expected = json.loads((tmp_path / "whole" / "report.json").read_text())["history"]
    assert report["history"]["train"] == expected["train"]
    assert report["history"]["valid"] == expected["valid"]
