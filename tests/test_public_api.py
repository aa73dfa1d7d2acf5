"""The public API a plugin author uses, and the built-in plugins kept to it (as a third party would be).

Public: the ``mednns`` namespace (contracts, errors, helpers), the public packages' namespaces
(their ``__all__``) and the top-level modules; private: a package's submodules and ``_`` names.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

import mednns

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("mednns.data", "mednns.supernets", "mednns.training", "mednns.finetune", "mednns.zoo",
            "mednns.metaspace", "mednns.transfer", "mednns.evaluation")
CONTRACTS = ("Supernet", "Arch", "InvalidArchitecture", "MedicalDataset", "DatasetInfo", "SplitArrays", "Task",
             "DatasetEncoder", "ModelEncoder", "LossTerm", "TransferScore", "Stage", "Run", "PluginManager",
             "ComponentSource", "ComponentSpec", "hookimpl")
#: Code that must use the public API only: built-in plugins, built-in search spaces, example packages.
CLIENTS = sorted([*ROOT.glob("plugins/*.py"), *ROOT.glob("search_spaces/*.py"),
                  *ROOT.glob("examples/*/mednns_*/*.py")])


def public_module(name: str) -> bool:
    """``mednns``, a public package, or a top-level module of mednns (not a package's submodule)."""
    if name == "mednns" or name in PACKAGES or name.startswith(("mednns.plugins", "mednns.search_spaces")):
        return True
    parts = name.split(".")
    return (len(parts) == 2 and parts[0] == "mednns" and not parts[1].startswith("_")
            and (ROOT / "mednns" / f"{parts[1]}.py").is_file())


def ours(module: str) -> bool:
    return module == "mednns" or module.startswith("mednns.")


def imports_of(path: Path) -> list[tuple[str, list[str], int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and ours(node.module):
            found.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if ours(a.name)]
    return found


def test_the_top_level_namespace_holds_every_contract_and_each_resolves():
    assert set(CONTRACTS) <= set(mednns.__all__)
    for name in mednns.__all__:
        assert getattr(mednns, name) is not None, name
    assert mednns.Supernet.__module__ == "mednns.supernets.base" and mednns.Stage.__module__ == "mednns.stages"


@pytest.mark.parametrize("package", PACKAGES)
def test_every_public_name_of_a_package_resolves(package):
    module = importlib.import_module(package)
    assert len(module.__all__) == len(set(module.__all__))
    for name in module.__all__:  # a function, class or constant, never a submodule of the same name
        assert not isinstance(getattr(module, name), type(sys)), f"{package}.{name} is a module"


@pytest.mark.parametrize("path", CLIENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_built_in_plugins_and_examples_import_only_the_public_api(path):
    for module, names, line in imports_of(path):
        assert public_module(module), f"{path.name}:{line} imports the private module {module}"
        if module in PACKAGES or module == "mednns":
            exported = importlib.import_module(module).__all__
            private = [n for n in names if n not in exported and not public_module(f"{module}.{n}")]
            assert not private, f"{path.name}:{line}: {module} does not export {', '.join(private)}"


def test_importing_the_public_namespaces_does_not_import_torch():
    code = ("import sys, mednns, mednns.data, mednns.training, mednns.zoo, mednns.metaspace, mednns.transfer, "
            "mednns.evaluation; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_type_checkers_see_the_same_contracts_as_the_lazy_names():
    """``mednns/__init__.py`` names its lazy contracts twice: for type checkers (under TYPE_CHECKING) and
    for run time; the two lists must agree, and each must be the object the lazy name loads."""
    tree = ast.parse((ROOT / "mednns" / "__init__.py").read_text())
    guarded = next(node for node in tree.body if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
    typed = {alias.name: node.module for node in guarded.body for alias in node.names}
    assert set(typed) == set(mednns._CONTRACTS)
    for name, module in typed.items():
        assert getattr(mednns, name) is getattr(importlib.import_module(module), name), name
