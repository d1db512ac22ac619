"""DESIGN.md's layering: nn knows nothing of transforms; transforms nothing of nn or flows."""

import ast
import pathlib

import pytest

import arflows

ROOT = pathlib.Path(arflows.__file__).parent
FORBIDDEN = {
    "nn": {"transforms", "flows"},
    "transforms": {"nn", "flows"},
}
HEAVY = {"matplotlib", "pandas", "tqdm"}


def imports(path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level >= 2:  # from ..x import y
                yield mod.split(".")[0]
            elif mod.startswith("arflows."):
                yield mod.split(".")[1]
            else:
                yield mod.split(".")[0]
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                yield parts[1] if parts[0] == "arflows" and len(parts) > 1 else parts[0]


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layering(package):
    for path in (ROOT / package).glob("*.py"):
        bad = set(imports(path)) & FORBIDDEN[package]
        assert not bad, f"{path.name} imports {bad}"


def test_no_heavy_imports_at_module_level():
    for path in ROOT.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in tree.body:  # module level only
            if isinstance(node, ast.Import | ast.ImportFrom):
                names = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                )
                assert not {n.split(".")[0] for n in names} & HEAVY, path.name
