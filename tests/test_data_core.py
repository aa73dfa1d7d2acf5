"""The dataset layer: NpzDataset, tensors (conversion, channels, normalization) and loaders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mednns.data import (
    DatasetInfo,
    NpzDataset,
    Task,
    channel_stats,
    dataset_tensors,
    labels_to_tensor,
    make_loader,
    read_npz_headers,
    to_tensor,
)
from mednns.data import tensors as tensors_module
from mednns.errors import DatasetError

SIZES = {"train": 30, "val": 6, "test": 9}


def write_npz(path: Path, *, image_shape=(28, 28), n_classes=3, label_width=1, sizes=SIZES, seed=0, **overrides):
    """A MedMNIST-layout npz with random uint8 images; ``overrides`` replace or add arrays (None drops one)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, n in sizes.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
        if label_width == 1:
            labels = (np.arange(n) % n_classes).reshape(-1, 1)
        else:
            labels = rng.integers(0, 2, (n, label_width))
        arrays[f"{split}_labels"] = labels.astype(np.int64)
    arrays.update(overrides)
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


# -- NpzDataset ----------------------------------------------------------------


def test_npz_infers_a_multiclass_dataset(tmp_path):
    ds = NpzDataset(write_npz(tmp_path / "scans.npz", n_classes=3))
    info = ds.info
    assert info.name == "scans"
    assert info.task is Task.MULTI_CLASS
    assert (info.n_classes, info.n_channels, info.image_size) == (3, 1, (28, 28))
    assert info.label_names == ("0", "1", "2")
    assert info.split_sizes == SIZES
    assert info.source == str(tmp_path / "scans.npz")
    train = ds.split("train")
    assert train.images.shape == (30, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.shape == (30, 1) and train.labels.dtype == np.int64


def test_npz_infers_binary_and_multilabel(tmp_path):
    binary = NpzDataset(write_npz(tmp_path / "b.npz", n_classes=2))
    assert binary.info.task is Task.BINARY and binary.info.n_classes == 2
    multi = NpzDataset(write_npz(tmp_path / "m.npz", label_width=5), label_names=list("abcde"))
    assert multi.info.task is Task.MULTI_LABEL
    assert multi.info.n_classes == 5 and multi.info.label_names == tuple("abcde")
    assert multi.split("val").labels.shape == (6, 5)


def test_npz_explicit_task_name_and_modality(tmp_path):
    ds = NpzDataset(write_npz(tmp_path / "g.npz", n_classes=4), name="grades", task="ordinal", modality="X-ray",
                    label_names=["KL0", "KL1", "KL2", "KL3"])
    assert (ds.info.name, ds.info.task, ds.info.modality) == ("grades", Task.ORDINAL, "X-ray")
    assert ds.info.label_names == ("KL0", "KL1", "KL2", "KL3")


def test_npz_geometry_rgb_and_3d(tmp_path):
    rgb = NpzDataset(write_npz(tmp_path / "rgb.npz", image_shape=(28, 28, 3)))
    assert (rgb.info.image_size, rgb.info.n_channels) == ((28, 28), 3)
    volume = NpzDataset(write_npz(tmp_path / "vol.npz", image_shape=(8, 8, 8)))
    assert (volume.info.image_size, volume.info.n_channels) == ((8, 8, 8), 1)
    assert volume.split("test").images.shape == (9, 8, 8, 8, 1)


def test_npz_construction_reads_headers_not_images(tmp_path, monkeypatch):
    path = write_npz(tmp_path / "big.npz", image_shape=(64, 64))
    headers = read_npz_headers(path)
    assert headers["train_images"].shape == (30, 64, 64) and headers["train_images"].dtype == np.uint8
    loaded = []
    original = NpzDataset._load
    monkeypatch.setattr(NpzDataset, "_load", lambda self, key: loaded.append(key) or original(self, key))
    ds = NpzDataset(path)
    assert not [key for key in loaded if key.endswith("_images")]
    ds.split("val")
    assert "val_images" in loaded


def test_npz_missing_key_is_named(tmp_path):
    path = write_npz(tmp_path / "x.npz", val_labels=None)
    with pytest.raises(DatasetError, match="missing key 'val_labels'"):
        NpzDataset(path)


def test_npz_shape_mismatch_between_splits_names_the_keys(tmp_path):
    path = write_npz(tmp_path / "x.npz", test_images=np.zeros((9, 64, 64), np.uint8))
    with pytest.raises(DatasetError, match=r"test_images has images of shape \(64, 64\) but train_images \(28, 28\)"):
        NpzDataset(path)


def test_npz_count_mismatch_names_the_keys(tmp_path):
    path = write_npz(tmp_path / "x.npz", val_labels=np.zeros((5, 1), np.int64))
    with pytest.raises(DatasetError, match="val_images holds 6 images but val_labels 5 labels"):
        NpzDataset(path)


def test_npz_labels_beyond_label_names_name_the_key(tmp_path):
    path = write_npz(tmp_path / "x.npz", n_classes=3)
    with pytest.raises(DatasetError, match=r"train_labels holds 2, outside \[0, 1\].*2 label_names"):
        NpzDataset(path, label_names=["a", "b"])


def test_npz_labels_out_of_range_against_given_info(tmp_path):
    path = write_npz(tmp_path / "x.npz", n_classes=3)
    info = DatasetInfo("x", Task.BINARY, 1, 2, ("no", "yes"), (28, 28), split_sizes=SIZES)
    ds = NpzDataset(path, info=info)  # labels are not read at construction with a given info
    with pytest.raises(DatasetError, match=r"train_labels holds 2, outside \[0, 1\]"):
        ds.split("train")


def test_npz_file_disagreeing_with_given_info(tmp_path):
    path = write_npz(tmp_path / "x.npz")
    info = DatasetInfo("x", Task.MULTI_CLASS, 1, 3, "abc", (64, 64), split_sizes=SIZES)
    with pytest.raises(DatasetError, match="expects"):
        NpzDataset(path, info=info)


def test_npz_other_user_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        NpzDataset(tmp_path / "absent.npz")
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(DatasetError, match="not an .npz"):
        NpzDataset(tmp_path / "text.npz")
    floats = write_npz(tmp_path / "f.npz", train_images=np.zeros((30, 28, 28), np.float32))
    with pytest.raises(DatasetError, match="train_images must be uint8"):
        NpzDataset(floats)
    with pytest.raises(DatasetError, match="test_labels holds 2; a binary task"):
        NpzDataset(write_npz(tmp_path / "b.npz", n_classes=3, sizes={"train": 2, "val": 2, "test": 3}), task="binary")
    with pytest.raises(DatasetError, match="unknown task"):
        NpzDataset(write_npz(tmp_path / "t.npz"), task="regression")
    with pytest.raises(DatasetError, match="val_labels must be 0/1"):
        NpzDataset(write_npz(tmp_path / "m.npz", label_width=3, val_labels=np.full((6, 3), 2)))


# -- tensors -------------------------------------------------------------------


def test_to_tensor_scales_to_unit_range_channels_first():
    images = np.zeros((2, 4, 5, 1), np.uint8)
    images[1] = 255
    x = to_tensor(images)
    assert x.shape == (2, 1, 4, 5) and x.dtype == torch.float32
    assert x[0].max() == 0 and torch.all(x[1] == 1)
    volume = to_tensor(np.full((3, 2, 4, 5, 1), 51, np.uint8))
    assert volume.shape == (3, 1, 2, 4, 5) and torch.allclose(volume, torch.tensor(0.2))


def test_to_tensor_channel_adaptation():
    gray = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3, 1)
    rgb = to_tensor(gray, channels=3)
    assert rgb.shape == (2, 3, 3, 3)
    assert torch.equal(rgb[:, 0], rgb[:, 1]) and torch.equal(rgb[:, 1], rgb[:, 2])
    assert torch.allclose(rgb[:, 0], to_tensor(gray)[:, 0])
    colour = np.zeros((1, 1, 3, 3), np.uint8)
    colour[0, 0, 0, 0] = colour[0, 0, 1, 1] = colour[0, 0, 2, 2] = 255  # pure red, green, blue pixels
    luma = to_tensor(colour, channels=1)
    assert luma.shape == (1, 1, 1, 3)
    assert torch.allclose(luma[0, 0, 0], torch.tensor([0.299, 0.587, 0.114]))
    with pytest.raises(ValueError, match="cannot adapt 2"):
        to_tensor(np.zeros((1, 2, 2, 2), np.uint8), channels=3)


