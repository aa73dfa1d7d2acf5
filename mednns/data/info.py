"""What every dataset says about itself: :class:`DatasetInfo` and :class:`Task`."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any

SPLITS = ("train", "val", "test")


class Task(str, enum.Enum):
    """Label semantics; they decide the loss, the metrics and how targets are stored.

    - ``multi-class``: one integer label in ``[0, n_classes)`` per image.
    - ``binary``: one integer label in ``{0, 1}``; ``n_classes == 2``.
    - ``ordinal``: like multi-class (trained as such), but the classes are ordered
      (e.g. disease grades); the flag is kept for metrics and reports.
    - ``multi-label``: ``n_classes`` independent 0/1 labels per image, stored
      multi-hot with shape ``(N, n_classes)`` and trained with BCE-with-logits.
      Never reduced with argmax.
    """

    MULTI_CLASS = "multi-class"
    BINARY = "binary"
    ORDINAL = "ordinal"
    MULTI_LABEL = "multi-label"

    @classmethod
    def from_medmnist(cls, task: str) -> "Task":
        """Map a medmnist ``INFO[flag]["task"]`` string to a :class:`Task`."""
        mapping = {
            "multi-class": cls.MULTI_CLASS,
            "binary-class": cls.BINARY,
            "ordinal-regression": cls.ORDINAL,
            "multi-label, binary-class": cls.MULTI_LABEL,
        }
        try:
            return mapping[task]
        except KeyError:
            raise ValueError(f"unknown medmnist task {task!r}; expected one of {sorted(mapping)}") from None

    @property
    def label_width(self) -> int | None:
        """Columns of the label array: 1, or ``None`` for multi-label (``n_classes``)."""
        return None if self is Task.MULTI_LABEL else 1

    def __str__(self) -> str:  # "multi-class", not "Task.MULTI_CLASS"
        return self.value


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of one dataset, the same for every source (MedMNIST, npz, folders, plugins).

    ``image_size`` is ``(H, W)`` for 2D and ``(D, H, W)`` for 3D data. Images are
    served channels-last as ``uint8``: ``(N, H, W, C)`` or ``(N, D, H, W, C)``.
    ``split_sizes`` maps ``train``/``val``/``test`` to image counts.
    """

    name: str
    task: Task
    n_channels: int
    n_classes: int
    label_names: tuple[str, ...]
    image_size: tuple[int, ...]
    modality: str = "unknown"
    split_sizes: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "task", Task(self.task))
        object.__setattr__(self, "label_names", tuple(str(n) for n in self.label_names))
        object.__setattr__(self, "image_size", tuple(int(s) for s in self.image_size))
        if self.n_channels < 1:
            raise ValueError(f"{self.name}: n_channels must be >= 1, got {self.n_channels}")
        if self.n_classes < 1:
            raise ValueError(f"{self.name}: n_classes must be >= 1, got {self.n_classes}")
        if self.task is Task.BINARY and self.n_classes != 2:
            raise ValueError(f"{self.name}: a binary task has 2 classes, got {self.n_classes}")
        if len(self.label_names) != self.n_classes:
            raise ValueError(
                f"{self.name}: {len(self.label_names)} label names for {self.n_classes} classes"
            )
        if len(self.image_size) not in (2, 3):
            raise ValueError(f"{self.name}: image_size must be (H, W) or (D, H, W), got {self.image_size}")

    @property
    def ndim(self) -> int:
        """Spatial dimensions: 2 for images, 3 for volumes."""
        return len(self.image_size)

    @property
    def is_multilabel(self) -> bool:
        return self.task is Task.MULTI_LABEL

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["task"] = self.task.value
        data["label_names"] = list(self.label_names)
        data["image_size"] = list(self.image_size)
        return data
