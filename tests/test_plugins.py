"""Plugin loading: entry points, failures reported per plugin, allow/deny lists, strict mode, duplicates."""

from __future__ import annotations

import pytest

import mednns
from fakedist import forget_modules, make_distribution
from mednns.errors import DuplicateComponentError, PluginLoadError, UnknownComponentError
from mednns.manager import PluginManager

GOOD = """
import mednns
from mednns.data import ArrayDataset

def make_scans(n: int = 4):
    return n

@mednns.hookimpl
def register_datasets(register):
    register("clinic_scans", make_scans, description="Scans from a clinic")
"""

BROKEN_IMPORT = """
import mednns
import a_module_that_does_not_exist
"""

BAD_ARGUMENT = """
import mednns

@mednns.hookimpl
def register_datasets(register, unknown_argument):
    pass
"""

MISSPELLED_HOOK = """
import mednns

@mednns.hookimpl
def register_dataset(register):
    pass
"""

DUPLICATE = """
import mednns

@mednns.hookimpl
def register_datasets(register):
    register("pneumoniamnist", lambda: None, description="clashes with the built-in")
    register("second_one", lambda: None, description="still registered")
"""

RAISES = """
import mednns

@mednns.hookimpl
def register_losses(register):
    raise RuntimeError("boom")
"""

MODULES = ["goodplugin", "brokenplugin", "badargplugin", "misspelledplugin", "dupplugin", "raisesplugin"]


@pytest.fixture
def site(tmp_path, monkeypatch):
    site = tmp_path / "site"
    make_distribution(site, "mednns-good", {"goodplugin": GOOD}, {"good": "goodplugin"}, version="2.3")
    make_distribution(site, "mednns-broken", {"brokenplugin": BROKEN_IMPORT}, {"broken": "brokenplugin"})
    make_distribution(site, "mednns-badarg", {"badargplugin": BAD_ARGUMENT}, {"badarg": "badargplugin"})
    make_distribution(site, "mednns-misspelled", {"misspelledplugin": MISSPELLED_HOOK},
                      {"misspelled": "misspelledplugin"})
    monkeypatch.syspath_prepend(str(site))
    forget_modules(*MODULES)
    yield site
    forget_modules(*MODULES)


def test_builtins_load_through_entry_points_and_register_components():
    manager = PluginManager(environ={})
    builtins = {r.name: r for r in manager.records.values() if r.builtin}
    assert {"medmnist", "npz", "image_folder", "dataset_summary"} <= set(builtins)
    assert all(r.status == "loaded" and not r.errors for r in builtins.values())
    datasets = manager.registry("datasets")
    assert {"npz", "image_folder", "pneumoniamnist", "chestmnist", "organmnist3d"} <= set(datasets.names())
    assert datasets.get("npz").provider == "npz"
    assert builtins["npz"].components == {"datasets": ["npz"]}
    assert builtins["npz"].hooks == ["register_datasets"]
    assert "dataset_summary" in manager.registry("stages")


def test_failures_are_reported_per_plugin_while_others_load(site):
    manager = PluginManager(environ={})
    records = manager.records
    assert records["good"].status == "loaded"
    assert records["good"].version == "2.3" and records["good"].distribution == "mednns-good"
    assert "clinic_scans" in manager.registry("datasets")

    broken = records["broken"]
    assert broken.status == "failed" and broken.distribution == "mednns-broken"
    assert "ModuleNotFoundError" in broken.errors[0] and "a_module_that_does_not_exist" in broken.errors[0]

    badarg = records["badarg"]
    assert badarg.status == "failed" and "unknown_argument" in badarg.errors[0]

    misspelled = records["misspelled"]
    assert misspelled.status == "failed"
    assert "'register_dataset'" in misspelled.errors[0] and "did you mean 'register_datasets'" in misspelled.errors[0]
    # the failed plugins take no part in hook calls
    assert manager.hooks.get_plugin("misspelled") is None
    assert {r.name for r, _ in manager.errors} == {"broken", "badarg", "misspelled"}


def test_strict_mode_from_environment_raises_naming_the_distribution(site):
    with pytest.raises(PluginLoadError) as info:
        PluginManager(environ={"MEDNNS_STRICT_PLUGINS": "1"})
    assert "mednns-" in str(info.value)


def test_strict_after_the_fact_raises_for_recorded_errors(site):
    manager = PluginManager(environ={})
    with pytest.raises(PluginLoadError, match="broken"):
        manager.raise_for_errors()


def test_allow_list_empty_means_builtins_only(site):
    manager = PluginManager(environ={"MEDNNS_LOAD_PLUGINS": ""})
    assert manager.records["good"].status == "not-allowed"
    assert manager.records["broken"].status == "not-allowed"
    assert "clinic_scans" not in manager.registry("datasets")
    assert "pneumoniamnist" in manager.registry("datasets")
    assert manager.errors == []


def test_allow_list_by_distribution_or_entry_point_name(site):
    by_dist = PluginManager(environ={"MEDNNS_LOAD_PLUGINS": "mednns-good"})
    assert by_dist.records["good"].status == "loaded"
    assert by_dist.records["broken"].status == "not-allowed"
    forget_modules(*MODULES)
    by_name = PluginManager(environ={"MEDNNS_LOAD_PLUGINS": " good , badarg"})
    assert by_name.records["good"].status == "loaded"
    assert by_name.records["badarg"].status == "failed"


def test_deny_list_disables_third_party_and_builtin_plugins(site):
    manager = PluginManager(environ={"MEDNNS_DISABLE_PLUGINS": "broken,badarg,misspelled,medmnist"})
    assert manager.records["broken"].status == "disabled"
    assert manager.records["medmnist"].status == "disabled"
    assert "pneumoniamnist" not in manager.registry("datasets")
    assert "npz" in manager.registry("datasets")
    assert manager.errors == []


