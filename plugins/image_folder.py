"""Built-in plugin: ``image_folder``, a folder of images with one sub-folder per class.

Two layouts are understood::

    root/<class>/<image>                  split here: stratified, seeded
    root/train/<class>/<image>            given splits; a missing val/ or test/
    root/val/<class>/<image>   (optional)  is carved from train/, stratified
    root/test/<class>/<image>  (optional)

Images are any file with an extension PIL can open (searched recursively inside
each class folder); hidden files and folders and ``__MACOSX`` are skipped.
Label names are the sorted class folder names.

Construction only scans the folders (and splits the file lists). Pixels are
decoded once, for all splits, the first time they are needed: on the first
``load_split``, or on the first ``info`` access when ``channels`` is ``"auto"``.
Each image is turned upright by its EXIF orientation, converted to 8 bits
(16-bit, 32-bit integer and float images are min-max scaled to 0..255 per image:
their absolute intensities, e.g. Hounsfield units, are not kept; alpha is
dropped), then resized to ``image_size`` x ``image_size`` with PIL's bicubic
filter (the aspect ratio is not kept: crop beforehand if it matters).
Multi-frame files (e.g. TIFF stacks) contribute their first frame.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Callable, Literal

import numpy as np
from PIL import Image, ImageOps

import mednns
from mednns.data import LUMINANCE, SPLITS, DatasetInfo, MedicalDataset, SplitArrays, Task
from mednns.errors import DatasetError

#: Modes read as grayscale; ``I``/``I;16*``/``F`` are min-max scaled to 8 bits.
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SCALED_MODES = frozenset({"I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
_SKIPPED_DIRS = frozenset({"__MACOSX"})
#: What PIL raises on unreadable, truncated or corrupt files.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, TypeError, EOFError, struct.error, Image.DecompressionBombError)


def image_extensions() -> frozenset[str]:
    """Lower-case file extensions (``.png``, ...) of the formats PIL can open."""
    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def _visible(name: str) -> bool:
    return not name.startswith(".") and name not in _SKIPPED_DIRS


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and _visible(p.name))


def _image_files(folder: Path, extensions: frozenset[str]) -> list[Path]:
    """Image files under ``folder`` (recursively), sorted; hidden entries skipped."""
    found: list[Path] = []
    for current, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if _visible(d))
        found += [Path(current, f) for f in files if _visible(f) and Path(f).suffix.lower() in extensions]
    return sorted(found)


def scan_classes(folder: Path, extensions: frozenset[str] | None = None) -> dict[str, list[Path]]:
    """``{class name: image files}`` of a folder holding one sub-folder per class (sorted by name).

    Raises :class:`DatasetError` naming the folder when there are no (or fewer than
    two) class folders, or a class folder holds no image.
    """
    extensions = extensions if extensions is not None else image_extensions()
    classes = _subfolders(folder)
    if not classes:
        loose = _image_files(folder, extensions)
        detail = f"; it holds {len(loose)} image(s) directly: move them into one sub-folder per class" if loose else ""
        raise DatasetError(f"{folder}: no class folders (one sub-folder per class expected){detail}")
    if len(classes) < 2:
        raise DatasetError(f"{folder}: only one class folder ({classes[0].name}); at least two classes are needed")
    files: dict[str, list[Path]] = {}
    for class_dir in classes:
        images = _image_files(class_dir, extensions)
        if not images:
            raise DatasetError(
                f"{class_dir}: empty class folder (no image files)",
                hint="remove the folder or add images (" + ", ".join(sorted(extensions)[:8]) + ", ...)",
            )
        files[class_dir.name] = images
    return files


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split indices of ``labels`` per class: ``fractions`` name the carved splits, ``"rest"`` gets the others.

    Per class (in sorted label order), indices are shuffled with
    ``numpy.random.default_rng(seed)`` and ``round(n * fraction)`` of them go to
    each named split, in the order given, keeping at least one for ``"rest"``.
    Returned index arrays are sorted. Deterministic for a given ``seed``.
    """
    rng = np.random.default_rng(seed)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in [*fractions, "rest"]}
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, fraction in fractions.items():
            count = min(int(round(len(members) * fraction)), max(len(members) - 1 - start, 0))
            parts[name].append(members[start : start + count])
            start += count
        parts["rest"].append(members[start:])
    return {name: np.sort(np.concatenate(chunks)) for name, chunks in parts.items()}


