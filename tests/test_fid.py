"""Fréchet distances (mednns.metaspace.fid) and the ``mednns fid`` command."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from mednns.cli import cli
from mednns.errors import UsageError
from mednns.metaspace import fid as fid_module
from mednns.metaspace.fid import fid_between, fid_details, fid_matrix, frechet_distance, save_heatmap
from supernet_helpers import write_tiny_npz


def random_covariance(rng: np.random.Generator, dim: int) -> np.ndarray:
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=12), random_covariance(rng, 12)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_gaussians_match_the_closed_form():
    rng = np.random.default_rng(1)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3.0, 6), rng.uniform(0.1, 3.0, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-9)


def test_singular_covariances_use_an_offset_and_stay_close_to_the_closed_form():
    s1, s2 = np.array([1.0, 0.0, 2.0]), np.array([0.5, 0.0, 0.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 0.0, 0.0])
    expected = 1.0 + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert np.isfinite(got) and got == pytest.approx(expected, rel=1e-3)  # eps * I biases sqrt(s1 s2) near 0
    zero = np.zeros((3, 3))
    assert frechet_distance(mu1, zero, mu1, zero) == pytest.approx(0.0, abs=1e-12)


def test_frechet_distance_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="mismatched shapes"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


def test_fid_between_is_symmetric_and_grows_with_the_shift():
    rng = np.random.default_rng(2)
    a = rng.normal(size=(400, 5))
    b = rng.normal(size=(300, 5))
    shifted = b + 2.0
    assert fid_between(a, b) == pytest.approx(fid_between(b, a), rel=1e-9)
    near, far = fid_between(a, b), fid_between(a, shifted)
    assert near < 0.2 and far > 5 * 4 - 1  # ||2 * ones(5)||^2 = 20
    assert fid_details(a, b) == fid_module.FidResult(near, 5, False)


def test_rank_deficient_features_are_projected_onto_principal_components():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(10, 50))
    b = rng.normal(size=(12, 50)) + 1.0
    result = fid_details(a, b)
    assert result.projected and result.dim == 5  # min(50, min(10, 12) // 2)
    assert np.isfinite(result.distance) and result.distance > 0
    assert fid_between(a, b) == result.distance
    assert fid_between(b, a) == pytest.approx(result.distance, rel=1e-9)
    capped = fid_details(rng.normal(size=(200, 8)), rng.normal(size=(200, 8)), max_dim=3)
    assert capped.projected and capped.dim == 3


def test_fid_between_rejects_malformed_features():
    with pytest.raises(ValueError, match="at least 2"):
        fid_between(np.zeros((1, 3)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="dimensions differ"):
        fid_between(np.zeros((5, 3)), np.zeros((5, 4)))


def test_fid_matrix_is_symmetric_and_cached_per_pair(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    features = {name: rng.normal(loc=shift, size=(60, 4)) for name, shift in (("a", 0.0), ("b", 0.5), ("c", 2.0))}
    cache = tmp_path / "pairs.json"
    names, matrix = fid_matrix(features, cache=cache)
    assert names == ["a", "b", "c"]
    assert np.array_equal(matrix, matrix.T) and np.all(np.diag(matrix) == 0)
    assert matrix[0, 1] == pytest.approx(fid_between(features["a"], features["b"]))
    assert matrix[0, 2] > matrix[0, 1]
    assert len(json.loads(cache.read_text())["pairs"]) == 3

    def fail(*args, **kwargs):
        raise AssertionError("recomputed a cached pair")

    monkeypatch.setattr(fid_module, "fid_between", fail)
    reordered = {k: features[k] for k in ("c", "a", "b")}  # pair order does not matter
    names2, matrix2 = fid_matrix(reordered, cache=cache)
    assert names2 == ["c", "a", "b"]
    assert matrix2[1, 2] == matrix[0, 1] and matrix2[0, 1] == matrix[2, 0]


def test_fid_matrix_keys_identify_feature_sets_in_the_cache(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    features = {"x": rng.normal(size=(30, 3)), "y": rng.normal(size=(30, 3)) + 1}
    cache = tmp_path / "pairs.json"
    fid_matrix(features, cache=cache, keys={"x": "key-x", "y": "key-y"})
    assert list(json.loads(cache.read_text())["pairs"]) == ["key-x|key-y"]
    calls = []
    monkeypatch.setattr(fid_module, "fid_between", lambda a, b, **kw: calls.append(1) or 7.0)
    _, same = fid_matrix(features, cache=cache, keys={"x": "key-x", "y": "key-y"})
    assert not calls
    _, other = fid_matrix(features, cache=cache, keys={"x": "key-x", "y": "key-z"})
    assert calls == [1] and other[0, 1] == 7.0 and same[0, 1] != 7.0


def test_save_heatmap_writes_a_png(tmp_path):
    path = save_heatmap(["a", "b"], np.array([[0.0, 1.5], [1.5, 0.0]]), tmp_path / "fid.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_parse_dataset_spec(tmp_path):
    from mednns.data.resolve import parse_dataset_spec

    npz = write_tiny_npz(tmp_path / "scans.npz")
    folder = tmp_path / "folder"
    folder.mkdir()
    assert parse_dataset_spec("pneumoniamnist:size=28,root=data") == ("pneumoniamnist", {"size": 28, "root": "data"})
    assert parse_dataset_spec("breastmnist") == ("breastmnist", {})
    assert parse_dataset_spec(str(npz)) == ("npz", {"path": str(npz)})
    assert parse_dataset_spec(f"{npz}:name=other") == ("npz", {"path": str(npz), "name": "other"})
    assert parse_dataset_spec(str(folder)) == ("image_folder", {"path": str(folder)})
    with pytest.raises(UsageError, match="not found"):
        parse_dataset_spec(str(tmp_path / "missing.npz"))


def test_fid_command_on_npz_files(tmp_path, one_thread):
    first = write_tiny_npz(tmp_path / "first.npz", seed=0, size=16, sizes=(60, 4, 4))
    second = write_tiny_npz(tmp_path / "second.npz", seed=1, size=16, n_classes=2, sizes=(60, 4, 4))
    args = ["fid", str(first), str(second), "--images", "40", "--json", "--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert data["datasets"] == ["first", "second"]
    matrix = np.array(data["fid"])
    assert matrix.shape == (2, 2) and matrix[0, 1] == matrix[1, 0] > 0 and matrix[0, 0] == 0
    assert list((tmp_path / "cache" / "features").glob("*.npy"))
    again = CliRunner().invoke(cli, args)
    assert json.loads(again.stdout.strip().splitlines()[-1]) == data


def test_fid_command_reports_bad_input(tmp_path):
    npz = write_tiny_npz(tmp_path / "only.npz")
    result = CliRunner().invoke(cli, ["fid", str(npz), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "at least two datasets" in result.output
    result = CliRunner().invoke(cli, ["fid", str(npz), str(tmp_path / "nope.npz"), "--cache-dir", str(tmp_path)])
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.data
def test_fid_command_on_real_medmnist(shared_data, tmp_path, one_thread):
    breast = shared_data / "medmnist" / "breastmnist.npz"
    pneumonia = shared_data / "medmnist" / "pneumoniamnist.npz"
    if not (breast.is_file() and pneumonia.is_file()):
        pytest.skip("breastmnist.npz / pneumoniamnist.npz not in the shared data")
    heatmap = tmp_path / "fid.png"
    result = CliRunner().invoke(cli, ["fid", str(breast), str(pneumonia), "--images", "200", "--heatmap",
                                      str(heatmap), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    assert "breastmnist" in result.stdout and "pneumoniamnist" in result.stdout and "FID" in result.stdout
    assert heatmap.stat().st_size > 1000 and heatmap.read_bytes()[:4] == b"\x89PNG"
