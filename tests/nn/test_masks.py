import pytest
import torch

from arflows.nn import hidden_degrees, input_degrees, mask


def test_input_degrees_follow_order():
    assert input_degrees(4).tolist() == [1, 2, 3, 4]
    assert input_degrees(3, [1, 2, 0]).tolist() == [2, 3, 1]


@pytest.mark.parametrize("order", [[0, 0, 1], [0, 1], [1, 2, 3]], ids=str)
def test_input_degrees_reject_non_permutations(order):
    with pytest.raises(ValueError, match="permutation"):
        input_degrees(3, order)


@pytest.mark.parametrize("features", [1, 2, 5, 9])
@pytest.mark.parametrize("width", [1, 3, 8, 20])
@pytest.mark.parametrize("context", [False, True])
def test_sequential_degrees_sorted_in_range(features, width, context):
    deg = hidden_degrees(width, features, context=context)
    assert torch.equal(deg, deg.sort().values)
    low = 0 if context else 1
    assert deg.min() == low
    assert deg.max() <= max(features - 1, low)
    if width >= features and features > 1:  # every degree appears
        assert set(deg.tolist()) == set(range(low, features))


def test_random_degrees_use_generator_and_low():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = hidden_degrees(50, 10, method="random", generator=g1, low=4)
    b = hidden_degrees(50, 10, method="random", generator=g2, low=4)
    assert torch.equal(a, b)
    assert a.min() >= 4 and a.max() <= 9
    assert torch.equal(a, a.sort().values)


def test_unknown_degree_method():
    with pytest.raises(ValueError, match="hidden_degrees"):
        hidden_degrees(4, 4, method="zigzag")


def test_mask_rule():
    a, b = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3])
    for strict in (False, True):
        m = mask(a, b, strict)
        for o in range(3):
            for i in range(4):
                expected = a[i] < b[o] if strict else a[i] <= b[o]
                assert m[o, i] == expected