def read_image(path: Path, size: int) -> np.ndarray:
    """Decode one image to ``uint8``: ``(size, size)`` when grayscale, else ``(size, size, 3)``.

    RGB images with three identical channels count as grayscale. Raises
    :class:`DatasetError` naming the file when PIL cannot read it.
    """
    try:
        with Image.open(path) as image:
            image.load()
            image = _to_8bit(ImageOps.exif_transpose(image), path)
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8)
    except _DECODE_ERRORS as exc:
        raise DatasetError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from None
    if array.ndim == 3 and (array[..., 0] == array[..., 1]).all() and (array[..., 1] == array[..., 2]).all():
        array = array[..., 0]
    return np.ascontiguousarray(array)


def _to_8bit(image: Image.Image, path: object = "") -> Image.Image:
    """An ``L`` or ``RGB`` image; higher bit depths min-max scaled per image; alpha dropped. An image
    with non-finite pixels (NaN, inf: float TIFFs) is refused: a min-max scaling through them makes
    the whole image black, and mednns does not guess the missing values."""
    if image.mode in _SCALED_MODES:
        values = np.asarray(image, dtype=np.float64)
        bad = int((~np.isfinite(values)).sum())
        if bad:
            raise DatasetError(f"{path}: {bad} non-finite pixel(s) (NaN or inf) in a {image.mode} image",
                               hint="fill or mask them when exporting the image, or leave the file out")
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else np.zeros_like(values)
        return Image.fromarray(np.round(scaled).astype(np.uint8))
    if image.mode in GRAY_MODES:
        return image.convert("L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def _luminance(rgb: np.ndarray) -> np.ndarray:
    gray = rgb.astype(np.float32) @ np.asarray(LUMINANCE, dtype=np.float32)
    return np.clip(np.round(gray), 0, 255).astype(np.uint8)


class ImageFolderDataset(MedicalDataset):
    """Images in class folders; see the module documentation for layouts and decoding.

    :param path: the root folder.
    :param name: dataset name (default: the folder's name).
    :param task: ``binary`` (2 classes), ``multi-class`` or ``ordinal`` (classes
        ordered as their sorted folder names); default binary for 2 classes,
        multi-class otherwise.
    :param channels: ``1``, ``3`` or ``"auto"``: 1 when every image is grayscale
        (modes ``1``/``L``/``I``/``I;16``/``F``, or RGB with identical channels), else 3.
        RGB images become one channel by luminance; gray ones three by repetition.
    :param image_size: output side length in pixels.
    :param val_fraction: fraction carved as validation split (of all images, or of
        ``train/`` when it is given without ``val/``).
    :param test_fraction: fraction carved as test split (when no ``test/`` is given).
    :param seed: seed of the stratified split.
    :param modality: imaging modality, for reports.
    """

    def __init__(
        self,
        path: Path,
        *,
        name: str | None = None,
        task: Literal["multi-class", "binary", "ordinal"] | None = None,
        channels: Literal["auto", 1, 3] = "auto",
        image_size: int = 28,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        seed: int = 0,
        modality: str = "unknown",
    ):
        super().__init__()
        self.root = Path(path).expanduser()
        self.channels = channels
        self.image_size = image_size
        self.modality = modality
        self._check_args(val_fraction, test_fraction)
        if not self.root.exists():
            raise DatasetError(f"image folder not found: {self.root}")
        if not self.root.is_dir():
            raise DatasetError(f"{self.root}: not a folder")
        self._name = name or self.root.resolve().name
        self.classes, self.files = self._scan(val_fraction, test_fraction, seed)
        self.task = self._task(task)
        self._info: DatasetInfo | None = None
        self._decoded: dict[str, SplitArrays] | None = None

    def _check_args(self, val_fraction: float, test_fraction: float) -> None:
        if self.channels not in ("auto", 1, 3):
            raise DatasetError(f"{self.root}: channels must be 'auto', 1 or 3, got {self.channels!r}")
        if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or self.image_size < 1:
            raise DatasetError(f"{self.root}: image_size must be a positive integer, got {self.image_size!r}")
        for key, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= value < 1:
                raise DatasetError(f"{self.root}: {key} must be in [0, 1), got {value}")
        if val_fraction + test_fraction >= 1:
            raise DatasetError(
                f"{self.root}: val_fraction + test_fraction must be below 1, got {val_fraction} + {test_fraction}"
            )

    def _scan(
        self, val_fraction: float, test_fraction: float, seed: int
    ) -> tuple[tuple[str, ...], dict[str, list[tuple[Path, int]]]]:
        """``(class names, {split: [(file, label), ...]})``."""
        extensions = image_extensions()
        names = {p.name for p in _subfolders(self.root)}
        given = [s for s in SPLITS if s in names]
        if not given:
            per_split = {"train": scan_classes(self.root, extensions)}
        else:
            others = sorted(names - set(SPLITS))
            if others:
                raise DatasetError(
                    f"{self.root}: mixes split folders ({', '.join(given)}) with other folders ({', '.join(others)})",
                    hint="use either train/ [val/] [test/] each holding the class folders, or class folders only",
                )
            if "train" not in given:
                raise DatasetError(f"{self.root}: has {'/, '.join(given)}/ but no train/ folder")
            per_split = {s: scan_classes(self.root / s, extensions) for s in given}
            expected = set(per_split["train"])
            for split, found in per_split.items():
                if set(found) != expected:
                    missing, extra = sorted(expected - set(found)), sorted(set(found) - expected)
                    parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                        [f"extra {', '.join(extra)}"] if extra else []
                    )
                    detail = "; ".join(parts)
                    raise DatasetError(
                        f"{self.root / split}: class folders differ from {self.root / 'train'} ({detail})"
                    )
        classes = tuple(sorted(per_split["train"]))
        index = {c: i for i, c in enumerate(classes)}
        files = {
            split: [(f, index[c]) for c in classes for f in found[c]] for split, found in per_split.items()
        }
        carve = {s: f for s, f in (("val", val_fraction), ("test", test_fraction)) if s not in files}
        if carve:
            train = files["train"]
            carved = stratified_split(np.array([label for _, label in train]), carve, seed)
            for split, indices in carved.items():
                files["train" if split == "rest" else split] = [train[i] for i in indices]
        return classes, {s: files[s] for s in SPLITS}

    def _task(self, task: Task | str | None) -> Task:
        n = len(self.classes)
        if task is None:
            return Task.BINARY if n == 2 else Task.MULTI_CLASS
        try:
            task = Task(task)
        except ValueError:
            raise DatasetError(f"{self.root}: unknown task {task!r}") from None
        if task is Task.MULTI_LABEL:
            raise DatasetError(f"{self.root}: class folders give one label per image; task multi-label is not possible")
        if task is Task.BINARY and n != 2:
            raise DatasetError(f"{self.root}: task binary needs 2 class folders, found {n} ({', '.join(self.classes)})")
        return task

    @property
    def name(self) -> str:
        """The dataset's name, known without decoding any image."""
        return self._name

    @property
    def info(self) -> DatasetInfo:
        """Metadata; with ``channels="auto"`` the first access decodes every image."""
        if self._info is None:
            if self.channels == "auto":
                self._decode()
            else:
                self._info = self._make_info(int(self.channels))
        assert self._info is not None
        return self._info

    def _make_info(self, n_channels: int) -> DatasetInfo:
        return DatasetInfo(
            name=self._name,
            task=self.task,
            n_channels=n_channels,
            n_classes=len(self.classes),
            label_names=self.classes,
            image_size=(self.image_size, self.image_size),
            modality=self.modality,
            split_sizes={split: len(items) for split, items in self.files.items()},
            source=str(self.root),
        )

    def load_split(self, split: str) -> SplitArrays:
        return self._decode()[split]

    def _decode(self) -> dict[str, SplitArrays]:
        """Decode every image of every split once; decide the channels when ``"auto"``."""
        if self._decoded is not None:
            return self._decoded
        images = {s: [read_image(f, self.image_size) for f, _ in items] for s, items in self.files.items()}
        if self.channels == "auto":
            n_channels = 1 if all(a.ndim == 2 for arrays in images.values() for a in arrays) else 3
        else:
            n_channels = int(self.channels)
        decoded = {}
        for split, arrays in images.items():
            stack = np.zeros((len(arrays), self.image_size, self.image_size, n_channels), dtype=np.uint8)
            for i, array in enumerate(arrays):
                if n_channels == 1:
                    stack[i, ..., 0] = array if array.ndim == 2 else _luminance(array)
                else:
                    stack[i] = array[..., None] if array.ndim == 2 else array
            labels = np.array([label for _, label in self.files[split]], dtype=np.int64).reshape(-1, 1)
            decoded[split] = SplitArrays(stack, labels)
        self._info = self._make_info(n_channels)
        self._decoded = decoded
        return decoded


@mednns.hookimpl
def register_datasets(register: Callable[..., None]) -> None:
    """Register the ``image_folder`` dataset source."""
    register(
        "image_folder",
        ImageFolderDataset,
        description="images in one sub-folder per class (optional train/ val/ test/), any PIL format",
    )
