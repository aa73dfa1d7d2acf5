"""The blocks of :class:`~mednns.search_spaces.ofa_resnet.OFAResNet`: the elastic bottleneck of the supernet
(built on the core's dynamic ops) and the plain bottleneck and network it exports."""

from __future__ import annotations

from collections import OrderedDict
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from mednns.supernets import Arch, DynamicBatchNorm2d, DynamicConv2d

__all__ = ["Bottleneck", "ElasticBottleneck", "ResNetSubnet", "bottleneck_forward", "downsample_path"]


def bottleneck_forward(block: Bottleneck | ElasticBottleneck, x: torch.Tensor) -> torch.Tensor:
    residual = x if block.downsample is None else block.downsample(x)
    out = F.relu(block.bn1(block.conv1(x)), inplace=True)
    out = F.relu(block.bn2(block.conv2(out)), inplace=True)
    out = block.bn3(block.conv3(out))
    out += residual
    return F.relu(out, inplace=True)


def downsample_path(conv: nn.Module, bn: nn.Module, stride: int) -> nn.Sequential:
    layers: list[tuple[str, nn.Module]] = []
    if stride > 1:
        layers.append(("pool", nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False)))
    layers += [("conv", conv), ("bn", bn)]
    return nn.Sequential(OrderedDict(layers))


class Bottleneck(nn.Module):
    """A plain bottleneck block of an extracted network (``nn.Conv2d``/``nn.BatchNorm2d`` only)."""

    def __init__(self, conv1: nn.Conv2d, bn1: nn.BatchNorm2d, conv2: nn.Conv2d, bn2: nn.BatchNorm2d,
                 conv3: nn.Conv2d, bn3: nn.BatchNorm2d, downsample: nn.Sequential | None):
        super().__init__()
        self.conv1, self.bn1, self.conv2, self.bn2, self.conv3, self.bn3 = conv1, bn1, conv2, bn2, conv3, bn3
        self.downsample = downsample

    forward = bottleneck_forward


class ResNetSubnet(nn.Module):
    """A standalone network extracted from :class:`OFAResNet` (plain torch layers).

    ``arch`` holds the canonical architecture it was extracted for.
    """

    def __init__(self, stem: nn.Sequential, blocks: nn.Sequential, dropout: float, classifier: nn.Linear,
                 arch: Arch | None = None):
        super().__init__()
        self.stem, self.blocks, self.classifier = stem, blocks, classifier
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.arch = arch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.classifier(self.dropout(x.mean((2, 3))))


class ElasticBottleneck(nn.Module):
    """Bottleneck block of the supernet; ``set(mid, out)`` picks the active widths."""

    def __init__(self, max_in: int, max_mid: int, max_out: int, stride: int, projection: bool):
        super().__init__()
        self.stride = stride
        self.conv1 = DynamicConv2d(max_in, max_mid, 1)
        self.bn1 = DynamicBatchNorm2d(max_mid)
        self.conv2 = DynamicConv2d(max_mid, max_mid, 3, stride)
        self.bn2 = DynamicBatchNorm2d(max_mid)
        self.conv3 = DynamicConv2d(max_mid, max_out, 1)
        self.bn3 = DynamicBatchNorm2d(max_out)
        self.downsample = (downsample_path(DynamicConv2d(max_in, max_out, 1), DynamicBatchNorm2d(max_out), stride)
                           if projection else None)

    def set(self, mid: int, out: int) -> None:
        self.conv1.active_out = self.conv2.active_out = mid
        self.conv3.active_out = out
        if self.downsample is not None:
            cast(DynamicConv2d, self.downsample.conv).active_out = out

    forward = bottleneck_forward

    def export(self, in_channels: int, mid: int, out: int) -> Bottleneck:
        downsample = None
        if self.downsample is not None:
            conv, bn = cast(DynamicConv2d, self.downsample.conv), cast(DynamicBatchNorm2d, self.downsample.bn)
            downsample = downsample_path(conv.export(in_channels, out), bn.export(out), self.stride)
        return Bottleneck(self.conv1.export(in_channels, mid), self.bn1.export(mid),
                          self.conv2.export(mid, mid), self.bn2.export(mid),
                          self.conv3.export(mid, out), self.bn3.export(out), downsample)
