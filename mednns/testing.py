"""Helpers for testing mednns plugins (opt-in: import ``mednns.testing`` in your tests).

* :func:`plugin_manager` / :func:`using_plugins`: a fresh plugin manager with your plugin object
  registered (and, inside ``using_plugins``, installed as the process-wide one that
  :func:`mednns.create` and the CLI use), without installing anything;
* :func:`tiny_dataset` / :func:`write_tiny_npz`: small seeded datasets of any task;
* :func:`tiny_space`: a small OFA supernet;
* :func:`check_search_space`, :func:`check_dataset`, :func:`check_loss_term`,
  :func:`check_transfer_score`: the contract checks the built-ins pass; call them on your component
  and they raise ``AssertionError`` naming what breaks.

Example::

    from mednns.testing import check_search_space, using_plugins
    import my_plugin

    def test_my_space():
        with using_plugins(my_plugin):
            space = mednns.create("search-spaces", "my_space", in_channels=1, num_classes=3)
        check_search_space(space, input_size=28)
"""

from __future__ import annotations

import contextlib
import random
from pathlib import Path
from typing import Any, Iterator, cast

import numpy as np

from mednns.data import ArrayDataset, DatasetInfo, MedicalDataset, SplitArrays, Task
from mednns.errors import PluginLoadError
from mednns.manager import PluginManager, pinned_plugin_manager

#: Overrides of the ``cpu`` preset that make the built-in spaces tiny.
TINY_SPACES: dict[str, dict[str, Any]] = {
    "ofa_resnet": {"stage_widths": [16, 32], "base_depths": [1, 1], "depth_choices": [0, 1],
                   "expand_choices": [0.5, 1.0], "width_mults": [0.5, 1.0], "stem_width": 8},
    "ofa_mobilenetv3": {"width_mult": 0.25, "stage_widths": [24, 40], "stage_acts": ["relu", "hard_swish"],
                        "stage_se": [False, True], "stage_strides": [2, 2], "depth_choices": [1, 2],
                        "expand_choices": [3, 4], "final_expand_width": 64, "last_channel": 64},
}


# -- plugins ---------------------------------------------------------------------------------
def plugin_manager(*plugins: object, installed: bool = False) -> PluginManager:
    """A fresh manager: mednns's built-in plugins plus ``plugins`` (modules or objects with hook
    implementations), registered as if installed.

    :param installed: also load every installed third-party plugin (``mednns`` entry points).
    :raises PluginLoadError: when one of ``plugins`` does not load or its ``register_*`` hooks fail
        (an unknown hook name, a taken component name, an exception), with the recorded errors.
    """
    environ = {} if installed else {"MEDNNS_LOAD_PLUGINS": ""}
    manager = PluginManager(environ=environ)
    for plugin in plugins:
        record = manager.register(plugin, getattr(plugin, "__name__", type(plugin).__name__))
        if record.errors:  # a test must not go on without the plugin it is about
            raise PluginLoadError(f"plugin {record.label} did not load: {'; '.join(record.errors)}",
                                  hint="fix the hook implementation (names and arguments must match mednns.hookspecs)")
    return manager


@contextlib.contextmanager
def using_plugins(*plugins: object, installed: bool = False) -> Iterator[PluginManager]:
    """Within the block, :func:`mednns.create`, ``mednns.list_components`` and the CLI use a manager
    with ``plugins`` registered; the previous process-wide manager is restored afterwards.

    The CLI (``mednns.cli.cli``, e.g. through ``click.testing.CliRunner``) normally starts every
    invocation with a fresh manager read from the installed entry points; inside the block it keeps
    this one, so plugin commands, stages and lifecycle hooks are seen without installing anything.

    :param installed: also load every installed third-party plugin (``mednns`` entry points).
    """
    with pinned_plugin_manager(plugin_manager(*plugins, installed=installed)) as manager:
        yield manager


