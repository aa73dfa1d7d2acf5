"""Artifact folders (exports, meta-spaces, supernets) are found and checked by one reader."""

from __future__ import annotations

import json

import pytest

from mednns.errors import UsageError
from mednns.files import read_manifest
from mednns.testing import tiny_space


def write(path, data) -> None:
    path.write_text(json.dumps(data))


def test_a_manifest_is_found_from_its_folder_itself_or_a_file_beside_it(tmp_path):
    write(tmp_path / "model.json", {"format": "x/1", "arch": "a"})
    (tmp_path / "model.safetensors").write_bytes(b"")
    for given in (tmp_path, tmp_path / "model.json", tmp_path / "model.safetensors"):
        folder, manifest = read_manifest(given, "model.json", "x/1", what="exported model")
        assert folder == tmp_path and manifest["arch"] == "a"


def test_a_missing_or_foreign_manifest_is_named_with_the_hint(tmp_path):
    with pytest.raises(UsageError, match=r"no exported model in .* \(model.json missing\)") as info:
        read_manifest(tmp_path, "model.json", "x/1", what="exported model", hint="export one")
    assert info.value.hint == "export one"
    write(tmp_path / "model.json", {"format": "y/2"})
    with pytest.raises(UsageError, match=r"is not a x/1 file \(format 'y/2'\)"):
        read_manifest(tmp_path, "model.json", "x/1", what="exported model")
    write(tmp_path / "model.json", [1, 2])
    with pytest.raises(UsageError, match="format None"):
        read_manifest(tmp_path, "model.json", "x/1", what="exported model")


def test_the_three_loaders_refuse_each_others_folders(tmp_path):
    from mednns.export import load_model
    from mednns.metaspace import load_meta_space
    from mednns.training import load_supernet, save_supernet

    space = tiny_space()
    save_supernet(tmp_path / "sup", space, {"format": "mednns-supernet/1",
                                            "space": {"name": "ofa_resnet", "args": space.config()}})
    assert load_supernet(tmp_path / "sup")[0].config() == space.config()
    write(tmp_path / "sup" / "model.json", {"format": "mednns-supernet/1"})
    write(tmp_path / "sup" / "metaspace.json", {"format": "mednns-supernet/1"})
    with pytest.raises(UsageError, match="is not a mednns-model/1 file"):
        load_model(tmp_path / "sup")
    with pytest.raises(UsageError, match="is not a mednns-metaspace/1 file"):
        load_meta_space(tmp_path / "sup")
    write(tmp_path / "sup" / "supernet.json", {"format": "mednns-metaspace/1"})
    with pytest.raises(UsageError, match="is not a mednns-supernet/1 file"):
        load_supernet(tmp_path / "sup")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UsageError, match=r"no trained supernet in .*empty \(supernet.json missing\)"):
        load_supernet(tmp_path / "empty")
