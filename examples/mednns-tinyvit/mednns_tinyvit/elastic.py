"""Elastic layers of the TinyViT supernet: the weights of the largest layer, sliced at run time.

Every layer keeps the weights of its largest configuration and uses the *first* rows / columns /
channels: the active input width is read from the input tensor, the active output width is set by
the supernet (``active_out``). ``export`` returns the plain torch layer (``nn.Linear``,
``nn.LayerNorm``, ``nn.Conv2d``) holding copies of the sliced weights, so extracted networks have
no dynamic ops.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ElasticLinear(nn.Linear):
    """``nn.Linear`` using the first ``x.shape[-1]`` input and the first ``active_out`` output features.

    :param max_in: largest number of input features.
    :param max_out: largest number of output features.
    :param bias: learnable bias.
    """

    def __init__(self, max_in: int, max_out: int, bias: bool = True):
        super().__init__(max_in, max_out, bias=bias)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the active slice of the layer to ``x`` (``(..., in)``, ``in <= max_in``)."""
        out, width = self.active_out, x.shape[-1]
        bias = self.bias[:out] if self.bias is not None else None
        return F.linear(x, self.weight[:out, :width], bias)

    @torch.no_grad()
    def export(self, in_features: int, out_features: int) -> nn.Linear:
        """A plain ``nn.Linear(in_features, out_features)`` holding copies of the sliced weights.

        :param in_features: input features of the plain layer (the first ones are kept).
        :param out_features: output features of the plain layer (the first ones are kept).
        """
        layer = nn.Linear(in_features, out_features, bias=self.bias is not None)
        layer.weight.copy_(self.weight[:out_features, :in_features])
        if self.bias is not None:
            layer.bias.copy_(self.bias[:out_features])
        return layer.to(self.weight.device, self.weight.dtype)


class ElasticLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` over the last dimension of the input, whatever its width (at most ``max_width``):
    the first ``x.shape[-1]`` scales and shifts, statistics over the active channels only.

    :param max_width: largest normalized width.
    :param eps: added to the variance.
    """

    def __init__(self, max_width: int, eps: float = 1e-6):
        super().__init__(max_width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalize ``x`` (``(..., width)``) over its last dimension with the first ``width`` scales and shifts."""
        width = x.shape[-1]
        return F.layer_norm(x, (width,), self.weight[:width], self.bias[:width], self.eps)

    @torch.no_grad()
    def export(self, width: int) -> nn.LayerNorm:
        """A plain ``nn.LayerNorm(width)`` with copies of the first ``width`` scales and shifts.

        :param width: normalized width of the plain layer.
        """
        layer = nn.LayerNorm(width, eps=self.eps)
        layer.weight.copy_(self.weight[:width])
        layer.bias.copy_(self.bias[:width])
        return layer.to(self.weight.device, self.weight.dtype)


class ElasticPatchEmbed(nn.Conv2d):
    """Patch embedding: a ``patch × patch`` convolution with stride ``patch``, the first ``active_out`` filters.

    :param in_channels: input image channels (not elastic).
    :param max_out: largest embedding width.
    :param patch: patch size (kernel and stride).
    """

    def __init__(self, in_channels: int, max_out: int, patch: int):
        super().__init__(in_channels, max_out, patch, stride=patch)
        self.active_out = max_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Embed the patches of ``x`` (``(N, C, H, W)``) into ``active_out`` channels."""
        out = self.active_out
        return F.conv2d(x, self.weight[:out], self.bias[:out], self.stride)

    @torch.no_grad()
    def export(self, out_channels: int) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the first ``out_channels`` filters (copies).

        :param out_channels: embedding width of the plain layer.
        """
        layer = nn.Conv2d(self.in_channels, out_channels, self.kernel_size, stride=self.stride)
        layer.weight.copy_(self.weight[:out_channels])
        layer.bias.copy_(self.bias[:out_channels])
        return layer.to(self.weight.device, self.weight.dtype)
