"""Bad input everywhere: constructors, log_prob, fit, the CLI, model directories, checkpoints.

Every case asserts the error type and message fragments naming the argument, what was
expected and what arrived. None may surface as a NaN, a crash deep inside torch, a traceback
from the command line, or code run from a file. (Complements test_fuzz, test_io, test_cli,
test_train, test_checkpoint and test_data, which cover the other cases.)
"""

import json
import os
import pickle
import re
import shlex

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save, save_file
from torch import nn

import arflows
from arflows.cli import main
from arflows.flows import ActNorm, LULinear, MaskedCouplingTransform, StandardNormal
from arflows.io import ModelError, load
from arflows.nn import MADE, DenseNN, MaskedLinear
from arflows.train.checkpoint import CheckpointError, read_checkpoint, write_checkpoint
from arflows.transforms import MonotonicRQSTransform, PermutationTransform, Transform

NAN, INF = float("nan"), float("inf")
TINY = ["--epochs", "1", "--hidden", "8", "--transforms", "1", "--no-progress"]

# Tiny builders of every flow family: name -> build(**options).
BUILD = {
    "MAF": lambda **kw: arflows.MAF(2, transforms=1, hidden_features=(8,), **kw),
    "IAF": lambda **kw: arflows.IAF(2, transforms=1, hidden_features=(8,), **kw),
    "NSF": lambda **kw: arflows.NSF(2, transforms=1, hidden_features=(8,), bins=3, **kw),
    "RealNVP": lambda **kw: arflows.RealNVP(2, transforms=1, hidden_features=(8,), **kw),
    "NICE": lambda **kw: arflows.NICE(2, transforms=1, hidden_features=(8,), **kw),
    "NAF": lambda **kw: arflows.NAF(2, transforms=1, hidden_features=(8,), components=2, **kw),
    "MADEMoGFlow": lambda **kw: arflows.MADEMoGFlow(2, components=2, hidden_features=(8,), **kw),
    "OrderAgnosticMAF": lambda **kw: arflows.OrderAgnosticMAF(
        2, transforms=1, hidden_features=(8,), orders=2, **kw
    ),
}
FLOWS = [getattr(arflows, name) for name in BUILD]


