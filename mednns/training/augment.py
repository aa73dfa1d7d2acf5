"""Light augmentation of a batch of normalized image tensors, on the batch's device.

Random crop with zero padding (zero is the dataset mean after normalization) and an optional
horizontal flip. Flips are off by default: laterality matters in many medical images (chest
X-rays, organ positions). Randomness comes only from the ``torch.Generator`` passed in, so a
batch's augmentation is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _draws(n: int, part: tuple[int, int]) -> tuple[int, slice]:
    """How many draws a batch part takes and which are its own: rank ``r`` of ``k`` holds images
    ``r, r + k, ...`` of the global batch of ``n * k``."""
    index, count = part
    return n * count, slice(index, None, count)


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator,
                part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` images by ``padding`` on each side and crop back to ``H×W`` at a random offset per image.

    :param part: ``(rank, world_size)``: ``x`` is that rank's share of a global batch; the offsets are
        drawn for the global batch and this share's taken, so the images get what one process would
        give them.
    """
    if padding <= 0:
        return x
    if x.ndim != 4:
        raise ValueError(f"random_crop expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    total, mine = _draws(n, part)
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[mine].to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (total,), generator=generator)[mine].to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return cropped.permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5,
                 part: tuple[int, int] = (0, 1)) -> torch.Tensor:
    """Flip each image left-right with probability ``p`` (``part``: as :func:`random_crop`)."""
    total, mine = _draws(x.shape[0], part)
    flip = (torch.rand(total, generator=generator)[mine] < p).to(x.device)
    shape = (-1,) + (1,) * (x.ndim - 1)
    return torch.where(flip.view(shape), x.flip(-1), x)


@dataclass(frozen=True)
class Augmentation:
    """Batch augmentation: ``Augmentation(crop_padding=2, hflip=False)(x, generator)``."""

    crop_padding: int = 0
    hflip: bool = False

    @property
    def enabled(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def __call__(self, x: torch.Tensor, generator: torch.Generator, part: tuple[int, int] = (0, 1)) -> torch.Tensor:
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator, part)
        if self.hflip:
            x = random_hflip(x, generator, part=part)
        return x
