"""Packaging: the wheel installs plugins/ and search_spaces/ under mednns, never as top-level packages."""

from __future__ import annotations

import configparser
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_contains_only_the_mednns_namespace(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path), str(ROOT)], check=True, capture_output=True, timeout=300)
    wheel = next(tmp_path.glob("mednns-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names}
    assert top_level == {"mednns", next(n for n in top_level if n.endswith(".dist-info"))}
    assert "mednns/plugins/medmnist.py" in names and "mednns/search_spaces/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read(
        next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[mednns]" in entry_points and "medmnist = mednns.plugins.medmnist" in entry_points
    assert "mednns = mednns.cli:main" in entry_points


def test_no_generic_top_level_package_is_importable(tmp_path):
    for name in ("plugins", "search_spaces"):
        result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=tmp_path, capture_output=True,
                                text=True)
        assert result.returncode != 0 and "ModuleNotFoundError" in result.stderr
        from_checkout = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=ROOT, capture_output=True,
                                       text=True)
        assert from_checkout.returncode != 0 and f"import 'mednns.{name}'" in from_checkout.stderr


def test_every_builtin_plugin_module_is_declared_as_an_entry_point():
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    declared = {line.split("=")[1].strip() for line in parser["options.entry_points"]["mednns"].strip().splitlines()}
    modules = {f"mednns.plugins.{p.stem}" for p in (ROOT / "plugins").glob("*.py") if p.stem != "__init__"}
    assert modules == declared
