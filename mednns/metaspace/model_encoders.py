"""The built-in model encoders (kind ``model-encoders``): architecture, functional, and both.

* :class:`ArchEncoder` (``arch``): one MLP per search space maps a row's architecture encoding
  (plus, with ``costs``, its log10 parameters and log10 MACs standardized over the table, and with
  ``source``, a descriptor of the dataset its weights were trained on) into the shared
  ``embed_dim`` space;
* :class:`FunctionalEncoder` (``functional``): an MLP maps a row's functional signature (the
  representational similarity of the subnet on a fixed probe batch,
  :mod:`mednns.metaspace.functional`; its length does not depend on the subnet's width or space)
  to ``embed_dim``;
* :class:`ArchFunctionalEncoder` (``arch_functional``): both, concatenated and mixed by a linear layer.

All follow :class:`mednns.metaspace.contracts.ModelEncoder`: :meth:`setup` sees the whole table
once, precomputes the inputs of every row (kept as non-persistent buffers: they are derived from
the table, not learnt) and builds fresh layers, initialized from ``context["seed"]`` so that the
result does not depend on the global RNG; create the optimizer after ``setup``. ``forward(index)``
embeds rows by index, in index order.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, cast

import numpy as np
import torch
from torch import nn

from mednns.errors import UsageError
from mednns.metaspace.contracts import ModelEncoder, ModelTable
from mednns.seeding import derive_seed

# -- shared pieces ---------------------------------------------------------------------------------

@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded to ``seed``; the global RNG state is restored afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def mlp(in_dim: int, hidden: int, out_dim: int, layers: int = 2, dropout: float = 0.0) -> nn.Sequential:
    """A multi-layer perceptron: ``layers`` linear layers, ReLU (and dropout) between them.

    :param in_dim: input features; :param hidden: width of the hidden layers;
    :param out_dim: output features; :param layers: number of linear layers (1: a single linear map);
    :param dropout: dropout probability after each hidden activation.
    """
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules += [nn.Linear(width, hidden), nn.ReLU()]
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        width = hidden
    modules.append(nn.Linear(width, out_dim))
    return nn.Sequential(*modules)


def standardize(values: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Column-wise z-scores over the rows of ``values`` (a constant column becomes 0)."""
    values = np.asarray(values, dtype=np.float64)
    std = values.std(axis=0)
    return ((values - values.mean(axis=0)) / np.where(std < eps, 1.0, std)).astype(np.float32)


def cost_features(table: ModelTable) -> np.ndarray:
    """``(n, 2)`` float32: log10 parameters and log10 MACs of every row, standardized over the table."""
    params = np.log10(np.maximum(np.asarray(table.params, dtype=np.float64), 1.0))
    macs = np.log10(np.maximum(np.asarray(table.macs, dtype=np.float64), 1.0))
    return standardize(np.stack([params, macs], axis=1))


def source_features(table: ModelTable, context: dict[str, Any]) -> np.ndarray:
    """``(n, 2F)`` float32: per row, the dataset its weights come from, described by the mean and
    standard deviation of that dataset's per-image features (``context["dataset_features"]``:
    name → ``(N, F)``, the frozen dataset encoder's), standardized over the table's datasets.

    The same architecture from two supernets thus gets two inputs: what the weights learnt from
    is part of the model.
    """
    given = context.get("dataset_features") or {}
    names = table.datasets
    missing = [n for n in names if n not in given]
    if missing:
        raise UsageError(f"the model encoder describes each row's source dataset, but context['dataset_features'] "
                         f"lacks {', '.join(missing)}",
                         hint="pass every table dataset's per-image features (the meta-space's training does)")
    arrays = [np.asarray(given[n], dtype=np.float64) for n in names]
    if len({a.shape[1] if a.ndim == 2 else -1 for a in arrays}) != 1 or any(len(a) == 0 for a in arrays):
        raise UsageError("context['dataset_features'] must hold non-empty (N, F) arrays with one F for every dataset")
    described = standardize(np.stack([np.concatenate([a.mean(0), a.std(0)]) for a in arrays]))
    position = {n: i for i, n in enumerate(names)}
    return described[[position[d] for d in table.dataset]]