def run(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_usage_error(code, err, match):
    """Exit code 2, one line ``arflows: error: ...`` matching ``match``, no traceback."""
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("arflows: error: "), err
    assert "Traceback" not in err
    assert re.search(match, lines[0]), lines[0]


class _System:
    """Unpickling this runs a shell command that creates ``marker``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


# --- 1. constructors -------------------------------------------------------------------------


@pytest.mark.parametrize("flow", FLOWS, ids=lambda f: f.__name__)
@pytest.mark.parametrize(
    "args, kwargs, error, match",
    [
        ((0,), {}, ValueError, r"`features >= 1`, got 0"),
        ((2.5,), {}, TypeError, r"`features` to be an int.*got float"),
        (("3",), {}, TypeError, r"`features` to be an int.*got str"),
        ((True,), {}, TypeError, r"`features` to be an int.*got bool"),
        ((2, -1), {}, ValueError, r"`context >= 0`, got -1"),
        ((2, 1.5), {}, TypeError, r"`context` to be an int.*got float"),
        (
            (2,),
            dict(hidden_features=8),
            TypeError,
            r"`hidden_features` to be a sequence of ints, got 8",
        ),
        ((2,), dict(hidden_features=(8.5,)), TypeError, r"sequence of ints, got \(8\.5,\)"),
        ((2,), dict(hidden_features="88"), TypeError, r"sequence of ints, got '88'"),
        (
            (2,),
            dict(hidden_features=(0,)),
            ValueError,
            r"`hidden_features` entries >= 1, got \(0,\)",
        ),
        (
            (2,),
            dict(support=[None]),
            ValueError,
            r"`support` to have one entry per column \(2\), got 1",
        ),
    ],
    ids=[
        "features-0",
        "features-float",
        "features-str",
        "features-bool",
        "context-negative",
        "context-float",
        "hidden-int",
        "hidden-float",
        "hidden-str",
        "hidden-0",
        "support-length",
    ],
)
def test_every_flow_names_the_bad_argument(flow, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        flow(*args, **kwargs)


@pytest.mark.parametrize("flow", [f for f in FLOWS if f is not arflows.MADEMoGFlow])
@pytest.mark.parametrize(
    "transforms, error, match",
    [
        (0, ValueError, r"`transforms >= 1`, got 0"),
        (1.5, TypeError, r"`transforms` to be an int >= 1, got 1\.5"),
        ("2", TypeError, r"`transforms` to be an int >= 1, got '2'"),
    ],
)
def test_transforms_must_be_a_positive_int(flow, transforms, error, match):
    with pytest.raises(error, match=match):
        flow(2, 0, transforms, hidden_features=(8,))


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda: arflows.NSF(2, bins=1), ValueError, r"`bins >= 2`, got 1"),
        (lambda: arflows.NSF(2, bins=2.5), TypeError, r"`bins` to be an int >= 2, got 2\.5"),
        (lambda: arflows.NSF(2, bins=1, coupling=True), ValueError, r"`bins >= 2`, got 1"),
        (lambda: arflows.NSF(2, bound=INF), ValueError, r"finite `bound > 0`, got inf"),
        (lambda: arflows.NSF(2, bound="5"), TypeError, r"`bound` to be a number > 0, got '5'"),
        (lambda: arflows.NAF(2, components=0), ValueError, r"`components >= 1`, got 0"),
        (
            lambda: arflows.MADEMoGFlow(2, components=2.0),
            ValueError,
            r"int `components >= 1`, got 2\.0",
        ),
        (lambda: arflows.MADEMoGFlow(2, bound=0), ValueError, r"`bound > 0`, got 0"),
        (lambda: arflows.MADEMoGFlow(2, bound=INF), ValueError, r"finite `bound > 0`, got inf"),
        (
            lambda: arflows.OrderAgnosticMAF(2, orders=0),
            ValueError,
            r"`orders` to be an int >= 1, got 0",
        ),
        (
            lambda: arflows.MAF(3, order=[0, 0, 1]),
            TypeError,
            r"MAF sets the order.*no `order` argument",
        ),
        (
            lambda: arflows.MAF(2, univariate=int),
            TypeError,
            r"`univariate` to be a Transform class.*int",
        ),
        (
            lambda: arflows.RealNVP(2, univariate=Transform),
            TypeError,
            r"`param_shapes` method.*Transform",
        ),
        (
            lambda: arflows.MAF(2, activation="relu"),
            TypeError,
            r"`activation` to be a module class.*'relu'",
        ),
        (lambda: arflows.RealNVP(2, activation=nn.ReLU()), TypeError, r"`activation`.*ReLU\(\)"),
        (lambda: arflows.MAF(2, passes=0), ValueError, r"`passes >= 1`, got 0"),
        (lambda: MADE(2.5), TypeError, r"`features` to be an int >= 1, got 2\.5"),
        (
            lambda: MADE(3, (8.7,)),
            TypeError,
            r"`hidden_features` to be a sequence of ints, got \(8\.7,\)",
        ),
        (
            lambda: MADE(3, ()),
            ValueError,
            r"at least one hidden layer in `hidden_features`, got \(\)",
        ),
        (lambda: MADE(3, param_dims=(1.5,)), TypeError, r"`param_dims` to be a sequence of ints"),
        (lambda: MADE(3, param_dims=()), ValueError, r"at least one entry in `param_dims`"),
        (lambda: MADE(3, context=1.5), TypeError, r"`context` to be an int >= 0, got 1\.5"),
        (
            lambda: MADE(3, order=[0, 0, 1]),
            ValueError,
            r"`order` to be a permutation of 0\.\.2, got \[0, 0, 1\]",
        ),
        (lambda: MADE(3, order=[0, 1]), ValueError, r"permutation of 0\.\.2, got \[0, 1\]"),
        (
            lambda: MADE(3, order=[[0, 1, 2]]),
            ValueError,
            r"permutation of 0\.\.2, got \[\[0, 1, 2\]\]",
        ),
        (lambda: MADE(3, order=[0.5, 1, 2]), TypeError, r"\(integers\), got \[0\.5, 1\.0, 2\.0\]"),
        (lambda: MADE(3, order="abc"), TypeError, r"permutation of 0\.\.2, got 'abc'"),
        (
            lambda: MaskedLinear([[True]]),
            ValueError,
            r"`mask` to be a non-empty 2-D tensor.*got list",
        ),
        (
            lambda: MaskedLinear(torch.ones(2, dtype=torch.bool)),
            ValueError,
            r"2-D tensor.*got \(2,\)",
        ),
        (
            lambda: MaskedLinear(torch.ones(0, 2, dtype=torch.bool)),
            ValueError,
            r"non-empty.*\(0, 2\)",
        ),
        (lambda: MaskedLinear(torch.full((2, 2), 0.5)), ValueError, r"`mask` to hold booleans"),
        (lambda: DenseNN(2.5, 2), TypeError, r"`in_features` to be an int >= 0, got 2\.5"),
        (lambda: DenseNN(2, 0), ValueError, r"`out_features >= 1`, got 0"),
        (
            lambda: DenseNN(2, 2, 8),
            TypeError,
            r"`hidden_features` to be a sequence of ints, got 8",
        ),
        (
            lambda: DenseNN(2, 2, param_dims=(0,)),
            ValueError,
            r"`param_dims` entries >= 1, got \(0,\)",
        ),
        (lambda: DenseNN(2, 2, param_dims=()), ValueError, r"at least one entry in `param_dims`"),
        (lambda: DenseNN(2, 2, activation="relu"), TypeError, r"`activation`.*'relu'"),
        (
            lambda: PermutationTransform([0, 0, 1]),
            ValueError,
            r"`order` to be a permutation of 0\.\.2, got \[0, 0, 1\]",
        ),
        (
            lambda: PermutationTransform([0.5, 1.0]),
            TypeError,
            r"`order` to hold integers, got \[0\.5, 1\.0\]",
        ),
        (
            lambda: PermutationTransform([]),
            ValueError,
            r"`order` to be a permutation of at least one",
        ),
        (lambda: PermutationTransform("ab"), TypeError, r"`order` to be a permutation, got 'ab'"),
        (lambda: PermutationTransform.reverse(0), ValueError, r"`features >= 1`, got 0"),
        (
            lambda: PermutationTransform.random(2.5),
            TypeError,
            r"`features` to be an int >= 1, got 2\.5",
        ),
        (lambda: MonotonicRQSTransform.param_shapes(bins=2.5), TypeError, r"`bins` to be an int"),
        (lambda: MaskedCouplingTransform(2.5), TypeError, r"`features` to be an int, got float"),
        (lambda: LULinear(2.5), TypeError, r"`features` to be an int >= 1, got 2\.5"),
        (lambda: ActNorm(2.5), TypeError, r"`features` to be an int >= 1, got 2\.5"),
        (lambda: StandardNormal(2.5), TypeError, r"`features` to be an int >= 1, got 2\.5"),
    ],
)
def test_constructors_name_argument_expectation_and_value(build, error, match):
    with pytest.raises(error, match=match):
        build()


# --- 2. log_prob and fit on bad data ---------------------------------------------------------


@pytest.mark.parametrize("name", BUILD)
@pytest.mark.parametrize("value, text", [(NAN, "NaN"), (INF, "inf"), (-INF, "-inf")])
def test_log_prob_refuses_non_finite_data_instead_of_returning_nan(name, value, text):
    flow = BUILD[name]().eval()
    x = torch.zeros(3, 2)
    x[1, 0] = value
    with pytest.raises(ValueError, match=rf"`x` holds {text} at index \(1, 0\)"):
        flow().log_prob(x)


def test_nan_is_refused_with_torchs_validation_off_elsewhere():
    # Importing sbi.inference (torch._dynamo) turns torch's switch off for the whole process;
    # a user's NaN must still be named, not scored.
    flow = arflows.MAF(2, transforms=1, hidden_features=(8,)).eval()
    x = torch.tensor([[0.0, float("nan")]])
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(False)
    try:
        with pytest.raises(ValueError, match="holds NaN"):
            flow().log_prob(x)
    finally:
        torch.distributions.Distribution.set_default_validate_args(before)


def test_value_checks_have_their_own_switch_and_a_per_thread_pause():
    import threading

    from arflows.checks import set_value_checks, unchecked_values

    flow = arflows.MAF(2, transforms=1, hidden_features=(8,)).eval()
    x = torch.tensor([[0.0, float("nan")]])
    # torch's own check on the base distribution is off, as a fit's is.
    torch.distributions.Distribution.set_default_validate_args(False)
    set_value_checks(False)
    try:
        assert flow().log_prob(x).isnan().all()
    finally:
        set_value_checks(True)
    refused = []

    def other_thread():
        try:
            flow().log_prob(x)
        except ValueError:
            refused.append(True)

    with unchecked_values():
        assert flow().log_prob(x).isnan().all()
        # A fit's pause in one thread leaves another thread's checks on.
        thread = threading.Thread(target=other_thread)
        thread.start()
        thread.join()
    assert refused == [True]
    torch.distributions.Distribution.set_default_validate_args(True)
    with pytest.raises(ValueError, match="holds NaN"):
        flow().log_prob(x)
    with pytest.raises(TypeError, match="bool"):
        set_value_checks(1)


@pytest.mark.parametrize("name", BUILD)
def test_log_prob_converts_integers_and_refuses_other_types(name):
    flow = BUILD[name]().eval()
    ints = torch.tensor([[0, 1], [2, -1]])
    with torch.no_grad():
        assert torch.equal(flow().log_prob(ints), flow().log_prob(ints.float()))
        assert flow().log_prob(ints > 0).shape == (2,)
        assert flow().log_prob(torch.zeros(0, 2)).shape == (0,)  # no rows: no values
        assert torch.isfinite(flow().log_prob(torch.zeros(1, 2))).all()  # one row
    with pytest.raises(TypeError, match=r"`x` of dtype torch\.float32.*got torch\.float64"):
        flow().log_prob(torch.zeros(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=r"`x` to hold real numbers, got dtype torch\.complex64"):
        flow().log_prob(torch.zeros(2, 2, dtype=torch.complex64))
    for value, kind in ((np.zeros((2, 2)), "ndarray"), ([[0.0, 0.0]], "list"), ("1,2", "str")):
        with pytest.raises(TypeError, match=rf"`x` to be a tensor, got a {kind}"):
            flow().log_prob(value)
    with pytest.raises(ValueError, match=r"x with shape \(\*, 2\), got \(4, 3\)"):
        flow().log_prob(torch.zeros(4, 3))


@pytest.mark.parametrize("name", BUILD)
def test_context_mismatches_are_named(name):
    flow = BUILD[name](context=2).eval()
    x = torch.zeros(4, 2)
    with torch.no_grad():
        expected = flow(torch.ones(4, 2)).log_prob(x)
        assert torch.equal(flow(torch.ones(4, 2, dtype=torch.long)).log_prob(x), expected)
    cases = [
        (
            lambda: flow(torch.zeros(4, 3)).log_prob(x),
            ValueError,
            r"context with shape \(\*, 2\), got \(4, 3\)",
        ),
        (lambda: flow().log_prob(x), ValueError, r"expects a context of size 2, got None"),
        (
            lambda: BUILD[name]()(torch.zeros(4, 2)).log_prob(x),
            ValueError,
            r"no context \(context=0\)",
        ),
        (
            lambda: flow(torch.zeros(5, 2)).log_prob(x),
            ValueError,
            r"x with shape \(4, 2\) does not broadcast.*\(5,\)",
        ),
        (
            lambda: flow(torch.full((4, 2), NAN)),
            ValueError,
            r"`context` holds NaN at index \(0, 0\)",
        ),
        (lambda: flow(torch.full((1, 2), INF)).sample((3,)), ValueError, r"`context` holds inf"),
        (lambda: flow("0.5"), TypeError, r"`context` to be a tensor, got a str"),
        (
            lambda: flow(torch.zeros(4, 2, dtype=torch.float64)),
            TypeError,
            r"`context` of dtype torch\.float32",
        ),
    ]
    for call, error, match in cases:
        with pytest.raises(error, match=match):
            call()


def test_infinity_is_outside_a_bounded_column_and_refused_in_an_unbounded_one():
    flow = arflows.MAF(2, transforms=1, hidden_features=(8,), support=[(0, 1), None]).eval()
    with torch.no_grad():
        log_p = flow().log_prob(torch.tensor([[INF, 0.0], [-INF, 0.0], [0.5, 0.0]]))
    assert log_p[:2].tolist() == [-INF, -INF] and torch.isfinite(log_p[2])
    with pytest.raises(ValueError, match=r"`x` holds inf at index \(0, 1\).*support bound"):
        flow().log_prob(torch.tensor([[0.5, INF]]))
    with pytest.raises(ValueError, match=r"`x` holds NaN at index \(0, 0\)"):
        flow().log_prob(torch.tensor([[NAN, 0.0]]))


@pytest.mark.parametrize(
    "x, c, context, error, match",
    [
        (torch.zeros(0, 2), None, 0, ValueError, r"at least 2 rows, got 0"),
        (torch.zeros(10, 3), None, 0, ValueError, r"2 data columns.*got 3"),
        (torch.zeros(10, 2), torch.zeros(10, 1), 0, ValueError, r"0 context columns.*got 1"),
        (torch.zeros(10, 2), None, 1, ValueError, r"1 context columns.*got 0"),
        (
            torch.zeros(10, 2),
            torch.full((10, 1), NAN),
            1,
            ValueError,
            r"`context` holds NaN or inf",
        ),
        (
            torch.zeros(10, 2),
            torch.full((10, 1), INF),
            1,
            ValueError,
            r"`context` holds NaN or inf",
        ),
        (torch.zeros(10, 2), "0.5", 1, TypeError, r"`context` to hold numbers, got a str"),
        (
            torch.zeros(10, 2),
            torch.zeros(10),
            1,
            ValueError,
            r"`context` with shape \(rows, columns\)",
        ),
    ],
    ids=[
        "no-rows",
        "columns",
        "context-unconditional",
        "no-context",
        "context-nan",
        "context-inf",
        "context-str",
        "context-1d",
    ],
)
def test_fit_refuses_bad_data_before_touching_the_flow(x, c, context, error, match):
    flow = arflows.MAF(2, context, transforms=1, hidden_features=(8,))
    before = {k: v.clone() for k, v in flow.state_dict().items()}
    with pytest.raises(error, match=match):
        arflows.fit(flow, x, c, epochs=1, progress=False)
    after = flow.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert not flow.standardization.active


# --- 2b. the command line on bad data --------------------------------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Saved tiny models: unconditional on columns a, b; conditional on t; and good data."""
    root = tmp_path_factory.mktemp("models")
    arflows.io.save(
        arflows.MAF(2, transforms=1, hidden_features=(8,)), root / "m", columns=["a", "b"]
    )
    cond = arflows.MAF(2, 1, transforms=1, hidden_features=(8,))
    arflows.io.save(cond, root / "c", columns=["a", "b"], context_columns=["t"])
    rows = np.random.default_rng(0).normal(size=(40, 2))
    (root / "good.csv").write_text("a,b\n" + "\n".join(f"{a},{b}" for a, b in rows) + "\n")
    return root


def _write(path, content):
    if isinstance(content, np.ndarray):
        np.save(path, content, allow_pickle=content.dtype == object)
    else:
        path.write_text(content)
    return path


BAD_FILES = [
    ("nan.csv", "a,b\n1,2\nnan,3\n4,5\n", r"column 'a' holds NaN.*row 2"),
    ("missing.csv", "a,b\n1,2\n,3\n4,5\n", r"column 'a' holds NaN \(a missing value\?\) at row 2"),
    ("inf.csv", "a,b\n1,2\n3,-inf\n4,5\n", r"column 'b' holds -inf at row 2"),
    ("text.csv", "a,b\n1,2\nx,3\n4,5\n", r"column 'a' is not numeric: row 2 .*'x'"),
    ("empty.csv", "", r"empty file"),
    ("header.csv", "a,b\n", r"no rows of data"),
    (
        "huge.npy",
        np.array([[1.0, 2.0], [3.0, 1e300]]),
        r"column 'x1' holds 1e\+300 at row 2, too large for float32",
    ),
    ("strings.npy", np.array([["a", "b"]]), r"expected a numeric array, got dtype <U1"),
    ("cube.npy", np.zeros((2, 2, 2)), r"shape \(rows, columns\), got \(2, 2, 2\)"),
]


@pytest.mark.parametrize("command", ["fit", "score", "diagnose"])
@pytest.mark.parametrize("name, content, match", BAD_FILES, ids=[f[0] for f in BAD_FILES])
def test_cli_bad_data_is_one_line_and_exit_2(
    models, tmp_path, capsys, command, name, content, match
):
    data = _write(tmp_path / name, content)
    if command == "fit":
        argv = ["fit", data, *TINY, "-o", tmp_path / "out"]
    else:
        argv = [
            command,
            models / "m",
            data,
            *(["-o", tmp_path / "d"] if command == "diagnose" else []),
        ]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, match)
    assert not (tmp_path / "out").exists() and not (tmp_path / "d").exists()