# -- data --------------------------------------------------------------------------------------
def _split(rng: np.random.Generator, n: int, size: int, channels: int, n_classes: int, multilabel: bool,
           depth: int | None) -> SplitArrays:
    labels = (rng.random((n, n_classes)) < 0.4).astype(np.int64) if multilabel else rng.integers(0, n_classes, (n, 1))
    shape = (n, size, size, channels) if depth is None else (n, depth, size, size, channels)
    images = rng.integers(0, 256, shape, dtype=np.uint8)
    # a class-dependent bright square, so that models can learn something
    first = labels.argmax(1) if multilabel else labels[:, 0]
    for i, label in enumerate(first):
        offset = int(label) * size // (2 * n_classes)
        images[i, ..., offset:offset + size // 3, offset:offset + size // 3, :] = 255
    return SplitArrays(images, labels)


def tiny_arrays(seed: int = 0, size: int = 12, channels: int = 1, n_classes: int = 3, multilabel: bool = False,
                sizes: tuple[int, int, int] = (96, 32, 32), depth: int | None = None) -> dict[str, SplitArrays]:
    """Seeded train/val/test arrays (uint8 channels-last images; ``depth`` makes 3D volumes)."""
    rng = np.random.default_rng(seed)
    return {split: _split(rng, n, size, channels, n_classes, multilabel, depth)
            for split, n in zip(("train", "val", "test"), sizes)}


def tiny_dataset(name: str = "tiny", **kwargs: Any) -> ArrayDataset:
    """A small in-memory dataset (arguments of :func:`tiny_arrays`); binary when ``n_classes=2``."""
    multilabel, n_classes = kwargs.get("multilabel", False), kwargs.get("n_classes", 3)
    arrays = tiny_arrays(**kwargs)
    task = Task.MULTI_LABEL if multilabel else (Task.BINARY if n_classes == 2 else Task.MULTI_CLASS)
    images = arrays["train"].images
    info = DatasetInfo(name, task, images.shape[-1], n_classes, tuple(str(i) for i in range(n_classes)),
                       images.shape[1:-1], split_sizes={k: len(v) for k, v in arrays.items()})
    return ArrayDataset(info, arrays)


def write_tiny_npz(path: str | Path, **kwargs: Any) -> Path:
    """:func:`tiny_arrays` saved in the MedMNIST ``.npz`` layout (read by the ``npz`` dataset)."""
    arrays = tiny_arrays(**kwargs)
    path = Path(path)
    np.savez_compressed(path, **{f"{split}_{part}": getattr(a, part) for split, a in arrays.items()
                                 for part in ("images", "labels")})
    return path


# -- components --------------------------------------------------------------------------------
def tiny_space(name: str = "ofa_resnet", in_channels: int = 1, num_classes: int = 3, **overrides: Any) -> Any:
    """A small built-in supernet (``ofa_resnet`` or ``ofa_mobilenetv3``)."""
    args = {"in_channels": in_channels, "num_classes": num_classes, "preset": "cpu", **TINY_SPACES[name], **overrides}
    return plugin_manager().create("search-spaces", name, **args)


def check_search_space(space: Any, *, input_size: int = 28, samples: int = 8, seed: int = 0,
                       atol: float = 1e-5) -> dict[str, Any]:
    """Check the search-space contract on ``space`` (see ``docs/writing-plugins.md``).

    For the largest, the smallest and ``samples`` random architectures: valid and canonical,
    JSON round trip and stable hash, ``encode`` of length ``encoding_dim``, ``cost`` params equal
    to the extracted network's, ``set_active`` then ``active`` round trip, and the extracted
    network in eval mode computes what the supernet computes with that architecture active
    (max abs difference <= ``atol``), without changing the supernet's weights.

    :returns: ``{"count", "checked", "max_abs_diff"}``.
    """
    import torch

    assert isinstance(space, torch.nn.Module), "a search space is an nn.Module"
    space = cast(Any, space)  # the contract's methods, which nn.Module does not declare
    for attribute in ("encoding_dim", "dimensions"):
        assert hasattr(space, attribute), f"a search space has .{attribute}"
    config = space.config()
    assert {"in_channels", "num_classes"} <= set(config), "config() must include in_channels and num_classes"
    in_channels, num_classes = config["in_channels"], config["num_classes"]
    count = space.count()
    assert isinstance(count, int) and count >= 1, f"count() must be a positive int, got {count!r}"
    rng = random.Random(seed)
    archs = [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(samples))]
    before = {k: v.detach().clone() for k, v in space.state_dict().items()}
    was_training, was_active = space.training, space.active()
    space.eval()
    worst = 0.0
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, in_channels, input_size, input_size, generator=generator)
    for arch in archs:
        canonical = space.canonical(arch)
        text = space.arch_to_json(arch)
        assert space.arch_to_json(space.arch_from_json(text)) == text, f"JSON round trip changes {text}"
        assert space.arch_hash(arch) == space.arch_hash(space.arch_from_json(text)), f"hash not stable for {text}"
        assert space.arch_to_json(canonical) == text, "arch_to_json must write the canonical form"
        code = space.encode(arch)
        assert tuple(code.shape) == (space.encoding_dim,), f"encode() gave shape {tuple(code.shape)}"
        assert code.dtype.is_floating_point, "encode() must return floats"
        space.set_active(arch)
        assert space.arch_to_json(space.active()) == text, "active() must return the architecture set_active got"
        with torch.no_grad():
            supernet_out = space(x)
            model = space.extract(arch).eval()
            extracted_out = model(x)
        assert not any(type(m).__module__.startswith("mednns.search_spaces") and hasattr(m, "set_active")
                       for m in model.modules()), "extract() must return a network without dynamic layers"
        params = sum(p.numel() for p in model.parameters())
        cost = space.cost(arch, input_size)
        assert cost["params"] == params, f"cost() says {cost['params']} params, the extracted network has {params}"
        assert cost["macs"] > 0, "cost() must report MACs"
        assert supernet_out.shape == (2, num_classes), f"output shape {tuple(supernet_out.shape)}"
        diff = float((supernet_out - extracted_out).abs().max())
        assert diff <= atol, f"extracted network differs from the supernet by {diff} for {text}"
        worst = max(worst, diff)
    after = space.state_dict()
    changed = [k for k, v in before.items() if not torch.equal(v, after[k])]
    assert not changed, f"checking changed the supernet's tensors: {changed[:3]}"
    space.set_active(was_active)
    space.train(was_training)
    return {"count": count, "checked": len(archs), "max_abs_diff": worst}


