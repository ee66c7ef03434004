"""The package's layers: core imports nothing else of llmc_utils, stages build on core, pairtool on core and stages,
pipeline on core and stages (CONTRIBUTING.md, *Layers*). Imports inside functions count too: a lazy import is still
a dependency."""

import ast

import pytest

from tests.conftest import ROOT

ALLOWED = {
    "core": {"core"},
    "stages": {"core", "stages"},
    "pairtool": {"core", "stages", "pairtool"},
    "pipeline": {"core", "stages", "pipeline"},
}


def imported_packages(path) -> set[str]:
    """The llmc_utils packages a module imports (the top-level torchvision shim is not a package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = (
            [node.module]
            if isinstance(node, ast.ImportFrom) and node.module
            else [a.name for a in node.names]
            if isinstance(node, ast.Import)
            else []
        )
        for name in names:
            parts = name.split(".")
            if parts[0] == "llmc_utils" and len(parts) > 1 and parts[1] in ALLOWED:
                found.add(parts[1])
            elif parts[0] == "llmc_utils" and len(parts) == 1 and isinstance(node, ast.ImportFrom):
                found |= {a.name for a in node.names if a.name in ALLOWED}
    return found


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_the_layers_below_it(package):
    wrong = {
        str(p.relative_to(ROOT)): sorted(imported_packages(p) - ALLOWED[package])
        for p in sorted((ROOT / "llmc_utils" / package).glob("*.py"))
    }
    assert not {k: v for k, v in wrong.items() if v}, wrong


def test_no_module_is_left_outside_the_packages():
    assert sorted(p.name for p in (ROOT / "llmc_utils").glob("*.py")) == ["__init__.py", "_torchvision_compat.py"]
