"""The dynamic blocks of :class:`~mednns.search_spaces.ofa_mobilenetv3.OFAMobileNetV3`: squeeze-excite and
MBConv with an elastic kernel and middle width, built on the core's dynamic ops; each exports its
active configuration as plain layers (:mod:`mednns.search_spaces.mobilenetv3_layers`)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from mednns.supernets import DynamicBatchNorm2d, DynamicConv2d, DynamicDepthwiseConv2d, conv_out, permute_bn

from .mobilenetv3_layers import InvertedResidual, SqueezeExcite, activation, mid_channels

__all__ = ["DynamicMBConv", "DynamicSE"]


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a conv built with ``bias=True``."""
    assert conv.bias is not None
    return conv.bias


class DynamicSE(nn.Module):
    """Squeeze-excite over the first ``C`` channels of its input (``C`` read from the input).

    The reduced width is ``make_divisible(C // reduction, divisor)`` as in OFA's ``DynamicSE``;
    the reduce/expand 1x1 convs hold the weights of the widest configuration and are sliced.
    """

    def __init__(self, max_channels: int, reduction: int = 4, divisor: int = 8,
                 act: str = "relu", gate: str = "hard_sigmoid"):
        super().__init__()
        self.max_channels, self.reduction, self.divisor = max_channels, reduction, divisor
        self.act_name, self.gate_name = act, gate
        self.max_reduced = max(self.reduced_channels(c) for c in range(1, max_channels + 1))
        self.reduce = nn.Conv2d(max_channels, self.max_reduced, 1, bias=True)
        self.expand = nn.Conv2d(self.max_reduced, max_channels, 1, bias=True)
        self.act = activation(act)
        self.gate = activation(gate)

    def reduced_channels(self, channels: int) -> int:
        return make_divisible(channels // self.reduction, self.divisor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        r = self.reduced_channels(c)
        s = x.mean((2, 3), keepdim=True)
        s = F.conv2d(s, self.reduce.weight[:r, :c], _bias(self.reduce)[:r])
        s = F.conv2d(self.act(s), self.expand.weight[:c, :r], _bias(self.expand)[:c])
        return x * self.gate(s)

    @torch.no_grad()
    def export(self, channels: int) -> SqueezeExcite:
        r = self.reduced_channels(channels)
        se = SqueezeExcite(channels, r, self.act_name, self.gate_name)
        se.reduce.weight.copy_(self.reduce.weight[:r, :channels])
        _bias(se.reduce).copy_(_bias(self.reduce)[:r])
        se.expand.weight.copy_(self.expand.weight[:channels, :r])
        _bias(se.expand).copy_(_bias(self.expand)[:channels])
        return se

    def extra_repr(self) -> str:
        return f"max_channels={self.max_channels}, reduction={self.reduction}, max_reduced={self.max_reduced}"


class DynamicMBConv(nn.Module):
    """An MBConv block with an elastic depthwise kernel and an elastic middle width.

    The input and output widths are fixed (the width multiplier is fixed per supernet).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_choices: Sequence[int],
                 expand_choices: Sequence[float], stride: int, act: str, use_se: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.kernel_choices = tuple(sorted(set(kernel_choices)))
        self.expand_choices = tuple(sorted(set(expand_choices)))
        self.act_name, self.use_se = act, use_se
        self.has_expand = any(e != 1 for e in self.expand_choices)
        #: middle width of every expand choice
        self.mid_of = {e: (mid_channels(in_channels, e) if self.has_expand else in_channels)
                       for e in self.expand_choices}
        self.max_mid = max(self.mid_of.values())
        self.expand_conv: DynamicConv2d | None
        self.expand_bn: DynamicBatchNorm2d | None
        if self.has_expand:
            self.expand_conv = DynamicConv2d(in_channels, self.max_mid, 1)
            self.expand_bn = DynamicBatchNorm2d(self.max_mid)
        else:
            self.expand_conv = self.expand_bn = None
        self.dw_conv = DynamicDepthwiseConv2d(self.max_mid, self.kernel_choices, stride)
        self.dw_bn = DynamicBatchNorm2d(self.max_mid)
        self.se = DynamicSE(self.max_mid) if use_se else None
        self.project_conv = DynamicConv2d(self.max_mid, out_channels, 1)
        self.project_bn = DynamicBatchNorm2d(out_channels)
        self.act = activation(act)
        self.residual = stride == 1 and in_channels == out_channels
        self.set_active(self.kernel_choices[-1], self.max_mid)

    def set_active(self, kernel: int, mid: int) -> None:
        self.active_kernel, self.active_mid = kernel, mid
        self.dw_conv.active_kernel = kernel
        self.dw_conv.active_out = mid
        if self.expand_conv is not None:
            self.expand_conv.active_out = mid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        if self.expand_conv is not None:
            assert self.expand_bn is not None
            h = self.act(self.expand_bn(self.expand_conv(h)))
        h = self.act(self.dw_bn(self.dw_conv(h)))
        if self.se is not None:
            h = self.se(h)
        h = self.project_bn(self.project_conv(h))
        return h + x if self.residual else h

    @torch.no_grad()
    def export(self, kernel: int, mid: int) -> InvertedResidual:
        expand = None
        if self.expand_conv is not None:
            assert self.expand_bn is not None
            expand = nn.Sequential(self.expand_conv.export(self.in_channels, mid, 1),
                                   self.expand_bn.export(mid), activation(self.act_name))
        depthwise = nn.Sequential(self.dw_conv.export(mid, mid, kernel), self.dw_bn.export(mid),
                                  activation(self.act_name))
        se = self.se.export(mid) if self.se is not None else None
        project = nn.Sequential(self.project_conv.export(mid, self.out_channels, 1),
                                self.project_bn.export(self.out_channels))
        return InvertedResidual(expand, depthwise, se, project, self.residual)

    # -- analytic cost -----------------------------------------------------------------------
    def cost(self, kernel: int, mid: int, size: tuple[int, int]) -> tuple[int, int, tuple[int, int]]:
        """``(params, macs, output size)`` of the exported block for an input of spatial ``size``."""
        h, w = size
        params = macs = 0
        if self.has_expand:
            params += self.in_channels * mid + 2 * mid
            macs += h * w * mid * self.in_channels
        oh, ow = conv_out(h, kernel, self.stride), conv_out(w, kernel, self.stride)
        params += mid * kernel * kernel + 2 * mid
        macs += oh * ow * mid * kernel * kernel
        if self.se is not None:
            r = self.se.reduced_channels(mid)
            params += (mid * r + r) + (r * mid + mid)
            macs += 2 * mid * r
        params += mid * self.out_channels + 2 * self.out_channels
        macs += oh * ow * self.out_channels * mid
        return params, macs, (oh, ow)

    @torch.no_grad()
    def sort_channels(self, nested_widths: Sequence[int] = ()) -> None:
        """OFA ``re_organize_middle_weights``: order the middle channels by the L1 norm of the
        project conv's weights (descending), permuting every layer that touches them.

        ``nested_widths`` (ascending middle widths) keeps the channels of each narrower width
        within that width (the channels are only reordered inside each nested band), so
        subnets released earlier keep their channel sets.
        """
        if self.expand_conv is None:  # the middle channels are the block's input: not ours to permute
            return
        assert self.expand_bn is not None
        importance = self.project_conv.weight.abs().sum(dim=(0, 2, 3))
        bounds = sorted({w for w in nested_widths if 0 < w < self.max_mid})
        band = torch.zeros_like(importance)
        for lo in bounds:  # channels beyond each nested width rank below every channel inside it
            band[lo:] -= 1.0
        # lexicographic order: band (descending), then importance (descending)
        by_importance = torch.argsort(importance, descending=True, stable=True)
        idx = by_importance[torch.argsort(band[by_importance], descending=True, stable=True)]
        self.project_conv.weight.copy_(self.project_conv.weight[:, idx])
        self.dw_conv.weight.copy_(self.dw_conv.weight[idx])
        if self.dw_conv.bias is not None:
            self.dw_conv.bias.copy_(self.dw_conv.bias[idx])
        permute_bn(self.dw_bn, idx)
        self.expand_conv.weight.copy_(self.expand_conv.weight[idx])
        if self.expand_conv.bias is not None:
            self.expand_conv.bias.copy_(self.expand_conv.bias[idx])
        permute_bn(self.expand_bn, idx)
        if self.se is not None:
            se = self.se
            se.reduce.weight.copy_(se.reduce.weight[:, idx])
            se.expand.weight.copy_(se.expand.weight[idx])
            _bias(se.expand).copy_(_bias(se.expand)[idx])
            # the SE's own middle (reduced) channels, by the L1 norm of the expand weights
            se_idx = torch.argsort(se.expand.weight.abs().sum(dim=(0, 2, 3)), descending=True, stable=True)
            se.expand.weight.copy_(se.expand.weight[:, se_idx])
            se.reduce.weight.copy_(se.reduce.weight[se_idx])
            _bias(se.reduce).copy_(_bias(se.reduce)[se_idx])
