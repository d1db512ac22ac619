"""Doctest set-up: ``torch`` in every namespace and a fixed seed."""

import importlib.util

import pytest
import torch


@pytest.fixture(autouse=True)
def _doctest_torch(doctest_namespace: dict) -> None:
    torch.manual_seed(0)
    doctest_namespace["torch"] = torch

# Modules of optional extras: their doctests only run where the extra is installed.
collect_ignore = [
    f"arflows/{path}"
    for path, package in (("sklearn", "sklearn"), ("pyro.py", "pyro"), ("sbi.py", "sbi"))
    if importlib.util.find_spec(package) is None
]
