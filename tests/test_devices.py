"""Device handling that CI can check without a GPU: the meta device, a pretend NCCL world.

The same paths on a real GPU are in ``test_cuda.py`` (``pytest -m cuda``).
"""

import copy

import pytest
import torch

import arflows
from arflows import MAF
from arflows.cli import main
from arflows.flows import log_prob
from arflows.train import World, fit
from arflows.train.rows import TensorRows
from arflows.train.setup import join_world, make_optimizer
from arflows.train.validation import Best

QUIET = dict(progress=False)


def tiny(features=2, context=0):
    return MAF(features, context=context, transforms=1, hidden_features=(8,))


def test_rows_and_contexts_on_another_device_are_refused_naming_both():
    flow, meta = tiny(3, context=2), torch.device("meta")
    c, x = torch.zeros(4, 2), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"`context` on cpu .* got it on meta"):
        flow(c.to(meta))
    with pytest.raises(ValueError, match=r"`x` on cpu .* got it on meta"):
        flow(c).log_prob(x.to(meta))
    with pytest.raises(ValueError, match=r"`context` on cpu .* got it on meta"):
        flow(c.to(meta)).sample((2,))
    with pytest.raises(ValueError, match=r"`x` on cpu"):
        tiny(3)().log_prob(x.to(meta))
    # Scoring by chunks moves the rows to the flow, wherever they are.
    assert log_prob(flow, x, c).shape == (4,)


def test_fit_refuses_a_flow_spread_over_two_devices():
    flow = tiny()
    flow.transforms[0].to("meta")
    with pytest.raises(ValueError, match=r"one device, got parameters and buffers on cpu, meta"):
        fit(flow, torch.randn(50, 2), **QUIET)


def test_an_nccl_fit_needs_the_flow_on_this_process_gpu(monkeypatch):
    gpu = torch.device("cuda", 0)  # a device object needs no GPU
    monkeypatch.setattr("arflows.train.setup.current_world", lambda: World(0, 2, gpu))
    with pytest.raises(ValueError, match=r"NCCL needs the flow on this process's GPU \(cuda:0\)"):
        fit(tiny(), torch.randn(50, 2), **QUIET)
    assert join_world(None, gpu).device == gpu  # the flow on the GPU: accepted
    assert join_world(False, torch.device("cpu")) == World()  # not distributed: no check


def test_adamw_is_fused_where_torch_fuses_it():
    version = tuple(int(part) for part in torch.__version__.split(".")[:2])
    for dtype in (torch.float32, torch.float64):
        group = make_optimizer(tiny().to(dtype), 1e-3, 0.01).param_groups[0]
        assert bool(group["fused"]) == (version >= (2, 4))  # fused on CPU since torch 2.4
        assert group["weight_decay"] == 0.01
    assert not make_optimizer(tiny().to("meta"), 1e-3, 0.0).param_groups[0]["fused"]


def test_fused_fits_are_reproducible_bit_for_bit():
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        flow = tiny()
        fit(flow, torch.randn(80, 2, generator=torch.Generator().manual_seed(1)), epochs=3,
            **QUIET)  # fmt: skip
        runs.append(torch.cat([p.detach().flatten() for p in flow.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_best_weights_are_copied_in_place_and_stay_a_copy():
    flow = tiny()
    best = Best(copy.deepcopy(flow.state_dict()))
    tensors = {k: id(v) for k, v in best.state.items()}
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(1.0)
    best.keep(flow, 1.5)
    assert best.score == 1.5
    assert {k: id(v) for k, v in best.state.items()} == tensors  # no new tensors
    assert all(torch.equal(best.state[k], v) for k, v in flow.state_dict().items())
    with torch.no_grad():
        for p in flow.parameters():
            p.add_(1.0)  # the kept weights are a copy: they do not follow
    assert not torch.equal(best.state["transforms.0.made.layers.0.bias"],
                           flow.state_dict()["transforms.0.made.layers.0.bias"])  # fmt: skip
    other = MAF(2, transforms=1, hidden_features=(16,))  # another layout: a fresh copy
    best.keep(other, 2.0)
    assert all(torch.equal(best.state[k], v) for k, v in other.state_dict().items())


def test_a_failed_step_leaves_no_gradient_behind():
    def poison(epoch, history, flow):
        with torch.no_grad():
            flow.transforms[0].made.layers[-1].bias.fill_(float("nan"))

    flow = tiny()
    history = fit(flow, torch.randn(100, 2), epochs=3, callbacks=[poison], **QUIET)
    assert history.stopped_nonfinite.startswith("the loss became nan at epoch 1, step 0")
    assert all(p.grad is None for p in flow.parameters())


def test_in_order_batches_are_views_of_the_rows():
    x, c = torch.randn(10, 2), torch.randn(10, 1)
    rows = TensorRows(x, c)
    batches = list(rows.batches(4, World()))
    assert [len(b) for b, _ in batches] == [4, 4, 2]
    assert torch.equal(torch.cat([b for b, _ in batches]), x)
    assert torch.equal(torch.cat([b for _, b in batches]), c)
    assert all(
        b.untyped_storage().data_ptr() == x.untyped_storage().data_ptr() for b, _ in batches
    )
    second = [b for b, _ in rows.batches(4, World(1, 2))]  # process 1 of 2: every other row
    assert torch.equal(torch.cat(second), torch.cat([x[i : i + 4][1::2] for i in (0, 4, 8)]))


def test_load_puts_the_flow_on_the_device_asked(tmp_path):
    flow = tiny()
    arflows.save(flow, tmp_path / "model")
    loaded = arflows.load(tmp_path / "model", device="meta")
    assert {p.device.type for p in loaded.parameters()} == {"meta"}
    with pytest.raises(ValueError, match="expected a device such as 'cpu' or 'cuda'"):
        arflows.load(tmp_path / "model", device="abacus")
    count = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"cannot load onto cuda:{count}: {count} CUDA device"):
        arflows.load(tmp_path / "model", device=f"cuda:{count}")


@pytest.fixture
def table(tmp_path):
    rows = torch.randn(60, 2, generator=torch.Generator().manual_seed(0)).tolist()
    path = tmp_path / "data.csv"
    path.write_text("a,b\n" + "\n".join(f"{a!r},{b!r}" for a, b in rows) + "\n")
    return path


def test_cli_fit_refuses_a_gpu_that_is_not_there(table, tmp_path, capsys, monkeypatch):
    argv = ["fit", str(table), "-o", str(tmp_path / "model"), "--epochs", "1"]
    if not torch.cuda.is_available():
        assert main([*argv, "--device", "cuda"]) == 2
        assert "--device cuda was given but CUDA is not available" in capsys.readouterr().err
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert main([*argv, "--device", "cuda:3"]) == 2
    assert "--device cuda:3: there is no such GPU (1 visible" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