def test_cli_fit_one_row_and_pickled_data(tmp_path, capsys):
    code, _, err = run(["fit", _write(tmp_path / "one.csv", "a,b\n1,2\n"), *TINY], capsys)
    assert_usage_error(code, err, r"only 1 row of data: a density needs 2 or more")
    marker = tmp_path / "ran"
    pickled = _write(tmp_path / "p.npy", np.array([_System(marker)], dtype=object))
    code, _, err = run(["fit", pickled, *TINY, "-o", tmp_path / "out"], capsys)
    assert_usage_error(code, err, r"cannot read .*p\.npy")
    assert not marker.exists()


@pytest.mark.parametrize("value, text", [("nan", "NaN"), ("inf", "inf")])
def test_cli_sample_refuses_a_non_finite_context(models, capsys, value, text):
    code, out, err = run(["sample", models / "c", "-n", "3", "--context", value], capsys)
    assert_usage_error(code, err, rf"`context` holds {text}")
    assert out == ""  # no NaN samples written


# --- 3. corrupted, truncated and foreign model directories -----------------------------------


def _config(**edits):
    def edit(path):
        config = json.loads((path / "config.json").read_text())
        for key, value in edits.items():
            where = (
                config["arguments"]
                if key in ("features", "transforms", "hidden_features", "activation", "univariate")
                else config
            )
            where[key] = value
        (path / "config.json").write_text(json.dumps(config))

    return edit


