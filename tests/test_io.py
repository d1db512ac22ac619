import json
import pathlib
import pickle

import pytest
import torch
from torch import nn

import arflows
from arflows.io import ModelError, load, read_config, save
from arflows.transforms import MonotonicRQSTransform
from tests.helpers import randomize

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


def _conditional_maf(**kwargs):
    gen = torch.Generator().manual_seed(1)
    flow = arflows.MAF(3, context=2, transforms=2, hidden_features=(8, 8), generator=gen, **kwargs)
    randomize(flow, seed=2)
    flow.standardize_(torch.randn(50, 3) * 4 + 1, torch.randn(50, 2) - 3)
    return flow.eval()


def _assert_same_density(a, b, context=0, features=3, dtype=torch.float32):
    x = torch.randn(16, features, dtype=dtype)
    c = torch.randn(16, context, dtype=dtype) if context else None
    with torch.no_grad():
        assert torch.equal(a(c).log_prob(x), b(c).log_prob(x))


def test_fixture_from_this_format_version_loads_and_gives_its_log_prob():
    expected = json.loads((FIXTURES / "maf-v1-expected.json").read_text())
    flow = load(FIXTURES / expected["model"])
    assert not flow.training
    assert flow.columns == ["a", "b", "c"] and flow.context_columns == ["t", "u"]
    assert flow.metadata["purpose"] == "format fixture"
    assert flow.standardization.active and flow.context_standardization.active
    x, c = torch.tensor(expected["x"]), torch.tensor(expected["c"])
    with torch.no_grad():
        log_prob = flow(c).log_prob(x)
    assert torch.allclose(log_prob, torch.tensor(expected["log_prob"]), rtol=1e-5, atol=1e-5)
    # Not the identity: the fixture exercises the weights, orders and standardisation.
    assert (log_prob - torch.distributions.Normal(0, 1).log_prob(x).sum(-1)).abs().min() > 0.1
    config = read_config(FIXTURES / expected["model"])
    assert config["format_version"] == 1 and config["flow"] == "MAF"


def test_random_structure_round_trips_without_the_generator(tmp_path):
    flow = _conditional_maf(randperm=True, hidden_degrees="random")
    path = save(flow, tmp_path / "model", columns=["a", "b", "c"], context_columns=["s", "t"])
    config = json.loads((path / "config.json").read_text())
    assert "generator" not in config["arguments"]
    # Built again, the random orders and degrees differ: only the state dict restores them.
    other = arflows.MAF(3, context=2, transforms=2, hidden_features=(8, 8), randperm=True)
    assert not all(
        torch.equal(u, v) for u, v in zip(flow.buffers(), other.buffers(), strict=False)
    )
    loaded = load(path)
    _assert_same_density(flow, loaded, context=2)
    c = torch.randn(5, 2)
    torch.manual_seed(7)
    a = flow(c).sample((4,))
    torch.manual_seed(7)
    b = loaded(c).sample((4,))
    assert torch.equal(a, b)
    assert loaded.columns == ["a", "b", "c"] and loaded.context_columns == ["s", "t"]


@pytest.mark.parametrize(
    "build",
    [
        lambda: arflows.NSF(3, transforms=2, hidden_features=(8,), bins=4),
        lambda: arflows.IAF(3, 0, 2, (8, 8)),  # hidden_features through IAF's *args
        lambda: arflows.MAF(
            3,
            transforms=2,
            hidden_features=(8, 8),
            univariate=MonotonicRQSTransform,
            univariate_kwargs={"bins": 3, "bound": 4.0},
            activation=nn.Tanh,
        ),
    ],
    ids=["nsf", "iaf-args", "classes-and-tensors"],
)
def test_flows_round_trip(tmp_path, build):
    flow = randomize(build(), seed=3).eval()
    loaded = load(save(flow, tmp_path / "m"))
    assert type(loaded) is type(flow)
    _assert_same_density(flow, loaded)


def test_class_arguments_are_stored_by_name(tmp_path):
    flow = arflows.MAF(2, transforms=1, univariate=MonotonicRQSTransform, activation=nn.Tanh)
    arguments = json.loads((save(flow, tmp_path / "m") / "config.json").read_text())["arguments"]
    assert arguments["univariate"] == {"$class": "arflows.transforms.MonotonicRQSTransform"}
    assert arguments["activation"] == {"$class": "torch.nn.Tanh"}
    assert isinstance(load(tmp_path / "m").transforms[0].made.activation, nn.Tanh)


def test_tensors_are_stored_as_lists(tmp_path):
    save(arflows.MAF(2, transforms=1), tmp_path / "m", metadata={"order": torch.tensor([1, 0])})
    assert load(tmp_path / "m").metadata == {"order": [1, 0]}


def test_float64_flow_keeps_its_dtype(tmp_path):
    flow = randomize(arflows.MAF(2, transforms=2, hidden_features=(8,)).double(), seed=4)
    loaded = load(save(flow, tmp_path / "m"))
    assert read_config(tmp_path / "m")["dtype"] == "float64"
    assert next(loaded.parameters()).dtype == torch.float64
    _assert_same_density(flow.eval(), loaded, features=2, dtype=torch.float64)


