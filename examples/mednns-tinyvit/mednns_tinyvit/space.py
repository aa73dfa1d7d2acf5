"""``tiny_vit``: a weight-sharing supernet of small vision transformers (elastic depth, MLP ratio,
heads and embedding width), implementing the whole :class:`mednns.supernets.Supernet` contract.

Architecture format (a JSON-compatible dict)::

    {"depth":  d,                      # transformer blocks, one of depth_choices (the first d run)
     "expand": [r_1, ..., r_D],        # per block slot (D = max(depth_choices)): the MLP ratio from
                                       #   mlp_ratio_choices, or null for an inactive block
     "heads":  [h_1, ..., h_D],        # per block slot: attention heads from head_choices, or null
     "width":  w}                      # the embedding width *multiplier* from embed_mults (not an index)

Widths: the embedding has ``E = round(w * embed_dim)`` channels everywhere (patch embedding,
position embedding, LayerNorms, attention and MLP inputs and outputs, classifier input: the first
``E`` channels of the largest network); a block's attention has ``h * head_dim`` channels (the first
``h`` heads) and its MLP ``round(r * E)`` hidden units (the first ones); rounding is half up.

The dimension names follow the OFA vocabulary the built-in trainer knows: ``expand`` is the MLP
ratio and ``width`` the embedding multiplier, so ``train_supernet`` sorts channels
(:meth:`TinyViT.sort_channels`) before releasing them. Progressive-shrinking order:
``depth, expand, heads, width`` (heads are released after the first sort, so they are sorted too).

Canonical form: choices of inactive blocks are ``None``; an MLP ratio or width multiplier giving
the same size as a smaller choice (rounding) becomes that smaller choice. Equal networks therefore
have equal canonical JSON and hash, and :meth:`TinyViT.count` counts canonical forms.
"""

from __future__ import annotations

import math
import numbers
import random
from collections.abc import Iterable, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from mednns.errors import UsageError
from mednns.supernets import Arch, InvalidArchitecture, Supernet, make_rng, one_hot

from .elastic import ElasticLayerNorm, ElasticLinear, ElasticPatchEmbed
from .network import TinyViTNet, ViTBlock, block_forward, head_forward, tokens

__all__ = ["DIMENSIONS", "TinyViT"]

#: The elastic dimensions, in progressive-shrinking order (also the architecture's keys).
DIMENSIONS = ("depth", "expand", "heads", "width")


def round_half_up(value: float) -> int:
    """``value`` rounded to the nearest integer, halves up (``round`` rounds halves to even).

    :param value: a non-negative number.
    """
    return math.floor(value + 0.5)


