"""Tests of the example plugin, through mednns's public API as a plugin author would write them."""

import numpy as np

from mednns.data import Task
from mednns.manager import PluginManager


def test_registered_through_the_entry_point():
    manager = PluginManager(environ={})
    record = manager.records["synthetic_lesions"]
    assert record.status == "loaded" and record.distribution == "mednns-example-plugin"
    assert manager.registry("datasets").get("synthetic_lesions").provider == "synthetic_lesions"


def test_hidden_by_an_empty_allow_list():
    manager = PluginManager(environ={"MEDNNS_LOAD_PLUGINS": ""})
    assert "synthetic_lesions" not in manager.registry("datasets")


def test_generated_data_is_seeded_and_lesions_are_brighter():
    make = PluginManager(environ={}).registry("datasets").get("synthetic_lesions").factory
    a, b = make(n_train=40, seed=3), make(n_train=40, seed=3)
    train = a.split("train")
    assert train.images.shape == (40, 28, 28, 1) and a.info.task is Task.BINARY
    np.testing.assert_array_equal(train.images, b.split("train").images)
    peak = train.images.reshape(40, -1).max(axis=1)
    labels = train.labels[:, 0]
    assert peak[labels == 1].mean() > peak[labels == 0].mean() + 40


def test_mednns_plugins_command_shows_it_and_the_allow_list_hides_it():
    import json
    import os
    import subprocess
    import sys

    def plugins(**env):
        out = subprocess.run([sys.executable, "-m", "mednns", "plugins", "--json"], capture_output=True, text=True,
                             env={**os.environ, **env}, check=True).stdout
        return {p["name"]: p for p in json.loads(out)}

    shown = plugins()["synthetic_lesions"]
    assert shown["status"] == "loaded" and shown["distribution"] == "mednns-example-plugin"
    assert shown["components"] == {"datasets": ["synthetic_lesions"]}
    assert plugins(MEDNNS_LOAD_PLUGINS="")["synthetic_lesions"]["status"] == "not-allowed"
