"""The built-in ``npz`` dataset plugin."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mednns.data import NpzDataset, Task
from mednns.errors import DatasetError
from mednns.plugins import npz as npz_plugin
from mednns.typecheck import check_args, with_defaults


def write_npz(path, n_classes=3, label_width=1):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 12, "val": 4, "test": 6}.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = np.arange(n) % n_classes if label_width == 1 else rng.integers(0, 2, (n, label_width))
        arrays[f"{split}_labels"] = labels.reshape(n, -1)
    np.savez(path, **arrays)
    return path


@pytest.fixture
def npz_factory(registered):
    found = registered(npz_plugin)
    assert list(found) == ["npz"]
    factory, description = found["npz"]
    assert "npz" in description and "\n" not in description
    return factory


def test_factory_builds_an_npz_dataset(tmp_path, npz_factory):
    ds = npz_factory(path=str(write_npz(tmp_path / "grades.npz", n_classes=4)), task="ordinal",
                     label_names=["a", "b", "c", "d"], modality="X-ray")
    assert isinstance(ds, NpzDataset)
    assert (ds.info.name, ds.info.task, ds.info.label_names, ds.info.modality) == (
        "grades", Task.ORDINAL, ("a", "b", "c", "d"), "X-ray")
    assert npz_factory(path=write_npz(tmp_path / "m.npz", label_width=3)).info.task is Task.MULTI_LABEL
    with pytest.raises(DatasetError, match="not found"):
        npz_factory(path=str(tmp_path / "absent.npz"))


def test_factory_signature_is_the_config_schema(npz_factory):
    assert check_args(npz_factory, {"path": "a.npz", "task": "ordinal", "label_names": ["x"]}, "datasets[0].args") == []
    issues = check_args(npz_factory, {"task": "regression", "labels": []}, "datasets[0].args")
    paths = sorted(issue.path for issue in issues)
    assert paths == ["datasets[0].args.labels", "datasets[0].args.path", "datasets[0].args.task"]
    assert with_defaults(npz_factory, {"path": "a.npz"}) == {
        "path": "a.npz", "name": None, "task": None, "label_names": None, "modality": "unknown"}


@pytest.mark.data
def test_every_shared_npz_file(shared_data, npz_factory):
    manifest = json.loads((shared_data / "MANIFEST.json").read_text())
    files = sorted((shared_data / "npz").glob("*.npz"))
    assert len(files) >= 7
    for path in files:
        entry = manifest[f"npz/{path.name}"]
        task = "ordinal" if entry["dataset"] == "knee_oa_xray" else None
        ds = npz_factory(path=str(path), task=task, label_names=entry["classes"], modality=entry["modality"])
        info = ds.info
        assert info.task is (Task.ORDINAL if task else Task.MULTI_CLASS)
        assert info.label_names == tuple(entry["classes"])
        assert info.n_channels == entry["n_channels"]
        assert info.image_size == (entry["size"], entry["size"])
        assert info.split_sizes == entry["counts"]
        test = ds.split("test")  # loads and checks pixels and label range
        assert test.images.shape == (entry["counts"]["test"], entry["size"], entry["size"], entry["n_channels"])
        assert set(np.unique(test.labels)) == set(range(len(entry["classes"])))


def test_a_huge_label_value_is_refused_before_building_class_names(tmp_path):
    import time

    path = write_npz(tmp_path / "a.npz")
    with np.load(path) as archive:
        arrays = dict(archive)
    arrays["train_labels"][0, 0] = 2**31 - 1  # a missing-value code
    np.savez(path, **arrays)
    start = time.perf_counter()
    with pytest.raises(DatasetError, match="train_labels holds 2147483647") as error:
        NpzDataset(path)
    assert time.perf_counter() - start < 5 and "label_names" in error.value.hint
    with pytest.raises(DatasetError, match="outside \\[0, 2\\] for the 3 label_names"):
        NpzDataset(path, label_names=["a", "b", "c"])


def test_members_that_would_inflate_past_memory_or_lie_about_their_size_are_refused(tmp_path, monkeypatch):
    import io
    import zipfile

    from mednns.data import npz as npz_module

    path = write_npz(tmp_path / "a.npz")
    monkeypatch.setattr(npz_module, "memory_limit", lambda: 1000)  # as if the machine had 2 kB
    with pytest.raises(DatasetError, match=r"key 'train_images' inflates to .* more than half"):
        NpzDataset(path)
    monkeypatch.undo()
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                  "shape": (10**6, 28, 28)})
    damaged = tmp_path / "damaged.npz"
    with zipfile.ZipFile(damaged, "w") as archive, np.load(path) as source:
        for key in source.files:
            buffer = io.BytesIO()
            np.save(buffer, source[key])
            data = header.getvalue() + b"\0" * 64 if key == "train_images" else buffer.getvalue()
            archive.writestr(f"{key}.npy", data)
    with pytest.raises(DatasetError, match=r"declares shape \(1000000, 28, 28\).*damaged"):
        NpzDataset(damaged)


def test_five_channel_images_are_refused_at_once_with_their_shape(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 12, "val": 4, "test": 6}.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28, 5), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez(tmp_path / "five.npz", **arrays)
    with pytest.raises(DatasetError, match=r"shape \(N, 28, 28, 5\): 2D images with 5 channels, or volumes"):
        NpzDataset(tmp_path / "five.npz")


def test_a_member_that_inflates_a_thousand_fold_is_refused_before_it_is_read(tmp_path, monkeypatch):
    from mednns.data import npz as npz_module

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in {"train": 40, "val": 4, "test": 6}.items():
        arrays[f"{split}_images"] = (np.zeros((n, 64, 64), np.uint8) if split == "train"
                                     else rng.integers(0, 256, (n, 64, 64), dtype=np.uint8))
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(n, 1)
    np.savez_compressed(tmp_path / "bomb.npz", **arrays)
    monkeypatch.setattr(npz_module, "MAX_PLAIN_INFLATION", 10_000)  # the rule at a test's scale
    with pytest.raises(DatasetError, match=r"key 'train_images' inflates \d+x.*images do not compress like that"):
        NpzDataset(tmp_path / "bomb.npz")
