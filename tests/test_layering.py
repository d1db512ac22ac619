"""DESIGN.md's layering, checked on the source with ``ast`` (nothing of arflows is imported).

The layers, lowest first: ``checks`` (the one shared utility module) imports nothing of arflows;
``nn`` imports only ``checks``; ``transforms`` only ``checks``; ``flows`` only ``nn``,
``transforms`` and ``checks``. Everything else is a product module: of ``flows``,
``transforms`` and ``nn`` it imports only the names their ``__init__`` lists in ``__all__``.
No module imports another module's private name or the package root (``arflows/__init__.py``
aside), and no module imports matplotlib, pandas or tqdm at module level.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "arflows"
CORE = ("checks", "nn", "transforms", "flows")
ALLOWED = {  # what each core layer may import of arflows besides itself
    "checks": set(),
    "nn": {"checks"},
    "transforms": {"checks"},
    "flows": {"checks", "nn", "transforms"},
}
PUBLIC_API = ("flows", "transforms", "nn")  # product modules import only their __all__
PRODUCT = {
    "__main__", "_version", "cli", "data", "diagnostics", "files", "io", "plot", "pyro",
    "sbi", "sklearn", "targets", "train", "vi",
}  # fmt: skip
HEAVY = {"matplotlib", "pandas", "tqdm"}
# Known violations that need more than an import edit, each with its reason:
# (importing file, the violation as `violations` words it).
ALLOWED_VIOLATIONS: set[tuple[str, str]] = set()


def module_name(relative):
    """``cli/fit.py`` -> ``arflows.cli.fit``; ``cli/__init__.py`` -> ``arflows.cli``."""
    parts = ["arflows", *pathlib.PurePosixPath(relative).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def resolve(relative, node):
    """The absolute module an ``ImportFrom`` reads from."""
    if not node.level:
        return node.module or ""
    package = module_name(relative).split(".")
    if not relative.endswith("__init__.py"):
        package = package[:-1]  # a module's relative imports start from its package
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def layer(module):
    """``arflows.flows.lazy`` -> ``flows``; ``arflows`` -> ``""``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def is_private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def imports(relative, source):
    """``(module, names)`` for every import of arflows in ``source``, at any depth.

    ``names`` is empty for ``import arflows.x``, which binds a module rather than names.
    """
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "arflows":
                    yield alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = resolve(relative, node)
            if target.split(".")[0] == "arflows":
                yield target, [alias.name for alias in node.names]


