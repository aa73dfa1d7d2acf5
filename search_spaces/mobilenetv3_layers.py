"""The plain layers of networks extracted from :class:`~mednns.search_spaces.ofa_mobilenetv3.OFAMobileNetV3`:
squeeze-excite, the inverted-residual (MBConv) block and the standalone subnet (torch layers only)."""

from __future__ import annotations

import copy
from typing import Any, Sequence

import torch
from timm.layers import get_act_layer, make_divisible
from torch import nn

from mednns.supernets import Arch

__all__ = ["InvertedResidual", "MobileNetV3Subnet", "SqueezeExcite", "activation", "mid_channels"]


def mid_channels(in_channels: int, expand: float) -> int:
    """The middle (expanded) width of a block with an expand conv (OFA: ``make_divisible(round(c·e), 8)``)."""
    return make_divisible(round(in_channels * expand), 8)


def activation(name: str) -> nn.Module:
    layer = get_act_layer(name)
    if layer is None:
        raise ValueError(f"unknown activation {name!r}")
    return layer()


class SqueezeExcite(nn.Module):
    """Squeeze-excite: global mean → 1x1 conv (reduce) → act → 1x1 conv (expand) → gate → scale."""

    def __init__(self, channels: int, reduced: int, act: str = "relu", gate: str = "hard_sigmoid"):
        super().__init__()
        self.reduce = nn.Conv2d(channels, reduced, 1, bias=True)
        self.act = activation(act)
        self.expand = nn.Conv2d(reduced, channels, 1, bias=True)
        self.gate = activation(gate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean((2, 3), keepdim=True)
        s = self.expand(self.act(self.reduce(s)))
        return x * self.gate(s)


class InvertedResidual(nn.Module):
    """A plain MBConv block: [expand (conv, BN, act)] → depthwise (conv, BN, act) → [SE] → project (conv, BN) [+ x]."""

    def __init__(self, expand: nn.Module | None, depthwise: nn.Module, se: nn.Module | None,
                 project: nn.Module, residual: bool):
        super().__init__()
        self.expand = expand
        self.depthwise = depthwise
        self.se = se
        self.project = project
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.expand(x) if self.expand is not None else x
        h = self.depthwise(h)
        if self.se is not None:
            h = self.se(h)
        h = self.project(h)
        return h + x if self.residual else h


class MobileNetV3Subnet(nn.Module):
    """A standalone network extracted from :class:`OFAMobileNetV3` (plain torch layers only).

    ``arch`` and ``supernet_config`` are kept as plain attributes for bookkeeping.
    """

    def __init__(self, stem: nn.Module, blocks: Sequence[nn.Module], final_expand: nn.Module,
                 feature_mix: nn.Module, dropout: float, classifier: nn.Linear,
                 arch: Arch | None = None, config: dict[str, Any] | None = None):
        super().__init__()
        self.stem = stem
        self.blocks = nn.Sequential(*blocks)
        self.final_expand = final_expand
        self.feature_mix = feature_mix
        self.dropout = nn.Dropout(dropout)
        self.classifier = classifier
        self.num_features = classifier.in_features
        self.arch = copy.deepcopy(arch)
        self.supernet_config = copy.deepcopy(config)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.final_expand(self.blocks(self.stem(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.feature_mix(x.mean((2, 3), keepdim=True)).flatten(1)
        if pre_logits:
            return x
        return self.classifier(self.dropout(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised linear head (fine-tuning on another task)."""
        old = self.classifier.weight
        self.classifier = nn.Linear(self.num_features, num_classes).to(device=old.device, dtype=old.dtype)
