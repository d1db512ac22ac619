"""The GPU path, run with ``pytest -m cuda`` on a machine with an NVIDIA GPU.

Every test here carries the ``cuda`` marker and is skipped without CUDA (CI has no GPU).
The device logic that needs no GPU is tested in ``test_devices.py``.
"""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import arflows
from arflows import MAF, NSF
from arflows.cli import main
from arflows.flows import fit_gaussian_mixture, log_prob
from arflows.nn import MADE
from arflows.train import fit

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU (CUDA)"),
]

DEVICE = torch.device("cuda", 0)
QUIET = dict(progress=False)
FAMILIES = {"maf": MAF, "nsf": NSF}


def rows(n=600, features=2, seed=0):
    """A bent, correlated table on the CPU (fit moves it to the flow's device)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    x[:, -1] += 0.5 * x[:, 0] ** 2
    return x


def perturbed(flow, scale=0.3, seed=0):
    """``flow`` with random weights: flows start at the identity, where inverses are trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype).to(p.device))
    return flow


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_on_the_gpu_trains_and_scores_as_on_the_cpu(family):
    torch.manual_seed(0)
    flow = FAMILIES[family](2, transforms=2, hidden_features=(32, 32)).to(DEVICE)
    history = fit(flow, rows(), epochs=6, batch_size=64, lr=3e-3, **QUIET)
    assert {p.device for p in flow.parameters()} == {DEVICE}
    assert history.stopped_nonfinite is None and history.valid[-1] > history.valid[0]
    x = rows(200, seed=1)
    on_cpu = copy.deepcopy(flow).cpu()
    with torch.no_grad():
        lp = flow().log_prob(x.to(DEVICE))
        samples = flow().sample((300,))
    assert lp.device == DEVICE and samples.device == DEVICE and samples.isfinite().all()
    with torch.no_grad():
        assert torch.allclose(lp.cpu(), on_cpu().log_prob(x), rtol=1e-4, atol=1e-4)
    # Chunked scoring takes rows anywhere and answers on their device.
    assert torch.allclose(log_prob(flow, x), lp.cpu(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_sweep_inverse_agrees_with_the_naive_one_on_the_gpu(family):
    cls, options = FAMILIES[family], dict(transforms=2, hidden_features=(64, 64))
    torch.manual_seed(0)
    flow = perturbed(cls(6, **options).double().to(DEVICE))
    naive = cls(6, inverse="passes", passes=6, **options).double().to(DEVICE)
    naive.load_state_dict(flow.state_dict())
    z = torch.randn(400, 6, dtype=torch.float64, device=DEVICE)
    x_sweep, x_naive = flow().transform.inv(z), naive().transform.inv(z)
    assert torch.allclose(x_sweep, x_naive, rtol=0, atol=1e-8)
    # With gradients (reparameterised samples): the same gradients too.
    grads = []
    for f in (flow, naive):
        f.zero_grad()
        f().transform.inv(z).square().sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in f.parameters()]))
    assert torch.allclose(grads[0], grads[1], rtol=1e-6, atol=1e-6)


def test_the_classical_start_on_the_gpu_is_the_cpu_one():
    x = rows(500, 3).double()
    on_gpu = fit_gaussian_mixture(x.to(DEVICE), 3, seed=1)
    on_cpu = fit_gaussian_mixture(x, 3, seed=1)  # the same seeding: drawn on the CPU
    assert on_gpu.means.device == DEVICE
    assert torch.allclose(on_gpu.means.cpu(), on_cpu.means, rtol=1e-6, atol=1e-8)
    torch.manual_seed(0)
    flow = MAF(3, transforms=2, hidden_features=(16,), base="gmm", components=4, marginals=True)
    history = fit(flow.to(DEVICE), rows(500, 3), epochs=2, **QUIET)  # EM and marginals there
    assert history.start is not None and history.stopped_nonfinite is None


def test_block_and_dense_products_agree_on_the_gpu():
    torch.manual_seed(0)
    made = perturbed(MADE(16, hidden_features=(256, 256), param_dims=(1, 1)), 0.05)
    made = made.double().to(DEVICE)
    x = torch.randn(512, 16, dtype=torch.float64, device=DEVICE)
    outputs = {}
    for blocks in (None, 4, "auto"):
        made.blocks = blocks
        made.zero_grad()
        out = made(x)
        sum(o.square().sum() for o in out).backward()
        outputs[blocks] = (torch.cat(out, -1), [p.grad.clone() for p in made.parameters()])
    dense, dense_grads = outputs[None]
    for blocks in (4, "auto"):
        out, grads = outputs[blocks]
        assert torch.allclose(out, dense, rtol=0, atol=1e-10), blocks
        for g, d in zip(grads, dense_grads, strict=True):
            assert torch.allclose(g, d, rtol=1e-9, atol=1e-9), blocks


def test_saved_on_the_gpu_loads_on_the_cpu(tmp_path):
    torch.manual_seed(0)
    flow = perturbed(MAF(3, context=2, transforms=2, hidden_features=(16,))).to(DEVICE)
    arflows.save(flow, tmp_path / "model")
    x, c = torch.randn(50, 3), torch.randn(50, 2)
    loaded = arflows.load(tmp_path / "model")
    assert {p.device.type for p in loaded.parameters()} == {"cpu"}
    with torch.no_grad():
        expected = flow(c.to(DEVICE)).log_prob(x.to(DEVICE)).cpu()
        assert torch.allclose(loaded(c).log_prob(x), expected, rtol=1e-5, atol=1e-5)
    back = arflows.load(tmp_path / "model", device="cuda")
    assert {p.device for p in back.parameters()} == {DEVICE}


