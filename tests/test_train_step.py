"""The step's switch of torch's distribution validation, and the one random split of rows."""

import pytest
import torch
from torch.distributions import Distribution

import arflows
from arflows.data import split_indices
from arflows.train.step import unvalidated


@pytest.fixture
def validation_on():
    before = Distribution._validate_args
    Distribution.set_default_validate_args(True)
    yield
    Distribution.set_default_validate_args(before)


def test_unvalidated_restores_the_flag_when_the_block_raises(validation_on):
    with pytest.raises(RuntimeError, match="boom"), unvalidated():
        assert not Distribution._validate_args
        raise RuntimeError("boom")
    assert Distribution._validate_args


def test_overlapping_unvalidated_blocks_restore_the_flag_found_first(validation_on):
    # Two fits in two threads: the first to leave must not turn validation back on under
    # the second, and the last must restore the value found before either began.
    first, second = unvalidated(), unvalidated()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)
    assert not Distribution._validate_args
    second.__exit__(None, None, None)
    assert Distribution._validate_args


def test_fit_leaves_validation_on_after_a_callback_raises(validation_on):
    def fail(epoch, history, flow):
        assert not Distribution._validate_args  # off during the epochs
        raise RuntimeError("callback failed")

    flow = arflows.MAF(2, transforms=1, hidden_features=(8,))
    with pytest.raises(RuntimeError, match="callback failed"):
        arflows.fit(flow, torch.randn(50, 2), epochs=2, progress=False, callbacks=[fail])
    assert Distribution._validate_args


def test_split_indices_cuts_one_permutation_into_disjoint_parts():
    parts = split_indices(10, (2, 3, 5), torch.Generator().manual_seed(1))
    assert [len(p) for p in parts] == [2, 3, 5]
    assert sorted(torch.cat(parts).tolist()) == list(range(10))
    again = split_indices(10, (2, 3, 5), torch.Generator().manual_seed(1))
    assert all(torch.equal(a, b) for a, b in zip(parts, again, strict=True))
    expected = torch.randperm(10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(torch.cat(parts), expected)


@pytest.mark.parametrize("sizes", [(2, 3), (11, -1)])
def test_split_indices_refuses_sizes_that_do_not_add_up(sizes):
    with pytest.raises(ValueError, match="add up to 10"):
        split_indices(10, sizes)


@pytest.mark.parametrize("max_norm", [1e-3, 0.5, 1e6])
def test_clip_gradients_scales_as_torchs_clipping_and_returns_the_norm(max_norm):
    from arflows.train.step import clip_gradients

    ours, theirs = (arflows.MAF(3, transforms=2, hidden_features=(8,)).double() for _ in "ab")
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(40, 3, dtype=torch.float64)
    for flow in (ours, theirs):
        (-flow().log_prob(x).mean()).backward()
    norm = clip_gradients(list(ours.parameters()), max_norm)
    expected = torch.nn.utils.clip_grad_norm_(list(theirs.parameters()), max_norm)
    assert norm == pytest.approx(expected.item(), rel=1e-12)
    for p, q in zip(ours.parameters(), theirs.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=0)
    assert clip_gradients([torch.nn.Parameter(torch.zeros(2))], 1.0) == 0.0  # no gradients