def check_dataset(dataset: MedicalDataset) -> dict[str, int]:
    """Check the dataset contract: every split loads and agrees with ``info``; returns split sizes."""
    info = dataset.info
    sizes = {}
    for split in ("train", "val", "test"):
        arrays = dataset.split(split)  # validates shapes, dtypes and labels against info
        sizes[split] = len(arrays)
        assert len(arrays) > 0, f"{info.name}: the {split} split is empty"
        assert arrays.images.shape[-1] == info.n_channels, f"{info.name}: {split} channels differ from info"
        if split in info.split_sizes:
            assert info.split_sizes[split] == len(arrays), (
                f"{info.name}: info.split_sizes says {info.split_sizes[split]} {split} images, the split holds "
                f"{len(arrays)}")
    return sizes


def check_loss_term(term: Any, *, seed: int = 0) -> float:
    """Check the loss-term contract on a random masked batch: a finite 0-dim differentiable value that
    padded entries do not change; returns the value.

    Two batches are built that agree on every present (dataset, model) pair and differ at every padded
    one (``model_embedding``, ``predicted``, ``score`` and ``target`` hold 0 there in the first, and
    other values, different per field, in the second); the term must give the same value on both.
    """
    import torch

    from mednns.metaspace.contracts import MetaBatch

    d, m, e = 3, 5, 8
    mask = torch.ones(d, m, dtype=torch.bool)
    mask[:, -1] = False  # every dataset has a padded slot
    mask[1, -2] = False  # and one has fewer models than the others

    def batch(pads: tuple[float, float, float, float]) -> tuple[MetaBatch, list[torch.Tensor]]:
        g = torch.Generator().manual_seed(seed)
        leaves = [torch.randn(d, e, generator=g), torch.randn(d, m, e, generator=g), torch.rand(d, m, generator=g)]
        for leaf in leaves:
            leaf.requires_grad_(True)
        target = torch.rand(d, m, generator=g)
        de, me, pred = leaves
        pad_embedding, pad_predicted, pad_score, pad_target = (torch.tensor(p) for p in pads)
        me = torch.where(mask.unsqueeze(-1), me, pad_embedding)
        pred = torch.where(mask, pred, pad_predicted)
        target = torch.where(mask, target, pad_target)
        score = torch.where(mask, torch.nn.functional.cosine_similarity(de.unsqueeze(1), me, dim=-1), pad_score)
        fid = torch.tensor([[0.0, 0.5, 1.0], [0.5, 0.0, 0.7], [1.0, 0.7, 0.0]])
        return MetaBatch(de, me, pred, score, target, mask.clone(), fid), leaves

    first, leaves = batch((0.0, 0.0, 0.0, 0.0))
    value = term(first)
    assert isinstance(value, torch.Tensor) and value.ndim == 0, "a loss term returns a 0-dim tensor"
    assert torch.isfinite(value), f"the loss is not finite: {value}"
    assert value.requires_grad, ("the loss has no gradient (it does not require grad: "
                                 "compute it from the batch's tensors)")
    value.backward()
    assert any(leaf.grad is not None and leaf.grad.abs().sum() > 0 for leaf in leaves), "the loss has no gradient"
    second, _ = batch((123.0, 45.0, -6.0, -78.0))
    other = term(second)
    assert torch.allclose(other.detach(), value.detach(), atol=1e-6), (
        f"padded (masked-out) entries change the loss: {float(value.detach()):.6g} with 0 in every padded slot, "
        f"{float(other.detach()):.6g} with other values (replace padded entries, e.g. torch.where(batch.mask, x, 0), "
        "before any arithmetic)")
    return float(value.detach())