def _weights(change):
    def edit(path):
        state = load_file(str(path / "model.safetensors"))
        changed = change(state)  # a new state dict, or None when edited in place
        save_file(changed if isinstance(changed, dict) else state, str(path / "model.safetensors"))

    return edit


def _set(key, value):
    return _weights(lambda s: s.__setitem__(key, value))


def _floats(fn):
    return _weights(lambda s: {k: fn(v) if v.is_floating_point() else v for k, v in s.items()})


def _bytes(fn):
    def edit(path):
        weights = path / "model.safetensors"
        weights.write_bytes(fn(weights.read_bytes()))

    return edit


def _remove_all(path):
    for p in path.iterdir():
        p.unlink()


def _weights_dir(path):
    (path / "model.safetensors").unlink()
    (path / "model.safetensors").mkdir()


MADE_KEY = "transforms.0.made"
BROKEN_MODELS = [
    (
        "features-str",
        _config(features="2"),
        r"the arguments do not fit MAF: expected `features` to be an int, got str",
    ),
    ("transforms-float", _config(transforms=1.5), r"`transforms` to be an int >= 1, got 1\.5"),
    (
        "hidden-str",
        _config(hidden_features="8"),
        r"`hidden_features` to be a sequence of ints, got '8'",
    ),
    (
        "hidden-huge",
        _config(hidden_features=[5000]),
        r"`hidden_features` = \[5000\] does not fit the weights file",
    ),
    (
        "transforms-huge",
        _config(transforms=500),
        r"`transforms` = 500 does not fit the weights file",
    ),
    (
        "class-os-system",
        _config(activation={"$class": "os.system"}),
        r"unknown class 'os\.system'",
    ),
    (
        "class-no-params",
        _config(univariate={"$class": "arflows.transforms.Transform"}),
        r"`univariate` to be a Transform class",
    ),
    ("arguments-list", _config(arguments=[2]), r"expected 'arguments' to be a dict"),
    ("columns-length", _config(columns=["a"]), r"expected 2 names in `columns`, got 1"),
    ("columns-int", _config(columns=5), r"`columns` to be a list of strings, got 5"),
    ("metadata-list", _config(metadata=[1]), r"expected 'metadata' to be a dict"),
    (
        "json-nan",
        lambda p: (p / "config.json").write_text(
            (p / "config.json").read_text().replace('"transforms": 1', '"transforms": NaN')
        ),
        r"NaN is not valid JSON",
    ),
    ("json-array", lambda p: (p / "config.json").write_text("[]"), r"not an arflows model config"),
    ("truncated", _bytes(lambda b: b[:-100]), r"not a safetensors file"),
    ("truncated-header", _bytes(lambda b: b[:8]), r"not a safetensors file"),
    ("empty-weights", _bytes(lambda b: b""), r"not a safetensors file"),
    (
        "foreign-safetensors",
        _bytes(lambda b: save({"weight": torch.zeros(1000)})),
        r"do not fit the MAF(?s:.*)Missing key",
    ),
    (
        "torch-save",
        lambda p: torch.save({"w": torch.zeros(2)}, p / "model.safetensors"),
        r"not a safetensors file",
    ),
    (
        "nan-weights",
        _floats(lambda v: torch.full_like(v, NAN)),
        r"tensor '[\w.]+' holds NaN or infinity",
    ),
    (
        "int-weights",
        _floats(lambda v: v.to(torch.int32)),
        r"is torch\.int32 but the flow's is torch\.float32",
    ),
    (
        "degrees-not-permutation",
        _set(f"{MADE_KEY}.input_degrees", torch.tensor([1, 1])),
        r"input degrees \[1, 1\] are not a permutation",
    ),
    (
        "masks-not-autoregressive",
        _weights(lambda s: s[f"{MADE_KEY}.layers.1.mask"].fill_(True)),
        r"masks do not match the degrees",
    ),
    (
        "standardization-columns",
        _weights(
            lambda s: s.update(
                {"standardization.loc": torch.zeros(5), "standardization.scale": torch.ones(5)}
            )
        ),
        r"standardization has 5 columns, the flow 2",
    ),
    ("empty-directory", _remove_all, r"no config\.json"),
    ("weights-directory", _weights_dir, r"no model\.safetensors"),
]


