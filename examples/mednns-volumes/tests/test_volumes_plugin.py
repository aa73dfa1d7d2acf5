"""The installed ``volumes`` plugin: entry point, CLI listing, lazy loading, and the real AdrenalMNIST3D file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mednns.data import Task, dataset_tensors
from mednns.testing import plugin_manager, tiny_space

#: The shared data folder next to the repository (resolved from examples/mednns-volumes/tests/).
ADRENAL = (Path(__file__).parents[3] / "../shared/data/medmnist/adrenalmnist3d_64.npz").resolve()


def test_registered_through_the_entry_point():
    manager = plugin_manager(installed=True)
    record = manager.records["volumes"]
    assert record.status == "loaded" and record.distribution == "mednns-volumes"
    assert record.components == {"datasets": ["volume_slices"]}
    assert manager.registry("datasets").get("volume_slices").provider == "volumes"


def _mednns(*args: str, **env: str) -> str:
    return subprocess.run([sys.executable, "-m", "mednns", *args], capture_output=True, text=True, check=True,
                          env={**os.environ, **env}).stdout


def test_mednns_list_datasets_shows_it_and_the_allow_list_hides_it():
    shown = json.loads(_mednns("list", "datasets", "volume*", "--json", MEDNNS_LOAD_PLUGINS="volumes"))
    assert [(c["name"], c["provider"]) for c in shown] == [("volume_slices", "volumes")]
    assert json.loads(_mednns("list", "datasets", "volume*", "--json", MEDNNS_LOAD_PLUGINS="")) == []


def test_loading_the_plugin_imports_neither_torch_nor_the_dataset_module():
    code = ("import sys; from mednns.manager import PluginManager; "
            "m = PluginManager(environ={'MEDNNS_LOAD_PLUGINS': 'volumes'}); "
            "assert m.records['volumes'].status == 'loaded', m.records['volumes']; "
            "assert 'volume_slices' in m.registry('datasets'); "
            "print(sorted(n for n in ('torch', 'mednns_volumes.dataset') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_the_shared_data_path_resolves_next_to_the_repository():
    assert ADRENAL.parts[-4:] == ("shared", "data", "medmnist", "adrenalmnist3d_64.npz")
    assert ADRENAL.parent.parent.parent == Path(__file__).resolve().parents[4] / "shared"


@pytest.mark.data
@pytest.mark.skipif(not ADRENAL.is_file(), reason=f"AdrenalMNIST3D not found at {ADRENAL}")
def test_adrenalmnist3d_as_orthogonal_slices_feeds_a_2d_supernet():
    import torch

    ds = plugin_manager(installed=True).create("datasets", "volume_slices", path=str(ADRENAL), size=28)
    info = ds.info
    assert info.task is Task.BINARY and info.n_classes == 2 and info.n_channels == 3
    assert info.image_size == (28, 28) and info.name == "adrenalmnist3d_64_orth"
    assert info.split_sizes == {"train": 1188, "val": 98, "test": 298}
    val = ds.split("val")  # the small split: 98 volumes
    assert val.images.shape == (98, 28, 28, 3) and val.images.dtype == np.uint8
    assert set(np.unique(val.labels)) == {0, 1}
    assert all(val.images[..., c].std() > 5 for c in range(3))  # three real, distinct views
    assert not np.array_equal(val.images[..., 0], val.images[..., 1])

    x, y = dataset_tensors(ds, "val", stats_split="val")
    assert tuple(x.shape) == (98, 3, 28, 28) and tuple(y.shape) == (98,)
    torch.manual_seed(0)
    space = tiny_space("ofa_resnet", in_channels=3, num_classes=2).eval()
    with torch.no_grad():
        logits = space.extract(space.smallest()).eval()(x[:16])
    assert tuple(logits.shape) == (16, 2) and torch.isfinite(logits).all()
