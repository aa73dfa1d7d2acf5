"""Image sampling, cached dataset features and the built-in dataset encoders."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import mednns
from mednns.data import ArrayDataset, DatasetInfo, SplitArrays
from mednns.errors import UsageError
from mednns.metaspace.contracts import DatasetEncoder
from mednns.metaspace.dataset_encoders import ImageStatsEncoder, TimmEncoder
from mednns.metaspace.features import dataset_features, features_key, sample_images
from mednns.metaspace.fid import fid_between
from supernet_helpers import make_manager, timm_offline, tiny_dataset


class CountingEncoder(DatasetEncoder):
    """Mean and max of each image; counts the images it encodes."""

    feature_dim = 2

    def __init__(self, tag: str = "a"):
        self.tag = tag
        self.calls = 0
        self.images = 0

    def cache_key(self) -> str:
        return f"counting:{self.tag}"

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += images.shape[0]
        flat = images.flatten(1)
        return torch.stack([flat.mean(1), flat.amax(1)], dim=1)


def volume_dataset() -> ArrayDataset:
    info = DatasetInfo("vol", "binary", 1, 2, ("0", "1"), (4, 8, 8), split_sizes={"train": 3, "val": 1, "test": 1})
    split = lambda n: SplitArrays(np.zeros((n, 4, 8, 8, 1), np.uint8), np.zeros((n, 1), np.int64))  # noqa: E731
    return ArrayDataset(info, {"train": split(3), "val": split(1), "test": split(1)})


def inverted(dataset: ArrayDataset, name: str) -> ArrayDataset:
    splits = {s: SplitArrays(255 - dataset.split(s).images, dataset.split(s).labels) for s in ("train", "val", "test")}
    info = DatasetInfo(name, dataset.info.task, dataset.info.n_channels, dataset.info.n_classes,
                       dataset.info.label_names, dataset.info.image_size, split_sizes=dataset.info.split_sizes)
    return ArrayDataset(info, splits)


def test_sample_images_is_a_deterministic_subset_in_unit_range():
    dataset = tiny_dataset("tiny", size=12, channels=3)
    first = sample_images(dataset, 40, seed=3)
    assert first.shape == (40, 3, 12, 12) and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0
    assert torch.equal(first, sample_images(dataset, 40, seed=3))
    assert not torch.equal(first, sample_images(dataset, 40, seed=4))
    train = torch.from_numpy(dataset.split("train").images).permute(0, 3, 1, 2).float() / 255
    rows = {tuple(train[i].flatten().tolist()): i for i in range(len(train))}
    chosen = [rows[tuple(img.flatten().tolist())] for img in first]
    assert len(set(chosen)) == 40  # without replacement
    everything = sample_images(dataset, 1000, seed=0)
    assert torch.equal(everything, train)
    assert sample_images(dataset, 5, seed=0, split="val").shape[0] == 5


def test_sample_images_refuses_volumes_and_empty_requests():
    with pytest.raises(UsageError, match="2D images"):
        sample_images(volume_dataset(), 2, seed=0)
    with pytest.raises(UsageError, match="at least 1"):
        sample_images(tiny_dataset(), 0, seed=0)


def test_dataset_features_are_cached_and_a_hit_never_encodes(tmp_path, one_thread):
    dataset = tiny_dataset("tiny")
    encoder = CountingEncoder()
    features = dataset_features(encoder, dataset, images=50, seed=1, cache_dir=tmp_path, batch_size=16)
    assert features.shape == (50, 2) and features.dtype == np.float32
    assert encoder.calls == 4 and encoder.images == 50  # batched
    assert len(list((tmp_path / "features").glob("tiny-*.npy"))) == 1
    again = dataset_features(encoder, dataset, images=50, seed=1, cache_dir=tmp_path)
    assert encoder.images == 50 and np.array_equal(again, features)
    fresh = dataset_features(CountingEncoder(), dataset, images=50, seed=1, cache_dir=None)
    assert np.array_equal(fresh, features)


def test_cache_key_changes_with_images_seed_encoder_and_data(tmp_path):
    dataset = tiny_dataset("tiny")
    encoder = CountingEncoder("a")
    base = features_key(encoder, dataset, images=50, seed=1)
    assert base == features_key(CountingEncoder("a"), tiny_dataset("tiny"), images=50, seed=1)
    others = {features_key(encoder, dataset, images=60, seed=1), features_key(encoder, dataset, images=50, seed=2),
              features_key(CountingEncoder("b"), dataset, images=50, seed=1),
              features_key(encoder, tiny_dataset("tiny", seed=9), images=50, seed=1),
              features_key(encoder, dataset, images=50, seed=1, split="val")}
    assert base not in others and len(others) == 5
    dataset_features(encoder, dataset, images=50, seed=1, cache_dir=tmp_path)
    for images, seed in ((60, 1), (50, 2)):
        dataset_features(encoder, dataset, images=images, seed=seed, cache_dir=tmp_path)
    assert encoder.images == 50 + 60 + 50
    other = CountingEncoder("b")
    dataset_features(other, dataset, images=50, seed=1, cache_dir=tmp_path)
    assert other.images == 50
    assert len(list((tmp_path / "features").glob("*.npy"))) == 4


def test_file_datasets_are_identified_by_size_and_mtime(tmp_path):
    from supernet_helpers import write_tiny_npz

    path = write_tiny_npz(tmp_path / "scans.npz")
    encoder = CountingEncoder()
    before = features_key(encoder, mednns.data.NpzDataset(path), images=10, seed=0)
    write_tiny_npz(path, seed=5, sizes=(90, 32, 32))
    after = features_key(encoder, mednns.data.NpzDataset(path), images=10, seed=0)
    assert before != after


def test_image_stats_layout(one_thread):
    encoder = ImageStatsEncoder()
    gray = sample_images(tiny_dataset("g", size=20), 8, seed=0)
    features = encoder.encode_images(gray)
    assert features.shape == (8, 80) and features.dtype == torch.float32 and torch.isfinite(features).all()
    assert torch.allclose(features[:, 0:32].sum(1), torch.ones(8))  # intensity histogram
    assert torch.allclose(features[:, 38:54].sum(1), torch.ones(8))  # gradient histogram
    assert torch.allclose(features[:, 70:80].sum(1), torch.ones(8))  # LBP histogram
    mean = gray.mean(dim=(1, 2, 3))
    assert torch.allclose(features[:, 32:35], mean[:, None].expand(8, 3), atol=1e-6)
    flat = torch.full((2, 1, 16, 16), 0.5)
    constant = encoder.encode_images(flat)
    assert constant[0, 16] == 1.0 and torch.all(constant[:, 35:38] == 0)
    assert constant[0, 38] == 1.0 and constant[0, 78] == 1.0  # no gradient; all 8 neighbours >= centre
    rgb = encoder.encode_images(sample_images(tiny_dataset("c", size=20, channels=3), 4, seed=0))
    assert rgb.shape == (4, 80)
    assert encoder.cache_key() == "image_stats:v1"


def test_image_stats_tells_different_datasets_apart(one_thread):
    encoder = ImageStatsEncoder()
    first = tiny_dataset("first", size=24, sizes=(400, 4, 4))
    second = inverted(tiny_dataset("second", seed=1, size=24, sizes=(400, 4, 4)), "second")
    a = dataset_features(encoder, first, images=400, seed=0, cache_dir=None)
    b = dataset_features(encoder, second, images=400, seed=0, cache_dir=None)
    within = fid_between(a[:200], a[200:])
    between = fid_between(a, b)
    assert between > 20 * within


def test_builtin_encoders_are_registered_lazily():
    manager = make_manager()
    registry = manager.registry("dataset-encoders")
    assert {"timm", "image_stats"} <= set(registry.names())
    assert repr(registry.get("timm").factory).startswith("lazy(")
    assert isinstance(manager.create("dataset-encoders", "image_stats"), ImageStatsEncoder)
    with pytest.raises(mednns.ConfigError, match="expected int"):
        manager.create("dataset-encoders", "timm", image_size="big")


def test_timm_without_internet_explains_how_to_provide_weights(monkeypatch):
    timm_offline(monkeypatch, "We couldn't connect to 'https://huggingface.co' to load this file")
    with pytest.raises(UsageError) as info:
        TimmEncoder("resnet18", pretrained=True)
    text = str(info.value)
    assert "ImageNet weights" in text and "couldn't connect" in text
    assert "pretrained: /path/to/weights.safetensors" in text and "HF_HOME" in text


def test_timm_refuses_unknown_models_and_missing_files(tmp_path):
    with pytest.raises(UsageError, match="no model"):
        TimmEncoder("resnet_eighteen", pretrained=False)
    with pytest.raises(UsageError, match="not found"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "missing.safetensors"))


def test_timm_from_a_local_weights_file_gives_that_models_features(tmp_path, one_thread):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(7)
    source = timm.create_model("resnet18", pretrained=False)  # with its ImageNet-sized classifier
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    path = tmp_path / "resnet18.safetensors"
    save_file(state, str(path))

    encoder = TimmEncoder("resnet18", pretrained=str(path), image_size=32, batch_size=3)
    assert encoder.feature_dim == 512 and "file:sha256=" in encoder.cache_key()
    images = sample_images(tiny_dataset("t", size=20), 5, seed=0)
    got = encoder.encode_images(images)

    reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")})
    reference.eval()
    x = F.interpolate(images.repeat(1, 3, 1, 1), size=(32, 32), mode="bilinear", align_corners=False)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.inference_mode():
        expected = reference((x - mean) / std)
    assert got.shape == (5, 512)
    assert torch.allclose(got, expected, atol=1e-5, rtol=1e-5)

    torch.save({"state_dict": {k: v for k, v in state.items() if k != "layer1.0.conv1.weight"}}, tmp_path / "bad.pth")
    with pytest.raises(UsageError, match="does not match"):
        TimmEncoder("resnet18", pretrained=str(tmp_path / "bad.pth"), image_size=32)


def test_timm_random_weights_only_when_asked_and_seeded(one_thread):
    rng_state = torch.random.get_rng_state()
    first = TimmEncoder("resnet18", pretrained=False, image_size=32)
    second = TimmEncoder("resnet18", pretrained=False, image_size=32)
    assert "random" in first.cache_key()
    images = sample_images(tiny_dataset("t", size=16), 3, seed=0)
    assert torch.equal(first.encode_images(images), second.encode_images(images))
    assert torch.equal(rng_state, torch.random.get_rng_state())


def test_loading_the_plugin_does_not_import_torch():
    import subprocess

    code = ("import sys, mednns.plugins.dataset_encoders as p; "
            "print(sorted(n for n in ('torch', 'timm', 'matplotlib') if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