@pytest.fixture
def broken(tmp_path):
    def make(edit):
        flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
        path = arflows.io.save(flow, tmp_path / "model", columns=["a", "b"])
        edit(path)
        return path

    return make


@pytest.mark.parametrize(
    "edit, match", [m[1:] for m in BROKEN_MODELS], ids=[m[0] for m in BROKEN_MODELS]
)
def test_broken_model_directories_are_refused_by_load_and_every_command(
    broken, models, capsys, edit, match
):
    path = broken(edit)
    with pytest.raises(ModelError, match=match):
        load(path)
    for argv in (
        ["sample", path, "-n", "2"],
        ["score", path, models / "good.csv"],
        ["diagnose", path, models / "good.csv"],
    ):
        code, out, err = run(argv, capsys)
        assert_usage_error(code, err, match)
        assert out == ""


def test_a_file_instead_of_a_model_directory(tmp_path, models, capsys):
    (tmp_path / "model").write_text("{}")
    for argv in (
        ["sample", tmp_path / "model", "-n", "2"],
        ["score", tmp_path / "model", models / "good.csv"],
        ["diagnose", tmp_path / "model", models / "good.csv"],
    ):
        code, _, err = run(argv, capsys)
        assert_usage_error(code, err, r"it is a file, not a model directory")


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_pickled_weights_never_run_in_load_or_the_cli(broken, models, tmp_path, capsys, writer):
    marker = tmp_path / "ran"
    payload = {"weight": _System(marker)}

    def plant(path):
        if writer == "pickle":
            (path / "model.safetensors").write_bytes(pickle.dumps(payload))
        else:
            torch.save(payload, path / "model.safetensors")

    path = broken(plant)
    with pytest.raises(ModelError, match="not a safetensors file"):
        load(path)
    for argv in (
        ["sample", path, "-n", "2"],
        ["score", path, models / "good.csv"],
        ["diagnose", path, models / "good.csv"],
    ):
        code, _, err = run(argv, capsys)
        assert_usage_error(code, err, "not a safetensors file")
    assert not marker.exists()
    # The payload is live: unpickling it (what a pickle-based loader would do) runs it.
    if writer == "pickle":
        pickle.loads((path / "model.safetensors").read_bytes())
    else:
        with open(path / "model.safetensors", "rb") as file:  # a file: no suffix dispatch
            torch.load(file, weights_only=False)
    assert marker.exists()


