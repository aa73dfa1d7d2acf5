"""Bundles: what a query needs, packed to publish and fetched to use (no supernet training, no zoo).

A bundle is a folder::

    bundle.json                     the manifest: format, mednns version, sources, every file's sha256
    supernets/<dataset>/            each source supernet: supernet.safetensors, supernet.json, final.json
    zoo.sqlite                      the zoo, its supernet paths relative to the bundle
    metaspace/                      the trained meta-space (its zoo path relative: ../zoo.sqlite)

:func:`export_bundle` packs a run's; :func:`pull_bundle` fetches one into the user cache (a local
folder or archive, an https URL, or a Hugging Face Hub repository) and :func:`verify_bundle`
checks it: a bundle whose format or whose files' hashes do not match is refused. Nothing in a
bundle is unpickled: weights are safetensors, arrays ``.npy``/``.npz`` read with
``allow_pickle=False``, the rest JSON and SQLite.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import shutil
import sqlite3
import tarfile
import tempfile
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import mednns
from mednns.errors import UsageError
from mednns.files import read_json, write_json
from mednns.layout import META_SPACE_MANIFEST, META_SPACE_STAGE, ZOO_STORE, meta_space_files, stage_dir
from mednns.training import FINAL, SUPERNET_METADATA, SUPERNET_WEIGHTS

FORMAT = "mednns-bundle/1"
MANIFEST = "bundle.json"
ZOO, META, SUPERNETS = ZOO_STORE, "metaspace", "supernets"
SUPERNET_FILES = (SUPERNET_WEIGHTS, SUPERNET_METADATA, FINAL)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
                  licences: dict[str, str] | None = None) -> dict[str, Any]:
    """Pack the trained meta-space of ``run_dir``, its zoo and the zoo's supernets into ``out_dir``.

    :param licences: per source dataset, its licence as known (``unknown`` otherwise).
    :returns: the manifest.
    """
    from mednns.zoo.store import ZooStore

    meta_dir = stage_dir(run_dir, META_SPACE_STAGE)
    if not (meta_dir / META_SPACE_MANIFEST).is_file():
        raise UsageError(f"{run_dir} has no trained meta-space ({meta_dir})", hint="run its fit_meta_space stage first")
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise UsageError(f"{out} exists and is not empty", hint="give a new folder")
    metadata = read_json(meta_dir / META_SPACE_MANIFEST)
    zoo = Path(meta_dir / metadata["zoo"])
    (out / META).mkdir(parents=True)
    with ZooStore(zoo, readonly=True) as store:
        supernets = store.supernets()
        copy = sqlite3.connect(out / ZOO)
        try:
            store.db.backup(copy)  # one consistent file, whatever the source's WAL holds
            copy.execute("PRAGMA journal_mode = DELETE")  # no -wal/-shm files beside a published store
            sources = [_pack_supernet(copy, s, out, licences or {}) for s in supernets]
            copy.commit()
        finally:
            copy.close()
    for name in meta_space_files(len(metadata.get("member_seeds", [None]))):
        if (meta_dir / name).is_file():
            shutil.copyfile(meta_dir / name, out / META / name)
    write_json(out / META / META_SPACE_MANIFEST, {**metadata, "zoo": f"../{ZOO}"})
    files = sorted(p for p in out.rglob("*") if p.is_file())
    manifest = {"format": FORMAT, "mednns_version": mednns.__version__,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "meta_space": {k: metadata.get(k) for k in ("target", "dataset_encoder", "model_encoder", "losses",
                                                            "train_datasets", "held_out")},
                "rerank": None, "sources": sources,
                "files": {p.relative_to(out).as_posix(): _sha256(p) for p in files}}
    write_json(out / MANIFEST, manifest)
    return manifest


def _pack_supernet(copy: sqlite3.Connection, supernet: dict[str, Any], out: Path,
                   licences: dict[str, str]) -> dict[str, Any]:
    """Copy one supernet's files into the bundle, point the zoo copy at them; its manifest entry."""
    folder = Path(supernet["path"]).parent
    relative = Path(SUPERNETS) / supernet["dataset"]
    (out / relative).mkdir(parents=True, exist_ok=True)
    for name in SUPERNET_FILES:
        if (folder / name).is_file():
            shutil.copyfile(folder / name, out / relative / name)
    copy.execute("UPDATE supernets SET path = ? WHERE id = ?",
                 ((relative / Path(supernet["path"]).name).as_posix(), supernet["id"]))
    info = supernet["metadata"].get("dataset", {})
    models = copy.execute("SELECT COUNT(*) FROM models WHERE supernet_id = ?", (supernet["id"],)).fetchone()[0]
    return {"dataset": supernet["dataset"], "space": supernet["space"], "weights_sha256": supernet["weights_sha256"],
            "task": info.get("task"), "classes": info.get("n_classes"), "channels": info.get("n_channels"),
            "image_size": info.get("image_size"), "modality": info.get("modality", "unknown"),
            "splits": info.get("split_sizes", {}), "source": info.get("source", ""),
            "licence": licences.get(supernet["dataset"], "unknown"), "models": int(models)}


