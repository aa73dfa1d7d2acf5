"""The ``volume_slices`` dataset on synthetic volumes these tests write: slices, windows, resizing, errors.

Only public mednns API is used (``mednns``, ``mednns.testing``, ``mednns.data``), as a third-party
package's tests would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from mednns_volumes import dataset as dataset_module
from mednns_volumes import plugin
from mednns_volumes.slicing import axial_indices, window_table

import mednns
from mednns.data import Task
from mednns.testing import check_dataset, plugin_manager, write_tiny_npz


def write_volumes(path: Path, volumes: dict[str, np.ndarray], labels: dict[str, np.ndarray] | None = None) -> Path:
    """A MedMNIST 3D-layout npz: ``{split}_images`` ``(N, D, H, W)`` uint8 and ``{split}_labels`` ``(N, 1)``."""
    arrays = {}
    for split, images in volumes.items():
        arrays[f"{split}_images"] = images
        arrays[f"{split}_labels"] = (labels or {}).get(split, (np.arange(len(images)) % 2)[:, None].astype(np.uint8))
    np.savez_compressed(path, **arrays)
    return path


def random_volumes(shape: tuple[int, int, int], sizes=(5, 3, 4), seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {split: rng.integers(0, 256, (n, *shape), dtype=np.uint8)
            for split, n in zip(("train", "val", "test"), sizes)}


def create(**args):
    """Build ``volume_slices`` through the registry, arguments validated like a config's."""
    return plugin_manager(plugin).create("datasets", "volume_slices", **args)


@pytest.mark.parametrize("side", [8, 9])
def test_orthogonal_channels_are_the_central_axial_coronal_and_sagittal_slices(tmp_path, side):
    volumes = random_volumes((side, side, side))
    ds = create(path=str(write_volumes(tmp_path / "v.npz", volumes)))
    c = side // 2
    for split, vols in volumes.items():
        images = ds.split(split).images
        assert images.shape == (len(vols), side, side, 3) and images.dtype == np.uint8
        np.testing.assert_array_equal(images[..., 0], vols[:, c, :, :])  # axial
        np.testing.assert_array_equal(images[..., 1], vols[:, :, c, :])  # coronal
        np.testing.assert_array_equal(images[..., 2], vols[:, :, :, c])  # sagittal
    assert ds.info.n_channels == 3 and ds.info.image_size == (side, side)


def test_axial_indices_are_evenly_spaced_around_the_centre():
    assert axial_indices(64, 3) == [10, 32, 53]
    assert axial_indices(28, 3) == [4, 14, 23]
    assert axial_indices(9, 1) == [4]
    assert axial_indices(8, 4) == [1, 3, 5, 7]
    assert axial_indices(8, 8) == list(range(8))
    assert axial_indices(64, 3, spacing=1) == [31, 32, 33]
    assert axial_indices(64, 5, spacing=3) == [26, 29, 32, 35, 38]
    assert axial_indices(64, 4, spacing=2) == [30, 32, 34, 36]
    with pytest.raises(mednns.DatasetError, match="depth 8"):
        axial_indices(8, 9)
    with pytest.raises(mednns.DatasetError, match="outside a volume of depth 8"):
        axial_indices(8, 5, spacing=2)
    with pytest.raises(mednns.UsageError, match="spacing"):
        axial_indices(8, 3, spacing=0)