# --- 4. checkpoints --------------------------------------------------------------------------


def _header(header, tensors=None):
    text = header if isinstance(header, str) else json.dumps(header)
    return save(tensors or {"t0": torch.zeros(1)}, metadata={"arflows": text})


def _state(state):
    return _header({"format": "arflows-checkpoint", "version": 1, "state": state})


BROKEN_CHECKPOINTS = [
    ("empty", lambda good: b"", r"cannot read the checkpoint"),
    ("truncated", lambda good: good[:-7], r"cannot read the checkpoint"),
    ("truncated-header", lambda good: good[:8], r"cannot read the checkpoint"),
    (
        "foreign-safetensors",
        lambda good: save({"w": torch.zeros(2)}),
        r"is not an arflows checkpoint",
    ),
    ("header-not-json", lambda good: _header("{oops"), r"is not an arflows checkpoint"),
    (
        "header-array",
        lambda good: _header([1, 2]),
        r"is not an arflows checkpoint \(its header is no object\)",
    ),
    (
        "header-deep",
        lambda good: _header("[" * 100_000 + "]" * 100_000),
        r"is not an arflows checkpoint",
    ),
    (
        "other-version",
        lambda good: _header({"format": "arflows-checkpoint", "version": 9}),
        r"version 9; expected 'arflows-checkpoint' version 1",
    ),
    (
        "no-state",
        lambda good: _header({"format": "arflows-checkpoint", "version": 1}),
        r"damaged checkpoint state \(KeyError: 'state'\)",
    ),
    (
        "missing-tensor",
        lambda good: _state({"__tensor__": "t9"}),
        r"damaged checkpoint state \(KeyError: 't9'\)",
    ),
    ("bad-dict", lambda good: _state({"__dict__": 5}), r"damaged checkpoint state \(TypeError"),
    (
        "bad-float",
        lambda good: _state({"__float__": "abc"}),
        r"damaged checkpoint state \(ValueError",
    ),
    ("state-list", lambda good: _state([1, 2]), r"damaged checkpoint state \(not a dict\)"),
]


