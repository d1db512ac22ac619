"""Ties and point masses: grids found in columns, dequantization by the grid step, discrete
log-probabilities of grid cells, fits with {column: step}, notes and the ties report."""

import math

import numpy as np
import pytest
import torch
from torch.distributions import Independent, Normal
from torch.utils.data import TensorDataset

import arflows
from arflows.data import (
    check_rows,
    dequantize,
    describe_ties,
    discrete_log_prob,
    floor_to_grid,
    grid_columns,
    grid_origins,
    grid_step,
    integer_columns,
)
from arflows.flows import NormalizingFlow
from arflows.flows.agnostic import OrderAgnosticMAF
from tests.helpers import randomize

F64 = torch.float64
QUIET = dict(progress=False)


def _draws(n=2000, high=20, seed=0):
    """Integers 0..high-1, with ties, as float64."""
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed)).double()


# --- grid_step --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "step"),
    [
        (_draws(), 1.0),  # counts
        (_draws() * 1000, 1000.0),  # rounded to thousands
        (_draws() * 1000 + 1, 1000.0),  # ... shifted: the origin is 1
        (torch.tensor([0.0, 1000.0, 2000.0]), 1000.0),  # integers need no ties
        (_draws() * 5 - 35, 5.0),
        (torch.tensor([0.0, 2.0, 2.0, 0.0]), 2.0),
        (torch.tensor([7.0, 7.0]), 1.0),  # one integer: cells of 1
        (_draws() * 0.5 + 1, 0.5),  # a rating in halves
        (_draws() * 0.1, 0.1),  # tenths, not 0.10000000000000009
        ((_draws() * 0.1 + 1000).float(), 0.1),  # through float32, as tables are read
        (_draws(3000, 3) * 0.4 + (_draws(3000, 2, seed=1) * 0.6), 0.2),  # gaps 0.4, 0.6
        (_draws() / 3, pytest.approx(1 / 3, rel=1e-6)),
    ],
    ids=[
        "integers",
        "thousands",
        "thousands+1",
        "few-integers",
        "fives",
        "evens",
        "one-integer",
        "halves",
        "tenths",
        "tenths-float32",
        "fifths-below-the-smallest-gap",
        "thirds",
    ],
)
def test_grid_step_finds_the_coarsest_grid(values, step):
    found = grid_step(values)
    assert found == step
    assert grid_step(values.numpy()) == step  # arrays too


