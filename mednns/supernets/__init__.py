"""Supernets in the core: the contract every search space implements and the building blocks the
built-in and third-party spaces share. The supernets themselves live in ``search_spaces/`` (installed
as :mod:`mednns.search_spaces`) and in plugins.

As OFA's ``elastic_nn`` separates dynamic ops, dynamic layers and networks:

* :mod:`~mednns.supernets.base` -- the :class:`Supernet` contract, architectures and their identity;
* :mod:`~mednns.supernets.dynamic` -- dynamic ops: convolutions, batch norms and linear layers with an
  active width and kernel, a depthwise convolution with a fast CPU weight gradient;
* :mod:`~mednns.supernets.calibration` -- batch-norm statistics: recalibration, preservation, channel
  permutation.

Training, the zoo and the meta-space work on any :class:`Supernet` through this package alone.
"""

from __future__ import annotations

from mednns.supernets.base import Arch, InvalidArchitecture, Supernet, make_rng, match_choice, one_hot
from mednns.supernets.calibration import (
    batch_norms,
    permute_bn,
    preserved_bn_statistics,
    recalibrate_bn,
    running_statistics,
)
from mednns.supernets.dynamic import (
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicDepthwiseConv2d,
    DynamicLinear,
    conv_out,
    depthwise_conv2d,
)

__all__ = [
    "Arch",
    "DynamicBatchNorm2d",
    "DynamicConv2d",
    "DynamicDepthwiseConv2d",
    "DynamicLinear",
    "InvalidArchitecture",
    "Supernet",
    "batch_norms",
    "conv_out",
    "depthwise_conv2d",
    "make_rng",
    "match_choice",
    "one_hot",
    "permute_bn",
    "preserved_bn_statistics",
    "recalibrate_bn",
    "running_statistics",
]
