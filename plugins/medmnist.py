"""Built-in plugin: every MedMNIST v2 dataset, one registered name per flag.

``pneumoniamnist``, ``chestmnist``, ``organmnist3d``, ... take ``size`` (28, 64,
128 or 224 for 2D flags; 28 or 64 for 3D flags), ``root`` (default
``$MEDMNIST_ROOT``, else medmnist's ``~/.medmnist``) and ``download``.

Files are the official ``{flag}.npz`` (size 28) and ``{flag}_{size}.npz``, MD5-checked
against medmnist's ``INFO``. A verified checksum is remembered in
``<mednns cache>/medmnist_md5.json`` per absolute path, valid while the file's
size and modification time are unchanged, so large files are hashed once (the
data root itself may be read-only).

Importing medmnist costs seconds (it imports torch, torchvision, pandas,
scikit-image), so this plugin loads only medmnist's ``info.py``, as a standalone
module, and does not import torch.
"""

import functools
import hashlib
import http.client
import importlib.util
import json
import os
import tempfile
import types
import urllib.request
from pathlib import Path
from typing import Any, Callable, Literal

import mednns
from mednns.data import DatasetInfo, NpzDataset, Task
from mednns.errors import DatasetError
from mednns.files import write_json
from mednns.paths import cache_dir

SIZES_2D = (28, 64, 128, 224)
SIZES_3D = (28, 64)

#: Imaging modality of each MedMNIST flag (for reports and descriptions).
MODALITIES = {
    "pathmnist": "colon pathology (H&E histology)",
    "chestmnist": "chest X-ray",
    "dermamnist": "dermatoscopy",
    "octmnist": "retinal OCT",
    "pneumoniamnist": "pediatric chest X-ray",
    "retinamnist": "fundus photography",
    "breastmnist": "breast ultrasound",
    "bloodmnist": "blood cell microscopy",
    "tissuemnist": "kidney cortex microscopy",
    "organamnist": "abdominal CT (axial)",
    "organcmnist": "abdominal CT (coronal)",
    "organsmnist": "abdominal CT (sagittal)",
    "organmnist3d": "abdominal CT",
    "nodulemnist3d": "chest CT",
    "adrenalmnist3d": "adrenal shape (from abdominal CT)",
    "fracturemnist3d": "chest CT",
    "vesselmnist3d": "brain MRA",
    "synapsemnist3d": "electron microscopy",
}

MD5_CACHE_NAME = "medmnist_md5.json"
_CHUNK = 1 << 20


# -- medmnist metadata ---------------------------------------------------------


@functools.cache
def _info_module() -> types.ModuleType:
    """medmnist's ``info.py``, executed on its own (without ``medmnist/__init__.py``)."""
    try:
        spec = importlib.util.find_spec("medmnist")
        if spec is None or spec.origin is None:
            raise ImportError("medmnist not found")
        location = Path(spec.origin).parent / "info.py"
        info_spec = importlib.util.spec_from_file_location("_mednns_medmnist_info", location)
        if info_spec is None or info_spec.loader is None:
            raise ImportError(f"cannot load {location}")
        module = importlib.util.module_from_spec(info_spec)
        info_spec.loader.exec_module(module)
        module.INFO  # noqa: B018 - must exist
        return module
    except Exception:
        import medmnist.info  # the slow but sure way

        return medmnist.info


def medmnist_info() -> dict[str, dict[str, Any]]:
    """medmnist's ``INFO``: ``{flag: {task, label, n_channels, n_samples, url, MD5, ...}}``."""
    return _info_module().INFO


def sizes_of(flag: str) -> tuple[int, ...]:
    """The image sizes MedMNIST publishes for ``flag``."""
    return SIZES_3D if flag.endswith("3d") else SIZES_2D


def default_root() -> Path:
    """``$MEDMNIST_ROOT``, else medmnist's default root (``~/.medmnist``)."""
    env = os.environ.get("MEDMNIST_ROOT")
    if env:
        return Path(env).expanduser()
    default = getattr(_info_module(), "DEFAULT_ROOT", None)
    return Path(default) if default else Path.home() / ".medmnist"


