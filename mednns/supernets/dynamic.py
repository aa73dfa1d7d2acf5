"""Elastic (dynamic) layers: one set of weights, any active width and kernel size.

Each layer holds the weights of its largest configuration and slices them at
run time: the first ``c`` input/output channels, the centre of the kernel. The
active *input* width is read from the input tensor; the active *output* width
and kernel size are set by the supernet (``active_out``, ``active_kernel``).
:meth:`DynamicConv2d.export` (and friends) return plain torch layers holding
copies of the sliced weights, so extracted networks have no dynamic ops.

Elastic kernel (OFA): the weight is stored once at the largest kernel size.
A smaller kernel is the centre of the next larger (already transformed) kernel
multiplied by a learned ``k²×k²`` matrix, per layer and shared by all channels,
initialised to identity: 7×7 → centre 5×5 × M(7→5) → centre 3×3 × M(5→3).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .calibration import running_statistics


def _centre(weight: torch.Tensor, k: int) -> torch.Tensor:
    full = weight.shape[-1]
    start = (full - k) // 2
    return weight[..., start:start + k, start:start + k]


class DynamicConv2d(nn.Module):
    """Conv2d with elastic output channels, input channels (from the input) and kernel size.

    :param max_in: largest number of input channels.
    :param max_out: largest number of output channels (``== max_in`` for depthwise).
    :param kernel_sizes: the kernel sizes this layer can take (odd, e.g. ``(3, 5, 7)``);
        more than one enables the OFA kernel transformation.
    :param stride: stride.
    :param depthwise: one filter per channel (``groups == channels``).
    :param bias: learnable bias.
    """

    def __init__(self, max_in: int, max_out: int, kernel_sizes: Sequence[int] | int = 1, stride: int = 1,
                 depthwise: bool = False, bias: bool = False):
        super().__init__()
        sizes = sorted({kernel_sizes} if isinstance(kernel_sizes, int) else set(kernel_sizes))
        if any(k % 2 == 0 for k in sizes):
            raise ValueError(f"kernel sizes must be odd, got {sizes}")
        if depthwise and max_in != max_out:
            raise ValueError("a depthwise conv has as many outputs as inputs")
        self.max_in, self.max_out, self.stride, self.depthwise = max_in, max_out, stride, depthwise
        self.kernel_sizes = tuple(sizes)
        k = sizes[-1]
        self.weight = nn.Parameter(torch.empty(max_out, 1 if depthwise else max_in, k, k))
        nn.init.kaiming_normal_(self.weight, mode="fan_out", nonlinearity="relu")
        self.bias = nn.Parameter(torch.zeros(max_out)) if bias else None
        # transformation matrices, e.g. "7to5" (25x25) and "5to3" (9x9), initialised to identity
        self.kernel_transforms = nn.ParameterDict({
            f"{big}to{small}": nn.Parameter(torch.eye(small * small))
            for big, small in zip(sizes[::-1][:-1], sizes[::-1][1:])
        })
        self.active_out = max_out
        self.active_kernel = k

    def kernel_weight(self, out_channels: int, in_channels: int, kernel: int) -> torch.Tensor:
        """The effective weight for a configuration (transformed for smaller kernels)."""
        weight = self.weight[:out_channels, : (1 if self.depthwise else in_channels)]
        sizes = self.kernel_sizes[::-1]
        if kernel not in sizes:
            raise ValueError(f"kernel {kernel} not in {self.kernel_sizes}")
        for big, small in zip(sizes[:-1], sizes[1:]):
            if big == kernel:
                break
            centre = _centre(weight, small)
            shape = centre.shape
            matrix = self.kernel_transforms[f"{big}to{small}"]
            weight = (centre.reshape(-1, small * small) @ matrix).reshape(shape)
        return weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        in_channels = x.shape[1]
        out_channels = in_channels if self.depthwise else self.active_out
        weight = self.kernel_weight(out_channels, in_channels, self.active_kernel)
        bias = self.bias[:out_channels] if self.bias is not None else None
        return F.conv2d(x, weight, bias, self.stride, self.active_kernel // 2, 1,
                        in_channels if self.depthwise else 1)

    @torch.no_grad()
    def export(self, in_channels: int, out_channels: int | None = None, kernel: int | None = None) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with copies of the weights of one configuration."""
        out_channels = in_channels if self.depthwise else (out_channels or self.active_out)
        kernel = kernel or self.active_kernel
        conv = nn.Conv2d(in_channels, out_channels, kernel, self.stride, kernel // 2,
                         groups=in_channels if self.depthwise else 1, bias=self.bias is not None)
        conv.weight.copy_(self.kernel_weight(out_channels, in_channels, kernel))
        if self.bias is not None:
            assert conv.bias is not None
            conv.bias.copy_(self.bias[:out_channels])
        return conv

    def extra_repr(self) -> str:
        return (f"max_in={self.max_in}, max_out={self.max_out}, kernel_sizes={self.kernel_sizes}, "
                f"stride={self.stride}, depthwise={self.depthwise}")


class DynamicBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d over the first ``C`` channels of its input (``C`` read from the input).

    Running statistics of the active channels are updated in place; with
    ``momentum=None`` they are cumulative averages (used by BN recalibration).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        if c == self.num_features:
            return super().forward(x)
        factor = 0.0
        if self.training and self.track_running_stats:
            assert self.num_batches_tracked is not None
            self.num_batches_tracked.add_(1)
            factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        use_batch = self.training or not self.track_running_stats
        mean = var = None
        if self.track_running_stats:
            assert self.running_mean is not None and self.running_var is not None
            mean, var = self.running_mean[:c], self.running_var[:c]
        return F.batch_norm(
            x,
            mean,
            var,
            self.weight[:c] if self.affine else None,
            self.bias[:c] if self.affine else None,
            use_batch, factor, self.eps,
        )

    @torch.no_grad()
    def export(self, channels: int) -> nn.BatchNorm2d:
        """A plain ``nn.BatchNorm2d`` with copies of the first ``channels`` parameters and statistics."""
        bn = nn.BatchNorm2d(channels, eps=self.eps, momentum=self.momentum, affine=self.affine,
                            track_running_stats=self.track_running_stats)
        if self.affine:
            bn.weight.copy_(self.weight[:channels])
            bn.bias.copy_(self.bias[:channels])
        if self.track_running_stats:
            mean, var, batches = running_statistics(bn)
            running_mean, running_var, running_batches = running_statistics(self)
            mean.copy_(running_mean[:channels])
            var.copy_(running_var[:channels])
            batches.copy_(running_batches)
        return bn


class DynamicLinear(nn.Module):
    """Linear layer with elastic input features (from the input) and a fixed output (a classifier head)."""

    def __init__(self, max_in: int, out_features: int, bias: bool = True):
        super().__init__()
        self.max_in, self.out_features = max_in, out_features
        self.weight = nn.Parameter(torch.empty(out_features, max_in))
        nn.init.normal_(self.weight, 0, 0.01)
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight[:, : x.shape[-1]], self.bias)

    @torch.no_grad()
    def export(self, in_features: int) -> nn.Linear:
        linear = nn.Linear(in_features, self.out_features, bias=self.bias is not None)
        linear.weight.copy_(self.weight[:, :in_features])
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear


def conv_out(size: int, kernel: int, stride: int, padding: int | None = None) -> int:
    """Output size of a convolution (or pooling) over ``size`` pixels (default padding: ``kernel // 2``)."""
    padding = kernel // 2 if padding is None else padding
    return (size + 2 * padding - kernel) // stride + 1


class _DepthwiseConv2d(torch.autograd.Function):
    """Depthwise conv whose weight gradient for kernels ≥ 5 is one grouped convolution.

    oneDNN's depthwise weight-gradient kernel is slow on CPU for 5x5 and 7x7 kernels (measured on
    a 2-core CPU: up to 10x slower than this for NCHW inputs, 1–1.5x for channels_last, so the
    largest ``cpu``-preset subnet's forward + backward went from 1.3 to 0.7 s). The weight
    gradient of a depthwise conv is the correlation of each image's input channel with its output
    gradient, i.e. a conv of the input, viewed as one image of ``N·C`` channels, with the gradient
    as ``N·C`` depthwise kernels (dilated by the stride), summed over the batch. Forward and input
    gradient are the native ones.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        s, p = ctx.stride, ctx.padding
        n, c, h, w = x.shape
        k = weight.shape[-1]
        dtype = grad.dtype  # under autocast the forward ran in the autocast dtype
        xd, wd = x.to(dtype), weight.to(dtype)
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.ops.aten.convolution_backward(
                grad, xd, wd, None, [s, s], [p, p], [1, 1], False, [0, 0], c, (True, False, False))[0].to(x.dtype)
        if ctx.needs_input_grad[1]:
            if k >= 5:
                xi = xd.transpose(0, 1).reshape(1, c * n, h, w)
                gi = grad.transpose(0, 1).reshape(c * n, 1, grad.shape[2], grad.shape[3])
                out = F.conv2d(xi, gi, None, 1, p, s, c * n)[..., :k, :k]
                grad_w = out.reshape(c, n, k, k).sum(1, keepdim=True)
            else:
                grad_w = torch.ops.aten.convolution_backward(
                    grad, xd, wd, None, [s, s], [p, p], [1, 1], False, [0, 0], c, (False, True, False))[1]
            grad_w = grad_w.to(dtype=weight.dtype, memory_format=torch.contiguous_format)
        return grad_x, grad_w, None, None


def depthwise_conv2d(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """``F.conv2d(x, weight, None, stride, padding, groups=C)`` with a faster weight gradient on CPU."""
    if x.device.type != "cpu" or not torch.is_grad_enabled() or not (x.requires_grad or weight.requires_grad):
        return F.conv2d(x, weight, None, stride, padding, 1, x.shape[1])
    return _DepthwiseConv2d.apply(x, weight, stride, padding)


class DynamicDepthwiseConv2d(DynamicConv2d):
    """:class:`DynamicConv2d` in depthwise mode, without bias, using :func:`depthwise_conv2d`."""

    def __init__(self, max_channels: int, kernel_sizes: Sequence[int] | int, stride: int = 1):
        super().__init__(max_channels, max_channels, kernel_sizes, stride, depthwise=True, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = x.shape[1]
        return depthwise_conv2d(x, self.kernel_weight(c, c, self.active_kernel), self.stride, self.active_kernel // 2)
