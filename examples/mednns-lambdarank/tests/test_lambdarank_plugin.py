"""The installed ``lambdarank`` plugin: entry point, lazy registration, and use from a run config."""

from __future__ import annotations

import subprocess
import sys

import pytest
from mednns_lambdarank import plugin

import mednns
from mednns.config import validate_config
from mednns.testing import plugin_manager, using_plugins


def test_registered_through_the_entry_point():
    manager = plugin_manager(installed=True)
    record = manager.records["lambdarank"]
    assert record.status == "loaded" and record.distribution == "mednns-lambdarank"
    assert record.components == {"losses": ["lambdarank"]}
    assert manager.registry("losses").get("lambdarank").provider == "lambdarank"


def test_loading_the_plugin_does_not_import_torch():
    code = ("import sys; from mednns.manager import PluginManager; "
            "m = PluginManager(environ={'MEDNNS_LOAD_PLUGINS': 'lambdarank'}); "
            "assert m.records['lambdarank'].status == 'loaded', m.records['lambdarank']; "
            "assert 'lambdarank' in m.registry('losses'); "
            "print(sorted(n for n in ('torch', 'mednns_lambdarank.loss') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def config(losses, **stage_args):
    return {"name": "lambdarank", "stages": [{"name": "fit_meta_space", "args": {"losses": losses, **stage_args}}]}


def test_a_run_config_can_use_it_in_fit_meta_space():
    manager = plugin_manager(installed=True)
    losses = [{"name": "performance"}, {"name": "lambdarank", "args": {"top_k": 5}}]
    resolved = validate_config(manager, config(losses, loss_weights={"lambdarank": 0.5}))
    assert resolved.stages[0]["args"]["losses"] == losses
    # the stage builds its terms from the same specs
    term = manager.create("losses", "lambdarank", **losses[1]["args"])
    assert (term.top_k, term.temperature, term.on) == (5, 0.05, "score")


def test_config_mistakes_are_reported_with_their_key_path():
    with using_plugins(plugin) as manager:  # registered in code: the same checks without installing anything
        with pytest.raises(mednns.ConfigError) as error:
            validate_config(manager, config([{"name": "lambdarank", "args": {"top_k": "five", "on": "logits",
                                                                             "temprature": 0.1}}]))
        text = str(error.value)
        for path in ("stages[0].args.losses[0].args.top_k", "stages[0].args.losses[0].args.on",
                     "stages[0].args.losses[0].args.temprature"):
            assert path in text
        assert "did you mean 'temperature'" in text
        assert mednns.list_components("losses", "lambda*") == ["lambdarank"]