@pytest.mark.parametrize(
    "make, match", [c[1:] for c in BROKEN_CHECKPOINTS], ids=[c[0] for c in BROKEN_CHECKPOINTS]
)
def test_broken_checkpoints_raise_checkpoint_error(tmp_path, make, match):
    good = write_checkpoint(tmp_path / "good", {"step": 3, "w": torch.ones(4)}).read_bytes()
    (tmp_path / "bad").write_bytes(make(good))
    with pytest.raises(CheckpointError, match=match):
        read_checkpoint(tmp_path / "bad")


def test_pickles_and_folders_are_not_checkpoints(tmp_path):
    marker = tmp_path / "ran"
    (tmp_path / "pickled").write_bytes(pickle.dumps({"model": _System(marker)}))
    torch.save({"model": _System(marker)}, tmp_path / "torch-saved")
    (tmp_path / "folder").mkdir()
    for name in ("pickled", "torch-saved", "folder"):
        with pytest.raises(CheckpointError, match=rf"cannot read the checkpoint .*{name}"):
            read_checkpoint(tmp_path / name)
    assert not marker.exists()
    with pytest.raises(TypeError, match=r"`state` to be a dict, got list"):
        write_checkpoint(tmp_path / "c", [1, 2])


def test_fit_and_cli_resume_from_a_broken_checkpoint_are_refused(tmp_path, models, capsys):
    ckpt = tmp_path / "c.safetensors"
    ckpt.write_bytes(pickle.dumps({"model": _System(tmp_path / "ran")}))
    flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
    with pytest.raises(CheckpointError, match="cannot read the checkpoint"):
        arflows.fit(
            flow, torch.randn(20, 2), epochs=1, checkpoint=ckpt, resume=True, progress=False
        )
    partial = tmp_path / "out.partial"
    partial.mkdir()
    (partial / "checkpoint.safetensors").write_bytes(_header([1]))
    argv = ["fit", models / "good.csv", *TINY, "-o", tmp_path / "out", "--resume"]
    code, _, err = run(argv, capsys)
    assert_usage_error(code, err, r"checkpoint\.safetensors is not an arflows checkpoint")
    assert not (tmp_path / "out").exists() and not (tmp_path / "ran").exists()


@pytest.mark.parametrize("columns", [[7], ["a"], [True], 3])
def test_edited_dequantized_columns_in_metadata_are_refused(tmp_path, capsys, columns):
    flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
    arflows.io.save(
        flow, tmp_path / "m", columns=["a", "b"], metadata={"dequantized_columns": [1]}
    )
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    config["metadata"]["dequantized_columns"] = columns
    (tmp_path / "m" / "config.json").write_text(json.dumps(config))
    code, _, err = run(["sample", tmp_path / "m", "-n", "3"], capsys)
    assert_usage_error(code, err, r"dequantized columns .* expected column indices in \[0, 2\)")