def _positive(name: str, value: int, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise UsageError(f"model encoder argument {name} must be an integer >= {minimum}, got {value!r}",
                         hint=f"set {name} to at least {minimum}")


def _check_table(table: ModelTable) -> int:
    n = len(table)
    if n == 0:
        raise UsageError("the model table is empty: there is no model to encode",
                         hint="build a zoo first (mednns zoo build) and check the datasets the meta-space reads")
    for name in ("dataset", "space", "encoding", "params", "macs", "arch"):
        if len(getattr(table, name)) != n:
            raise UsageError(f"ModelTable.{name} has {len(getattr(table, name))} entries for {n} rows",
                             hint="every ModelTable field holds one entry per row")
    return n


def _device(context: dict[str, Any]) -> torch.device | None:
    device = context.get("device")
    return None if device is None else torch.device(device)


def _module_key(space: str) -> str:
    """A ModuleDict key for a space name (module names cannot contain '.')."""
    return space.replace(".", "_") or "_"


class _Inputs(nn.Module):
    """Holds one precomputed input matrix as a non-persistent buffer (moves with ``.to``)."""

    values: torch.Tensor

    def __init__(self, values: np.ndarray):
        super().__init__()
        self.register_buffer("values", torch.as_tensor(values, dtype=torch.float32), persistent=False)


class _IndexedEncoder(ModelEncoder):
    """Row-count bookkeeping and index checks shared by the built-in encoders."""

    def __init__(self) -> None:
        super().__init__()
        self.rows = 0

    def _index(self, index: torch.Tensor, device: torch.device) -> torch.Tensor:
        if self.rows == 0:
            raise UsageError(f"{type(self).__name__} is not set up", hint="call setup(table, context) before forward")
        index = torch.as_tensor(index)
        if index.dim() != 1 or index.dtype.is_floating_point or index.dtype == torch.bool:
            raise ValueError("index must be a 1-D integer tensor of row numbers, "
                             f"got {index.dtype} {tuple(index.shape)}")
        if len(index) and (int(index.min()) < 0 or int(index.max()) >= self.rows):
            raise IndexError(f"row index out of range [0, {self.rows}): {int(index.min())}..{int(index.max())}")
        return index.to(device=device, dtype=torch.long)


# -- architecture ----------------------------------------------------------------------------------

class ArchEncoder(_IndexedEncoder):
    """Architecture encoding (and costs) → ``embed_dim``, one MLP per search space.

    Encodings of different spaces have different lengths and meanings, so each space gets its own
    MLP (built in :meth:`setup` from the encoding length of that space's rows); all map into the
    same ``embed_dim`` space.

    :param embed_dim: output size.
    :param hidden: width of the hidden layers.
    :param layers: linear layers per MLP (1: a linear map).
    :param dropout: dropout after each hidden activation.
    :param costs: append log10 params and log10 MACs (standardized over the table) to the encoding.
    :param source: append the descriptor of each row's source dataset (:func:`source_features`;
        needs ``context["dataset_features"]``): weights-aware, so that the query's choice of which
        supernet's weights to hand over is not arbitrary.
    """

    def __init__(self, embed_dim: int = 64, hidden: int = 128, layers: int = 2, dropout: float = 0.0,
                 costs: bool = True, source: bool = False):
        super().__init__()
        _positive("embed_dim", embed_dim)
        _positive("hidden", hidden)
        _positive("layers", layers)
        if not 0.0 <= dropout < 1.0:
            raise UsageError(f"model encoder argument dropout must be in [0, 1), got {dropout!r}")
        self.embed_dim, self.hidden, self.layers, self.dropout, self.costs = embed_dim, hidden, layers, dropout, costs
        self.source = source
        self.spaces: list[str] = []
        self.nets = nn.ModuleDict()
        self.inputs = nn.ModuleDict()
        self.register_buffer("row_space", torch.zeros(0, dtype=torch.long), persistent=False)
        self.register_buffer("row_pos", torch.zeros(0, dtype=torch.long), persistent=False)

    def setup(self, table: ModelTable, context: dict[str, Any]) -> None:
        """Build one MLP per space of ``table`` and store every row's input.

        :param table: every model this encoder will embed.
        :param context: ``seed`` (layer initialization; default 0), ``device`` (optional) and, with
            ``source``, ``dataset_features``.
        """
        n = _check_table(table)
        extra = cost_features(table) if self.costs else np.zeros((n, 0), dtype=np.float32)
        if self.source:
            extra = np.concatenate([extra, source_features(table, context)], axis=1)
        seed = int(context.get("seed", 0))
        self.spaces = sorted(set(table.space))
        row_space = np.zeros(n, dtype=np.int64)
        row_pos = np.zeros(n, dtype=np.int64)
        nets, inputs = nn.ModuleDict(), nn.ModuleDict()
        for k, space in enumerate(self.spaces):
            rows = np.array([i for i, s in enumerate(table.space) if s == space], dtype=np.int64)
            lengths = sorted({int(np.asarray(table.encoding[i]).size) for i in rows})
            if len(lengths) != 1:
                raise UsageError(f"rows of space {space!r} have encodings of different lengths {lengths}",
                                 hint="one space has one encoding length: check the zoo rows' space names")
            encoding = np.stack([np.asarray(table.encoding[i], dtype=np.float32).reshape(-1) for i in rows])
            values = np.concatenate([encoding, extra[rows]], axis=1)
            row_space[rows], row_pos[rows] = k, np.arange(len(rows))
            key = _module_key(space)
            inputs[key] = _Inputs(values)
            with seeded(derive_seed(seed, "model-encoder", "arch", space)):
                nets[key] = mlp(values.shape[1], self.hidden, self.embed_dim, self.layers, self.dropout)
        self.nets, self.inputs = nets, inputs
        self.row_space = torch.from_numpy(row_space)
        self.row_pos = torch.from_numpy(row_pos)
        self.rows = n
        device = _device(context)
        if device is not None:
            self.to(device)

    def input_dim(self, space: str) -> int:
        """Length of the MLP input of ``space`` (encoding, plus 2 with costs, plus 2F with source)."""
        return cast(_Inputs, self.inputs[_module_key(space)]).values.shape[1]

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` row indices → ``(B, embed_dim)``; each space's rows go through its MLP in one batch."""
        index = self._index(index, self.row_space.device)
        space_of = self.row_space[index]
        out: torch.Tensor | None = None
        for k, space in enumerate(self.spaces):
            where = (space_of == k).nonzero(as_tuple=True)[0]
            if len(where) == 0:
                continue
            key = _module_key(space)
            y = self.nets[key](cast(_Inputs, self.inputs[key]).values[self.row_pos[index[where]]])
            if out is None:
                out = y.new_zeros(len(index), self.embed_dim)
            out = out.index_copy(0, where, y)
        if out is None:  # an empty batch
            out = self.row_space.new_zeros((0, self.embed_dim), dtype=torch.float32)
        return out


# -- functional ------------------------------------------------------------------------------------

class FunctionalEncoder(_IndexedEncoder):
    """Functional signature (representational similarity on a probe batch) → ``embed_dim``.

    :meth:`setup` computes (or reads from ``context["cache_dir"]``) every row's signature with
    :func:`mednns.metaspace.functional.table_signatures`; signatures are standardized per
    component over the table and fed to one MLP shared by all spaces (a signature's length is
    ``P(P-1)/2`` for ``P`` probe images, whatever the subnet).

    Context keys read by :meth:`setup`: ``probe`` (optional float tensor ``(P, C, H, W)`` in
    ``[0, 1]``; default a synthetic probe of ``probe_images`` images of ``probe_size`` px drawn from
    ``seed``), ``cache_dir``, ``device``, ``seed`` (layer initialization), ``progress`` (a rich
    progress bar) and ``manager`` (the plugin manager that rebuilds supernets).

    :param embed_dim: output size.
    :param hidden: width of the MLP's hidden layer.
    :param probe_images: images in the synthetic probe (``P``).
    :param probe_size: their height and width in pixels (resized to each supernet's image size).
    :param seed: seed of the synthetic probe (and of the signature computation).
    """

    def __init__(self, embed_dim: int = 64, hidden: int = 128, probe_images: int = 32, probe_size: int = 28,
                 seed: int = 0):
        super().__init__()
        _positive("embed_dim", embed_dim)
        _positive("hidden", hidden)
        _positive("probe_images", probe_images, 2)
        _positive("probe_size", probe_size, 4)
        self.embed_dim, self.hidden = embed_dim, hidden
        self.probe_images, self.probe_size, self.seed = probe_images, probe_size, seed
        self.mlp: nn.Module | None = None
        #: Raw signatures of the table's rows (float32 ``(n, P(P-1)/2)``), after :meth:`setup`.
        self.signatures: np.ndarray | None = None
        self.register_buffer("values", torch.zeros(0, 0), persistent=False)

    def probe(self, context: dict[str, Any]) -> torch.Tensor:
        """The probe batch: ``context["probe"]`` when given (validated), else the synthetic one."""
        from mednns.metaspace.functional import check_probe, synthetic_probe

        given = context.get("probe")
        if given is not None:
            return check_probe(given)
        return synthetic_probe(self.probe_images, self.probe_size, self.seed)

    def setup(self, table: ModelTable, context: dict[str, Any]) -> None:
        """Compute (or read cached) signatures of every row and build the MLP.

        :param table: every model this encoder will embed; ``table.supernet`` must be filled.
        :param context: see the class documentation.
        """
        from mednns.metaspace.functional import table_signatures

        n = _check_table(table)
        device = _device(context)
        signatures = table_signatures(table, self.probe(context), cache_dir=context.get("cache_dir"),
                                      device=device or "cpu", seed=self.seed,
                                      progress=bool(context.get("progress")), manager=context.get("manager"))
        self.signatures = signatures
        self.values = torch.from_numpy(standardize(signatures))
        with seeded(derive_seed(int(context.get("seed", 0)), "model-encoder", "functional")):
            self.mlp = mlp(signatures.shape[1], self.hidden, self.embed_dim, 2)
        self.rows = n
        if device is not None:
            self.to(device)

    @property
    def signature_dim(self) -> int:
        """Length of one signature (``P(P-1)/2``); 0 before :meth:`setup`."""
        return int(self.values.shape[1]) if self.values.dim() == 2 else 0

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` row indices → ``(B, embed_dim)``."""
        index = self._index(index, self.values.device)
        assert self.mlp is not None
        return self.mlp(self.values[index])


# -- both ------------------------------------------------------------------------------------------

class ArchFunctionalEncoder(_IndexedEncoder):
    """:class:`ArchEncoder` and :class:`FunctionalEncoder` side by side, concatenated and mixed by a
    linear layer into ``embed_dim``. :meth:`setup` reads the context keys both read.

    :param embed_dim: output size (and the size of each part).
    :param hidden: hidden width of both parts.
    :param probe_images: :param probe_size: :param seed: the functional part's probe (see
        :class:`FunctionalEncoder`).
    """

    def __init__(self, embed_dim: int = 64, hidden: int = 128, probe_images: int = 32, probe_size: int = 28,
                 seed: int = 0):
        super().__init__()
        self.embed_dim = embed_dim
        self.arch = ArchEncoder(embed_dim=embed_dim, hidden=hidden)
        self.functional = FunctionalEncoder(embed_dim=embed_dim, hidden=hidden, probe_images=probe_images,
                                            probe_size=probe_size, seed=seed)
        self.mix: nn.Module | None = None

    def setup(self, table: ModelTable, context: dict[str, Any]) -> None:
        """Set up both parts on ``table`` and build the mixing layer.

        :param table: every model this encoder will embed; ``table.supernet`` must be filled.
        :param context: see :class:`ArchEncoder` and :class:`FunctionalEncoder`.
        """
        n = _check_table(table)
        self.arch.setup(table, context)
        self.functional.setup(table, context)
        with seeded(derive_seed(int(context.get("seed", 0)), "model-encoder", "arch_functional")):
            self.mix = nn.Linear(2 * self.embed_dim, self.embed_dim)
        self.rows = n
        device = _device(context)
        if device is not None:
            self.to(device)

    def forward(self, index: torch.Tensor) -> torch.Tensor:
        """``(B,)`` row indices → ``(B, embed_dim)``."""
        index = self._index(index, self.arch.row_space.device)
        assert self.mix is not None
        return self.mix(torch.cat([self.arch(index), self.functional(index)], dim=1))
