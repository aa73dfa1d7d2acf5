"""What a zoo build evaluates and how (plain data, no torch: the ``build_zoo`` plugin imports it).

:class:`ZooProtocol` fixes what a row's numbers mean and is stored with every row;
:class:`BuildSettings` says which architectures and how fast; :class:`Shard` names one of
several disjoint parts of a build.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

from mednns.errors import UsageError


@dataclass(frozen=True)
class ZooProtocol:
    """How every subnet of a zoo is evaluated (stored with each row; rows of one supernet share one).

    :param calibration_images: training images for BN recalibration (a seeded random subset).
    :param calibration_batch_size: their batch size (the set is a whole number of batches).
    :param max_val_images: cap on validation images (a seeded random subset; ``None``: all).
    :param max_test_images: cap on test images (``None``: all).
    :param seed: seed of those subsets.
    """

    calibration_images: int = 512
    calibration_batch_size: int = 256
    max_val_images: int | None = 1000
    max_test_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.calibration_images < 1 or self.calibration_batch_size < 2:
            raise UsageError("calibration_images must be >= 1 and calibration_batch_size >= 2")
        for name in ("max_val_images", "max_test_images"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise UsageError(f"{name} must be >= 1 or null, got {value}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Shard:
    """Part ``index`` (0-based) of ``count`` disjoint parts."""

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: "str | Shard | None") -> "Shard":
        """``"i/n"`` (0 <= i < n) → a shard; ``None`` → the whole plan."""
        if text is None:
            return cls()
        if isinstance(text, Shard):
            return text
        match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
        if not match:
            raise UsageError(f"shard {text!r} is not of the form i/n", hint="e.g. --shard 0/4 ... --shard 3/4")
        index, count = int(match.group(1)), int(match.group(2))
        if count < 1 or not 0 <= index < count:
            raise UsageError(f"shard {text!r}: need 0 <= i < n")
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    @property
    def whole(self) -> bool:
        return self.count == 1


@dataclass(frozen=True)
class BuildSettings:
    """What to evaluate and how fast (the protocol is separate: it defines what the numbers mean).

    :param samples: distinct random architectures per supernet.
    :param anchors: architectures shared by every dataset of a space (drawn from the space's seed).
    :param extremes: also evaluate the largest and smallest subnet.
    :param seed: seed of the plan.
    :param shard: the part of the plan this process evaluates.
    :param batch_size: inference batch size.
    :param channels_last: channels-last memory format.
    :param commit_every: rows per transaction (a kill loses at most these).
    :param progress: draw a progress bar.
    """

    samples: int = 1000
    anchors: int = 0
    extremes: bool = True
    seed: int = 0
    shard: Shard = Shard()
    batch_size: int = 256
    channels_last: bool = True
    commit_every: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.commit_every < 1:
            raise UsageError("batch_size and commit_every must be >= 1")