def test_grid_step_tolerates_float_noise_but_not_more():
    k = _draws() * 0.1
    noise = torch.randn(k.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    assert grid_step(k + 1e-12 * noise) == 0.1  # arithmetic noise: still the grid
    assert grid_step(k + 1e-4 * noise) is None  # measurement noise: continuous
    assert grid_step(torch.tensor([0.3, 0.1 * 3, 0.6, 0.2 * 3], dtype=F64)) == 0.3  # 0.1 * 3
    assert grid_step(torch.tensor([0.3, 0.6, 0.3, 0.6])) == 0.3  # float32: 0.300000011920929


@pytest.mark.parametrize(
    "values",
    [
        torch.randn(1000, generator=torch.Generator().manual_seed(0), dtype=F64),
        torch.randn(1000, generator=torch.Generator().manual_seed(0)),  # a float32 lattice
        torch.tensor([0.0, math.pi, math.e, 1.7]).repeat(50),  # discrete, on no grid
        torch.tensor(np.round(np.random.default_rng(0).normal(size=500), 3)),  # few ties
        torch.cat([torch.zeros(600), torch.rand(400, dtype=F64)]),  # a point mass
        torch.tensor([2.5, 2.5, 2.5]),  # one non-integer value
        torch.tensor([1.0, math.nan, 2.0, 2.0]),
        torch.tensor([]),
    ],
    ids=["normal", "normal-float32", "pi-e", "3-decimals", "zeros+uniform", "one", "nan", "empty"],
)
def test_grid_step_is_none_off_a_grid(values):
    assert grid_step(values) is None


def test_grid_columns_supersede_integer_columns():
    gen = torch.Generator().manual_seed(0)
    x = torch.stack(
        [
            _draws(),  # integers
            _draws() * 1000,
            _draws() * 0.5,
            torch.randn(2000, generator=gen, dtype=F64),
            torch.rand(2000, generator=gen, dtype=F64).round(decimals=6) + 3,  # few ties
        ],
        -1,
    )
    steps = grid_columns(x)
    assert steps == {0: 1.0, 1: 1000.0, 2: 0.5}
    assert set(integer_columns(x)) <= set(steps)
    assert grid_columns(x.long()[:, :2]) == {0: 1.0, 1: 1000.0}
    assert grid_origins(x + 1, steps) == {0: 0.0, 1: 1.0, 2: 0.0}
    assert grid_origins(torch.tensor([[-0.75], [0.25], [1.75]]), {0: 0.5}) == {0: 0.25}


# --- dequantize and floor_to_grid -------------------------------------------------------------


def test_dequantize_by_steps_fills_each_cell_and_floors_back():
    k = torch.stack([_draws() * 1000 + 1, _draws(seed=1) * 0.5, _draws(seed=2)], -1)
    steps, origins = {0: 1000.0, 1: 0.5}, {0: 1.0}
    x = dequantize(k, steps=steps, generator=torch.Generator().manual_seed(0))
    noise = x - k
    assert torch.equal(noise[:, 2], torch.zeros(2000, dtype=F64))  # no step: left alone
    for j, h in steps.items():
        assert (noise[:, j] >= 0).all() and (noise[:, j] < h).all()
        assert noise[:, j].min() < 0.01 * h and noise[:, j].max() > 0.99 * h  # the whole cell
        assert 0.45 * h < noise[:, j].mean() < 0.55 * h
    assert torch.equal(floor_to_grid(x, steps, origins), k)
    assert not torch.equal(floor_to_grid(x, steps), k)  # the origin matters for column 0
    # Columns without a step get step 1; the call without steps is the old one, bit for bit.
    y = dequantize(k, [1, 2], {1: 0.5}, generator=torch.Generator().manual_seed(0))
    assert ((y - k)[:, 2] < 1).all() and ((y - k)[:, 2] > 0.99).any()
    old = dequantize(k, [1, 2], generator=torch.Generator().manual_seed(0))
    ones = dequantize(k, [1, 2], {1: 1.0, 2: 1.0}, generator=torch.Generator().manual_seed(0))
    assert torch.equal(old, ones)


def test_floor_to_grid_keeps_grid_values_and_short_decimals():
    values = torch.tensor([round(1000 + 0.1 * i, 1) for i in range(2000)])[:, None]  # float32
    assert torch.equal(floor_to_grid(values, {0: 0.1}), values)
    tenths = torch.tensor([[0.34], [0.4], [-0.05]], dtype=F64)
    assert floor_to_grid(tenths, {0: 0.1}).flatten().tolist() == [0.3, 0.4, -0.1]
    x = torch.tensor([[2.7, -0.2]])
    assert torch.equal(floor_to_grid(x, {0: 1.0, 1: 1.0}), x.floor())


@pytest.mark.parametrize(
    ("steps", "match"),
    [
        ({0: 0.0}, "finite `steps` > 0"),
        ({0: -1.0}, "finite `steps` > 0"),
        ({0: math.inf}, "finite `steps` > 0"),
        ({0: True}, "finite `steps` > 0"),
        ({2: 1.0}, r"ints in 0\.\.1"),
        ({0: 1.0, -2: 2.0}, "distinct"),
    ],
)
def test_bad_steps_are_named(steps, match):
    with pytest.raises(ValueError, match=match):
        dequantize(torch.zeros(3, 2), steps=steps)
    with pytest.raises(ValueError, match=match):
        floor_to_grid(torch.zeros(3, 2), steps)


def test_steps_outside_columns_and_non_mappings_are_refused():
    with pytest.raises(ValueError, match=r"`steps` for columns in `columns` \[0\], got .*\[1\]"):
        dequantize(torch.zeros(3, 2), [0], {1: 2.0})
    with pytest.raises(TypeError, match="mapping"):
        dequantize(torch.zeros(3, 2), [0], [2.0])


# --- discrete_log_prob with steps ------------------------------------------------------------


def test_discrete_log_prob_of_grid_cells_matches_exact_masses():
    base = Normal(torch.tensor([0.3, 2500.0], dtype=F64), torch.tensor([0.8, 1500.0], dtype=F64))
    dist = Independent(base, 1)
    steps = {0: 0.5, 1: 1000.0}
    h = torch.tensor([0.5, 1000.0], dtype=F64)
    v = torch.tensor([[0.0, 2000.0], [0.5, 0.0], [-1.0, 4000.0], [1.5, 1000.0]], dtype=F64)
    exact = (base.cdf(v + h) - base.cdf(v)).log().sum(-1)
    gen = torch.Generator().manual_seed(0)
    estimate = discrete_log_prob(dist, v, steps=steps, samples=4000, generator=gen)
    assert torch.allclose(estimate, exact, atol=0.02)
    # Without the steps it is the mass of [v, v + 1): the densities, not the cells, differ.
    unit = discrete_log_prob(dist, v, [0, 1], samples=4000, generator=gen)
    assert (unit - exact).abs().min() > 1.0
    # One column on a grid, the other continuous: a mass times a density.
    point = torch.tensor([[0.5, 1234.5]], dtype=F64)
    mixed = discrete_log_prob(dist, point, steps={0: 0.5}, samples=4000, generator=gen)
    mass = (base.cdf(point + h) - base.cdf(point))[0, 0].log()
    assert torch.allclose(mixed, mass + base.log_prob(point)[0, 1], atol=0.02)


def test_discrete_masses_of_a_flow_on_a_grid_sum_to_one():
    flow = OrderAgnosticMAF(1, transforms=2, hidden_features=(8,), orders=2)
    flow = randomize(flow.double(), scale=0.5).eval()
    v = torch.arange(-60, 60, dtype=F64)[:, None] * 0.25 + 0.1  # cells [v, v + 0.25)
    with torch.no_grad():
        log_p = discrete_log_prob(
            flow(), v, steps={0: 0.25}, samples=200, generator=torch.Generator().manual_seed(0)
        )
    assert abs(log_p.exp().sum().item() - 1) < 0.01


# --- fit with {column: step} ----------------------------------------------------------------


def _spy(monkeypatch):
    calls = []
    original = NormalizingFlow.log_prob

    def log_prob(self, x):
        calls.append((torch.is_grad_enabled(), x.detach().clone()))
        return original(self, x)

    monkeypatch.setattr(NormalizingFlow, "log_prob", log_prob)
    return calls


def _tiny(features=2):
    return arflows.MAF(features, transforms=1, hidden_features=(8,)).double()


def _grid_rows(n=200):
    gen = torch.Generator().manual_seed(0)
    thousands = torch.randint(0, 5, (n,), generator=gen).double() * 1000
    return torch.stack([thousands, torch.randn(n, generator=gen, dtype=F64)], -1)


def test_fit_dequantizes_by_step_fresh_for_training_fixed_for_validation(monkeypatch):
    x = _grid_rows()
    calls = _spy(monkeypatch)
    arflows.fit(_tiny(), x, valid=0.2, epochs=2, batch_size=1000, dequantize={0: 1000.0},
                patience=None, initialize=False, **QUIET)  # fmt: skip
    train = [x for grad, x in calls if grad]
    valid = [x for grad, x in calls if not grad]
    assert len(train) == len(valid) == 2
    for xs in train + valid:
        cell = floor_to_grid(xs, {0: 1000.0})[:, 0]
        assert set(cell.tolist()) <= {0.0, 1000.0, 2000.0, 3000.0, 4000.0}
        assert (xs[:, 0] - cell).max() > 100  # spread over the cell, not U[0, 1)
        assert set(xs[:, 1].tolist()) <= set(x[:, 1].tolist())  # untouched column
    assert not torch.equal(train[0][:, 0].sort().values, train[1][:, 0].sort().values)
    assert torch.equal(valid[0], valid[1])


def test_fit_dequantizes_streamed_validation_rows_by_step_the_same_every_epoch(monkeypatch):
    x = _grid_rows()
    calls = _spy(monkeypatch)
    arflows.fit(_tiny(), x[:150], valid=TensorDataset(x[150:]), epochs=2, batch_size=1000,
                dequantize={0: 1000.0}, patience=None, **QUIET)  # fmt: skip
    valid = [x for grad, x in calls if not grad]
    assert len(valid) == 2 and torch.equal(valid[0], valid[1])
    noise = valid[0][:, 0] - x[150:, 0]
    assert (noise >= 0).all() and (noise < 1000).all() and noise.max() > 100


def test_fit_with_indices_is_unchanged_and_bad_steps_are_named():
    x = _grid_rows()
    x[:, 0] /= 1000
    runs = []
    for spec in ([0], {0: 1.0}):
        torch.manual_seed(0)
        runs.append(arflows.fit(_tiny(), x, epochs=2, dequantize=spec, seed=3, **QUIET).valid)
    assert runs[0] == runs[1]
    for spec, error, match in [
        ({0: 0.0}, ValueError, "grid steps > 0 in `dequantize`"),
        ({0: "1"}, ValueError, "grid steps > 0 in `dequantize`"),
        ({2: 1.0}, ValueError, r"`dequantize` columns in \[0, 2\)"),
        ({0: 1.0, -2: 1.0}, ValueError, "distinct columns in `dequantize`"),
        ({0.5: 1.0}, TypeError, "integer columns in `dequantize`"),
    ]:
        with pytest.raises(error, match=match):
            arflows.fit(_tiny(), x, epochs=1, dequantize=spec, **QUIET)


def test_fit_keeps_a_constant_column_dequantized_by_a_step():
    x = _grid_rows(60)
    x[:, 0] = 2000.0
    history = arflows.fit(_tiny(), x, epochs=1, dequantize={0: 1000.0}, **QUIET)
    assert len(history.train) == 1


# --- notes and the ties report ---------------------------------------------------------------


def test_check_rows_says_what_is_done_with_a_point_mass_and_a_dequantized_constant():
    x = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
    x[:60, 0] = 0.0
    x[:, 1] = 4000.0
    notes = check_rows(x, ["rain", "k", "t"], dequantized={1: 1000.0})
    assert len(notes) == 2
    assert notes[0].startswith("column 'k' holds the value 4000 in every row: dequantized")
    assert "uniform on [4000, 5000)" in notes[0]
    assert notes[1].startswith("column 'rain' takes the value 0 in 60% of the rows")
    assert "kept as is" in notes[1] and "dequantize it by the grid step" in notes[1]


def test_describe_ties_lists_grids_and_point_masses_with_the_action():
    gen = torch.Generator().manual_seed(0)
    n = 400
    x = torch.stack(
        [
            torch.randint(0, 4, (n,), generator=gen).double() * 1000,  # dequantized by 1000
            torch.randint(0, 4, (n,), generator=gen).double() * 1000,  # dequantized by 1
            torch.randint(1, 11, (n,), generator=gen).double() / 2,  # a grid, not dequantized
            torch.where(torch.rand(n, generator=gen) < 0.4, 0.0, torch.rand(n, generator=gen)),
            torch.randn(n, generator=gen, dtype=F64),  # continuous: not listed
        ],
        -1,
    ).double()
    names = ["a", "b", "rating", "rain", "t"]
    rows = describe_ties(x, names, dequantized={0: 1000.0, 1: 1.0})
    assert [r["column"] for r in rows] == ["a", "b", "rating", "rain"]
    a, b, rating, rain = rows
    assert (a["index"], a["distinct"], a["step"], a["origin"], a["dequantized"]) == (
        0, 4, 1000.0, 0.0, 1000.0,
    )  # fmt: skip
    assert a["action"].startswith("dequantized: U[0, 1000) noise") and "but" not in a["action"]
    assert "dequantize by 1000" in b["action"]  # cells of 1 leave gaps
    assert rating["step"] == 0.5 and rating["dequantized"] is None
    assert rating["action"].startswith("kept as is, though on a grid of step 0.5")
    assert rain["step"] is None and rain["mode"] == 0.0 and 0.3 < rain["mode_share"] < 0.5
    assert "point mass at 0" in rain["action"]
    assert describe_ties(x[:, 4:]) == []
    assert [r["column"] for r in describe_ties(x, dequantized=[0])] == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="`share`"):
        describe_ties(x, share=0)
