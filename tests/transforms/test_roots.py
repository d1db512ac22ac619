"""The safeguarded Newton root finder: accuracy, tolerances, early exit, brackets, guarantees."""

import pytest
import torch

from arflows.transforms.roots import monotone_root

F64 = torch.float64


def sinh(x, index):
    return torch.sinh(x), torch.cosh(x)


def cube(x, index):  # f'(0) = 0: Newton alone divides by zero at the root y = 0
    return x**3, 3 * x**2


class Counting:
    """Wraps f and records how many elements each call evaluated."""

    def __init__(self, f):
        self.f, self.sizes = f, []

    def __call__(self, x, index):
        self.sizes.append(x.numel())
        return self.f(x, index)


@pytest.mark.parametrize("dtype", [torch.float32, F64], ids=str)
def test_solves_sinh_to_tolerance(dtype):
    y = torch.sinh(torch.linspace(-12, 12, 301, dtype=F64)).to(dtype)
    root = monotone_root(sinh, y)
    expected = torch.asinh(y.double())
    tol = 10 * torch.finfo(dtype).eps ** 0.75 * (1 + expected.abs())
    assert root.converged.all()
    assert ((root.x.double() - expected).abs() <= tol).all()
    assert root.x.dtype == dtype and root.iterations.shape == y.shape


def test_early_exit_and_only_unconverged_elements_are_evaluated():
    y = torch.randn(1000, dtype=F64) * 5
    f = Counting(sinh)
    root = monotone_root(f, y, -10.0, 10.0)
    assert root.converged.all()
    assert root.iterations.max() < 15  # far fewer than a fixed 50-step bisection
    # The loop ends with the slowest element, and each pass evaluates only the unconverged.
    refine = f.sizes[1:]  # the first call checks both bracket ends
    assert len(refine) == root.iterations.max()
    assert refine == sorted(refine, reverse=True) and refine[-1] < refine[0]
    assert sum(refine) == root.iterations.sum()


def test_per_element_tolerance_is_met():
    y = torch.sinh(torch.randn(6, 50, dtype=F64) * 3)
    atol = 10.0 ** -torch.arange(2, 14, 2, dtype=F64)[:, None]  # one tolerance per row
    root = monotone_root(sinh, y, atol=atol, rtol=0.0)
    error = (root.x - torch.asinh(y)).abs()
    assert root.converged.all()
    assert (error <= atol).all()
    # Looser rows stop earlier.
    per_row = root.iterations.sum(-1)
    assert per_row[0] < per_row[-1]


def test_bracket_expands_geometrically():
    y = torch.tensor([-1e30, -3.0, 0.0, 2.0, 1e30], dtype=F64)
    root = monotone_root(sinh, y)  # starts from [-1, 1]
    assert torch.allclose(root.x, torch.asinh(y), rtol=1e-12, atol=1e-14)
    assert root.expansions[2] == 0 and root.expansions[0] > 0 and root.expansions[-1] > 0
    # doubling steps: |x| = 69 needs about log2(69) expansions, not 69
    assert root.expansions.max() <= 10


def test_zero_derivative_at_the_root_falls_back_to_bisection():
    y = torch.tensor([0.0, 1e-30, -8.0, 27.0], dtype=F64)
    root = monotone_root(cube, y, -0.5, 0.7)
    assert root.x.isfinite().all() and root.converged.all()
    assert torch.allclose(root.x, torch.sign(y) * y.abs() ** (1 / 3), atol=1e-10)


def test_nan_derivative_still_gives_a_finite_bracketed_root():
    def nan_slope(x, index):
        return x**3 + x, torch.full_like(x, float("nan"))

    y = torch.randn(20, dtype=F64) * 10
    root = monotone_root(nan_slope, y, max_iter=200)
    assert root.x.isfinite().all() and root.converged.all()
    assert torch.allclose(root.x**3 + root.x, y, atol=1e-8)


def test_out_of_range_target_is_finite_not_nan():
    y = torch.tensor([2.0, -2.0, 0.5], dtype=torch.float32)
    root = monotone_root(lambda x, i: (torch.tanh(x), 1 - torch.tanh(x) ** 2), y)
    assert root.x.isfinite().all()
    assert root.converged.tolist() == [False, False, True]
    assert torch.allclose(root.x[2], torch.atanh(y[2]), atol=1e-5)


def test_exact_bracket_and_empty_input():
    y = torch.tensor([1.0], dtype=F64)
    root = monotone_root(lambda x, i: (x, torch.ones_like(x)), y, 1.0, 1.0)
    assert root.x.item() == 1.0 and root.iterations.item() == 0 and root.converged.item()
    empty = monotone_root(sinh, torch.empty(0, 3, dtype=F64))
    assert empty.x.shape == (0, 3)


def test_index_refers_to_the_flattened_target():
    slopes = torch.rand(4, 3, dtype=F64) + 0.5
    y = torch.randn(4, 3, dtype=F64)

    def linear(x, index):
        s = slopes.reshape(-1)[index]
        return s * x, s

    root = monotone_root(linear, y)
    assert torch.allclose(root.x, y / slopes, atol=1e-12)


def test_bad_arguments_are_named():
    y = torch.zeros(3)
    with pytest.raises(TypeError, match="floating-point"):
        monotone_root(sinh, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="max_iter >= 1"):
        monotone_root(sinh, y, max_iter=0)
    with pytest.raises(ValueError, match="tolerances >= 0"):
        monotone_root(sinh, y, atol=-1.0)
    with pytest.raises(ValueError, match="finite `lower`"):
        monotone_root(sinh, y, lower=float("-inf"))
    with pytest.raises(ValueError, match="`atol` to broadcast"):
        monotone_root(sinh, y, atol=torch.ones(4))
    with pytest.raises(TypeError, match="`rtol` to be a float"):
        monotone_root(sinh, y, rtol="tight")
