"""OFA-MobileNetV3: a weight-sharing supernet of MobileNetV3 networks (elastic kernel, depth, expand).

Structure (as OFA's ``OFAMobileNetV3``, Cai et al. 2020)::

    stem        conv 3x3 (16·w) + BN + h-swish
    first block MBConv, expand 1, kernel 3, ReLU, fixed
    5 stages    widths 24, 40, 80, 112, 160 (·w); ReLU, ReLU, h-swish ×3; SE no, yes, no, yes, yes;
                up to max(depth_choices) MBConv blocks each, the first ``depth[s]`` active
    head        conv 1x1 (960·w) + BN + h-swish, global average pool,
                conv 1x1 "feature mix" (1280·w) + h-swish, dropout, linear

Every width is ``make_divisible(base · width_mult, 8)``; the width multiplier is fixed per
supernet. An MBConv block is: 1x1 expand conv + BN + act (present when the block has an expand
ratio other than 1; as in OFA it is then used at every ratio), depthwise conv with an elastic
kernel + BN + act, squeeze-excite (optional), 1x1 project conv + BN, and a residual when the
stride is 1 and the input and output widths are equal. The middle width of a block is
``make_divisible(round(in_channels · expand), 8)``.

An architecture is ``{"kernel": [k or None per block slot], "expand": [ratio or None per block
slot], "depth": [active blocks per stage]}`` with ``stages × max(depth_choices)`` block slots
(the fixed first block is not part of it). Canonical form: entries of inactive slots are
``None``; an expand ratio that gives the same middle width as a smaller ratio is replaced by
the smallest such ratio.

Presets: ``"paper"`` is OFA-MobileNetV3 for 224 px ImageNet-sized inputs; ``"cpu"`` is a
half-width space with kernels {3, 5} for 28x28 and 64x64 medical images on a small CPU.
Explicit constructor arguments override the preset; :meth:`OFAMobileNetV3.config` returns every
resolved argument, so ``OFAMobileNetV3(**net.config())`` rebuilds the same space.
"""

from __future__ import annotations

import copy
import numbers
import random
from typing import Any, Iterable, Mapping, Sequence, cast

import numpy as np
import torch
from timm.layers import make_divisible
from torch import nn

from mednns.supernets import (
    Arch,
    DynamicLinear,
    InvalidArchitecture,
    Supernet,
    conv_out,
    make_rng,
    match_choice,
    one_hot,
)

from .mobilenetv3_blocks import DynamicMBConv
from .mobilenetv3_layers import MobileNetV3Subnet, activation

__all__ = ["OFAMobileNetV3", "PRESETS"]

#: Stage strides of the paper (224 px, after a stride-2 stem: total stride 32).
PAPER_STAGE_STRIDES = (2, 2, 2, 1, 2)
#: Stage strides for small images: total stride 8 after a stride-1 stem (28 px → 14, 7, 4, 4, 4),
#: 16 after the stride-2 stem used at 64 px (64 px → 32, then 16, 8, 4, 4, 4).
SMALL_STAGE_STRIDES = (2, 2, 2, 1, 1)

PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "width_mult": 1.0,
        "depth_choices": [2, 3, 4],
        "expand_choices": [3, 4, 6],
        "kernel_choices": [3, 5, 7],
        "image_size": 224,
        "dropout": 0.1,
    },
    # Measured on the 2-core CPU (batch 128 of 1x28x28, forward + backward, 2 threads, channels_last):
    # largest 0.49 s, smallest 0.16 s; depth {2, 3, 4} made the largest 0.66 s, width 0.35 0.36 s.
    # Its largest subnet reached 85.4% test accuracy on PneumoniaMNIST after 9 minutes of training.
    "cpu": {
        "width_mult": 0.5,
        "depth_choices": [2, 3],
        "expand_choices": [3, 4, 6],
        "kernel_choices": [3, 5],
        "image_size": 28,
        "dropout": 0.1,
    },
}

_DEFAULTS: dict[str, Any] = {
    "stem_width": 16,
    "first_block_width": 16,
    "stage_widths": [24, 40, 80, 112, 160],
    "final_expand_width": 960,
    "last_channel": 1280,
    "stage_acts": ["relu", "relu", "hard_swish", "hard_swish", "hard_swish"],
    "stage_se": [False, True, False, True, True],
}

