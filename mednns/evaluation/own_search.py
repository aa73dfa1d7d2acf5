"""The own-supernet search baseline, on the labelled images its run may use.

A NAS from scratch on the target: a supernet of the target's search space trained the way the run
trains its supernets, but only on the training subset of one (seed, condition) -- the same images
every other method fine-tunes on, never the target's whole training set -- then a random search over
``budget`` of its subnets (BN recalibrated on that subset, ranked by validation ACC). Everything it
does is target-side compute: the supernet's training and the search.

The subset is the fine-tuning one by construction: supernet training and fine-tuning draw a
``max_train_images`` subset with the same rule (:class:`mednns.training.TrainingData`,
:class:`mednns.finetune.FinetuneData`), and the supernet is trained with the fine-tuning seed.
:func:`search_own_supernet` checks it.

With ``init``, the same search starts from a retrieved source supernet instead of a random
initialization (mednns's ``mednns_search``: retrieval as the initialization of a search): every tensor
of the source whose shape matches is copied, a first convolution is converted between 1 and 3 input
channels, and what differs (the classifier, for the target's classes) keeps its fresh initialization.

Files of one search, under ``<fold>/own_search/<subset digest>/`` (``warm_search/<digest>-<source>/``
with ``init``): ``supernet/`` (a ``train_supernet`` folder: resumable, the final weights) and
``search.json`` (every subnet's validation ACC, the winner, the compute).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from mednns.data.tensors import tensor_digest
from mednns.errors import UsageError
from mednns.files import read_json, write_json

if TYPE_CHECKING:
    from mednns.registry import ComponentSource

SEARCH_FILE = "search.json"


@torch.no_grad()
def warm_start(space: torch.nn.Module, source: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy the ``source`` supernet's weights into ``space`` where they fit: equal names and shapes,
    or a convolution weight that differs only in 1 <-> 3 input channels (summed, or repeated / 3, as
    an export adapts a stem). Returns the names ``copied``, ``converted`` and ``kept`` (left as
    initialized, e.g. the classifier of another number of classes)."""
    done: dict[str, list[str]] = {"copied": [], "converted": [], "kept": []}
    for name, tensor in space.state_dict().items():
        given = source.get(name)
        if given is not None and given.shape == tensor.shape:
            tensor.copy_(given)
            done["copied"].append(name)
        elif (given is not None and given.ndim == 4 and given.shape[0] == tensor.shape[0]
              and given.shape[2:] == tensor.shape[2:] and {given.shape[1], tensor.shape[1]} == {1, 3}):
            tensor.copy_(given.sum(1, keepdim=True) if tensor.shape[1] == 1 else given.repeat(1, 3, 1, 1) / 3)
            done["converted"].append(name)
        else:
            done["kept"].append(name)
    return done


def search_own_supernet(template: str | Path, dataset: Any, directory: str | Path, *, seed: int,
                        train_images: int | None, subset_digest: str, archs: list[str],
                        load: Callable[[str], tuple[Any, dict[str, Any]]], manager: ComponentSource,
                        device: str = "cpu", progress: bool = False, init: str | None = None) -> dict[str, Any]:
    """Train the target's own supernet on one fine-tuning subset and search it (or read the saved search).

    :param template: the run's trained supernet of the target: its space and training settings are
        reused (``max_train_images`` becomes ``train_images``), never its weights.
    :param dataset: the target. :param directory: this search's folder.
    :param seed: the fine-tuning seed of the run (it draws the subset).
    :param train_images: the condition's training images (``None``: all).
    :param subset_digest: the digest of the fine-tuning subset (:func:`mednns.data.tensor_digest`);
        the supernet's training subset must match it.
    :param archs: the subnets to compare (architecture JSON), in order.
    :param load: loads a trained supernet folder (``(space, metadata)``; a cache).
    :param init: a trained supernet folder of the same space to start from (:func:`warm_start`);
        ``None``: a random initialization.
    :returns: ``search.json``: ``best`` (``arch``, ``val_acc``), ``evaluated``, ``subnets``,
        ``supernet`` (folder) and ``spent`` (``supernet_training`` and ``search`` phases:
        seconds and image-MACs).
    """
    from mednns.training import SUPERNET_METADATA, SUPERNET_WEIGHTS, SupernetTrainer, TrainConfig, evaluate

    directory = Path(directory)
    saved = directory / SEARCH_FILE
    if saved.is_file():
        return read_json(saved)
    if not archs:
        raise UsageError("the own-supernet search has no subnet to compare (search_budget or the zoo is empty)")
    metadata = read_json(Path(template) / SUPERNET_METADATA)
    spec = metadata["space"]
    config = TrainConfig.from_dict({**metadata["training"], "max_train_images": train_images, "progress": progress})
    torch.manual_seed(seed)
    space = manager.create("search-spaces", spec["name"], **spec.get("args", {}))
    started: dict[str, Any] = {}
    if init is not None:
        from mednns.training import read_weights

        source = read_json(Path(init) / SUPERNET_METADATA)
        if source["space"]["name"] != spec["name"]:
            raise UsageError(f"cannot start a {spec['name']} supernet from {init}, a {source['space']['name']} one")
        done = warm_start(space, read_weights(Path(init) / SUPERNET_WEIGHTS))
        started = {"init": str(init), "source": source["dataset"]["name"],
                   **{k: len(v) for k, v in done.items()}, "kept_names": done["kept"]}
    folder = directory / "supernet"
    trainer = SupernetTrainer(space, dataset, folder, config, space_name=spec["name"], seed=seed, device=device)
    data = trainer.data
    if tensor_digest(data.train_x, data.train_y) != subset_digest:
        raise RuntimeError(f"{dataset.info.name}: the own supernet's training subset is not the fine-tuning "
                           f"subset {subset_digest} (the two subset rules diverged)")
    final = trainer.fit()

    trained, _ = load(str(folder))
    input_size = dataset.info.image_size
    calibration = sum(len(b) for b in data.calibration)
    start, image_macs, subnets = time.perf_counter(), 0, []
    for arch_json in archs:
        arch = trained.arch_from_json(arch_json)
        metrics = evaluate(trained, arch, data.calibration, data.val_x, data.val_y, dataset.info.task,
                           config.eval_batch_size, device=device)
        macs = int(trained.cost(arch, input_size)["macs"])
        image_macs += macs * (calibration + metrics["n"])
        subnets.append({"arch": arch_json, "val_acc": metrics["acc"], "macs": macs})
    seconds = time.perf_counter() - start
    best = max(subnets, key=lambda s: s["val_acc"])
    result = {"supernet": str(folder), "train_images": len(data.train_x), "subset": subset_digest, **started,
              "evaluated": len(subnets), "best": best, "subnets": subnets,
              "spent": {"supernet_training": {"seconds": final["train_seconds"],
                                              "image_macs": final["train_image_macs"]},
                        "search": {"seconds": round(seconds, 3), "image_macs": int(image_macs)}}}
    write_json(saved, result)
    return result