def test_to_tensor_normalization():
    images = np.full((2, 2, 2, 3), 128, np.uint8)
    x = to_tensor(images, mean=[0.5, 0.25, 0.0], std=[0.5, 0.25, 2.0])
    value = 128 / 255
    expected = torch.tensor([(value - 0.5) / 0.5, (value - 0.25) / 0.25, value / 2.0])
    assert torch.allclose(x[0, :, 0, 0], expected, atol=1e-6)
    constant = to_tensor(images, mean=[value], std=[0.0])  # zero std: no division
    assert torch.allclose(constant, torch.zeros(()), atol=1e-6)


def test_chunked_work_matches_whole_array(monkeypatch):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (37, 6, 5, 3), dtype=np.uint8)
    whole_stats = channel_stats(images)
    whole = to_tensor(images, channels=1, mean=[0.3], std=[0.2])
    monkeypatch.setattr(tensors_module, "_CHUNK_BYTES", 200)  # a few images per chunk
    assert np.allclose(channel_stats(images), whole_stats)
    assert torch.allclose(to_tensor(images, channels=1, mean=[0.3], std=[0.2]), whole)
    floats = images.astype(np.float64) / 255
    assert np.allclose(whole_stats[0], floats.mean(axis=(0, 1, 2)))
    assert np.allclose(whole_stats[1], floats.std(axis=(0, 1, 2)))