def file_name(flag: str, size: int) -> str:
    """``{flag}.npz`` for size 28, ``{flag}_{size}.npz`` otherwise (medmnist's names)."""
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def source_of(flag: str, size: int) -> tuple[str, str]:
    """``(url, md5)`` of the official file of ``flag`` at ``size``."""
    entry = medmnist_info()[flag]
    suffix = "" if size == 28 else f"_{size}"
    try:
        return entry[f"url{suffix}"], entry[f"MD5{suffix}"]
    except KeyError:
        version = getattr(_info_module(), "__version__", "?")
        raise DatasetError(
            f"{flag}: the installed medmnist ({version}) lists no file of size {size}",
            hint="sizes other than 28 need medmnist >= 3 (pip install -U medmnist)",
        ) from None


def dataset_info(flag: str, size: int, path: Path) -> DatasetInfo:
    """The :class:`DatasetInfo` of ``flag`` at ``size``, from medmnist's ``INFO``."""
    entry = medmnist_info()[flag]
    labels = entry["label"]
    ndim = 3 if flag.endswith("3d") else 2
    return DatasetInfo(
        name=flag if size == 28 else f"{flag}_{size}",
        task=Task.from_medmnist(entry["task"]),
        n_channels=int(entry["n_channels"]),
        n_classes=len(labels),
        label_names=tuple(labels[k] for k in sorted(labels, key=int)),
        image_size=(size,) * ndim,
        modality=MODALITIES.get(flag, "unknown"),
        split_sizes={split: int(n) for split, n in entry["n_samples"].items()},
        source=str(path),
    )


def describe(flag: str) -> str:
    """One line: task, classes, channels, modality, sizes."""
    entry = medmnist_info()[flag]
    dims = "3D" if flag.endswith("3d") else "2D"
    sizes = "/".join(map(str, sizes_of(flag)))
    task = Task.from_medmnist(entry["task"])
    what = "labels" if task is Task.MULTI_LABEL else "classes"
    return (
        f"MedMNIST {flag}: {task}, {len(entry['label'])} {what}, "
        f"{entry['n_channels']} channel(s), {MODALITIES.get(flag, 'unknown modality')}; {dims}, size {sizes}"
    )


# -- checksums -----------------------------------------------------------------