def public_names(package):
    """The ``__all__`` of ``arflows/<package>/__init__.py``, read from the source."""
    tree = ast.parse((ROOT / package / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets
        ):
            return set(ast.literal_eval(node.value))
    raise AssertionError(f"arflows/{package}/__init__.py has no __all__")


def violations(relative, source, public=None):
    """Every layering rule that ``source``, as the file ``arflows/<relative>``, breaks."""
    public = public if public is not None else {p: public_names(p) for p in PUBLIC_API}
    me = module_name(relative)
    mine = layer(me)
    found = []
    for target, names in imports(relative, source):
        theirs = layer(target)
        if target == "arflows" and relative != "__init__.py":
            found.append(f"imports the package root ({', '.join(names) or 'arflows'})")
        if mine in ALLOWED and theirs not in ("", mine, *ALLOWED[mine]):
            found.append(f"{mine} imports {target}")
        # `_version` is where the version lives; reaching it otherwise would need the root.
        private = [n for n in target.split(".")[1:] if is_private(n) and n != "_version"]
        if target != me:
            private += [f"{target}.{n}" for n in names if is_private(n)]
        found += [f"imports the private name {p}" for p in private]
        if mine not in ALLOWED and theirs in PUBLIC_API:
            if not names and target != f"arflows.{theirs}":
                found.append(f"imports the module {target}, not arflows.{theirs}")
            found += [
                f"imports {target}.{n}, not in arflows.{theirs}.__all__"
                for n in names
                if n not in public[theirs] and not is_private(n)
            ]
    return found


def arflows_files():
    return sorted(str(p.relative_to(ROOT).as_posix()) for p in ROOT.rglob("*.py"))


def test_every_module_has_a_layer():
    tops = {pathlib.PurePosixPath(f).parts[0].removesuffix(".py") for f in arflows_files()}
    assert tops - {"__init__"} == set(CORE) | PRODUCT, "classify new modules in CORE or PRODUCT"


@pytest.mark.parametrize("relative", arflows_files())
def test_module_follows_the_layering(relative):
    found = [
        v
        for v in violations(relative, (ROOT / relative).read_text())
        if (relative, v) not in ALLOWED_VIOLATIONS
    ]
    assert not found, f"arflows/{relative}: " + "; ".join(found)


def test_allowed_violations_still_occur():
    for relative, violation in ALLOWED_VIOLATIONS:
        assert violation in violations(relative, (ROOT / relative).read_text()), (
            f"arflows/{relative} no longer needs its allowance: {violation}"
        )


PUBLIC = {"flows": {"Flow", "MAF"}, "transforms": {"Transform"}, "nn": {"MADE"}}
BAD = [
    ("nn/made.py", "from ..transforms import Transform", "nn imports arflows.transforms"),
    ("nn/made.py", "from ..flows.lazy import Flow", "nn imports arflows.flows.lazy"),
    ("nn/made.py", "import arflows.train", "nn imports arflows.train"),
    ("transforms/base.py", "from ..nn import MADE", "transforms imports arflows.nn"),
    ("transforms/base.py", "def f():\n    from ..flows import MAF", "transforms imports"),
    ("flows/lazy.py", "from ..train import fit", "flows imports arflows.train"),
    ("flows/lazy.py", "from ..io import save", "flows imports arflows.io"),
    ("checks.py", "from .nn import MADE", "checks imports arflows.nn"),
    ("io.py", "from .flows.lazy import check_sizes", "not in arflows.flows.__all__"),
    ("io.py", "from .flows import check_sizes", "not in arflows.flows.__all__"),
    ("cli/fit.py", "from ..nn.made import check_int", "not in arflows.nn.__all__"),
    ("cli/fit.py", "import arflows.flows.lazy", "imports the module arflows.flows.lazy"),
    ("cli/fit.py", "from ..io import _flow_class", "private name arflows.io._flow_class"),
    ("train/loop.py", "from .step import _step", "private name arflows.train.step._step"),
    ("flows/lazy.py", "from ..transforms.support import _knee", "private name"),
    ("data/tables.py", "from ..flows._hidden import x", "private name _hidden"),
    ("cli/fit.py", "from .. import fit", "imports the package root (fit)"),
    ("vi.py", "from . import save", "imports the package root (save)"),
    ("vi.py", "from arflows import MAF", "imports the package root (MAF)"),
    ("vi.py", "import arflows", "imports the package root (arflows)"),
    ("train/__init__.py", "from .. import io", "imports the package root (io)"),
]
GOOD = [
    ("nn/made.py", "from ..checks import check_int\nfrom .masks import mask"),
    ("transforms/base.py", "from ..checks import check_int\nfrom .univariate import X"),
    ("flows/lazy.py", "from ..nn.made import check_int\nfrom ..transforms import Transform"),
    ("io.py", "from .flows import Flow\nfrom .flows.lazy import MAF\nimport arflows.flows"),
    ("cli/fit.py", "from ..train import fit\nfrom ..data.tables import read_table"),
    (
        "cli/fit.py",
        "from . import common\nfrom .._version import __version__\nimport arflows.checks",
    ),
    ("__init__.py", "from . import vi\nfrom .flows import MAF"),
    ("vi.py", "import torch\nfrom torch import nn\nimport numpy._core"),
]


@pytest.mark.parametrize(("relative", "source", "expected"), BAD)
def test_the_checker_flags(relative, source, expected):
    found = violations(relative, source, PUBLIC)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize(("relative", "source"), GOOD)
def test_the_checker_passes(relative, source):
    assert violations(relative, source, PUBLIC) == []


def heavy_imports(source):
    """The heavy optional dependencies ``source`` imports at module level."""
    for node in ast.parse(source).body:  # module level only; inside functions is the rule
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            names = [node.module or ""]
        else:
            continue
        yield from {n.split(".")[0] for n in names} & HEAVY


@pytest.mark.parametrize("relative", arflows_files())
def test_no_heavy_imports_at_module_level(relative):
    assert not list(heavy_imports((ROOT / relative).read_text()))


def test_the_heavy_check_flags_module_level_imports_only():
    source = "import pandas as pd\nfrom tqdm.auto import tqdm\ndef f():\n    import matplotlib\n"
    assert sorted(heavy_imports(source)) == ["pandas", "tqdm"]