def test_channel_stats_of_adapted_channels():
    rng = np.random.default_rng(2)
    gray = rng.integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    (mean,), (std,) = channel_stats(gray)
    means, stds = channel_stats(gray, channels=3)
    assert means == pytest.approx((mean,) * 3) and stds == pytest.approx((std,) * 3)
    rgb = rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8)
    luma = (rgb.astype(np.float64) / 255) @ np.array([0.299, 0.587, 0.114])
    (luma_mean,), (luma_std,) = channel_stats(rgb, channels=1)
    assert (luma_mean, luma_std) == pytest.approx((luma.mean(), luma.std()))
    empty_mean, empty_std = channel_stats(np.zeros((0, 4, 4, 3), np.uint8))
    assert len(empty_mean) == len(empty_std) == 3 and np.isnan(empty_mean + empty_std).all()


def test_dataset_tensors_normalize_with_train_statistics(tmp_path):
    ds = NpzDataset(write_npz(tmp_path / "x.npz", image_shape=(8, 8, 3)))
    x_train, y_train = dataset_tensors(ds, "train")
    assert x_train.shape == (30, 3, 8, 8) and y_train.dtype == torch.int64 and y_train.shape == (30,)
    assert torch.allclose(x_train.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x_train.std(dim=(0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    x_test, _ = dataset_tensors(ds, "test")
    mean, std = channel_stats(ds.split("train").images)
    assert torch.allclose(x_test, to_tensor(ds.split("test").images, mean=mean, std=std))
    raw, _ = dataset_tensors(ds, "test", stats_split=None, channels=1)
    assert raw.shape == (9, 1, 8, 8) and 0 <= raw.min() and raw.max() <= 1


def test_multilabel_targets_stay_multi_hot(tmp_path):
    ds = NpzDataset(write_npz(tmp_path / "m.npz", label_width=4))
    _, y = dataset_tensors(ds, "val")
    assert y.dtype == torch.float32 and y.shape == (6, 4)
    assert torch.equal(y, torch.from_numpy(ds.split("val").labels.astype(np.float32)))
    assert labels_to_tensor(np.array([[2], [0]]), Task.MULTI_CLASS).tolist() == [2, 0]


# -- loaders -------------------------------------------------------------------


def _order(loader) -> list[int]:
    return [int(i) for _, batch in loader for i in batch]


def test_make_loader_is_deterministic_per_seed():
    x = torch.arange(50, dtype=torch.float32).reshape(50, 1)
    y = torch.arange(50)
    first = make_loader(x, y, batch_size=8, shuffle=True, seed=7)
    second = make_loader(x, y, batch_size=8, shuffle=True, seed=7)
    epochs_first = [_order(first), _order(first)]
    assert epochs_first == [_order(second), _order(second)]
    assert epochs_first[0] != epochs_first[1]  # a new order each epoch
    assert sorted(epochs_first[0]) == list(range(50))
    assert _order(make_loader(x, y, batch_size=8, shuffle=True, seed=8)) != epochs_first[0]
    assert _order(make_loader(x, y, batch_size=8, shuffle=False, seed=7)) == list(range(50))
    xb, yb = next(iter(first))
    assert xb.shape == (8, 1) and torch.equal(xb[:, 0].long(), yb)


def test_a_one_class_training_split_is_refused_and_a_class_train_lacks_is_said(tmp_path, mednns_logs):
    import logging

    one = write_npz(tmp_path / "one.npz", n_classes=2, train_labels=np.zeros((30, 1), np.int64))
    with pytest.raises(DatasetError, match="the training split holds one class only"):
        NpzDataset(one, label_names=["healthy", "sick"]).split("train")
    labels = (np.arange(30) % 2).reshape(-1, 1)  # train holds classes 0 and 1; val also 2
    gap = write_npz(tmp_path / "gap.npz", train_labels=labels)
    dataset = NpzDataset(gap, label_names=["a", "b", "c"])
    with mednns_logs.at_level(logging.WARNING, logger="mednns.data"):
        dataset.split("train")
        assert len(dataset.split("val")) == 6
    assert "the val split holds class(es) c that the training split lacks" in mednns_logs.text
