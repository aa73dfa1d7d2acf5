"""The vision transformer computation, shared by the supernet and the networks it extracts.

A network: patch embedding (``patch × patch`` conv, stride ``patch``) → tokens + learned position
embedding → ``depth`` pre-norm transformer blocks → LayerNorm → mean over tokens → dropout → linear
classifier. A block::

    x = x + proj(attention(qkv(norm1(x))))        # heads × head_dim attention channels
    x = x + fc2(gelu(fc1(norm2(x))))              # hidden = round(mlp_ratio × embed) units

``qkv`` rows are grouped *per head* (``[q_0 k_0 v_0 q_1 k_1 v_1 ...]``, ``head_dim`` rows each),
so the first ``h`` heads are the first ``3 h head_dim`` rows: elastic heads are a prefix slice.

The position embedding is learned for the ``image_size // patch_size`` grid; other input sizes
resample it bilinearly (so a network runs on images of any size, as the convolutional spaces do).

:class:`TinyViTNet` (with :class:`ViTBlock`) is the plain network :meth:`TinyViT.extract` returns:
``nn.Conv2d``, ``nn.Linear``, ``nn.LayerNorm`` and one position-embedding parameter; its first
``nn.Conv2d`` is the patch embedding and its last ``nn.Linear`` the classifier (what
``mednns.export.adapt_network`` replaces and converts).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(qkv: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Multi-head self-attention of per-head grouped ``q, k, v`` projections.

    :param qkv: ``(N, T, heads * 3 * head_dim)``, rows grouped per head as ``[q k v]``.
    :param head_dim: channels per head.
    :returns: ``(N, T, heads * head_dim)``, the heads' outputs concatenated.
    """
    n, t, width = qkv.shape
    heads = width // (3 * head_dim)
    q, k, v = qkv.reshape(n, t, heads, 3, head_dim).permute(3, 0, 2, 1, 4).unbind(0)  # (N, heads, T, hd) each
    out = F.scaled_dot_product_attention(q, k, v)
    return out.transpose(1, 2).reshape(n, t, heads * head_dim)


def block_forward(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """One pre-norm transformer block (``block`` has ``norm1, qkv, proj, norm2, fc1, fc2, head_dim``).

    :param block: a :class:`ViTBlock` or the supernet's elastic block.
    :param x: tokens ``(N, T, embed)``.
    :returns: tokens of the same shape.
    """
    x = x + block.proj(attention(block.qkv(block.norm1(x)), block.head_dim))
    return x + block.fc2(F.gelu(block.fc1(block.norm2(x))))


def resample_position_embedding(pos: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """The position embedding of a ``grid × grid`` token grid for a ``size`` token grid.

    :param pos: ``(1, grid * grid, E)``.
    :param grid: the side of the grid ``pos`` was learned for.
    :param size: ``(rows, columns)`` of the input's token grid.
    :returns: ``pos`` itself when the grids match, else a bilinear resampling ``(1, rows * columns, E)``.
    """
    if tuple(size) == (grid, grid):
        return pos
    width = pos.shape[-1]
    image = pos.reshape(1, grid, grid, width).permute(0, 3, 1, 2)
    image = F.interpolate(image, size=tuple(size), mode="bilinear", align_corners=False)
    return image.permute(0, 2, 3, 1).reshape(1, size[0] * size[1], width)


def tokens(patch_embed: nn.Module, pos_embed: torch.Tensor, grid: int, x: torch.Tensor) -> torch.Tensor:
    """Images ``(N, C, H, W)`` → patch tokens with position embedding ``(N, T, E)``.

    :param patch_embed: the patch-embedding convolution (``E`` output channels).
    :param pos_embed: ``(1, grid * grid, E)``.
    :param grid: side of the learned position grid.
    :param x: the images.
    """
    x = patch_embed(x)
    size = (x.shape[-2], x.shape[-1])
    x = x.flatten(2).transpose(1, 2)
    return x + resample_position_embedding(pos_embed, grid, size)


def head_forward(norm: nn.Module, dropout: nn.Module, classifier: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Tokens ``(N, T, E)`` → LayerNorm → mean over tokens → dropout → classifier logits.

    :param norm: the final LayerNorm.
    :param dropout: dropout (or identity) before the classifier.
    :param classifier: the linear classifier.
    :param x: the tokens.
    """
    return classifier(dropout(norm(x).mean(1)))


class ViTBlock(nn.Module):
    """A plain pre-norm transformer block of an extracted network.

    :param norm1: LayerNorm before attention.
    :param qkv: ``Linear(E, 3 * heads * head_dim)``, rows grouped per head.
    :param proj: ``Linear(heads * head_dim, E)``.
    :param norm2: LayerNorm before the MLP.
    :param fc1: ``Linear(E, hidden)``.
    :param fc2: ``Linear(hidden, E)``.
    :param head_dim: channels per attention head.
    """

    def __init__(self, norm1: nn.LayerNorm, qkv: nn.Linear, proj: nn.Linear, norm2: nn.LayerNorm, fc1: nn.Linear,
                 fc2: nn.Linear, head_dim: int):
        super().__init__()
        self.norm1, self.qkv, self.proj, self.norm2, self.fc1, self.fc2 = norm1, qkv, proj, norm2, fc1, fc2
        self.head_dim = head_dim

    forward = block_forward


class TinyViTNet(nn.Module):
    """A standalone vision transformer extracted from :class:`mednns_tinyvit.space.TinyViT`.

    :param patch_embed: the patch-embedding convolution.
    :param pos_embed: the learned position embedding ``(1, grid * grid, E)`` (copied into a parameter).
    :param grid: side of the position grid.
    :param blocks: the transformer blocks.
    :param norm: the final LayerNorm.
    :param dropout: dropout probability before the classifier.
    :param classifier: the classifier (registered last: the network's last ``nn.Linear``).
    :param arch: the canonical architecture it was extracted for.
    """

    def __init__(self, patch_embed: nn.Conv2d, pos_embed: torch.Tensor, grid: int, blocks: list[ViTBlock],
                 norm: nn.LayerNorm, dropout: float, classifier: nn.Linear, arch: dict | None = None):
        super().__init__()
        self.patch_embed = patch_embed
        self.pos_embed = nn.Parameter(pos_embed.detach().clone())
        self.grid = grid
        self.blocks = nn.Sequential(*blocks)
        self.norm = norm
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = classifier
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, C, H, W)``."""
        x = self.blocks(tokens(self.patch_embed, self.pos_embed, self.grid, x))
        return head_forward(self.norm, self.dropout, self.classifier, x)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizers keep out of weight decay (the position embedding)."""
        return {"pos_embed"}