def test_mixed_devices_are_refused_naming_both():
    flow = MAF(3, context=2, transforms=1, hidden_features=(8,)).to(DEVICE)
    x, c = torch.zeros(4, 3), torch.zeros(4, 2)
    with pytest.raises(ValueError, match=r"`context` on cuda:0 .* got it on cpu"):
        flow(c)
    with pytest.raises(ValueError, match=r"`context` on cuda:0 .* got it on cpu"):
        flow(c).sample((5,))
    with pytest.raises(ValueError, match=r"`x` on cuda:0 .* got it on cpu"):
        flow(c.to(DEVICE)).log_prob(x)
    with pytest.raises(ValueError, match=r"`x` on cpu .* got it on cuda:0"):
        MAF(3, transforms=1)().log_prob(x.to(DEVICE))
    split = MAF(2, transforms=2, hidden_features=(8,)).to(DEVICE)
    split.transforms[0].cpu()
    with pytest.raises(ValueError, match=r"one device, got parameters and buffers on cpu, cuda:0"):
        fit(split, rows(), epochs=1, **QUIET)


def test_resuming_a_dequantized_fit_on_the_gpu(tmp_path):
    x = rows()
    x[:, 0] = x[:, 0].mul(3).floor()  # an integer column: noise drawn on the GPU
    options = dict(epochs=4, batch_size=64, dequantize=[0], seed=2, **QUIET)

    def new():
        torch.manual_seed(0)
        return MAF(2, transforms=2, hidden_features=(16,)).to(DEVICE)

    whole = fit(new(), x, **options)

    def interrupt(epoch, history, flow):
        if epoch == 2:
            raise KeyboardInterrupt

    checkpoint = tmp_path / "fit.safetensors"
    with pytest.raises(KeyboardInterrupt):
        fit(new(), x, checkpoint=checkpoint, callbacks=[interrupt], **options)
    resumed = fit(new(), x, checkpoint=checkpoint, resume=True, **options)
    assert len(resumed.train) == 4
    assert resumed.train == pytest.approx(whole.train, rel=1e-5)
    assert resumed.valid == pytest.approx(whole.valid, rel=1e-5)


@pytest.fixture
def table(tmp_path):
    path = tmp_path / "data.csv"
    x = rows(400, 3)
    path.write_text("a,b,c\n" + "\n".join(",".join(map(repr, r)) for r in x.tolist()) + "\n")
    return path


def test_cli_fit_on_the_gpu_end_to_end(table, tmp_path, capsys):
    command = ["fit", str(table), "--device", "cuda", "--no-progress"]
    model = tmp_path / "model"
    assert main([*command, "--epochs", "3", "-o", str(model)]) == 0, capsys.readouterr().err
    assert "average log-likelihood" in capsys.readouterr().out
    flow = arflows.load(model)  # saved from the GPU, read on the CPU
    assert (model / "report.json").is_file()
    assert flow().sample((10,)).isfinite().all()
    # --auto trains every candidate on the GPU too.
    assert main([*command, "--auto", "--budget", "10", "-o", str(tmp_path / "auto")]) == 0
    assert "selected:" in capsys.readouterr().out


DDP_SCRIPT = """
import json, sys
from pathlib import Path
import torch
from safetensors.torch import save_file
import arflows
from arflows.train import init_from_env, shutdown

out = Path(sys.argv[1])
world, device = init_from_env("cuda")
torch.manual_seed(0)
flow = arflows.MAF(2, transforms=2, hidden_features=(16, 16)).double().to(device)
g = torch.Generator().manual_seed(1)
x = torch.randn(203, 2, generator=g, dtype=torch.float64)
history = arflows.fit(flow, x, epochs=3, batch_size=50, valid=0.2, lr=3e-3, seed=3,
                      progress=False)
state = {k: v.detach().cpu().contiguous() for k, v in flow.state_dict().items()}
save_file(state, str(out / f"rank{world.rank}.safetensors"))
record = {"train": history.train, "valid": history.valid, "size": world.size,
          "backend": torch.distributed.get_backend() if world.active else None}
(out / f"rank{world.rank}.json").write_text(json.dumps(record))
shutdown()
"""


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
def test_data_parallel_over_nccl_follows_one_process(tmp_path):
    script = tmp_path / "fit_gpus.py"
    script.write_text(DDP_SCRIPT)
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(arflows.__file__).parents[1]), env.get("PYTHONPATH", "")]
    )
    results = {}
    for processes in (1, 2):
        folder = tmp_path / f"world{processes}"
        folder.mkdir()
        runner = [sys.executable]
        if processes > 1:
            runner += ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        done = subprocess.run(
            [*runner, str(script), str(folder)], env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        results[processes] = folder
    one = load_file(results[1] / "rank0.safetensors")
    first, second = (load_file(results[2] / f"rank{r}.safetensors") for r in (0, 1))
    record = json.loads((results[2] / "rank0.json").read_text())
    assert record["size"] == 2 and record["backend"] == "nccl"
    assert all(torch.equal(first[k], second[k]) for k in first)  # the same on both GPUs
    for k in one:  # float64: only the order of summation differs
        assert torch.allclose(first[k], one[k], rtol=0, atol=1e-8), k
    solo = json.loads((results[1] / "rank0.json").read_text())
    assert record["valid"] == pytest.approx(solo["valid"], abs=1e-9)
