"""arflows.checks: the shared argument checks, their messages, their place below every layer."""

import ast
import pathlib

import numpy as np
import pytest
import torch

import arflows.checks as checks
from arflows.checks import (
    AN_INTEGER,
    INT_AT_LEAST,
    check_activation,
    check_at_least,
    check_choice,
    check_finite_positive,
    check_int,
    check_ints,
    check_last_dim,
    check_positive,
    is_int,
    is_integer_dtype,
)


def test_imports_nothing_of_arflows():
    tree = ast.parse(pathlib.Path(checks.__file__).read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0 and not (node.module or "").startswith("arflows")
        elif isinstance(node, ast.Import):
            assert not any(a.name.startswith("arflows") for a in node.names)


def test_is_int_refuses_floats_and_bools():
    assert is_int(3) and is_int(np.int64(3))
    assert not any(is_int(v) for v in (3.0, True, "3", None, torch.tensor(3)))


def test_check_int_returns_a_python_int():
    value = check_int("features", np.int64(4), 1)
    assert value == 4 and type(value) is int


@pytest.mark.parametrize(
    "value, error, text",
    [
        (0, ValueError, "expected `features >= 1`, got 0"),
        (2.5, TypeError, "expected `features` to be an int >= 1, got 2.5"),
        ("3", TypeError, "expected `features` to be an int >= 1, got '3'"),
        (True, TypeError, "expected `features` to be an int >= 1, got True"),
    ],
    ids=["small", "float", "str", "bool"],
)
def test_check_int_messages(value, error, text):
    with pytest.raises(error) as info:
        check_int("features", value, 1)
    assert str(info.value) == text


@pytest.mark.parametrize("value", [0, 2.0, True, "3"])
@pytest.mark.parametrize(
    "message, text",
    [
        (INT_AT_LEAST, "expected `orders` to be an int >= 1, got {!r}"),
        (AN_INTEGER, "expected an integer `orders >= 1`, got {!r}"),
    ],
    ids=["int-at-least", "an-integer"],
)
def test_check_int_with_a_message_raises_one_value_error(value, message, text):
    with pytest.raises(ValueError) as info:
        check_int("orders", value, 1, message=message)
    assert str(info.value) == text.format(value)
    assert check_int("orders", 3, 1, message=message) == 3


def test_check_ints():
    assert check_ints("hidden_features", torch.tensor([8, 4]), 1) == (8, 4)
    assert check_ints("hidden_features", (), 1) == ()
    for bad in (8, "88", (8.5,), (True,)):
        with pytest.raises(TypeError, match="`hidden_features` to be a sequence of ints"):
            check_ints("hidden_features", bad, 1)
    with pytest.raises(ValueError, match=r"`param_dims` entries >= 1, got \(1, 0\)"):
        check_ints("param_dims", (1, 0), 1)
    with pytest.raises(ValueError, match="at least one entry in `param_dims`"):
        check_ints("param_dims", (), 1, empty=False)


def test_value_checks():
    check_at_least("eps", 0, 0)
    with pytest.raises(ValueError, match=r"^expected `eps >= 0`, got -1e-05$"):
        check_at_least("eps", -1e-5, 0)
    for bad in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="`bound > 0`"):
            check_positive("bound", bad)
    assert check_finite_positive("bound", 2) == 2.0
    with pytest.raises(TypeError, match=r"`bound` to be a number > 0, got True"):
        check_finite_positive("bound", True)
    for bad in (0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="a finite `bound > 0`"):
            check_finite_positive("bound", bad)


def test_check_choice_lists_the_choices():
    check_choice("scale", None, (None, "lu"))
    with pytest.raises(ValueError, match=r"^expected `linear` in \(None, 'lu'\), got 'dense'$"):
        check_choice("linear", "dense", (None, "lu"))


def test_check_activation():
    check_activation(torch.nn.ReLU)
    for bad in (torch.nn.ReLU(), "relu"):
        with pytest.raises(TypeError, match="module class such as torch.nn.ReLU"):
            check_activation(bad)


def test_check_last_dim():
    check_last_dim(torch.zeros(2, 3), 3)
    check_last_dim(torch.zeros(3), 3)
    with pytest.raises(ValueError, match=r"^expected y with shape \(\*, 3\), got \(\)$"):
        check_last_dim(torch.zeros(()), 3, "y")
    with pytest.raises(ValueError, match=r"^expected shape \(\*, 3\), got \(3, 2\)$"):
        check_last_dim(torch.zeros(3, 2), 3, name=None)


def test_is_integer_dtype():
    assert is_integer_dtype(torch.tensor([1, 2])) and is_integer_dtype(
        torch.zeros(2, dtype=torch.uint8)
    )
    for dtype in (torch.float32, torch.complex64, torch.bool):
        assert not is_integer_dtype(torch.zeros(2, dtype=dtype))
