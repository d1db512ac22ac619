"""DESIGN.md's layering for the product modules: no private names of other arflows modules."""

import ast
import pathlib

import pytest

import arflows

ROOT = pathlib.Path(arflows.__file__).parent
PRODUCT = [
    *(ROOT / name for name in ("io.py", "sklearn.py", "diagnostics.py")),
    *sorted((ROOT / "cli").glob("*.py")),
]


def private_imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (
            node.level or (node.module or "").startswith("arflows")
        ):
            for alias in node.names:
                if alias.name.startswith("_") and alias.name != "__version__":
                    yield f"{node.module}.{alias.name}"


@pytest.mark.parametrize("path", PRODUCT, ids=lambda p: str(p.relative_to(ROOT)))
def test_product_modules_import_no_private_names(path):
    assert not list(private_imports(path)), f"{path.name} imports private names"


def test_the_check_finds_a_private_import(tmp_path):
    path = tmp_path / "bad.py"
    path.write_text("from ..io import _flow_class\n")
    assert list(private_imports(path)) == ["io._flow_class"]