def _match(value: Any, choices: Sequence[float]) -> float | None:
    """The choice equal (or within float rounding) to ``value``; ``None`` when there is none."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    for choice in choices:
        if math.isclose(float(value), choice, rel_tol=1e-6, abs_tol=1e-12):
            return choice
    return None


def _first_choice(table: dict[float, int]) -> dict[float, float]:
    """Choice → the smallest choice giving the same size."""
    first: dict[int, float] = {}
    for choice in sorted(table):
        first.setdefault(table[choice], choice)
    return {choice: first[size] for choice, size in table.items()}


class _ElasticBlock(nn.Module):
    """A transformer block of the supernet; :meth:`set` picks heads, MLP hidden units and embedding width."""

    def __init__(self, max_embed: int, max_heads: int, head_dim: int, max_hidden: int):
        super().__init__()
        self.head_dim = head_dim
        self.norm1 = ElasticLayerNorm(max_embed)
        self.qkv = ElasticLinear(max_embed, 3 * max_heads * head_dim)
        self.proj = ElasticLinear(max_heads * head_dim, max_embed)
        self.norm2 = ElasticLayerNorm(max_embed)
        self.fc1 = ElasticLinear(max_embed, max_hidden)
        self.fc2 = ElasticLinear(max_hidden, max_embed)

    def set(self, heads: int, hidden: int, embed: int) -> None:
        """Activate the first heads, MLP units and embedding channels.

        :param heads: attention heads.
        :param hidden: MLP hidden units.
        :param embed: embedding channels (the block's input and output width).
        """
        self.qkv.active_out = 3 * heads * self.head_dim
        self.proj.active_out = embed
        self.fc1.active_out = hidden
        self.fc2.active_out = embed

    forward = block_forward

    def export(self, heads: int, hidden: int, embed: int) -> ViTBlock:
        """The plain block for one configuration, with copies of the sliced weights.

        :param heads: attention heads.
        :param hidden: MLP hidden units.
        :param embed: embedding channels.
        """
        inner = heads * self.head_dim
        return ViTBlock(self.norm1.export(embed), self.qkv.export(embed, 3 * inner), self.proj.export(inner, embed),
                        self.norm2.export(embed), self.fc1.export(embed, hidden), self.fc2.export(hidden, embed),
                        self.head_dim)


def _sorted_unique(values: Any, name: str, kind: type) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
        raise UsageError(f"tiny_vit: {name} must be a non-empty list, got {values!r}",
                         hint=f"e.g. {name}: [1, 2]")
    if any(isinstance(v, bool) or not isinstance(v, numbers.Real) for v in values):
        raise UsageError(f"tiny_vit: {name} must hold numbers, got {values!r}")
    if kind is int and any(float(v) != int(v) for v in values):
        raise UsageError(f"tiny_vit: {name} must hold whole numbers, got {values!r}")
    return sorted({kind(v) for v in values})


class TinyViT(Supernet):
    """Once-for-all supernet of small vision transformers for medical images.

    :param in_channels: input image channels (``train_supernet`` fills it from the dataset).
    :param num_classes: classifier outputs (logits; multi-label: one per label; ``train_supernet``
        fills it from the dataset). Both have defaults, as the built-in spaces, because a config's
        ``space.args`` are validated before the stage adds them.
    :param preset: ``"cpu"``, the only preset: the defaults below (a space for 28 px images that
        trains on a 2-core CPU).
    :param image_size: the image side the position embedding is learned for (other sizes resample it).
    :param patch_size: patch side (the patch embedding's kernel and stride).
    :param embed_dim: the largest embedding width (at multiplier 1.0).
    :param depth_choices: numbers of transformer blocks.
    :param head_choices: numbers of attention heads per block.
    :param mlp_ratio_choices: MLP hidden units per embedding channel, per block.
    :param embed_mults: embedding width multipliers (of ``embed_dim``).
    :param head_dim: channels per attention head.
    :param dropout: dropout before the classifier.
    """

    dimensions = DIMENSIONS
    #: Releasing any of these slices units of the largest network: the trainer sorts them first.
    channel_dimensions = ("expand", "heads", "width")

    # list defaults (never mutated: copied below) so that the signature reads as the config schema
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, preset: Literal["cpu"] = "cpu",
                 image_size: int = 28, patch_size: int = 4, embed_dim: int = 96,
                 depth_choices: list[int] = [2, 3, 4],  # noqa: B006
                 head_choices: list[int] = [2, 3],  # noqa: B006
                 mlp_ratio_choices: list[float] = [1.0, 2.0, 3.0],  # noqa: B006
                 embed_mults: list[float] = [0.5, 0.75, 1.0],  # noqa: B006
                 head_dim: int = 16, dropout: float = 0.0):
        super().__init__()
        if preset != "cpu":
            raise UsageError(f"tiny_vit: unknown preset {preset!r}", hint="tiny_vit has one preset: cpu")
        depths = _sorted_unique(depth_choices, "depth_choices", int)
        heads = _sorted_unique(head_choices, "head_choices", int)
        ratios = _sorted_unique(mlp_ratio_choices, "mlp_ratio_choices", float)
        mults = _sorted_unique(embed_mults, "embed_mults", float)
        problems = []
        for name, value in (("in_channels", in_channels), ("num_classes", num_classes), ("image_size", image_size),
                            ("patch_size", patch_size), ("embed_dim", embed_dim), ("head_dim", head_dim)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name} must be a positive integer, got {value!r}")
        if not problems and patch_size > image_size:
            problems.append(f"patch_size {patch_size} is larger than image_size {image_size}")
        if depths[0] < 1 or heads[0] < 1:
            problems.append(f"depth_choices and head_choices must be >= 1, got {depths} and {heads}")
        if ratios[0] <= 0 or mults[0] <= 0:
            problems.append(f"mlp_ratio_choices and embed_mults must be > 0, got {ratios} and {mults}")
        if not problems and round_half_up(mults[0] * embed_dim) < 1:
            problems.append(f"embed_mults {mults[0]} x embed_dim {embed_dim} rounds to 0 channels")
        if not 0 <= dropout < 1:
            problems.append(f"dropout must be in [0, 1), got {dropout}")
        if problems:
            raise UsageError("tiny_vit: " + "; ".join(problems), hint="see 'mednns list search-spaces tiny_vit'")

        self._config: dict[str, Any] = {
            "in_channels": in_channels, "num_classes": num_classes, "preset": preset, "image_size": image_size,
            "patch_size": patch_size, "embed_dim": embed_dim, "depth_choices": depths, "head_choices": heads,
            "mlp_ratio_choices": ratios, "embed_mults": mults, "head_dim": head_dim, "dropout": float(dropout)}
        self.in_channels, self.num_classes = in_channels, num_classes
        self.patch_size, self.head_dim = patch_size, head_dim
        self.grid = image_size // patch_size
        self.depth_choices, self.head_choices, self.ratio_choices, self.width_mults = depths, heads, ratios, mults
        self.max_depth = depths[-1]
        # width multiplier -> embedding channels; embedding channels -> {ratio -> MLP hidden units}
        self._width_table = {m: round_half_up(m * embed_dim) for m in mults}
        self._width_canon = _first_choice(self._width_table)
        self._hidden_table = {e: {r: max(1, round_half_up(r * e)) for r in ratios}
                              for e in set(self._width_table.values())}
        self._expand_canon = {e: _first_choice(table) for e, table in self._hidden_table.items()}
        max_embed = max(self._width_table.values())
        max_hidden = max(max(t.values()) for t in self._hidden_table.values())

        self.patch_embed = ElasticPatchEmbed(in_channels, max_embed, patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.grid * self.grid, max_embed))
        self.blocks = nn.ModuleList(_ElasticBlock(max_embed, heads[-1], head_dim, max_hidden)
                                    for _ in range(self.max_depth))
        self.norm = ElasticLayerNorm(max_embed)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.classifier = ElasticLinear(max_embed, num_classes)
        self._init_weights()
        self._active: Arch = {}
        self._active_blocks: list[_ElasticBlock] = []
        self._active_embed = max_embed
        self.set_active(self.largest())

    def _init_weights(self) -> None:
        """ViT initialization: truncated normal (std 0.02) linear weights and position embedding, zero biases."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def no_weight_decay(self) -> set[str]:
        """Parameter names timm's optimizers keep out of weight decay (the position embedding)."""
        return {"pos_embed"}

    # -- sizes ---------------------------------------------------------------------------
    def _sizes(self, arch: Arch) -> tuple[int, list[tuple[int, int]]]:
        """``(embedding channels, [(heads, MLP hidden units) per active block])`` of a canonical arch."""
        embed = self._width_table[arch["width"]]
        blocks = [(arch["heads"][i], self._hidden_table[embed][arch["expand"][i]]) for i in range(arch["depth"])]
        return embed, blocks

    # -- the space -----------------------------------------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this supernet (normalized: sorted, unique choices)."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def largest(self) -> Arch:
        """Every dimension at its largest choice."""
        return self.validate({"depth": self.max_depth, "expand": [self.ratio_choices[-1]] * self.max_depth,
                              "heads": [self.head_choices[-1]] * self.max_depth, "width": self.width_mults[-1]})

    def smallest(self) -> Arch:
        """Every dimension at its smallest choice."""
        return self.validate({"depth": self.depth_choices[0], "expand": [self.ratio_choices[0]] * self.max_depth,
                              "heads": [self.head_choices[0]] * self.max_depth, "width": self.width_mults[0]})

    def sample(self, rng: random.Random | np.random.Generator | int | None = None,
               dimensions: Iterable[str] | None = None) -> Arch:
        """A random architecture (each choice uniform), canonical.

        :param rng: a ``random.Random``, numpy ``Generator`` or seed.
        :param dimensions: only these dimensions vary, the others stay at their largest (``None``: all).
        """
        r = make_rng(rng)
        free = set(self.dimensions if dimensions is None else
                   ([dimensions] if isinstance(dimensions, str) else dimensions))
        unknown = free - set(self.dimensions)
        if unknown:
            raise ValueError(f"unknown dimensions {sorted(unknown)}; this space has {list(self.dimensions)}")
        arch = {"depth": r.choice(self.depth_choices),
                "expand": [r.choice(self.ratio_choices) for _ in range(self.max_depth)],
                "heads": [r.choice(self.head_choices) for _ in range(self.max_depth)],
                "width": r.choice(self.width_mults)}
        big = self.largest()
        for dim in self.dimensions:
            if dim not in free:
                arch[dim] = [self.ratio_choices[-1]] * self.max_depth if dim == "expand" else \
                    [self.head_choices[-1]] * self.max_depth if dim == "heads" else big[dim]
        return self.validate(arch)

    def count(self) -> int:
        """Distinct networks: per embedding width and depth, (heads x distinct MLP sizes) per block."""
        total = 0
        for embed in set(self._width_table.values()):
            per_block = len(self.head_choices) * len(set(self._hidden_table[embed].values()))
            total += sum(per_block ** d for d in self.depth_choices)
        return total

    def validate(self, arch: Arch) -> Arch:
        """``arch`` canonicalized, or :class:`InvalidArchitecture` naming the bad key.

        :param arch: ``{"depth", "expand", "heads", "width"}`` (see the module documentation).
        """
        if not isinstance(arch, dict):
            raise InvalidArchitecture(f"an architecture is a dict, got {type(arch).__name__}")
        if set(arch) != set(self.dimensions):
            missing = sorted(set(self.dimensions) - set(arch))
            extra = sorted(map(str, set(arch) - set(self.dimensions)))
            raise InvalidArchitecture(f"architecture keys must be {list(self.dimensions)}"
                                      + (f"; missing {missing}" if missing else "")
                                      + (f"; unknown {extra}" if extra else ""))
        depth = arch["depth"]
        if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or int(depth) not in self.depth_choices:
            raise InvalidArchitecture(f"depth: {depth!r} is not one of {self.depth_choices}")
        depth = int(depth)
        width = _match(arch["width"], self.width_mults)
        if width is None:
            raise InvalidArchitecture(f"width: {arch['width']!r} is not one of {self.width_mults} "
                                      f"(embedding width multipliers, not indices)")
        width = self._width_canon[width]
        embed = self._width_table[width]
        for key in ("expand", "heads"):
            value = arch[key]
            if isinstance(value, (str, bytes, dict)) or not isinstance(value, Sequence):
                raise InvalidArchitecture(f"{key}: expected a list of {self.max_depth} values, got "
                                          f"{type(value).__name__}")
            if len(value) != self.max_depth:
                raise InvalidArchitecture(f"{key}: expected {self.max_depth} values (one per block slot), "
                                          f"got {len(value)}")
        heads: list[int | None] = []
        for i, h in enumerate(arch["heads"]):
            if h is None:
                if i < depth:
                    raise InvalidArchitecture(f"heads[{i}]: block {i} is active, it needs one of {self.head_choices}")
                heads.append(None)
            elif isinstance(h, bool) or not isinstance(h, numbers.Integral) or int(h) not in self.head_choices:
                raise InvalidArchitecture(f"heads[{i}]: {h!r} is not one of {self.head_choices} "
                                          f"(or null for an inactive block)")
            else:
                heads.append(int(h) if i < depth else None)
        expand: list[float | None] = []
        for i, e in enumerate(arch["expand"]):
            if e is None:
                if i < depth:
                    raise InvalidArchitecture(f"expand[{i}]: block {i} is active, it needs one of {self.ratio_choices}")
                expand.append(None)
                continue
            choice = _match(e, self.ratio_choices)
            if choice is None:
                raise InvalidArchitecture(f"expand[{i}]: {e!r} is not one of {self.ratio_choices} "
                                          f"(MLP ratios, or null for an inactive block)")
            expand.append(self._expand_canon[embed][choice] if i < depth else None)
        return {"depth": depth, "expand": expand, "heads": heads, "width": width}

    # -- running and extracting ----------------------------------------------------------
    def set_active(self, arch: Arch) -> None:
        """Make ``forward`` run ``arch``."""
        arch = self.validate(arch)
        embed, sizes = self._sizes(arch)
        self.patch_embed.active_out = embed
        for block, (heads, hidden) in zip(self.blocks, sizes):
            block.set(heads, hidden, embed)
        self._active, self._active_blocks, self._active_embed = arch, list(self.blocks[: len(sizes)]), embed

    def active(self) -> Arch:
        """The active (canonical) architecture."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._active.items()}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(N, num_classes)`` of the active architecture for images ``(N, in_channels, H, W)``."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"expected input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}")
        x = tokens(self.patch_embed, self.pos_embed[..., : self._active_embed], self.grid, x)
        for block in self._active_blocks:
            x = block(x)
        return head_forward(self.norm, self.dropout, self.classifier, x)

    @torch.no_grad()
    def extract(self, arch: Arch) -> TinyViTNet:
        """A standalone :class:`TinyViTNet` for ``arch`` holding copies of the inherited weights.

        :param arch: an architecture of this space.
        """
        arch = self.validate(arch)
        embed, sizes = self._sizes(arch)
        blocks = [block.export(heads, hidden, embed) for block, (heads, hidden) in zip(self.blocks, sizes)]
        net = TinyViTNet(self.patch_embed.export(embed), self.pos_embed[..., :embed], self.grid, blocks,
                         self.norm.export(embed), self._config["dropout"],
                         self.classifier.export(embed, self.num_classes), arch)
        net.to(device=self.pos_embed.device, dtype=self.pos_embed.dtype)
        net.train(self.training)
        return net

    @torch.no_grad()
    def sort_channels(self) -> None:
        """Reorder heads, MLP hidden units and embedding channels by importance (most important first).

        Like OFA's ``re_organize_middle_weights``: the importance of a unit is the L1 norm of the
        weights that read it; producers and consumers are permuted together, so the largest network
        computes the same function while narrower subnets (first heads / units / channels) keep the
        important ones.

        - heads (per block): L1 norm of the ``proj`` columns reading the head; its ``q, k, v`` rows move together;
        - MLP hidden units (per block): L1 norm of the ``fc2`` columns reading the unit;
        - embedding channels (shared by the whole network): the L1 norms of the ``qkv``, ``fc1`` and
          classifier columns reading the channel, each times the preceding LayerNorm's scale.

        Optimizer state no longer matches the permuted weights: call this between training phases
        (the ``train_supernet`` stage does, before releasing ``expand`` and ``width``).
        """
        inner = self.head_dim
        for block in self.blocks:
            n_heads = block.proj.weight.shape[1] // inner
            importance = block.proj.weight.abs().reshape(-1, n_heads, inner).sum(dim=(0, 2))
            order = torch.sort(importance, descending=True, stable=True).indices
            steps = torch.arange(inner, device=order.device)
            rows = (order[:, None] * 3 * inner + torch.arange(3 * inner, device=order.device)).flatten()
            columns = (order[:, None] * inner + steps).flatten()
            _permute(block.qkv.weight, rows, 0)
            _permute(block.qkv.bias, rows, 0)
            _permute(block.proj.weight, columns, 1)
            units = torch.sort(block.fc2.weight.abs().sum(0), descending=True, stable=True).indices
            _permute(block.fc1.weight, units, 0)
            _permute(block.fc1.bias, units, 0)
            _permute(block.fc2.weight, units, 1)

        importance = self.norm.weight.abs() * self.classifier.weight.abs().sum(0)
        for block in self.blocks:
            importance += block.norm1.weight.abs() * block.qkv.weight.abs().sum(0)
            importance += block.norm2.weight.abs() * block.fc1.weight.abs().sum(0)
        order = torch.sort(importance, descending=True, stable=True).indices
        _permute(self.patch_embed.weight, order, 0)
        _permute(self.patch_embed.bias, order, 0)
        _permute(self.pos_embed, order, 2)
        for norm in (self.norm, *(n for b in self.blocks for n in (b.norm1, b.norm2))):
            _permute(norm.weight, order, 0)
            _permute(norm.bias, order, 0)
        for block in self.blocks:
            for reader in (block.qkv, block.fc1):
                _permute(reader.weight, order, 1)
            for writer in (block.proj, block.fc2):
                _permute(writer.weight, order, 0)
                _permute(writer.bias, order, 0)
        _permute(self.classifier.weight, order, 1)

    # -- identity and encodings ----------------------------------------------------------
    @property
    def encoding_dim(self) -> int:
        """Length of :meth:`encode`'s vector."""
        return (len(self.depth_choices) + self.max_depth * (len(self.ratio_choices) + len(self.head_choices))
                + len(self.width_mults))

    def encode(self, arch: Arch) -> torch.Tensor:
        """One-hot choices: depth, MLP ratio per block slot, heads per block slot (inactive slots all
        zero), width multiplier; canonical choices.

        :param arch: an architecture of this space.
        """
        arch = self.validate(arch)
        values = one_hot(arch["depth"], self.depth_choices)
        for ratio in arch["expand"]:
            values += one_hot(ratio, self.ratio_choices)
        for heads in arch["heads"]:
            values += one_hot(heads, self.head_choices)
        values += one_hot(arch["width"], self.width_mults)
        return torch.tensor(values, dtype=torch.float32)

    def cost(self, arch: Arch, input_size: int | Sequence[int]) -> dict[str, int]:
        """Parameters and multiply-accumulates of the extracted network for one image, without a forward pass.

        MACs count the patch embedding, the linear layers, and the two attention products
        (``q kᵀ`` and ``attention · v``: ``heads × T² × head_dim`` each for ``T`` tokens);
        LayerNorm, GELU, softmax, additions, pooling and position-embedding resampling are not counted.

        :param arch: an architecture of this space.
        :param input_size: ``H`` (square), ``(H, W)`` or ``(C, H, W)``.
        """
        arch = self.validate(arch)
        size = [int(input_size)] * 2 if isinstance(input_size, numbers.Integral) else [int(v) for v in input_size]
        if len(size) == 3:
            if size[0] != self.in_channels:
                raise ValueError(f"input has {size[0]} channels, the network takes {self.in_channels}")
            size = size[1:]
        if len(size) != 2 or min(size) < self.patch_size:
            raise ValueError(f"input_size must be H, (H, W) or (C, H, W) with sides >= patch_size "
                             f"{self.patch_size}, got {input_size!r}")
        t = ((size[0] - self.patch_size) // self.patch_size + 1) * ((size[1] - self.patch_size) // self.patch_size + 1)
        embed, blocks = self._sizes(arch)
        p2, c = self.patch_size ** 2, self.num_classes
        params = self.in_channels * p2 * embed + embed + self.grid * self.grid * embed + 2 * embed + embed * c + c
        macs = t * embed * self.in_channels * p2 + embed * c
        for heads, hidden in blocks:
            inner = heads * self.head_dim
            params += 4 * embed + (embed * 3 * inner + 3 * inner) + (inner * embed + embed) \
                + (embed * hidden + hidden) + (hidden * embed + embed)
            macs += t * (embed * 3 * inner + inner * embed + 2 * embed * hidden) + 2 * heads * t * t * self.head_dim
        return {"params": int(params), "macs": int(macs)}


def _permute(tensor: torch.Tensor, index: torch.Tensor, dim: int) -> None:
    """Reorder ``tensor`` in place along ``dim`` (``tensor[..., i, ...] = old[..., index[i], ...]``)."""
    tensor.copy_(tensor.index_select(dim, index))
