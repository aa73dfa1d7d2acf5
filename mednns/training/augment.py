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


def random_crop(x: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Pad ``(N, C, H, W)`` images by ``padding`` on each side and crop back to ``H×W`` at a random offset per image."""
    if padding <= 0:
        return x
    if x.ndim != 4:
        raise ValueError(f"random_crop expects (N, C, H, W) images, got shape {tuple(x.shape)}")
    n, _, h, w = x.shape
    padded = F.pad(x, (padding, padding, padding, padding))
    oy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(x.device)
    rows = oy[:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = ox[:, None] + torch.arange(w, device=x.device)  # (N, W)
    batch = torch.arange(n, device=x.device)[:, None, None]
    cropped = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]]  # (N, H, W, C)
    return cropped.permute(0, 3, 1, 2)


def random_hflip(x: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Flip each image left-right with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=generator) < p).to(x.device)
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

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.crop_padding > 0:
            x = random_crop(x, self.crop_padding, generator)
        if self.hflip:
            x = random_hflip(x, generator)
        return x