_STEM_ACT = "hard_swish"
_HEAD_ACT = "hard_swish"
_FIRST_BLOCK_ACT = "relu"


# ---------------------------------------------------------------------------------------------
# the supernet
# ---------------------------------------------------------------------------------------------
#: Bounds that keep a space buildable (far above OFA's MobileNetV3: 5 stages of 2-4 blocks, kernels
#: up to 7, 1280 channels).
MAX_STAGES, MAX_BLOCKS, MAX_KERNEL, MAX_CHANNELS, MAX_IMAGE_SIZE = 8, 32, 15, 16384, 4096

class OFAMobileNetV3(Supernet):
    """Once-for-All MobileNetV3 supernet (elastic kernel, depth and expand ratio; fixed width).

    :param in_channels: image channels (any).
    :param num_classes: classifier outputs (any).
    :param preset: ``"cpu"`` (half width, kernels {3, 5}, 28 px) or ``"paper"`` (OFA-MobileNetV3,
        224 px); every other argument left ``None`` takes the preset's value.
    :param width_mult: width multiplier applied to every base width (``make_divisible(·, 8)``).
    :param stem_width: base width of the stem conv (16).
    :param first_block_width: base output width of the fixed first block (16).
    :param stage_widths: base output widths of the elastic stages (24, 40, 80, 112, 160).
    :param final_expand_width: base width of the final 1x1 expand conv (960).
    :param last_channel: base width of the feature-mix conv (1280).
    :param depth_choices: blocks per stage to choose from.
    :param expand_choices: expand ratios to choose from.
    :param kernel_choices: depthwise kernel sizes to choose from (odd).
    :param stage_strides: stride of each stage's first block; default from ``image_size``.
    :param stem_stride: stride of the stem conv; default from ``image_size``.
    :param image_size: the expected input size; sets default strides (≤ 32: stem 1 and
        :data:`SMALL_STAGE_STRIDES`; < 128: stem 2 and small strides; else the paper's).
    :param dropout: dropout before the classifier.
    :param stage_acts: activation of each stage (timm names).
    :param stage_se: whether each stage's blocks have squeeze-excite.
    """

    dimensions = ("kernel", "depth", "expand")

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, preset: str = "cpu", *,
                 width_mult: float | None = None, stem_width: int | None = None,
                 first_block_width: int | None = None, stage_widths: Sequence[int] | None = None,
                 final_expand_width: int | None = None, last_channel: int | None = None,
                 depth_choices: Sequence[int] | None = None, expand_choices: Sequence[float] | None = None,
                 kernel_choices: Sequence[int] | None = None, stage_strides: Sequence[int] | None = None,
                 stem_stride: int | None = None, image_size: int | None = None, dropout: float | None = None,
                 stage_acts: Sequence[str] | None = None, stage_se: Sequence[bool] | None = None):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
        given = dict(width_mult=width_mult, stem_width=stem_width, first_block_width=first_block_width,
                     stage_widths=stage_widths, final_expand_width=final_expand_width, last_channel=last_channel,
                     depth_choices=depth_choices, expand_choices=expand_choices, kernel_choices=kernel_choices,
                     image_size=image_size, dropout=dropout, stage_acts=stage_acts, stage_se=stage_se)
        cfg = {**_DEFAULTS, **PRESETS[preset], **{k: v for k, v in given.items() if v is not None}}
        cfg = self._check_config(in_channels, num_classes, cfg)
        n_stages = len(cfg["stage_widths"])
        if stage_strides is None:
            if cfg["image_size"] >= 128:
                stage_strides = PAPER_STAGE_STRIDES
            elif n_stages == len(SMALL_STAGE_STRIDES):
                stage_strides = SMALL_STAGE_STRIDES
            else:
                raise ValueError(f"give stage_strides for {n_stages} stages")
            if cfg["image_size"] >= 128 and n_stages != len(PAPER_STAGE_STRIDES):
                raise ValueError(f"give stage_strides for {n_stages} stages")
        if stem_stride is None:
            stem_stride = 1 if cfg["image_size"] <= 32 else 2
        stage_strides = [int(s) for s in stage_strides]
        if len(stage_strides) != n_stages or any(s not in (1, 2) for s in stage_strides):
            raise ValueError(f"stage_strides must be {n_stages} values in (1, 2), got {stage_strides}")
        if stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride}")
        self._config = {"in_channels": int(in_channels), "num_classes": int(num_classes), "preset": preset,
                        **cfg, "stage_strides": stage_strides, "stem_stride": int(stem_stride)}

        c = self._config
        wm = c["width_mult"]
        self.stem_channels = make_divisible(c["stem_width"] * wm, 8)
        self.first_block_channels = make_divisible(c["first_block_width"] * wm, 8)
        self.stage_channels = [make_divisible(w * wm, 8) for w in c["stage_widths"]]
        self.final_expand_channels = make_divisible(c["final_expand_width"] * wm, 8)
        self.num_features = make_divisible(c["last_channel"] * wm, 8)
        self.kernel_choices: tuple[int, ...] = tuple(c["kernel_choices"])
        self.expand_choices: tuple[float, ...] = tuple(c["expand_choices"])
        self.depth_choices: tuple[int, ...] = tuple(c["depth_choices"])
        self.n_stages = n_stages
        self.max_depth = max(self.depth_choices)
        self.n_slots = n_stages * self.max_depth

        self.stem = nn.Sequential(
            nn.Conv2d(c["in_channels"], self.stem_channels, 3, c["stem_stride"], 1, bias=False),
            nn.BatchNorm2d(self.stem_channels), activation(_STEM_ACT))
        self.first_block = DynamicMBConv(self.stem_channels, self.first_block_channels, (3,), (1,), 1,
                                         _FIRST_BLOCK_ACT, False)
        blocks = []
        feature = self.first_block_channels
        for s in range(n_stages):
            for i in range(self.max_depth):
                blocks.append(DynamicMBConv(feature, self.stage_channels[s], self.kernel_choices,
                                            self.expand_choices, stage_strides[s] if i == 0 else 1,
                                            c["stage_acts"][s], c["stage_se"][s]))
                feature = self.stage_channels[s]
        self.blocks = nn.ModuleList(blocks)
        self.final_expand = nn.Sequential(nn.Conv2d(feature, self.final_expand_channels, 1, bias=False),
                                          nn.BatchNorm2d(self.final_expand_channels), activation(_HEAD_ACT))
        self.feature_mix = nn.Sequential(nn.Conv2d(self.final_expand_channels, self.num_features, 1, bias=False),
                                         activation(_HEAD_ACT))
        self.dropout = nn.Dropout(c["dropout"])
        self.classifier = DynamicLinear(self.num_features, c["num_classes"])
        self._init_weights()

        # canonical expand ratio of every (slot, ratio): the smallest ratio with the same middle width
        self._expand_canon: list[dict[float, float]] = []
        self._expand_distinct: list[tuple[float, ...]] = []
        for block in self._elastic_blocks:
            canon: dict[float, float] = {}
            first_of_mid: dict[int, float] = {}
            for e in block.expand_choices:  # ascending
                canon[e] = first_of_mid.setdefault(block.mid_of[e], e)
            self._expand_canon.append(canon)
            self._expand_distinct.append(tuple(sorted(set(canon.values()))))
        self.set_active(self.largest())

    # -- construction helpers ------------------------------------------------------------------
    @property
    def _elastic_blocks(self) -> Sequence[DynamicMBConv]:
        """``self.blocks`` as what it holds: one elastic block per slot."""
        return cast(Sequence[DynamicMBConv], self.blocks)

    @staticmethod
    def _check_config(in_channels: int, num_classes: int, cfg: dict[str, Any]) -> dict[str, Any]:
        def positive_int(name: str, v: Any) -> int:
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
            return int(v)

        def choices(name: str, values: Any, kind: type) -> list:
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
                raise ValueError(f"{name} must be a list, got {values!r}")
            values = list(values)
            if not values:
                raise ValueError(f"{name} must not be empty")
            for v in values:
                if isinstance(v, bool) or not isinstance(v, numbers.Real) or v <= 0:
                    raise ValueError(f"{name} must hold positive numbers, got {v!r}")
            out = sorted({(int(v) if kind is int or float(v).is_integer() else float(v)) for v in values})
            return out

        positive_int("in_channels", in_channels)
        positive_int("num_classes", num_classes)
        out = dict(cfg)
        wm = out["width_mult"]
        if isinstance(wm, bool) or not isinstance(wm, numbers.Real) or wm <= 0:
            raise ValueError(f"width_mult must be a positive number, got {wm!r}")
        out["width_mult"] = float(wm)
        for name in ("stem_width", "first_block_width", "final_expand_width", "last_channel", "image_size"):
            out[name] = positive_int(name, out[name])
        out["stage_widths"] = [positive_int("stage_widths", w) for w in out["stage_widths"]]
        n = len(out["stage_widths"])
        if n < 1:
            raise ValueError("stage_widths must not be empty")
        out["depth_choices"] = [positive_int("depth_choices", d)
                                for d in choices("depth_choices", out["depth_choices"], int)]
        out["kernel_choices"] = choices("kernel_choices", out["kernel_choices"], int)
        if any(k % 2 == 0 for k in out["kernel_choices"]):
            raise ValueError(f"kernel_choices must be odd, got {out['kernel_choices']}")
        out["expand_choices"] = choices("expand_choices", out["expand_choices"], float)
        out["stage_acts"] = [str(a) for a in out["stage_acts"]]
        out["stage_se"] = [bool(s) for s in out["stage_se"]]
        for name in ("stage_acts", "stage_se"):
            if len(out[name]) != n:
                raise ValueError(f"{name} must have one entry per stage ({n}), got {out[name]}")
        for a in out["stage_acts"]:
            activation(a)
        dropout = out["dropout"]
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or dropout < 0 or not dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        out["dropout"] = float(dropout)
        if n > MAX_STAGES or max(out["depth_choices"]) > MAX_BLOCKS or max(out["kernel_choices"]) > MAX_KERNEL:
            raise ValueError(f"at most {MAX_STAGES} stages, {MAX_BLOCKS} blocks per stage and kernels of "
                             f"{MAX_KERNEL}: got {n} stages, depth_choices {out['depth_choices']}, kernel_choices "
                             f"{out['kernel_choices']}")
        widest = max(out["stage_widths"] + [out["final_expand_width"], out["last_channel"]]) * max(
            out["width_mult"], 1) * max(max(out["expand_choices"]), 1)
        if widest > MAX_CHANNELS or out["image_size"] > MAX_IMAGE_SIZE:
            raise ValueError(f"at most {MAX_CHANNELS} channels in a layer and images of {MAX_IMAGE_SIZE} px: got "
                             f"{int(widest)} channels, image_size {out['image_size']}")
        return out

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # -- the space -----------------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return copy.deepcopy(self._config)

    def _slots(self, stage: int) -> range:
        return range(stage * self.max_depth, (stage + 1) * self.max_depth)

    def largest(self) -> Arch:
        return self.validate({"kernel": [max(self.kernel_choices)] * self.n_slots,
                              "expand": [max(self.expand_choices)] * self.n_slots,
                              "depth": [self.max_depth] * self.n_stages})

    def smallest(self) -> Arch:
        return self.validate({"kernel": [min(self.kernel_choices)] * self.n_slots,
                              "expand": [min(self.expand_choices)] * self.n_slots,
                              "depth": [min(self.depth_choices)] * self.n_stages})

    def sample(self, rng: random.Random | np.random.Generator | int | None = None,
               dimensions: Iterable[str] | None = None) -> Arch:
        """A random canonical architecture: each released dimension uniform over its distinct
        choices (per stage for depth; per block slot for kernel and expand, expand over the
        distinct middle widths of that slot); the others at their largest value."""
        rng = make_rng(rng)
        dims = set(self.dimensions if dimensions is None else dimensions)
        unknown = dims - set(self.dimensions)
        if unknown:
            raise ValueError(f"unknown dimensions {sorted(unknown)}; this space has {list(self.dimensions)}")
        depth = [rng.choice(self.depth_choices) if "depth" in dims else self.max_depth for _ in range(self.n_stages)]
        kernel = [rng.choice(self.kernel_choices) if "kernel" in dims else max(self.kernel_choices)
                  for _ in range(self.n_slots)]
        expand = [rng.choice(self._expand_distinct[j]) if "expand" in dims else max(self.expand_choices)
                  for j in range(self.n_slots)]
        return self.validate({"kernel": kernel, "expand": expand, "depth": depth})

    def _block_options(self, slot: int) -> int:
        return len(self.kernel_choices) * len(self._expand_distinct[slot])

    def count(self) -> int:
        total = 1
        for s in range(self.n_stages):
            slots = list(self._slots(s))
            per_stage = 0
            for d in self.depth_choices:
                n = 1
                for j in slots[:d]:
                    n *= self._block_options(j)
                per_stage += n
            total *= per_stage
        return total

    def validate(self, arch: Arch) -> Arch:
        if not isinstance(arch, Mapping):
            raise InvalidArchitecture(f"an architecture is a dict, got {type(arch).__name__}")
        expected = {"kernel", "expand", "depth"}
        missing, extra = expected - set(arch), set(arch) - expected
        if missing or extra:
            raise InvalidArchitecture(
                f"architecture keys must be {sorted(expected)}; missing {sorted(missing)}, "
                f"unexpected {sorted(map(str, extra))}")
        lengths = {"depth": self.n_stages, "kernel": self.n_slots, "expand": self.n_slots}
        for key, n in lengths.items():
            value = arch[key]
            if not isinstance(value, (list, tuple)) or len(value) != n:
                raise InvalidArchitecture(f"{key!r} must be a list of {n} entries, got {value!r}")
        depth = []
        for s, v in enumerate(arch["depth"]):
            d = match_choice(v, self.depth_choices)
            if d is None:
                raise InvalidArchitecture(f"depth[{s}] = {v!r} is not one of {list(self.depth_choices)}")
            depth.append(d)
        kernel: list[int | None] = []
        expand: list[float | None] = []
        for j in range(self.n_slots):
            s, i = divmod(j, self.max_depth)
            active = i < depth[s]
            k, e = arch["kernel"][j], arch["expand"][j]
            kk = match_choice(k, self.kernel_choices)
            if kk is None and (active or k is not None):
                raise InvalidArchitecture(
                    f"kernel[{j}] = {k!r} is not one of {list(self.kernel_choices)}"
                    + ("" if active else " (or None: the block is inactive)"))
            ee = match_choice(e, self.expand_choices)
            if ee is None and (active or e is not None):
                raise InvalidArchitecture(
                    f"expand[{j}] = {e!r} is not one of {list(self.expand_choices)}"
                    + ("" if active else " (or None: the block is inactive)"))
            kernel.append(kk if active else None)
            expand.append(self._expand_canon[j][ee] if active else None)
        return {"kernel": kernel, "expand": expand, "depth": depth}

    # -- running and extracting ------------------------------------------------------------------
    def set_active(self, arch: Arch) -> None:
        arch = self.validate(arch)
        for j, block in enumerate(self._elastic_blocks):
            if arch["kernel"][j] is not None:
                block.set_active(arch["kernel"][j], block.mid_of[arch["expand"][j]])
        self._active = arch
        self._active_blocks = [self._elastic_blocks[j] for j in range(self.n_slots) if arch["kernel"][j] is not None]

    def active(self) -> Arch:
        return copy.deepcopy(self._active)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first_block(self.stem(x))
        for block in self._active_blocks:
            x = block(x)
        return self.final_expand(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_mix(self.forward_features(x).mean((2, 3), keepdim=True)).flatten(1)
        return self.classifier(self.dropout(x))

    @torch.no_grad()
    def extract(self, arch: Arch) -> MobileNetV3Subnet:
        arch = self.validate(arch)
        blocks = [self.first_block.export(3, self.first_block.max_mid)]
        for j, block in enumerate(self._elastic_blocks):
            if arch["kernel"][j] is not None:
                blocks.append(block.export(arch["kernel"][j], block.mid_of[arch["expand"][j]]))
        net = MobileNetV3Subnet(copy.deepcopy(self.stem), blocks, copy.deepcopy(self.final_expand),
                                copy.deepcopy(self.feature_mix), self._config["dropout"],
                                self.classifier.export(self.num_features), arch=arch, config=self.config())
        # the supernet's parameters may be channels_last or on a device: follow them
        ref = cast(nn.Conv2d, self.stem[0]).weight
        net = net.to(device=ref.device, dtype=ref.dtype)
        if ref.dim() == 4 and ref.is_contiguous(memory_format=torch.channels_last) and not ref.is_contiguous():
            net = net.to(memory_format=torch.channels_last)
        return net.train(self.training)

    @torch.no_grad()
    def sort_channels(self, expand_stage: int = 0) -> None:
        """Reorder every elastic block's middle channels by importance (OFA ``re_organize_middle_weights``).

        The largest-expand function of every block is unchanged. ``expand_stage`` as in OFA:
        with ``n > 0``, the channels inside each of the ``n`` largest-but-one middle widths
        stay inside it (only reordered within their band), so that subnets already trained in
        earlier expand phases keep their channels.
        """
        for block in self._elastic_blocks:
            mids = sorted(set(block.mid_of.values()), reverse=True)
            nested = mids[1:expand_stage + 1] if expand_stage > 0 else []
            block.sort_channels(nested)

    # -- identity and encodings ------------------------------------------------------------------
    @property
    def encoding_dim(self) -> int:
        return (self.n_slots * (len(self.kernel_choices) + len(self.expand_choices))
                + self.n_stages * len(self.depth_choices))

    def encode(self, arch: Arch) -> torch.Tensor:
        """OFA ``MobileNetArchEncoder`` style: per block slot one-hot kernel then one-hot expand
        (all zero for inactive slots), then one-hot depth per stage."""
        arch = self.validate(arch)
        feature: list[float] = []
        for j in range(self.n_slots):
            feature += one_hot(arch["kernel"][j], self.kernel_choices)
            feature += one_hot(arch["expand"][j], self.expand_choices)
        for d in arch["depth"]:
            feature += one_hot(d, self.depth_choices)
        return torch.tensor(feature, dtype=torch.float32)

    def cost(self, arch: Arch, input_size: int | Sequence[int] | None = None) -> dict[str, int]:
        """Parameters and multiply-accumulates of the extracted network for one image.

        ``input_size``: ``H`` (square), ``(H, W)`` or ``(C, H, W)``; default the ``image_size`` hint.
        MACs count convolutions (``out elements × in/groups × k²``), the SE's 1x1 convs and the
        classifier; not BN, activations, pooling or the residual additions.
        """
        arch = self.validate(arch)
        if input_size is None:
            input_size = self._config["image_size"]
        size = [input_size] if isinstance(input_size, (int, numbers.Integral)) else list(input_size)
        if len(size) == 3:
            if size[0] != self._config["in_channels"]:
                raise ValueError(f"input has {size[0]} channels, the network takes {self._config['in_channels']}")
            size = size[1:]
        if len(size) == 1:
            size = size * 2
        if len(size) != 2 or any(not isinstance(v, numbers.Integral) or v < 1 for v in size):
            raise ValueError(f"input_size must be H, (H, W) or (C, H, W), got {input_size!r}")
        c = self._config
        h, w = conv_out(size[0], 3, c["stem_stride"]), conv_out(size[1], 3, c["stem_stride"])
        params = c["in_channels"] * self.stem_channels * 9 + 2 * self.stem_channels
        macs = h * w * self.stem_channels * c["in_channels"] * 9
        p, m, (h, w) = self.first_block.cost(3, self.first_block.max_mid, (h, w))
        params, macs = params + p, macs + m
        for j, block in enumerate(self._elastic_blocks):
            if arch["kernel"][j] is not None:
                p, m, (h, w) = block.cost(arch["kernel"][j], block.mid_of[arch["expand"][j]], (h, w))
                params, macs = params + p, macs + m
        last = self.stage_channels[-1]
        params += last * self.final_expand_channels + 2 * self.final_expand_channels
        macs += h * w * self.final_expand_channels * last
        params += self.final_expand_channels * self.num_features
        macs += self.final_expand_channels * self.num_features
        params += self.num_features * c["num_classes"] + c["num_classes"]
        macs += self.num_features * c["num_classes"]
        return {"params": int(params), "macs": int(macs)}
