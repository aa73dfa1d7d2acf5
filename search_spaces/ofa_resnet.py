"""OFA-ResNet: a once-for-all supernet of bottleneck ResNets (depth, expand ratio and width elastic).

The supernet holds the weights of its largest network; any subnet runs after
:meth:`OFAResNet.set_active` by slicing them (first channels, first blocks of
each stage), and :meth:`OFAResNet.extract` copies one out as a plain network.

Architecture format (a JSON-compatible dict, see :mod:`.base`)::

    {"depth":  [d_1, ..., d_S],        # per stage: extra blocks, one of depth_choices;
                                        #   stage s runs base_depths[s] + d_s blocks
     "expand": [e_1, ..., e_B],        # per block slot (all base_depths[s] + max(depth_choices)
                                        #   slots of every stage, in order): an expand ratio
                                        #   from expand_choices, or None when the block is inactive
     "width":  [w_stem, w_1, ..., w_S]} # the width *multiplier* itself (from width_mults) of the
                                        #   stem and of each stage (not an index)

Channels (as in OFA, ``make_divisible`` from timm, divisor 8): stage ``s`` outputs
``make_divisible(stage_widths[s] * w_s)`` channels, the stem
``make_divisible(stem_width * w_stem)``; a bottleneck with ``out`` output channels
and ratio ``e`` has ``make_divisible(round(out * e))`` middle channels.

Canonical form: expand ratios of inactive blocks are ``None``; a width multiplier
or expand ratio giving the same channel count as a smaller choice (rounding at
small widths) is replaced by the smallest such choice. Equal networks therefore
have equal canonical JSON, and :meth:`OFAResNet.count` counts canonical forms.

Block: 1x1 conv → BN → ReLU → 3x3 conv (stride) → BN → ReLU → 1x1 conv → BN,
plus a shortcut, then ReLU. The shortcut is the identity when the shapes always
match, else (2D average pool when strided, ceil mode) → 1x1 conv → BN (OFA's
``avgpool_conv``). Head: global average pool → dropout → linear.

Differences from OFA's ``OFAResNets``: a single-conv stem with one width slot
(OFA: three 3x3 convs, two width slots and an elastic stem depth), and stems
and strides for small medical images chosen from ``image_size``.

Extracted networks (:class:`ResNetSubnet`) are rebuilt from checkpoint metadata by
``OFAResNet(**config).extract(arch)`` followed by ``load_state_dict``. The blocks live in
:mod:`.resnet_blocks`; this module (about 550 lines) is the space itself: presets, argument checks,
channel tables, canonical architectures, channel sorting and costs, one contract implemented together.
"""

from __future__ import annotations

import numbers
import random
from collections import OrderedDict
from typing import Any, Iterable, Literal, Sequence, cast

import numpy as np
import torch
import torch.nn.functional as F
from timm.layers import make_divisible
from torch import nn

from mednns.supernets import (
    Arch,
    DynamicBatchNorm2d,
    DynamicConv2d,
    DynamicLinear,
    InvalidArchitecture,
    Supernet,
    conv_out,
    make_rng,
    match_choice,
    one_hot,
    permute_bn,
)

from .resnet_blocks import Bottleneck, ElasticBottleneck, ResNetSubnet

__all__ = ["OFAResNet", "ResNetSubnet", "Bottleneck", "PRESETS", "small_image_defaults"]

#: Named starting points; explicit constructor arguments override them.
#: ``paper``: OFA-ResNet50 (ImageNet widths and depths). ``cpu``: a small space for
#: 28x28/64x64 medical images trained and evaluated on a 2-core CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "stage_widths": [256, 512, 1024, 2048],
        "base_depths": [2, 2, 4, 2],
        "depth_choices": [0, 1, 2],
        "expand_choices": [0.2, 0.25, 0.35],
        "width_mults": [0.65, 0.8, 1.0],
        "stem_width": 64,
        "image_size": 224,
        "dropout": 0.1,
    },
    "cpu": {
        # an eighth of OFA-ResNet50's widths (last stage 3/16): a largest-subnet training step on
        # 128 28x28 images takes ~0.10-0.12 s on 2 CPU cores ([32, 64, 128, 256]: ~0.13-0.15 s;
        # quarter width [64, 128, 256, 512]: ~0.35 s); the stem (16 channels) has one width
        "stage_widths": [32, 64, 128, 192],
        "base_depths": [1, 1, 1, 1],
        "depth_choices": [0, 1],
        "expand_choices": [0.2, 0.25, 0.35],
        "width_mults": [0.65, 0.8, 1.0],
        "stem_width": 16,
        "image_size": 28,
        "dropout": 0.0,
    },
}


