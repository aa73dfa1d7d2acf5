"""The search-space contract every supernet implements (built-in or third-party).

An *architecture* (``arch``) is a plain JSON-compatible ``dict`` of lists of
choices, e.g. ``{"depth": [2, 1], "expand": [0.25, 0.2, null, ...], ...}``.
A supernet is an ``nn.Module`` holding the weights of its largest network and
running any architecture of its space after :meth:`Supernet.set_active`.

Identity rules (so equal networks are counted, stored and hashed once):

- :meth:`Supernet.canonical` maps every architecture to one representative of
  the networks it builds: choices of inactive blocks become ``None``; a choice
  that yields the same layer shapes as a smaller one (``make_divisible`` rounding)
  becomes that smaller one.
- :meth:`arch_to_json` writes the canonical form (sorted keys, compact);
  :meth:`arch_hash` hashes that text. Equal networks → equal JSON → equal hash.
"""

from __future__ import annotations

import abc
import hashlib
import json
import math
import numbers
import random
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

Arch = dict[str, Any]


class InvalidArchitecture(ValueError):
    """An architecture that does not belong to the search space (the message says which key and why)."""


def make_rng(rng: random.Random | np.random.Generator | int | None) -> random.Random:
    """A ``random.Random`` from a seed, a ``random.Random`` or a numpy ``Generator``."""
    if isinstance(rng, random.Random):
        return rng
    if isinstance(rng, np.random.Generator):
        return random.Random(int(rng.integers(0, 2**63 - 1)))
    return random.Random(rng)


class Supernet(nn.Module, abc.ABC):
    """Base class and contract of weight-sharing supernets.

    Subclasses set :attr:`dimensions` (the elastic dimensions, in the order
    progressive shrinking releases them, e.g. ``("kernel", "depth", "expand",
    "width")``) and implement the abstract methods. ``forward`` runs the active
    architecture.
    """

    #: Elastic dimensions in progressive-shrinking order.
    dimensions: tuple[str, ...] = ()
    #: Dimensions that slice channels: training calls :meth:`sort_channels` before releasing each.
    channel_dimensions: tuple[str, ...] = ("expand", "width")

    # -- the space -------------------------------------------------------------
    @abc.abstractmethod
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this supernet (stored with checkpoints)."""

    @abc.abstractmethod
    def largest(self) -> Arch:
        """The largest architecture (every dimension at its maximum)."""

    @abc.abstractmethod
    def smallest(self) -> Arch:
        """The smallest architecture."""

    @abc.abstractmethod
    def sample(self, rng: random.Random | np.random.Generator | int | None = None,
               dimensions: Iterable[str] | None = None) -> Arch:
        """A uniformly random architecture (canonical).

        :param rng: a ``random.Random``, numpy ``Generator`` or seed.
        :param dimensions: only these elastic dimensions vary; the others stay
            at their largest value (progressive shrinking). ``None``: all.
        """

    @abc.abstractmethod
    def count(self) -> int:
        """The number of distinct subnets (distinct canonical architectures)."""

    @abc.abstractmethod
    def validate(self, arch: Arch) -> Arch:
        """Return ``arch`` canonicalized, or raise :class:`InvalidArchitecture` naming the bad key."""

    def canonical(self, arch: Arch) -> Arch:
        """The canonical form of ``arch`` (see the module documentation)."""
        return self.validate(arch)

    # -- running and extracting ------------------------------------------------
    @abc.abstractmethod
    def set_active(self, arch: Arch) -> None:
        """Make ``forward`` run ``arch``."""

    @abc.abstractmethod
    def active(self) -> Arch:
        """The active architecture."""

    @abc.abstractmethod
    def extract(self, arch: Arch) -> nn.Module:
        """A standalone network for ``arch`` (no dynamic ops) holding copies of the inherited weights and BN
        statistics."""

    def sort_channels(self) -> None:
        """Reorder middle channels by importance so narrow subnets keep the important ones (optional)."""

    # -- identity and encodings ------------------------------------------------
    def arch_to_json(self, arch: Arch) -> str:
        """Canonical JSON (sorted keys, no spaces)."""
        return json.dumps(self.canonical(arch), sort_keys=True, separators=(",", ":"))

    def arch_from_json(self, text: str) -> Arch:
        """Parse and validate an architecture written by :meth:`arch_to_json`."""
        try:
            arch = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InvalidArchitecture(f"not JSON: {exc}") from None
        if not isinstance(arch, dict):
            raise InvalidArchitecture(f"an architecture is a JSON object, got {type(arch).__name__}")
        return self.validate(arch)

    def arch_hash(self, arch: Arch) -> str:
        """A 16-hex-digit hash of the canonical JSON (includes the space's name)."""
        text = type(self).__name__ + ":" + self.arch_to_json(arch)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    @abc.abstractmethod
    def encoding_dim(self) -> int:
        """Length of :meth:`encode`'s vector."""

    @abc.abstractmethod
    def encode(self, arch: Arch) -> torch.Tensor:
        """A float vector of length :attr:`encoding_dim` (one-hot choices; inactive blocks all zero)."""

    @abc.abstractmethod
    def cost(self, arch: Arch, input_size: int | Sequence[int]) -> dict[str, int]:
        """``{"params": ..., "macs": ...}`` of the extracted network, computed without a forward pass."""


def one_hot(value: Any, choices: Sequence[Any]) -> list[float]:
    """One-hot of ``value`` among ``choices``; all zeros for ``None`` (an inactive block)."""
    return [1.0 if value is not None and value == c else 0.0 for c in choices]


def match_choice(value: Any, choices: Sequence[Any]) -> Any:
    """The element of ``choices`` equal to ``value`` (a real number, not a bool; floats within rounding
    error match), else ``None``: how an architecture's entries are checked against a space's choices."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    for choice in choices:
        if value == choice or math.isclose(float(value), float(choice), rel_tol=1e-6, abs_tol=1e-12):
            return choice
    return None
