"""The built-in ``image_folder`` plugin: layouts, lazy decoding, channels, bit depths, splits, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mednns.data import Task
from mednns.errors import DatasetError
from mednns.plugins import image_folder as plugin
from mednns.typecheck import check_args


def save_gray(path: Path, value: int, size=(40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size[::-1], value, np.uint8), "L").save(path)


def save_rgb(path: Path, rgb=(200, 30, 60), size=(28, 28)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size[::-1], 3), rgb, np.uint8), "RGB").save(path)


def make_classes(root: Path, counts: dict[str, int], save=None) -> Path:
    """``counts[name]`` PNG files per class folder; ``save(path)`` writes one (default: gray, distinct values)."""
    for c, (name, n) in enumerate(counts.items()):
        for i in range(n):
            path = root / name / f"img_{i:03d}.png"
            save(path) if save else save_gray(path, 10 * c + i)
    return root


@pytest.fixture
def factory(registered):
    found = registered(plugin)
    assert list(found) == ["image_folder"]
    return found["image_folder"][0]


@pytest.fixture
def flat(tmp_path) -> Path:
    root = make_classes(tmp_path / "scans", {"benign": 10, "malignant": 20, "normal": 30})
    (root / "benign" / ".DS_Store").write_bytes(b"\0junk")  # hidden: skipped
    (root / "benign" / "._img_000.png").write_bytes(b"junk")  # hidden: skipped
    (root / "normal" / "notes.txt").write_text("not an image")  # unknown extension: ignored
    (root / ".hidden_class").mkdir()
    save_gray(root / "normal" / "nested" / "deep.png", 7)  # found recursively
    return root


def test_flat_layout_scan_is_lazy_and_stratified(flat, factory, monkeypatch):
    decoded = []
    original = plugin.read_image
    monkeypatch.setattr(plugin, "read_image", lambda path, size: decoded.append(path) or original(path, size))
    ds = factory(path=str(flat))
    assert ds.name == "scans" and repr(ds) == "<ImageFolderDataset 'scans'>"
    assert decoded == []  # construction scans only
    info = ds.info  # channels "auto": decodes every image once
    assert len(decoded) == 61
    assert info.label_names == ("benign", "malignant", "normal")
    assert (info.task, info.n_classes, info.n_channels, info.image_size) == (Task.MULTI_CLASS, 3, 1, (28, 28))
    assert sum(info.split_sizes.values()) == 61
    assert info.split_sizes == {"train": 43, "val": 6, "test": 12}  # per class: val 1/2/3, test 2/4/6
    for split in ("train", "val", "test"):
        arrays = ds.split(split)
        assert arrays.images.shape == (info.split_sizes[split], 28, 28, 1)
        assert set(arrays.labels[:, 0]) == {0, 1, 2}
    ds.split("train")
    assert len(decoded) == 61  # decoded once for all splits


def test_split_is_deterministic_per_seed(flat, factory):
    def files(**args):
        return {split: [str(f) for f, _ in items] for split, items in factory(path=flat, **args).files.items()}

    assert files(seed=3) == files(seed=3)
    assert files(seed=3) != files(seed=4)
    custom = factory(path=flat, val_fraction=0.2, test_fraction=0.3, channels=1).info.split_sizes
    assert custom == {"train": 31, "val": 12, "test": 18}
    everything = {f for items in files(seed=3).values() for f in items}
    assert len(everything) == 61  # a partition


def test_stratified_split_helper():
    labels = np.repeat([0, 1, 2], [10, 10, 1])
    parts = plugin.stratified_split(labels, {"val": 0.2, "test": 0.5}, seed=0)
    assert [len(parts[s]) for s in ("val", "test", "rest")] == [4, 10, 7]
    assert np.array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(21))
    assert 20 in parts["rest"]  # a single image stays in train
    again = plugin.stratified_split(labels, {"val": 0.2, "test": 0.5}, seed=0)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)


def test_channels_auto_rgb_and_gray_like_rgb(tmp_path, factory):
    colour = make_classes(tmp_path / "colour", {"a": 3, "b": 3}, save=save_rgb)
    ds = factory(path=colour)
    assert ds.info.n_channels == 3 and ds.info.task is Task.BINARY
    assert np.all(ds.split("train").images[0, 5, 5] == [200, 30, 60])
    gray_rgb = make_classes(tmp_path / "grayrgb", {"a": 3, "b": 3}, save=lambda p: save_rgb(p, (90, 90, 90)))
    assert factory(path=gray_rgb).info.n_channels == 1
    as_gray = factory(path=colour, channels=1)
    assert as_gray.info.n_channels == 1  # known without decoding
    expected = round(0.299 * 200 + 0.587 * 30 + 0.114 * 60)
    assert as_gray.split("test").images[0, 0, 0, 0] == expected
    mixed = make_classes(tmp_path / "mixed", {"a": 2, "b": 2})
    save_rgb(mixed / "a" / "colour.png")
    assert factory(path=mixed).info.n_channels == 3
    gray_as_rgb = factory(path=make_classes(tmp_path / "gray", {"a": 2, "b": 2}), channels=3).split("train").images
    assert gray_as_rgb.shape[-1] == 3 and np.all(gray_as_rgb[..., 0] == gray_as_rgb[..., 2])


def test_16bit_images_are_min_max_scaled(tmp_path, factory):
    root = tmp_path / "ct"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            values = np.linspace(1000, 3000 + 1000 * i, 28 * 28).reshape(28, 28).astype(np.uint16)
            Image.fromarray(values).save(root / name / f"{i}.png")  # mode I;16
    with Image.open(root / "a" / "0.png") as image:
        assert image.mode.startswith("I")
    ds = factory(path=root, test_fraction=0.0, val_fraction=0.0)
    images = ds.split("train").images
    assert ds.info.n_channels == 1
    assert images.min() == 0 and images.max() == 255
    assert np.all(images.reshape(len(images), -1).min(axis=1) == 0)  # per image
    assert np.all(images.reshape(len(images), -1).max(axis=1) == 255)


def test_a_float_image_with_non_finite_pixels_is_refused_by_name(tmp_path, factory):
    root = tmp_path / "tiff"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(3):
            values = np.linspace(0.0, 1.0 + i, 28 * 28, dtype=np.float32).reshape(28, 28)
            if name == "b" and i == 1:
                values[3, 4] = np.nan  # one missing value
            Image.fromarray(values, mode="F").save(root / name / f"{i}.tif")
    ds = factory(path=root, test_fraction=0.0, val_fraction=0.0)
    with pytest.raises(DatasetError, match=r"b/1\.tif: 1 non-finite pixel\(s\) \(NaN or inf\) in a F image"):
        _ = ds.split("train").images


def test_resize(flat, factory):
    ds = factory(path=flat, image_size=16, channels=1)
    assert ds.info.image_size == (16, 16)
    assert ds.split("test").images.shape[1:] == (16, 16, 1)


def test_corrupt_image_is_named_when_decoding(flat, factory):
    (flat / "malignant" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = factory(path=flat, channels=1)  # scanning does not open files
    with pytest.raises(DatasetError, match="broken.png: cannot read image"):
        ds.split("train")


def test_structure_errors_name_the_folder(tmp_path, factory):
    with pytest.raises(DatasetError, match="image folder not found: .*absent"):
        factory(path=tmp_path / "absent")
    root = make_classes(tmp_path / "empty_class", {"a": 2, "b": 2})
    (root / "c").mkdir()
    (root / "c" / "readme.txt").write_text("no images")
    with pytest.raises(DatasetError, match=r"empty_class/c: empty class folder"):
        factory(path=root)
    loose = tmp_path / "loose"
    save_gray(loose / "x.png", 1)
    with pytest.raises(DatasetError, match=r"loose: no class folders.*1 image\(s\) directly"):
        factory(path=loose)
    with pytest.raises(DatasetError, match="only one class folder"):
        factory(path=make_classes(tmp_path / "one", {"a": 3}))
    file = tmp_path / "file.png"
    save_gray(file, 1)
    with pytest.raises(DatasetError, match="not a folder"):
        factory(path=file)


def test_argument_errors(flat, factory):
    with pytest.raises(DatasetError, match="task binary needs 2 class folders, found 3"):
        factory(path=flat, task="binary")
    with pytest.raises(DatasetError, match="multi-label"):
        factory(path=flat, task="multi-label")
    with pytest.raises(DatasetError, match="val_fraction \\+ test_fraction"):
        factory(path=flat, val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(DatasetError, match="test_fraction must be in"):
        factory(path=flat, test_fraction=-0.1)
    assert factory(path=flat, task="ordinal", name="graded").info.task is Task.ORDINAL
    issues = check_args(factory, {"path": "x", "channels": 2, "task": "multi-label"}, "d.args")
    assert sorted(i.path for i in issues) == ["d.args.channels", "d.args.task"]


def test_train_test_layout_carves_val_from_train(tmp_path, factory):
    root = tmp_path / "given"
    make_classes(root / "train", {"a": 10, "b": 20})
    make_classes(root / "test", {"a": 3, "b": 4})
    ds = factory(path=root, val_fraction=0.1, test_fraction=0.5)  # test_fraction unused: test/ is given
    assert ds.info.split_sizes == {"train": 27, "val": 3, "test": 7}
    assert all("/test/" in str(f) for f, _ in ds.files["test"])
    assert all("/train/" in str(f) for f, _ in ds.files["val"])
    assert set(ds.split("val").labels[:, 0]) == {0, 1}
    make_classes(root / "val", {"a": 1, "b": 1})
    assert factory(path=root).info.split_sizes == {"train": 30, "val": 2, "test": 7}


def test_split_layout_errors(tmp_path, factory):
    root = tmp_path / "given"
    make_classes(root / "train", {"a": 4, "b": 4})
    make_classes(root / "test", {"a": 2, "c": 2})
    with pytest.raises(DatasetError, match=r"given/test: class folders differ .*missing b; extra c"):
        factory(path=root)
    only_test = make_classes(tmp_path / "only_test" / "test", {"a": 2, "b": 2}).parent
    with pytest.raises(DatasetError, match="no train/ folder"):
        factory(path=only_test)
    mixed = tmp_path / "mixed"
    make_classes(mixed / "train", {"a": 2, "b": 2})
    make_classes(mixed, {"extra": 1})
    with pytest.raises(DatasetError, match=r"mixes split folders \(train\) with other folders \(extra\)"):
        factory(path=mixed)


@pytest.mark.data
def test_real_kidney_ct_folder(shared_data, factory):
    ds = factory(path=str(shared_data / "folders" / "kidney_ct"), modality="abdominal CT")
    assert ds.name == "kidney_ct"
    info = ds.info
    assert info.label_names == ("Cyst", "Normal", "Stone", "Tumor")
    assert (info.task, info.n_channels, info.modality) == (Task.MULTI_CLASS, 1, "abdominal CT")
    assert sum(info.split_sizes.values()) == 1914
    for split, n in info.split_sizes.items():
        arrays = ds.split(split)
        assert arrays.images.shape == (n, 28, 28, 1)
        assert set(arrays.labels[:, 0]) == {0, 1, 2, 3}
    fractions = {split: n / 1914 for split, n in info.split_sizes.items()}
    assert fractions["val"] == pytest.approx(0.1, abs=0.01) and fractions["test"] == pytest.approx(0.2, abs=0.01)