def small_image_defaults(image_size: int, n_stages: int = 4) -> dict[str, Any]:
    """Stem and stage strides for ``image_size``: no max-pool on small images, total stride 8 up to 96 px.

    - up to 32 px (MedMNIST 28): 3x3 stride-1 stem, no max-pool; the first stage
      downsamples: strides 2,2,2,1 (28 → 14 → 7 → 4 → 4). Stride 1 in the first
      stage too (1,2,2,2) keeps 28x28 maps there and doubles the CPU time of a step;
    - up to 96 px (64): 3x3 stride-2 stem, no max-pool, strides 1,2,2,1 (64 → 32 → ... → 8);
    - up to 160 px (128): 3x3 stride-2 stem with max-pool, strides 1,2,2,1 (128 → 8);
    - larger (224): ImageNet stem, 7x7 stride 2 and max-pool, strides 1,2,2,2 (224 → 7).

    With other than four stages the pattern is stretched: first and last as above, 2 between.
    """
    if image_size <= 32:
        stem, first, last = {"stem_kernel": 3, "stem_stride": 1, "stem_pool": False}, 2, 1
    elif image_size <= 160:
        stem, first, last = {"stem_kernel": 3, "stem_stride": 2, "stem_pool": image_size > 96}, 1, 1
    else:
        stem, first, last = {"stem_kernel": 7, "stem_stride": 2, "stem_pool": True}, 1, 2
    strides = [first] + [2] * max(n_stages - 2, 0) + ([last] if n_stages > 1 else [])
    return {**stem, "stage_strides": strides}


def _avgpool_ceil_out(size: int, kernel: int) -> int:
    # nn.AvgPool2d(kernel, stride=kernel, padding=0, ceil_mode=True)
    out = -((kernel - size) // kernel) + 1
    if (out - 1) * kernel >= size:
        out -= 1
    return out


#: Bounds that keep a space buildable (far above any published OFA-ResNet: 4 stages, 4+2 blocks).
MAX_STAGES, MAX_BLOCKS, MAX_CHANNELS = 8, 32, 16384


def _as_list(value: Any, name: str) -> list:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name} must be a list, got {value!r}")
    return list(value)