def test_duplicate_component_name_is_an_error_naming_both_providers(tmp_path, monkeypatch):
    make_distribution(tmp_path, "mednns-dup", {"dupplugin": DUPLICATE}, {"dup": "dupplugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_modules("dupplugin")
    manager = PluginManager(environ={})
    registry = manager.registry("datasets")
    with pytest.raises(DuplicateComponentError) as info:
        registry.get("pneumoniamnist")
    assert "'medmnist'" in str(info.value) and "'dup'" in str(info.value)
    assert "second_one" in registry  # the rest of the plugin's registrations still count
    assert any("pneumoniamnist" in e for e in manager.records["dup"].errors)
    forget_modules("dupplugin")
    with pytest.raises(PluginLoadError, match="'medmnist' and 'dup'"):
        PluginManager(environ={"MEDNNS_STRICT_PLUGINS": "1"}).registry("datasets")
    forget_modules("dupplugin")


def test_exception_in_a_register_hook_is_recorded(tmp_path, monkeypatch):
    make_distribution(tmp_path, "mednns-raises", {"raisesplugin": RAISES}, {"raises": "raisesplugin"})
    monkeypatch.syspath_prepend(str(tmp_path))
    forget_modules("raisesplugin")
    manager = PluginManager(environ={})
    assert manager.records["raises"].components == {}
    assert manager.records["raises"].errors == ["register_losses raised RuntimeError: boom"]
    forget_modules("raisesplugin")


def test_plugin_registered_in_code_and_unregistered():
    class Local:
        @mednns.hookimpl
        def register_losses(self, register):
            register("my_loss", lambda weight=1.0: weight, description="a loss")

    manager = PluginManager(environ={})
    record = manager.register(Local(), "local")
    assert record.status == "loaded"
    assert manager.create("losses", "my_loss", weight=2.0) == 2.0
    manager.unregister("local")
    with pytest.raises(UnknownComponentError):
        manager.registry("losses").get("my_loss")


def test_unknown_name_suggests_and_names_the_list_command():
    manager = PluginManager(environ={})
    with pytest.raises(UnknownComponentError) as info:
        manager.registry("datasets").get("pneumonia_mnist")
    assert str(info.value) == ("Unknown dataset 'pneumonia_mnist'. Did you mean 'pneumoniamnist'? "
                               "Run 'mednns list datasets'.")


def test_register_requires_a_description():
    class NoDescription:
        @mednns.hookimpl
        def register_losses(self, register):
            register("nameless", lambda: None)

    manager = PluginManager(environ={})
    manager.register(NoDescription(), "nodesc")
    assert "nameless" not in manager.registry("losses")
    assert "description" in manager.records["nodesc"].errors[0]


def test_public_api_lists_and_creates(monkeypatch):
    from mednns.manager import set_plugin_manager

    set_plugin_manager(PluginManager(environ={}))
    try:
        assert mednns.list_components("datasets", "*mnist3d") == [
            "adrenalmnist3d", "fracturemnist3d", "nodulemnist3d", "organmnist3d", "synapsemnist3d", "vesselmnist3d"]
        with pytest.raises(mednns.ConfigError, match="unexpected argument"):
            mednns.create("datasets", "npz", path="x.npz", colour="blue")
    finally:
        set_plugin_manager(None)


def test_trace_environment_variable_prints_hook_calls(capsys):
    manager = PluginManager(environ={"MEDNNS_TRACE_PLUGINS": "1"})
    manager.registry("datasets")
    manager.hooks.hook.run_finished(run=None, results={}, error=None)
    assert "run_finished" in capsys.readouterr().err


def test_every_hook_is_typed_and_documented():
    import inspect

    from mednns import hookspecs

    specs = [f for name, f in vars(hookspecs).items()
             if inspect.isfunction(f) and hasattr(f, "mednns_spec")]
    assert len(specs) >= 9
    for spec in specs:
        doc = inspect.getdoc(spec) or ""
        params = [p for p in inspect.signature(spec).parameters]
        assert all(f":param {p}:" in doc for p in params), spec.__name__
        assert ":returns:" in doc, spec.__name__
        assert all(p.annotation is not inspect.Parameter.empty for p in inspect.signature(spec).parameters.values())


def test_loading_every_builtin_plugin_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from mednns.manager import PluginManager; m = PluginManager(environ={}); "
            "assert not m.errors, m.errors; assert 'ofa_resnet' in m.registry('search-spaces'); "
            "print(sorted(n for n in ('torch', 'timm', 'medmnist') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_lazy_factories_import_on_use_and_are_validated_like_others():
    from mednns.registry import LazyFactory

    class Lazy:
        @mednns.hookimpl
        def register_losses(self, register):
            register("lazy_weighted", mednns.lazy("tests_lazy_target:weighted"), description="lazy")

    import sys
    import types

    module = types.ModuleType("tests_lazy_target")
    exec("def weighted(weight: float = 1.0):\n    return weight * 2\n", module.__dict__)
    sys.modules["tests_lazy_target"] = module
    try:
        manager = PluginManager(environ={})
        manager.register(Lazy(), "lazy")
        assert manager.create("losses", "lazy_weighted", weight=1.5) == 3.0
        with pytest.raises(mednns.ConfigError, match="expected float"):
            manager.create("losses", "lazy_weighted", weight="heavy")
    finally:
        del sys.modules["tests_lazy_target"]
    with pytest.raises(ValueError, match="module:attribute"):
        LazyFactory("no_colon")
