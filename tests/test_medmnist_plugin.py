"""The built-in ``medmnist`` plugin: one dataset per flag, files, MD5 checks and cache, downloads."""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import subprocess
import sys
import typing

import numpy as np
import pytest

from mednns.data import NpzDataset, Task, dataset_tensors
from mednns.errors import DatasetError
from mednns.plugins import medmnist as plugin
from mednns.typecheck import check_args


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """A private mednns cache (MD5 verifications) and no MEDMNIST_ROOT from the environment."""
    monkeypatch.setenv("MEDNNS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("MEDMNIST_ROOT", raising=False)


@pytest.fixture
def md5_calls(monkeypatch):
    """Count calls of the plugin's file hashing."""
    calls = []
    original = plugin.file_md5

    def counting(path):
        calls.append(path)
        return original(path)

    monkeypatch.setattr(plugin, "file_md5", counting)
    return calls


def fake_medmnist_file(path, flag, monkeypatch, n_samples=None, size=28):
    """Write a small npz laid out like ``flag`` and make INFO expect it (MD5 and split sizes)."""
    entry = plugin.medmnist_info()[flag]
    n_samples = n_samples or {"train": 10, "val": 3, "test": 4}
    monkeypatch.setitem(entry, "n_samples", n_samples)
    n_labels = len(entry["label"])
    rng = np.random.default_rng(0)
    spatial = (size,) * (3 if flag.endswith("3d") else 2)
    channels = (entry["n_channels"],) if entry["n_channels"] > 1 else ()
    arrays = {}
    for split, n in n_samples.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *spatial, *channels), dtype=np.uint8)
        if entry["task"].startswith("multi-label"):
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, n_labels))
        else:
            arrays[f"{split}_labels"] = (np.arange(n) % n_labels).reshape(n, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    md5 = hashlib.md5(path.read_bytes()).hexdigest()
    monkeypatch.setitem(entry, "MD5" if size == 28 else f"MD5_{size}", md5)
    return md5


# -- registration ----------------------------------------------------------------


def test_every_flag_is_registered_with_its_sizes(registered):
    found = registered(plugin)
    info = plugin.medmnist_info()
    assert list(found) == list(info)
    assert {"pneumoniamnist", "chestmnist", "organmnist3d", "adrenalmnist3d"} <= set(found)
    for flag, (factory, description) in found.items():
        assert "\n" not in description and flag in description
        size = inspect.signature(factory).parameters["size"]
        hints = typing.get_type_hints(factory)
        expected = (28, 64) if flag.endswith("3d") else (28, 64, 128, 224)
        assert typing.get_args(hints["size"]) == expected and size.default == 28
    assert "multi-label, 14 labels, 1 channel(s), chest X-ray" in found["chestmnist"][1]
    assert check_args(found["organmnist3d"][0], {"size": 128}, "d.args")[0].path == "d.args.size"
    assert check_args(found["pathmnist"][0], {"size": 128, "root": "x", "download": True}, "d.args") == []


def test_plugin_import_is_light():
    code = (
        "import sys, mednns.plugins.medmnist as m; m.medmnist_info(); "
        "print('torch' in sys.modules, 'medmnist' in sys.modules)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


# -- files and checksums -----------------------------------------------------------


def test_missing_file_message_names_path_url_and_md5(tmp_path):
    entry = plugin.medmnist_info()["pneumoniamnist"]
    with pytest.raises(DatasetError) as error:
        plugin.medmnist_dataset("pneumoniamnist", size=64, root=str(tmp_path))
    message = str(error.value)
    assert str(tmp_path / "pneumoniamnist_64.npz") in message
    assert entry["url_64"] in message and entry["MD5_64"] in message
    assert "download: true" in message and "MEDMNIST_ROOT" in message


def test_root_defaults_to_medmnist_root_env(tmp_path, monkeypatch):
    fake_medmnist_file(tmp_path / "breastmnist.npz", "breastmnist", monkeypatch)
    monkeypatch.setenv("MEDMNIST_ROOT", str(tmp_path))
    ds = plugin.medmnist_dataset("breastmnist")
    assert ds.info.source == str(tmp_path / "breastmnist.npz")


def test_dataset_info_comes_from_medmnist_info(tmp_path, monkeypatch):
    fake_medmnist_file(tmp_path / "retinamnist_64.npz", "retinamnist", monkeypatch, size=64)
    ds = plugin.medmnist_dataset("retinamnist", size=64, root=str(tmp_path))
    assert isinstance(ds, NpzDataset)
    info = ds.info
    assert (info.name, info.task, info.n_channels, info.image_size) == ("retinamnist_64", Task.ORDINAL, 3, (64, 64))
    assert info.label_names == tuple(plugin.medmnist_info()["retinamnist"]["label"][str(i)] for i in range(5))
    assert info.split_sizes == {"train": 10, "val": 3, "test": 4}
    assert info.modality == "fundus photography"
    assert ds.split("val").images.shape == (3, 64, 64, 3)
    with pytest.raises(DatasetError, match="size must be one of 28, 64"):
        plugin.medmnist_dataset("organmnist3d", size=128, root=str(tmp_path))
    with pytest.raises(DatasetError, match="unknown MedMNIST flag"):
        plugin.medmnist_dataset("nomnist", root=str(tmp_path))


def test_chestmnist_stays_multi_hot(tmp_path, monkeypatch):
    fake_medmnist_file(tmp_path / "chestmnist.npz", "chestmnist", monkeypatch)
    ds = plugin.medmnist_dataset("chestmnist", root=str(tmp_path))
    assert ds.info.task is Task.MULTI_LABEL and ds.info.n_classes == 14
    _, y = dataset_tensors(ds, "train")
    assert y.shape == (10, 14) and y.dtype.is_floating_point
    assert np.array_equal(y.numpy(), ds.split("train").labels)


def test_md5_mismatch_is_refused(tmp_path):
    (tmp_path / "breastmnist.npz").write_bytes(b"not the real file")
    expected = plugin.medmnist_info()["breastmnist"]["MD5"]
    actual = hashlib.md5(b"not the real file").hexdigest()
    with pytest.raises(DatasetError) as error:
        plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    assert f"expected {expected}, got {actual}" in str(error.value)
    assert str(tmp_path / "breastmnist.npz") in str(error.value)


def test_md5_verification_is_cached(tmp_path, monkeypatch, md5_calls):
    path = tmp_path / "breastmnist.npz"
    fake_medmnist_file(path, "breastmnist", monkeypatch)
    plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    assert len(md5_calls) == 1
    cache = json.loads((tmp_path / "cache" / plugin.MD5_CACHE_NAME).read_text())
    assert cache[str(path.resolve())]["size"] == path.stat().st_size
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched: verify again
    plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    assert len(md5_calls) == 2


def test_cached_mismatch_is_still_refused(tmp_path, monkeypatch, md5_calls):
    path = tmp_path / "breastmnist.npz"
    fake_medmnist_file(path, "breastmnist", monkeypatch)
    plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    monkeypatch.setitem(plugin.medmnist_info()["breastmnist"], "MD5", "0" * 32)
    with pytest.raises(DatasetError, match="MD5 mismatch"):
        plugin.medmnist_dataset("breastmnist", root=str(tmp_path))
    assert len(md5_calls) == 1


# -- downloads -------------------------------------------------------------------


def test_download_from_a_file_url(tmp_path, monkeypatch, md5_calls):
    source = tmp_path / "server" / "breastmnist.npz"
    fake_medmnist_file(source, "breastmnist", monkeypatch)
    monkeypatch.setitem(plugin.medmnist_info()["breastmnist"], "url", source.as_uri())
    root = tmp_path / "new" / "root"
    ds = plugin.medmnist_dataset("breastmnist", root=str(root), download=True)
    assert (root / "breastmnist.npz").read_bytes() == source.read_bytes()
    assert sorted(p.name for p in root.iterdir()) == ["breastmnist.npz"]  # no temporary file left
    assert ds.split("test").images.shape == (4, 28, 28, 1)
    plugin.medmnist_dataset("breastmnist", root=str(root), download=True)  # present: no second download
    assert md5_calls == []  # verified while downloading, then from the cache


def test_failed_download_is_one_clear_error(tmp_path, monkeypatch):
    source = tmp_path / "server" / "breastmnist.npz"
    fake_medmnist_file(source, "breastmnist", monkeypatch)
    entry = plugin.medmnist_info()["breastmnist"]
    monkeypatch.setitem(entry, "url", source.as_uri())
    monkeypatch.setitem(entry, "MD5", "0" * 32)  # the served file does not match
    root = tmp_path / "root"
    with pytest.raises(DatasetError) as error:
        plugin.medmnist_dataset("breastmnist", root=str(root), download=True)
    message = str(error.value)
    assert "download failed" in message and source.as_uri() in message and "0" * 32 in message
    assert str(root / "breastmnist.npz") in message
    assert list(root.iterdir()) == []
    monkeypatch.setitem(entry, "url", (tmp_path / "nowhere.npz").as_uri())
    with pytest.raises(DatasetError, match="download failed"):
        plugin.medmnist_dataset("breastmnist", root=str(root), download=True)
    assert list(root.iterdir()) == []


def test_download_by_monkeypatched_urlopen(tmp_path, monkeypatch):
    payload = b"x" * 3_000_000
    md5 = hashlib.md5(payload).hexdigest()

    class Response:
        headers = {"Content-Length": str(len(payload))}

        def __init__(self):
            self.offset = 0

        def read(self, n):
            chunk = payload[self.offset : self.offset + n]
            self.offset += len(chunk)
            return chunk

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    opened = []
    monkeypatch.setattr(plugin.urllib.request, "urlopen", lambda url, timeout: opened.append(url) or Response())
    target = tmp_path / "f.npz"
    plugin.download_file("https://example.org/f.npz", target, md5)
    assert opened == ["https://example.org/f.npz"] and target.read_bytes() == payload
    assert plugin.cached_md5(target) == md5


# -- the real files ----------------------------------------------------------------


@pytest.mark.data
@pytest.mark.parametrize("flag", ["pneumoniamnist", "breastmnist", "retinamnist"])
def test_real_medmnist_files(shared_data, flag, md5_calls, registered):
    root = shared_data / "medmnist"
    factory, _ = registered(plugin)[flag]
    ds = factory(root=str(root))
    entry = plugin.medmnist_info()[flag]
    assert len(md5_calls) == 1 and plugin.cached_md5(root / f"{flag}.npz") == entry["MD5"]
    assert ds.info.split_sizes == entry["n_samples"]
    assert ds.info.task is Task.from_medmnist(entry["task"])
    for split, n in entry["n_samples"].items():
        arrays = ds.split(split)
        assert arrays.images.shape == (n, 28, 28, entry["n_channels"])
        assert arrays.labels.shape == (n, 1)


@pytest.mark.data
def test_real_3d_file_at_size_64(shared_data, registered):
    factory, _ = registered(plugin)["adrenalmnist3d"]
    ds = factory(size=64, root=str(shared_data / "medmnist"))
    info = ds.info
    assert (info.image_size, info.n_channels, info.task) == ((64, 64, 64), 1, Task.BINARY)
    assert info.split_sizes == {"train": 1188, "val": 98, "test": 298}
    assert ds.split("val").images.shape == (98, 64, 64, 64, 1)