def test_load_keeps_the_callers_random_stream(tmp_path):
    save(arflows.MAF(3, transforms=2, randperm=True), tmp_path / "m")
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load(tmp_path / "m")
    assert torch.equal(torch.rand(3), expected)


def test_resave_keeps_columns_and_metadata(tmp_path):
    save(_conditional_maf(), tmp_path / "a", columns=["x", "y", "z"], metadata={"rows": 5})
    again = load(save(load(tmp_path / "a"), tmp_path / "b"))
    assert again.columns == ["x", "y", "z"] and again.metadata == {"rows": 5}


class _Local(MonotonicRQSTransform):
    pass


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(embedding=nn.Linear(4, 2)), "embedding.*Linear.*cannot be rebuilt"),
        (dict(univariate=_Local), "univariate.*_Local.*only classes"),
        (dict(activation=lambda: nn.ReLU()), "activation.*function"),
    ],
    ids=["module", "foreign-class", "lambda"],
)
def test_unsavable_arguments_say_what_and_what_to_do(tmp_path, kwargs, match):
    flow = arflows.MAF(3, context=2, transforms=1, **kwargs)
    with pytest.raises(TypeError, match=match):
        save(flow, tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_save_input_errors(tmp_path):
    flow = arflows.MAF(3, transforms=1)
    with pytest.raises(ValueError, match=r"expected 3 names in `columns`"):
        save(flow, tmp_path / "m", columns=["a", "b"])
    with pytest.raises(TypeError, match="metadata"):
        save(flow, tmp_path / "m", metadata={"f": object()})
    with pytest.raises(TypeError, match="expected `flow` to be an arflows Flow"):
        save(nn.Linear(2, 2), tmp_path / "m")
    with torch.no_grad():
        flow.transforms[0].made.packed[0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        save(flow, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []


def test_save_replaces_a_model_atomically_and_leaves_other_directories_alone(
    tmp_path, monkeypatch
):
    first = randomize(arflows.MAF(2, transforms=1), seed=5).eval()
    second = randomize(arflows.MAF(2, transforms=1), seed=6).eval()
    save(first, tmp_path / "m")
    config = (tmp_path / "m" / "config.json").read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save(second, tmp_path / "m")  # never replaced unless asked
    assert (tmp_path / "m" / "config.json").read_bytes() == config
    save(second, tmp_path / "m", overwrite=True)
    _assert_same_density(second, load(tmp_path / "m"), features=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary leftovers

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("safetensors.torch.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        save(first, tmp_path / "m", overwrite=True)
    _assert_same_density(second, load(tmp_path / "m"), features=2)  # old model intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    monkeypatch.undo()

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("keep me")
    with pytest.raises(ModelError, match="not an arflows model"):
        save(first, tmp_path / "notes")
    assert (tmp_path / "notes" / "todo.txt").read_text() == "keep me"


def _edit_config(path, **changes):
    config = json.loads((path / "config.json").read_text())
    for key, value in changes.items():
        if key == "hidden_features" or key == "bogus":
            config["arguments"][key] = value
        else:
            config[key] = value
    (path / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "edit, match",
    [
        (lambda p: _edit_config(p, format_version=2), "format 2.*upgrade arflows"),
        (lambda p: _edit_config(p, format="other"), "not an arflows model config"),
        (lambda p: _edit_config(p, flow="Flow"), "unknown flow 'Flow'.*MAF"),
        (lambda p: _edit_config(p, flow="__class__"), "unknown flow"),
        (lambda p: _edit_config(p, bogus=1), "arguments do not fit MAF.*bogus"),
        (lambda p: _edit_config(p, hidden_features=[16, 16]), "weights .* do not fit the MAF"),
        (lambda p: _edit_config(p, dtype="int8"), "unknown dtype"),
        (lambda p: (p / "config.json").write_text("{not json"), "cannot load .*config.json"),
        (lambda p: (p / "config.json").unlink(), "no config.json"),
        (lambda p: (p / "model.safetensors").unlink(), "no model.safetensors"),
        (lambda p: (p / "model.safetensors").write_bytes(b"\x00" * 3), "not a safetensors"),
    ],
    ids=[
        "newer-version",
        "format",
        "base-class",
        "dunder",
        "argument",
        "edited-weights-shape",
        "dtype",
        "bad-json",
        "no-config",
        "no-weights",
        "garbage-weights",
    ],
)
def test_broken_model_directories_raise_model_error(tmp_path, edit, match):
    path = save(arflows.MAF(3, transforms=2, hidden_features=(8, 8)), tmp_path / "m")
    edit(path)
    with pytest.raises(ModelError, match=match):
        load(path)


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(ModelError, match="is a file"):
        read_config(tmp_path / "file")


class _Marker:
    """Unpickling this creates a file: the proof that code ran."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def test_pickle_renamed_to_safetensors_is_refused_without_running_it(tmp_path):
    path = save(arflows.MAF(2, transforms=1), tmp_path / "m")
    marker = tmp_path / "unpickled"
    (path / "model.safetensors").write_bytes(pickle.dumps({"weight": _Marker(marker)}))
    with pytest.raises(ModelError, match="not a safetensors file"):
        load(path)
    assert not marker.exists()
    pickle.loads((path / "model.safetensors").read_bytes())  # the marker works when unpickled
    assert marker.exists()