def file_md5(path: Path) -> str:
    """MD5 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def _cache_file() -> Path | None:
    try:
        return cache_dir() / MD5_CACHE_NAME
    except OSError:
        return None


def _read_cache(cache: Path) -> dict[str, Any]:
    try:
        data = json.loads(cache.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_cache(cache: Path, data: dict[str, Any]) -> None:
    """Atomic write; a cache that cannot be written is skipped (the next run hashes again)."""
    try:
        write_json(cache, data)
    except OSError:
        pass


def _remember_md5(path: Path, md5: str) -> None:
    cache = _cache_file()
    if cache is None:
        return
    stat = path.stat()
    data = _read_cache(cache)
    data[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "md5": md5}
    _write_cache(cache, data)


def cached_md5(path: Path) -> str:
    """MD5 of ``path``, from the cache when its absolute path, size and mtime_ns match."""
    stat = path.stat()
    cache = _cache_file()
    if cache is not None:
        entry = _read_cache(cache).get(str(path.resolve()))
        if (
            isinstance(entry, dict)
            and entry.get("size") == stat.st_size
            and entry.get("mtime_ns") == stat.st_mtime_ns
            and isinstance(entry.get("md5"), str)
        ):
            return entry["md5"]
    md5 = file_md5(path)
    _remember_md5(path, md5)
    return md5


def verify_md5(path: Path, expected: str, url: str) -> None:
    """Raise :class:`DatasetError` unless ``path`` has MD5 ``expected``."""
    try:
        actual = cached_md5(path)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if actual != expected:
        raise DatasetError(
            f"{path}: MD5 mismatch: expected {expected}, got {actual} (corrupt, truncated or another version); "
            "the file is not used",
            hint=f"delete it and download it again (download: true) or from {url}",
        )


# -- files and downloads -------------------------------------------------------


def _missing(flag: str, path: Path, url: str, md5: str, reason: str) -> DatasetError:
    return DatasetError(
        f"{flag}: {reason}: {path} (download URL {url}, MD5 {md5})",
        hint=f"pass download: true, or put {path.name} in {path.parent}, or point root / MEDMNIST_ROOT at "
        "the folder that holds it",
    )


def download_file(url: str, path: Path, md5: str) -> None:
    """Download ``url`` to ``path`` via a temporary file in the same folder, checking ``md5``.

    Shows a rich progress bar on stderr. The file appears at ``path`` only when
    complete and verified. Raises ``OSError``, ``ValueError`` (MD5 mismatch, bad URL)
    or ``http.client.HTTPException`` on failure.
    """
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.md5()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            length = response.headers.get("Content-Length")
            columns = (TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                       TimeRemainingColumn())
            with Progress(*columns, console=Console(stderr=True)) as progress:
                task = progress.add_task(f"downloading {path.name}", total=int(length) if length else None)
                for block in iter(lambda: response.read(_CHUNK), b""):
                    out.write(block)
                    digest.update(block)
                    progress.advance(task, len(block))
        actual = digest.hexdigest()
        if actual != md5:
            raise ValueError(f"downloaded data has MD5 {actual}, expected {md5}")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _remember_md5(path, md5)


def medmnist_dataset(flag: str, size: int = 28, root: str | None = None, download: bool = False) -> NpzDataset:
    """The MedMNIST dataset ``flag`` at ``size``, from ``root`` (downloaded when asked and missing)."""
    info = medmnist_info()
    if flag not in info:
        raise DatasetError(f"unknown MedMNIST flag {flag!r}; known: {', '.join(info)}")
    if size not in sizes_of(flag):
        raise DatasetError(f"{flag}: size must be one of {', '.join(map(str, sizes_of(flag)))}, got {size!r}")
    folder = Path(root).expanduser() if root else default_root()
    path = folder / file_name(flag, size)
    url, md5 = source_of(flag, size)
    if not path.is_file():
        if not download:
            raise _missing(flag, path, url, md5, "file not found (download is off)")
        try:
            download_file(url, path, md5)
        except (OSError, ValueError, http.client.HTTPException) as exc:
            raise _missing(flag, path, url, md5, f"download failed ({exc})") from None
    else:
        verify_md5(path, md5, url)
    return NpzDataset(path, info=dataset_info(flag, size, path))


# -- registration --------------------------------------------------------------


def _factory(flag: str) -> Callable[..., NpzDataset]:
    """A factory for ``flag`` whose signature (its config schema) lists the sizes of that flag."""
    factory: Callable[..., NpzDataset]
    if flag.endswith("3d"):

        def factory(size: Literal[28, 64] = 28, root: str | None = None, download: bool = False) -> NpzDataset:
            return medmnist_dataset(flag, size=size, root=root, download=download)

    else:

        def factory(
            size: Literal[28, 64, 128, 224] = 28, root: str | None = None, download: bool = False
        ) -> NpzDataset:
            return medmnist_dataset(flag, size=size, root=root, download=download)

    factory.__name__ = factory.__qualname__ = flag
    factory.__doc__ = (
        f"{describe(flag)}.\n\n"
        f":param size: image size ({', '.join(map(str, sizes_of(flag)))}).\n"
        ":param root: folder of the npz files (default $MEDMNIST_ROOT, else ~/.medmnist).\n"
        ":param download: download a missing file (MD5-checked)."
    )
    return factory


@mednns.hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register one dataset per MedMNIST flag."""
    for flag in medmnist_info():
        register(flag, _factory(flag), description=describe(flag))