def test_axial_stack_takes_the_chosen_slices_as_channels(tmp_path):
    depth = 12
    vols = np.zeros((4, depth, 6, 7), dtype=np.uint8)  # not cubic: fine for an axial stack
    vols += (np.arange(depth, dtype=np.uint8) * 10)[None, :, None, None]  # axial slice k holds 10 k
    path = write_volumes(tmp_path / "v.npz", {"train": vols, "val": vols[:2], "test": vols[:3]})
    ds = create(path=str(path), mode="axial_stack", slices=5)
    images = ds.split("train").images
    assert images.shape == (4, 6, 7, 5) and ds.info.image_size == (6, 7) and ds.info.n_channels == 5
    expected = [(2 * k + 1) * depth // 10 for k in range(5)]  # [1, 3, 6, 8, 10]
    assert ds.indices == expected
    np.testing.assert_array_equal(images[0, 0, 0], np.array(expected) * 10)
    assert all(np.all(images[..., i] == 10 * k) for i, k in enumerate(expected))
    spaced = create(path=str(path), mode="axial_stack", slices=3, spacing=2)
    np.testing.assert_array_equal(spaced.split("val").images[1, 2, 3], [40, 60, 80])


def test_window_maps_values_like_a_ct_viewer():
    table = window_table(40, 200)
    values = np.array([0, 39, 40, 41, 120, 199, 200, 255])
    # below the window: black; above: white; inside: stretched linearly, 255 * (v - 40) / 160, rounded
    np.testing.assert_array_equal(table[values], [0, 0, 0, 2, 128, 253, 255, 255])
    assert np.all(np.diff(table.astype(int)) >= 0)
    np.testing.assert_array_equal(window_table(0, 255), np.arange(256))  # the full range changes nothing
    for bad in [(200, 40), (-1, 100), (0, 256), (50, 50)]:
        with pytest.raises(mednns.UsageError, match="window"):
            window_table(*bad)


def test_windowed_dataset_applies_the_window_to_every_channel(tmp_path):
    volumes = random_volumes((8, 8, 8), seed=1)
    path = write_volumes(tmp_path / "v.npz", volumes)
    plain = create(path=str(path)).split("test").images
    windowed = create(path=str(path), window=[64.0, 192.0]).split("test").images
    expected = np.clip(np.rint((plain.astype(float) - 64) / 128 * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(windowed, expected)
    assert create(path=str(path), window=[64, 192]).info.name == "v_orth_w64-192"


def test_resize_gives_square_images_and_keeps_constant_slices_constant(tmp_path):
    vols = np.full((3, 10, 12, 14), 77, dtype=np.uint8)
    vols[:, 5] = 200  # the central axial slice of every volume
    path = write_volumes(tmp_path / "v.npz", {"train": vols, "val": vols, "test": vols})
    ds = create(path=str(path), size=6)  # non-cubic volumes need a size in orthogonal mode
    images = ds.split("train").images
    assert images.shape == (3, 6, 6, 3) and ds.info.image_size == (6, 6)
    assert np.all(images[..., 0] == 200)  # a constant slice stays constant
    coronal = images[..., 1]  # (D, W) = (10, 14) -> 6 x 6: the bright row 5 of 10 lands in the middle
    assert np.all(coronal[:, [0, -1]] == 77) and np.all(coronal[:, 3] > 77)
    assert check_dataset(ds) == {"train": 3, "val": 3, "test": 3}


def test_check_dataset_passes_for_both_modes_and_tasks_come_from_the_labels(tmp_path):
    binary = write_volumes(tmp_path / "binary.npz", random_volumes((8, 8, 8)))
    for args in ({}, {"mode": "axial_stack", "slices": 3}, {"size": 5, "window": [10, 240]}):
        ds = create(path=str(binary), **args)
        assert check_dataset(ds) == {"train": 5, "val": 3, "test": 4}
        assert ds.info.task is Task.BINARY and ds.info.n_classes == 2
        assert ds.info.modality == "CT (2.5D from 3D volumes)" and ds.info.source == str(binary)
    # mednns.testing writes (N, D, H, W, 1) volumes: the channel axis is accepted too
    multi = write_tiny_npz(tmp_path / "multi.npz", depth=8, size=8, n_classes=3, sizes=(12, 6, 6))
    ds = create(path=str(multi), name="organs", modality="MRI")
    assert check_dataset(ds) == {"train": 12, "val": 6, "test": 6}
    assert ds.info.task is Task.MULTI_CLASS and ds.info.n_classes == 3 and ds.name == "organs"
    assert ds.info.modality == "MRI (2.5D from 3D volumes)"


def test_construction_is_cheap_and_loading_streams_in_chunks(tmp_path, monkeypatch):
    volumes = random_volumes((8, 8, 8), sizes=(7, 3, 4))
    path = write_volumes(tmp_path / "v.npz", volumes)
    whole = dataset_module.VolumeSlicesDataset(path, chunk=64).split("train").images

    def no_pixels(*_args, **_kwargs):
        raise AssertionError("pixels were read")

    monkeypatch.setattr(dataset_module, "iter_chunks", no_pixels)
    ds = dataset_module.VolumeSlicesDataset(path, chunk=2)
    assert ds.info.split_sizes == {"train": 7, "val": 3, "test": 4}  # metadata without pixels
    monkeypatch.undo()
    np.testing.assert_array_equal(ds.split("train").images, whole)  # chunks of 2, 2, 2, 1: same images


def test_clear_errors_name_the_file(tmp_path):
    missing = tmp_path / "absent.npz"
    with pytest.raises(mednns.DatasetError, match="absent.npz"):
        create(path=str(missing))
    flat = write_tiny_npz(tmp_path / "flat.npz", size=8)  # 2D images
    with pytest.raises(mednns.DatasetError, match="flat.npz.*3D volumes") as error:
        create(path=str(flat))
    assert "'npz' dataset" in error.value.hint
    oblong = write_volumes(tmp_path / "oblong.npz", random_volumes((6, 8, 10)))
    with pytest.raises(mednns.DatasetError, match="oblong.npz.*not cubic") as error:
        create(path=str(oblong))
    assert "size" in error.value.hint
    with pytest.raises(mednns.DatasetError, match="oblong.npz.*depth 6"):
        create(path=str(oblong), mode="axial_stack", slices=7)
    with pytest.raises(mednns.UsageError, match="oblong.npz.*window"):
        create(path=str(oblong), size=8, window=[100, 20])
    with pytest.raises(mednns.ConfigError, match="mode"):
        create(path=str(oblong), mode="coronal")  # the Literal annotation is the schema
    with pytest.raises(mednns.ConfigError, match="window"):
        create(path=str(oblong), window=[1, 2, 3])


def test_usable_from_a_config(tmp_path):
    from mednns.config import validate_config

    path = write_volumes(tmp_path / "v.npz", random_volumes((8, 8, 8)))
    config = {"stages": [{"name": "dataset_summary"}],
              "datasets": [{"name": "volume_slices", "args": {"path": str(path), "window": [40, 200], "size": 6}}]}
    resolved = validate_config(plugin_manager(plugin), config)
    args = resolved.datasets[0]["args"]
    assert args["mode"] == "orthogonal" and args["slices"] == 3 and args["window"] == [40, 200]
    config["datasets"][0]["args"]["mode"] = "sideways"
    with pytest.raises(mednns.ConfigError, match=r"datasets\[0\]\.args\.mode"):
        validate_config(plugin_manager(plugin), config)