def check_transfer_score(score: Any, *, seed: int = 0) -> dict[str, Any]:
    """Check the transfer-score contract on constructed features whose answer is known: a finite float
    for multi-class, binary and multi-label targets (a score may refuse a task with
    ``mednns.UsageError``), higher for class-separable features than for noise; and, when
    ``per_image`` gives values, one per image whose mean (over the finite ones) is the score.

    Scores that read the source head (``needs_source_probabilities``) get informative and uninformative
    source probabilities with the features. Returns ``{task: (separable score, noise score)}`` for the
    tasks it scored, and ``per_image``: whether the score splits over images.
    """
    from mednns.errors import UsageError

    rng = np.random.default_rng(seed)
    n, classes = 90, 3
    y = np.arange(n) % classes
    separable = rng.normal(0, 4.0, (classes, 16))[y] + rng.normal(0, 1, (n, 16))
    noise = rng.normal(0, 1, (n, 16))
    informative = np.full((n, 4), 0.05)
    informative[np.arange(n), y] = 0.85
    uninformative = rng.dirichlet(np.ones(4), n)
    needs_head = bool(getattr(score, "needs_source_probabilities", False))
    tasks = {"multi-class": y, "binary": y % 2,
             "multi-label": np.stack([y == 0, y == 1], axis=1).astype(np.int64)}
    found: dict[str, Any] = {}
    splits = False
    for task, labels in tasks.items():
        values = []
        for features, head in ((separable, informative), (noise, uninformative)):
            probabilities = head if needs_head else None
            try:
                value = score.score(features, labels, task, source_probabilities=probabilities)
            except UsageError:
                break
            assert isinstance(value, (float, np.floating)) and np.isfinite(value), (
                f"score() must return a finite float, got {value!r} ({task})")
            split = getattr(score, "per_image", None)
            terms = split(features, labels, task, source_probabilities=probabilities) if split else None
            if terms is not None:
                splits = True
                terms = np.asarray(terms, dtype=np.float64)
                assert terms.shape == (n,), f"per_image() must give one value per image: {terms.shape} for {n} ({task})"
                assert np.isfinite(terms).any() and np.isclose(np.nanmean(terms), value, rtol=1e-6, atol=1e-9), (
                    f"the mean of per_image() is {np.nanmean(terms):.6g}, score() is {value:.6g} ({task})")
            values.append(float(value))
        if len(values) == 2:
            assert values[0] > values[1], (f"class-separable features score {values[0]:.4g}, noise {values[1]:.4g}: "
                                           f"higher must mean better transfer ({task})")
            found[task] = tuple(values)
    assert found, "the score refused every task (multi-class, binary, multi-label)"
    return {**found, "per_image": splits}