class OFAResNet(Supernet):
    """Once-for-all bottleneck ResNet supernet (elastic depth, expand ratio, width).

    :param in_channels: input image channels.
    :param num_classes: outputs of the classifier (logits; multi-label: one per label).
    :param preset: ``"cpu"`` (small, for 28/64 px images on a CPU) or ``"paper"``
        (OFA-ResNet50); the arguments below override it.
    :param image_size: input size hint; picks stem and stage-stride defaults (see
        :func:`small_image_defaults`). Any input size runs.
    :param stage_widths: bottleneck output channels of each stage at width 1.0.
    :param base_depths: blocks per stage that are always active.
    :param depth_choices: extra blocks per stage (``base + d`` blocks run).
    :param expand_choices: bottleneck expand ratios (middle = output channels × ratio).
    :param width_mults: width multipliers (stem and each stage choose one each).
    :param stage_strides: stride of the first block of each stage.
    :param stem_width: stem output channels at width 1.0.
    :param stem_kernel: stem conv kernel size (odd).
    :param stem_stride: stem conv stride.
    :param stem_pool: 3x3 stride-2 max-pool after the stem.
    :param dropout: dropout before the classifier.
    :param divisor: channel counts are multiples of this (``make_divisible``).
    """

    dimensions = ("depth", "expand", "width")

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, preset: Literal["cpu", "paper"] = "cpu", *,
                 image_size: int | None = None, stage_widths: list[int] | None = None,
                 base_depths: list[int] | None = None, depth_choices: list[int] | None = None,
                 expand_choices: list[float] | None = None, width_mults: list[float] | None = None,
                 stage_strides: list[int] | None = None, stem_width: int | None = None,
                 stem_kernel: int | None = None, stem_stride: int | None = None, stem_pool: bool | None = None,
                 dropout: float | None = None, divisor: int = 8):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
        base = PRESETS[preset]

        def pick(value: Any, key: str) -> Any:
            return base[key] if value is None else value

        image_size = int(pick(image_size, "image_size"))
        stage_widths = [int(w) for w in _as_list(pick(stage_widths, "stage_widths"), "stage_widths")]
        n_stages = len(stage_widths)
        defaults = small_image_defaults(image_size, n_stages)
        base_depths = [int(d) for d in _as_list(pick(base_depths, "base_depths"), "base_depths")]
        depth_choices = sorted({int(d) for d in _as_list(pick(depth_choices, "depth_choices"), "depth_choices")})
        expand_choices = sorted({float(e) for e in _as_list(pick(expand_choices, "expand_choices"), "expand_choices")})
        width_mults = sorted({float(w) for w in _as_list(pick(width_mults, "width_mults"), "width_mults")})
        stage_strides = [int(s) for s in _as_list(defaults["stage_strides"] if stage_strides is None else stage_strides,
                                                  "stage_strides")]
        stem_width = int(pick(stem_width, "stem_width"))
        stem_kernel = int(defaults["stem_kernel"] if stem_kernel is None else stem_kernel)
        stem_stride = int(defaults["stem_stride"] if stem_stride is None else stem_stride)
        stem_pool = bool(defaults["stem_pool"] if stem_pool is None else stem_pool)
        dropout = float(pick(dropout, "dropout"))

        problems = []
        if in_channels < 1 or num_classes < 1:
            problems.append("in_channels and num_classes must be positive")
        if n_stages < 1 or len(base_depths) != n_stages or len(stage_strides) != n_stages:
            problems.append(f"stage_widths, base_depths and stage_strides need one entry per stage, got "
                            f"{len(stage_widths)}, {len(base_depths)}, {len(stage_strides)}")
        if not depth_choices or min(depth_choices) < 0 or max(depth_choices) > MAX_BLOCKS:
            problems.append(f"depth_choices must be in [0, {MAX_BLOCKS}], got {depth_choices}")
        elif n_stages > MAX_STAGES or any(b + depth_choices[-1] > MAX_BLOCKS for b in base_depths):
            problems.append(f"at most {MAX_STAGES} stages of at most {MAX_BLOCKS} blocks each: base_depths "
                            f"{base_depths} + {depth_choices[-1]}")
        elif any(b < 0 or b + depth_choices[0] < 1 for b in base_depths):
            problems.append(f"every stage needs at least one block: base_depths {base_depths} + {depth_choices[0]}")
        if not expand_choices or expand_choices[0] <= 0:
            problems.append(f"expand_choices must be positive, got {expand_choices}")
        if not width_mults or width_mults[0] <= 0:
            problems.append(f"width_mults must be positive, got {width_mults}")
        if min(stage_widths + [stem_width]) < 1 or min(stage_strides, default=1) < 1 or stem_stride < 1:
            problems.append("widths and strides must be positive")
        elif max(stage_widths + [stem_width]) * max(max(width_mults, default=1), 1) * max(
                max(expand_choices, default=1), 1) > MAX_CHANNELS:
            problems.append(f"at most {MAX_CHANNELS} channels in a layer: widths {stage_widths} x width_mults "
                            f"{width_mults} x expand_choices {expand_choices}")
        if stem_kernel < 1 or stem_kernel % 2 == 0:
            problems.append(f"stem_kernel must be odd, got {stem_kernel}")
        if not 0 <= dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if problems:
            raise ValueError("OFAResNet: " + "; ".join(problems))

        self._config: dict[str, Any] = {
            "in_channels": int(in_channels), "num_classes": int(num_classes), "preset": preset,
            "image_size": image_size, "stage_widths": stage_widths, "base_depths": base_depths,
            "depth_choices": depth_choices, "expand_choices": expand_choices, "width_mults": width_mults,
            "stage_strides": stage_strides, "stem_width": stem_width, "stem_kernel": stem_kernel,
            "stem_stride": stem_stride, "stem_pool": stem_pool, "dropout": dropout, "divisor": int(divisor),
        }
        self.in_channels, self.num_classes, self.divisor = int(in_channels), int(num_classes), int(divisor)
        self.stage_widths, self.base_depths, self.stage_strides = stage_widths, base_depths, stage_strides
        self.depth_choices, self.expand_choices, self.width_mults = depth_choices, expand_choices, width_mults
        self.stem_kernel, self.stem_stride, self.stem_pool = stem_kernel, stem_stride, stem_pool
        self.n_stages = n_stages
        self.max_blocks = [b + depth_choices[-1] for b in base_depths]
        #: stage of each block slot, and the slot's index within its stage
        self.slot_stage = [s for s, n in enumerate(self.max_blocks) for _ in range(n)]
        self.slot_offset = [i for n in self.max_blocks for i in range(n)]
        self.stage_first_slot = [sum(self.max_blocks[:s]) for s in range(n_stages)]

        # channel tables: width slot 0 is the stem, slot s + 1 stage s
        bases = [stem_width] + stage_widths
        self._slot_channels = [{w: self._div(b * w) for w in width_mults} for b in bases]
        self._width_canon = [self._canonical_map(table) for table in self._slot_channels]
        self._mid_table: dict[int, dict[float, int]] = {}
        self._expand_canon: dict[int, dict[float, float]] = {}
        for table in self._slot_channels[1:]:
            for out in set(table.values()):
                mids = {e: self._div(round(out * e)) for e in expand_choices}
                self._mid_table[out] = mids
                self._expand_canon[out] = self._canonical_map(mids)

        # modules
        max_ch = [max(t.values()) for t in self._slot_channels]
        self.stem_conv = DynamicConv2d(in_channels, max_ch[0], stem_kernel, stem_stride)
        self.stem_bn = DynamicBatchNorm2d(max_ch[0])
        self.stem_maxpool = nn.MaxPool2d(3, 2, 1) if stem_pool else None
        blocks = []
        for s in range(n_stages):
            in_set = sorted(set(self._slot_channels[s].values()))
            out_set = sorted(set(self._slot_channels[s + 1].values()))
            max_mid = max(max(self._mid_table[out].values()) for out in out_set)
            for i in range(self.max_blocks[s]):
                stride = stage_strides[s] if i == 0 else 1
                if i == 0:
                    projection = stride != 1 or not (len(in_set) == 1 and in_set == out_set)
                    blocks.append(ElasticBottleneck(max_ch[s], max_mid, max_ch[s + 1], stride, projection))
                else:
                    blocks.append(ElasticBottleneck(max_ch[s + 1], max_mid, max_ch[s + 1], 1, False))
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = DynamicLinear(max_ch[-1], num_classes)
        self._active: Arch = {}
        self._active_blocks: list[ElasticBottleneck] = []
        self.set_active(self.largest())

    # -- helpers ---------------------------------------------------------------
    @property
    def _elastic_blocks(self) -> Sequence[ElasticBottleneck]:
        """``self.blocks`` as what it holds: one elastic block per slot."""
        return cast(Sequence[ElasticBottleneck], self.blocks)

    def _div(self, value: float) -> int:
        return int(make_divisible(value, self.divisor))

    @staticmethod
    def _canonical_map(table: dict[float, int]) -> dict[float, float]:
        """Choice → the smallest choice giving the same channel count (``table`` sorted by choice)."""
        first: dict[int, float] = {}
        for choice in sorted(table):
            first.setdefault(table[choice], choice)
        return {choice: first[table[choice]] for choice in table}

    def _channels(self, arch: Arch) -> tuple[int, list[int], list[int | None]]:
        """(stem channels, per-stage output channels, per-slot middle channels or None) of a canonical arch."""
        width = arch["width"]
        stem = self._slot_channels[0][width[0]]
        outs = [self._slot_channels[s + 1][width[s + 1]] for s in range(self.n_stages)]
        mids = [None if e is None else self._mid_table[outs[s]][e] for s, e in zip(self.slot_stage, arch["expand"])]
        return stem, outs, mids

    # -- the space -------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    @property
    def n_slots(self) -> int:
        """Number of block slots (the length of ``arch["expand"]``)."""
        return len(self.slot_stage)

    def largest(self) -> Arch:
        return self.validate({"depth": [self.depth_choices[-1]] * self.n_stages,
                              "expand": [self.expand_choices[-1]] * self.n_slots,
                              "width": [self.width_mults[-1]] * (self.n_stages + 1)})

    def smallest(self) -> Arch:
        return self.validate({"depth": [self.depth_choices[0]] * self.n_stages,
                              "expand": [self.expand_choices[0]] * self.n_slots,
                              "width": [self.width_mults[0]] * (self.n_stages + 1)})

    def sample(self, rng: random.Random | np.random.Generator | int | None = None,
               dimensions: Iterable[str] | None = None) -> Arch:
        r = make_rng(rng)
        free = set(self.dimensions if dimensions is None else ([dimensions] if isinstance(dimensions, str)
                                                                else dimensions))
        unknown = free - set(self.dimensions)
        if unknown:
            raise ValueError(f"unknown dimensions {sorted(unknown)}; this space has {list(self.dimensions)}")
        big = self.largest()
        arch = {
            "depth": [r.choice(self.depth_choices) for _ in range(self.n_stages)],
            "expand": [r.choice(self.expand_choices) for _ in range(self.n_slots)],
            "width": [r.choice(self.width_mults) for _ in range(self.n_stages + 1)],
        }
        for dim in self.dimensions:
            if dim not in free:
                arch[dim] = [self.expand_choices[-1]] * self.n_slots if dim == "expand" else big[dim]
        return self.validate(arch)

    def count(self) -> int:
        total = len(set(self._slot_channels[0].values()))
        for s in range(self.n_stages):
            stage = 0
            for out in set(self._slot_channels[s + 1].values()):
                m = len(set(self._mid_table[out].values()))
                stage += sum(m ** (self.base_depths[s] + d) for d in self.depth_choices)
            total *= stage
        return total

    def validate(self, arch: Arch) -> Arch:
        if not isinstance(arch, dict):
            raise InvalidArchitecture(f"an architecture is a dict, got {type(arch).__name__}")
        keys = set(arch)
        if keys != set(self.dimensions):
            missing, extra = sorted(set(self.dimensions) - keys), sorted(map(str, keys - set(self.dimensions)))
            raise InvalidArchitecture(f"architecture keys must be {list(self.dimensions)}"
                                      + (f"; missing {missing}" if missing else "")
                                      + (f"; unknown {extra}" if extra else ""))
        lengths = {"depth": self.n_stages, "expand": self.n_slots, "width": self.n_stages + 1}
        for key, n in lengths.items():
            value = arch[key]
            if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
                raise InvalidArchitecture(f"{key}: expected a list of {n} values, got {type(value).__name__}")
            if len(value) != n:
                what = ('one per stage' if key == 'depth' else 'one per block slot' if key == 'expand'
                        else 'stem + one per stage')
                raise InvalidArchitecture(f"{key}: expected {n} values ({what}), "
                                          f"got {len(value)}")
        depth = []
        for s, d in enumerate(arch["depth"]):
            if isinstance(d, bool) or not isinstance(d, numbers.Integral) or int(d) not in self.depth_choices:
                raise InvalidArchitecture(f"depth[{s}]: {d!r} is not one of {self.depth_choices}")
            depth.append(int(d))
        width = []
        for i, w in enumerate(arch["width"]):
            c = match_choice(w, self.width_mults)
            if c is None:
                raise InvalidArchitecture(f"width[{i}]: {w!r} is not one of {self.width_mults} "
                                          f"(width multipliers, not indices)")
            width.append(self._width_canon[i][c])
        expand: list[float | None] = []
        for j, e in enumerate(arch["expand"]):
            s = self.slot_stage[j]
            active = self.slot_offset[j] < self.base_depths[s] + depth[s]
            if e is None:
                if active:
                    raise InvalidArchitecture(f"expand[{j}]: block {self.slot_offset[j]} of stage {s} is active, "
                                              f"it needs one of {self.expand_choices}")
                expand.append(None)
                continue
            c = match_choice(e, self.expand_choices)
            if c is None:
                raise InvalidArchitecture(f"expand[{j}]: {e!r} is not one of {self.expand_choices} "
                                          f"(or null for an inactive block)")
            out = self._slot_channels[s + 1][width[s + 1]]
            expand.append(self._expand_canon[out][c] if active else None)
        return {"depth": depth, "expand": expand, "width": width}

    # -- running and extracting ------------------------------------------------
    def set_active(self, arch: Arch) -> None:
        arch = self.validate(arch)
        stem, outs, mids = self._channels(arch)
        self.stem_conv.active_out = stem
        active = []
        for j, block in enumerate(self._elastic_blocks):
            mid = mids[j]
            if mid is not None:
                block.set(mid, outs[self.slot_stage[j]])
                active.append(block)
        self._active, self._active_blocks = arch, active

    def active(self) -> Arch:
        return {k: list(v) for k, v in self._active.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = F.relu(self.stem_bn(self.stem_conv(x)), inplace=True)
        if self.stem_maxpool is not None:
            x = self.stem_maxpool(x)
        for block in self._active_blocks:
            x = block(x)
        return self.classifier(self.dropout(x.mean((2, 3))))

    @torch.no_grad()
    def extract(self, arch: Arch) -> ResNetSubnet:
        arch = self.validate(arch)
        stem_ch, outs, mids = self._channels(arch)
        stem_layers: list[tuple[str, nn.Module]] = [
            ("conv", self.stem_conv.export(self.in_channels, stem_ch)), ("bn", self.stem_bn.export(stem_ch)),
            ("relu", nn.ReLU(inplace=True))]
        if self.stem_pool:
            stem_layers.append(("pool", nn.MaxPool2d(3, 2, 1)))
        blocks, in_ch = [], stem_ch
        for j, block in enumerate(self._elastic_blocks):
            mid = mids[j]
            if mid is None:
                continue
            out = outs[self.slot_stage[j]]
            blocks.append(block.export(in_ch, mid, out))
            in_ch = out
        subnet = ResNetSubnet(nn.Sequential(OrderedDict(stem_layers)), nn.Sequential(*blocks),
                              self._config["dropout"], self.classifier.export(in_ch), arch)
        weight = self.stem_conv.weight
        subnet.to(device=weight.device, dtype=weight.dtype)
        subnet.train(self.training)
        return subnet

    @torch.no_grad()
    def sort_channels(self, expand_stage: int = 0) -> None:
        """OFA ``re_organize_middle_weights``: sort each block's middle channels by importance.

        Importance of a middle channel is the L1 norm of the next conv's weights
        that read it (conv3 for conv2's outputs, then conv2 for conv1's outputs);
        the producing conv, its BN and the consuming conv are permuted together,
        so the largest network computes the same function. With
        ``expand_stage > 0`` (OFA's ``expand_ratio_stage``), channels already
        ordered for the ``expand_stage + 1`` largest expand ratios (at full
        width) keep their groups: sorting happens within each group only.
        Optimizer state (momentum) no longer matches the permuted weights:
        call this between training phases and build a new optimizer.
        """
        for j, block in enumerate(self._elastic_blocks):
            groups = None
            if expand_stage > 0:
                full = max(self._slot_channels[self.slot_stage[j] + 1].values())
                groups = [self._mid_table[full][e] for e in reversed(self.expand_choices)][: expand_stage + 1]
            for producer, bn, consumer in ((block.conv2, block.bn2, block.conv3),
                                           (block.conv1, block.bn1, block.conv2)):
                importance = consumer.weight.abs().sum(dim=(0, 2, 3))
                if groups is not None:
                    # OFA: channels beyond each smaller expand ratio's width sort after it
                    right, offset = importance.numel(), -len(groups) * 1e5
                    for left in groups:
                        importance[left:right] += offset
                        offset += 1e5
                        right = left
                idx = torch.sort(importance, descending=True, stable=True).indices
                consumer.weight.copy_(consumer.weight.index_select(1, idx))
                producer.weight.copy_(producer.weight.index_select(0, idx))
                if producer.bias is not None:
                    producer.bias.copy_(producer.bias.index_select(0, idx))
                permute_bn(bn, idx)

    # -- identity and encodings ------------------------------------------------
    @property
    def encoding_dim(self) -> int:
        return (self.n_stages * len(self.depth_choices) + self.n_slots * len(self.expand_choices)
                + (self.n_stages + 1) * len(self.width_mults))

    def encode(self, arch: Arch) -> torch.Tensor:
        """One-hot (OFA ``ResNetArchEncoder`` style): depth per stage, expand per block slot
        (all zero when inactive), width multiplier of the stem and each stage; canonical choices."""
        arch = self.validate(arch)
        values: list[float] = []
        for d in arch["depth"]:
            values += one_hot(d, self.depth_choices)
        for e in arch["expand"]:
            values += one_hot(e, self.expand_choices)
        for w in arch["width"]:
            values += one_hot(w, self.width_mults)
        return torch.tensor(values, dtype=torch.float32)

    def cost(self, arch: Arch, input_size: int | Sequence[int]) -> dict[str, int]:
        """Parameters and multiply-accumulates of the extracted network for one input image.

        ``input_size``: ``H`` (square), ``(H, W)`` or ``(C, H, W)``. MACs count convs
        (``output elements × in/groups × k²``) and the linear layer; BN, ReLU, pooling
        and additions are not counted.
        """
        arch = self.validate(arch)
        size = ([int(input_size)] * 2 if isinstance(input_size, (int, numbers.Integral))
                else [int(v) for v in input_size])
        if len(size) == 3:
            if size[0] != self.in_channels:
                raise ValueError(f"input has {size[0]} channels, the network takes {self.in_channels}")
            size = size[1:]
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"input_size must be H, (H, W) or (C, H, W), got {input_size!r}")
        h, w = size
        stem_ch, outs, mids = self._channels(arch)
        k, pad = self.stem_kernel, self.stem_kernel // 2
        h, w = conv_out(h, k, self.stem_stride, pad), conv_out(w, k, self.stem_stride, pad)
        params = self.in_channels * stem_ch * k * k + 2 * stem_ch
        macs = h * w * stem_ch * self.in_channels * k * k
        if self.stem_pool:
            h, w = conv_out(h, 3, 2, 1), conv_out(w, 3, 2, 1)
        in_ch = stem_ch
        for j, block in enumerate(self._elastic_blocks):
            mid = mids[j]
            if mid is None:
                continue
            out, stride = outs[self.slot_stage[j]], block.stride
            oh, ow = conv_out(h, 3, stride, 1), conv_out(w, 3, stride, 1)
            params += in_ch * mid + mid * mid * 9 + mid * out + 2 * (2 * mid + out)
            macs += h * w * in_ch * mid + oh * ow * (mid * mid * 9 + mid * out)
            if block.downsample is not None:
                params += in_ch * out + 2 * out
                ph, pw = (_avgpool_ceil_out(h, stride), _avgpool_ceil_out(w, stride)) if stride > 1 else (h, w)
                macs += ph * pw * in_ch * out
            h, w, in_ch = oh, ow, out
        params += in_ch * self.num_classes + self.num_classes
        macs += in_ch * self.num_classes
        return {"params": int(params), "macs": int(macs)}