def verify_bundle(folder: str | os.PathLike) -> dict[str, Any]:
    """The manifest of the bundle in ``folder`` after checking its format and every file's sha256."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise UsageError(f"{folder} is not a mednns bundle (no {MANIFEST})")
    manifest = read_json(folder / MANIFEST)
    if manifest.get("format") != FORMAT:
        raise UsageError(f"{folder}: bundle format {manifest.get('format')!r}; this mednns reads {FORMAT!r}",
                         hint="use the mednns version that wrote it, or a bundle exported by this one")
    for name, expected in manifest.get("files", {}).items():
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            raise UsageError(f"{folder}: the bundle lists {name!r}, which it does not hold")
        if _sha256(path) != expected:
            raise UsageError(f"{folder}: {name} does not match its sha256 in {MANIFEST} (damaged or altered)",
                             hint="pull the bundle again")
    return manifest


def meta_space_of(folder: str | os.PathLike) -> Path:
    """The meta-space folder of a bundle (a query reads it like a run's)."""
    return Path(folder) / META


def pull_bundle(spec: str, cache: Path | None = None) -> Path:
    """A verified bundle folder for ``spec``: a bundle folder (used in place), a ``.tar.gz``/``.tgz``/
    ``.zip`` archive, an ``https://`` URL of one (``#sha256=<hex>`` checks the download), or a
    Hugging Face Hub repository (``hf://owner/name``; ``HF_HUB_OFFLINE`` is honoured)."""
    from mednns.paths import cache_dir

    root = (cache or cache_dir()) / "bundles"
    local = Path(spec)
    if local.is_dir():
        verify_bundle(local)
        return local
    if spec.startswith("hf://"):
        return _pull_hub(spec[len("hf://"):], root)
    if spec.startswith(("https://", "http://")):
        return _pull_url(spec, root)
    if local.is_file():
        return _unpack(local, root / f"archive-{_sha256(local)[:16]}")
    raise UsageError(f"no bundle at {spec!r}",
                     hint="a bundle folder, a .tar.gz/.zip archive, an https:// URL, or hf://owner/name")


def _pull_url(url: str, root: Path) -> Path:
    parts = urllib.parse.urlsplit(url)
    expected = urllib.parse.parse_qs(parts.fragment).get("sha256", [None])[0]
    name = Path(parts.path).name or "bundle.tar.gz"
    root.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root) as tmp:
        target = Path(tmp) / name
        try:
            with urllib.request.urlopen(urllib.parse.urlunsplit(parts._replace(fragment="")), timeout=60) as response, \
                    open(target, "wb") as handle:
                shutil.copyfileobj(response, handle)
        except OSError as exc:
            raise UsageError(f"cannot download {url}: {exc}") from None
        digest = _sha256(target)
        if expected and digest != expected.lower():
            raise UsageError(f"{url}: sha256 {digest} is not the expected {expected}")
        return _unpack(target, root / f"url-{digest[:16]}")


def _pull_hub(repo: str, root: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:  # pragma: no cover - installed with timm
        raise UsageError("pulling from the Hugging Face Hub needs huggingface_hub",
                         hint="pip install huggingface_hub") from None
    try:
        folder = Path(snapshot_download(repo, cache_dir=str(root / "hub")))
    except Exception as exc:  # offline, unknown repository, network
        raise UsageError(f"cannot fetch hf://{repo}: {exc}",
                         hint="check the name; HF_HUB_OFFLINE=1 uses only what is cached") from None
    verify_bundle(folder)
    return folder


def _unpack(archive: Path, target: Path) -> Path:
    """Extract ``archive`` (members may not leave the folder) into ``target``; its bundle folder."""
    if not (target / ".complete").is_file():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as bundle:
                for member in bundle.namelist():
                    _inside(target, member)
                bundle.extractall(target)
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive) as bundle:
                bundle.extractall(target, filter="data")  # refuses links out, absolute paths, devices
        else:
            raise UsageError(f"{archive} is neither a .tar(.gz) nor a .zip archive")
        (target / ".complete").touch()
    found = [p.parent for p in target.rglob(MANIFEST)]
    if len(found) != 1:
        raise UsageError(f"{archive} holds {len(found)} bundles (bundle.json files); expected one")
    verify_bundle(found[0])
    return found[0]


def _inside(root: Path, member: str) -> None:
    if Path(member).is_absolute() or ".." in Path(member).parts:
        raise UsageError(f"the archive member {member!r} would be written outside the bundle folder")
