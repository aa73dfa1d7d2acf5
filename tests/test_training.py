"""Supernet training (mednns.training): losses, phases, the sandwich step, data, checkpoints, resume."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mednns.data import Task
from mednns.errors import UsageError
from mednns.training import (
    Augmentation,
    DistillationLoss,
    SupernetTrainer,
    TrainConfig,
    TrainingData,
    evaluate,
    load_checkpoint,
    load_supernet,
    phase_smallest,
    plan_phases,
    random_crop,
    read_metrics_csv,
    sandwich_step,
    save_checkpoint,
    supervised_loss,
)
from mednns.training.checkpoint import capture_rng_state, restore_rng_state
from supernet_helpers import CountingDataset, make_manager, tiny_dataset, tiny_mobilenet, tiny_resnet

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(**overrides) -> TrainConfig:
    values = dict(full_epochs=1, shrink_epochs=1, batch_size=16, num_random=1, calibration_images=32,
                  calibration_batch_size=16, eval_batch_size=64, final_samples=5, progress=False, full_lr=0.05,
                  shrink_lr=0.02)
    values.update(overrides)
    return TrainConfig(**values)


def new_space(seed: int = 0, factory=tiny_resnet, **kwargs):
    torch.manual_seed(seed)
    return factory(**kwargs)


# -- losses ------------------------------------------------------------------------
def test_single_label_loss_is_label_smoothed_cross_entropy():
    logits, target = torch.randn(6, 4, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 3, 0, 1])
    smoothed = supervised_loss(Task.MULTI_CLASS, 0.1)(logits, target)
    assert torch.allclose(smoothed, F.cross_entropy(logits, target, label_smoothing=0.1), atol=1e-6)
    plain = supervised_loss("binary", 0.0)(logits[:, :2], target % 2)
    assert torch.allclose(plain, F.cross_entropy(logits[:, :2], target % 2))


def test_multi_label_loss_keeps_multi_hot_targets():
    logits = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([[1, 1, 0], [0, 1, 1], [1, 0, 1], [0, 0, 0], [1, 1, 1]], dtype=torch.float32)
    loss = supervised_loss(Task.MULTI_LABEL, 0.0)(logits, target)
    assert torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, target))
    # an argmax reduction of the targets would give another value
    argmaxed = F.one_hot(target.argmax(1), 3).float()
    assert not torch.allclose(loss, F.binary_cross_entropy_with_logits(logits, argmaxed))
    smoothed = supervised_loss(Task.MULTI_LABEL, 0.2)(logits, target)
    assert torch.allclose(smoothed, F.binary_cross_entropy_with_logits(logits, target * 0.8 + 0.1))


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_kd_gradient_points_from_student_to_teacher_softmax(temperature):
    g = torch.Generator().manual_seed(2)
    student = torch.randn(4, 5, generator=g, requires_grad=True)
    teacher = torch.randn(4, 5, generator=g, requires_grad=True)
    loss = DistillationLoss(Task.MULTI_CLASS, temperature)(student, teacher)
    loss.backward()
    t = temperature
    expected = t * (torch.softmax(student / t, -1) - torch.softmax(teacher / t, -1)) / 4
    assert torch.allclose(student.grad, expected.detach(), atol=1e-6)
    assert teacher.grad is None  # the teacher is detached
    # a small step against the gradient brings the student's distribution closer to the teacher's
    def kl(s):
        return F.kl_div(F.log_softmax(s, -1), F.softmax(teacher.detach(), -1), reduction="batchmean")
    assert kl(student.detach() - 0.5 * student.grad) < kl(student.detach())


def test_multi_label_kd_is_bce_against_sigmoid_teacher():
    g = torch.Generator().manual_seed(3)
    student = torch.randn(4, 3, generator=g, requires_grad=True)
    teacher = torch.randn(4, 3, generator=g)
    DistillationLoss(Task.MULTI_LABEL)(student, teacher).backward()
    expected = (torch.sigmoid(student) - torch.sigmoid(teacher)) / student.numel()
    assert torch.allclose(student.grad, expected.detach(), atol=1e-7)
    same = torch.randn(4, 3, generator=g)
    zero = torch.zeros(4, 3, requires_grad=True)
    DistillationLoss(Task.MULTI_LABEL)(zero + same, same).backward()
    assert zero.grad.abs().max() < 1e-7  # student equal to teacher: no gradient


# -- phases ------------------------------------------------------------------------
def test_phase_plan_releases_dimensions_cumulatively_in_order():
    config = TrainConfig(full_epochs=3, shrink_epochs=2, full_lr=0.1, shrink_lr=0.02,
                         phases={"expand": {"epochs": 0}, "width": {"lr": 0.005, "epochs": 4}})
    phases = plan_phases(("depth", "expand", "width"), config)
    assert [(p.name, p.released, p.epochs, p.lr, p.sort_channels) for p in phases] == [
        ("full", (), 3, 0.1, False),
        ("depth", ("depth",), 2, 0.02, False),
        ("expand", ("depth", "expand"), 0, 0.02, True),
        ("width", ("depth", "expand", "width"), 4, 0.005, True),
    ]
    mobile = plan_phases(("kernel", "depth", "expand"), TrainConfig())
    assert [p.released for p in mobile[1:]] == [("kernel",), ("kernel", "depth"), ("kernel", "depth", "expand")]
    assert [p.sort_channels for p in mobile] == [False, False, False, True]
    with pytest.raises(UsageError, match="unknown phase.*kernal"):
        plan_phases(("kernel",), TrainConfig(phases={"kernal": {"epochs": 1}}))
    with pytest.raises(UsageError, match="batch_size must be >= 1.*unknown key"):
        TrainConfig(batch_size=0, phases={"depth": {"epoch": 1}})


def test_phase_smallest_shrinks_only_released_dimensions():
    space = tiny_resnet()
    assert phase_smallest(space, ()) == space.largest()
    assert phase_smallest(space, space.dimensions) == space.smallest()
    depth_only = phase_smallest(space, ("depth",))
    assert depth_only["depth"] == space.smallest()["depth"]
    assert depth_only["width"] == space.largest()["width"]
    assert depth_only["expand"] == [1.0, None, 1.0, None]
    mobile = tiny_mobilenet()
    kernel_only = phase_smallest(mobile, ("kernel",))  # smallest kernels on every (largest-depth) block
    assert kernel_only == {"kernel": [3, 3, 3, 3], "expand": [4, 4, 4, 4], "depth": [2, 2]}


# -- the sandwich step ---------------------------------------------------------------
def test_sandwich_step_accumulates_the_gradients_of_every_subnet():
    space = new_space(0)
    space.train()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(8, 1, 12, 12, generator=g), torch.randint(0, 3, (8,), generator=g)
    rng = random.Random(0)
    others = [space.smallest(), space.sample(rng), space.sample(rng)]
    supervised, distill = supervised_loss(Task.MULTI_CLASS, 0.1), DistillationLoss(Task.MULTI_CLASS, 2.0)
    losses = sandwich_step(space, x, y, largest=space.largest(), others=others, supervised=supervised,
                           distill=distill, kd_weight=1.0, label_weight=0.5)
    accumulated = {n: p.grad.clone() for n, p in space.named_parameters() if p.grad is not None}
    assert losses.subnets == 4 and math.isfinite(losses.kd)

    # manual: each subnet's loss differentiated on its own, then summed
    params = dict(space.named_parameters())
    manual: dict[str, torch.Tensor] = {}
    space.set_active(space.largest())
    teacher = space(x)
    total_terms = [supervised(teacher, y)]
    for arch in others:
        space.set_active(arch)
        student = space(x)
        total_terms.append(distill(student, teacher.detach()) + 0.5 * supervised(student, y))
    for term in total_terms:
        grads = torch.autograd.grad(term, list(params.values()), allow_unused=True, retain_graph=True)
        for (name, _), grad in zip(params.items(), grads):
            if grad is not None:
                manual[name] = manual[name] + grad if name in manual else grad
    assert set(accumulated) == set(manual)
    for name, grad in accumulated.items():
        assert torch.allclose(grad, manual[name], atol=1e-5, rtol=1e-4), name
    # the smallest subnet's loss matters: without it the gradient differs
    assert not torch.allclose(accumulated["classifier.weight"], torch.autograd.grad(
        total_terms[0], params["classifier.weight"], retain_graph=True)[0])


# -- data and augmentation -----------------------------------------------------------
def test_batch_order_is_sharded_by_rank_and_calibration_is_fixed():
    dataset = tiny_dataset(sizes=(96, 16, 16))
    shards = [TrainingData(dataset, channels=None, seed=5, batch_size=16, rank=r, world_size=2,
                           calibration_images=40, calibration_batch_size=16) for r in range(2)]
    orders = [s.epoch_order("depth", 3) for s in shards]
    assert orders[0].shape == orders[1].shape == (3, 16)
    assert set(orders[0].flatten().tolist()).isdisjoint(orders[1].flatten().tolist())
    assert torch.equal(orders[0], shards[0].epoch_order("depth", 3))  # reproducible
    assert not torch.equal(orders[0], shards[0].epoch_order("depth", 4))  # a new order each epoch
    assert [len(b) for b in shards[0].calibration] == [16, 16]  # whole equal-size batches
    assert torch.equal(torch.cat(shards[0].calibration), torch.cat(shards[1].calibration))
    capped = TrainingData(dataset, channels=3, seed=5, batch_size=16, max_train_images=50)
    assert capped.train_x.shape == (50, 3, 12, 12) and capped.steps_per_epoch == 3


def test_min_steps_per_epoch_makes_more_than_one_pass_over_a_small_training_set():
    dataset = tiny_dataset(sizes=(40, 16, 16))
    plain = TrainingData(dataset, channels=None, seed=5, batch_size=16)
    longer = TrainingData(dataset, channels=None, seed=5, batch_size=16, min_steps_per_epoch=5)
    assert plain.steps_per_epoch == 2 and longer.steps_per_epoch == 5
    order = longer.epoch_order("full", 1)
    assert order.shape == (5, 16)
    assert torch.equal(order[:2], plain.epoch_order("full", 1))  # the first pass is the plain epoch's
    passes = order.flatten().split(32)  # two whole batches per pass over 40 images
    assert all(len(set(p.tolist())) == len(p) for p in passes)  # each pass draws an image at most once
    assert not torch.equal(passes[0], passes[1])  # and each pass is a fresh permutation
    big = TrainingData(tiny_dataset(sizes=(96, 16, 16)), channels=None, seed=5, batch_size=16, min_steps_per_epoch=2)
    assert big.steps_per_epoch == 6  # a large set keeps its own epoch


def test_random_crop_shifts_each_image_reproducibly():
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    a = random_crop(x, 2, torch.Generator().manual_seed(0))
    b = random_crop(x, 2, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.shape == x.shape
    for image, original in zip(a, x):  # every non-zero pixel comes from the original image, shifted
        values = image[image != 0]
        assert set(values.tolist()) <= set(original.flatten().tolist())
    assert not Augmentation().enabled and not TrainConfig().hflip


# -- training ----------------------------------------------------------------------
def test_training_phases_release_dimensions_sort_channels_and_use_only_val(tmp_path):
    dataset = CountingDataset(tiny_dataset())
    space = new_space(1)
    trainer = SupernetTrainer(space, dataset, tmp_path, tiny_config(num_random=2), space_name="ofa_resnet", seed=3)
    sorted_at, sampled = [], []
    original_sort, original_sample = space.sort_channels, space.sample
    space.sort_channels = lambda *a, **k: (sorted_at.append(len(trainer.progress.history)), original_sort(*a, **k))
    space.sample = lambda rng=None, dimensions=None: (sampled.append(tuple(dimensions)),
                                                      original_sample(rng, dimensions))[1]
    trainer.train()
    assert "test" not in dataset.accesses and {"train", "val"} <= set(dataset.accesses)
    assert sorted_at == [2, 3]  # before the expand phase (after full + depth) and before the width phase
    steps = trainer.data.steps_per_epoch
    assert sampled == [("depth",)] * 2 * steps + [("depth", "expand")] * 2 * steps + [space.dimensions] * 2 * steps
    rows = read_metrics_csv(tmp_path / "metrics.csv")
    assert [r["phase"] for r in rows] == ["full", "depth", "expand", "width"]
    assert [int(r["step"]) for r in rows] == [steps, 2 * steps, 3 * steps, 4 * steps]
    assert rows[0]["train_kd"] == "" and float(rows[1]["train_kd"]) > 0
    assert all(0 <= float(r["val_acc_largest"]) <= 1 and float(r["seconds"]) > 0 for r in rows)

    del space.sample, space.sort_channels
    final = trainer.finalize()
    assert dataset.accesses.count("test") == 1 and dataset.accesses[-1] == "test"
    assert final["split"] == "test" and set(final["test"]) == {"largest", "median", "smallest"}
    params = [final["test"][k]["params"] for k in ("smallest", "median", "largest")]
    assert params[0] <= params[1] <= params[2] and params[0] < params[2]
    assert json.loads((tmp_path / "final.json").read_text()) == final


def test_training_counts_the_image_macs_it_spends(tmp_path):
    dataset = tiny_dataset()
    space = new_space(1)
    trainer = SupernetTrainer(space, dataset, tmp_path, tiny_config(full_epochs=2, shrink_epochs=0),
                              space_name="ofa_resnet", seed=0)
    trainer.train()
    largest = space.cost(space.largest(), dataset.info.image_size)["macs"]
    data = trainer.data
    trained = 2 * data.steps_per_epoch * 16  # two epochs of whole batches, largest network only
    validated = 2 * (sum(len(b) for b in data.calibration) + len(data.val_x))  # once per epoch, after calibration
    assert trainer.progress.image_macs == 3 * largest * trained + largest * validated
    assert trainer.finalize()["train_image_macs"] == trainer.progress.image_macs


def test_multi_label_training_keeps_targets_multi_hot(tmp_path):
    dataset = tiny_dataset(multilabel=True, n_classes=4)
    trainer = SupernetTrainer(new_space(2, num_classes=4), dataset, tmp_path,
                              tiny_config(phases={"expand": {"epochs": 0}, "width": {"epochs": 0}}),
                              space_name="ofa_resnet", seed=0)
    assert trainer.data.train_y.shape == (96, 4) and trainer.data.train_y.dtype == torch.float32
    final = trainer.fit()
    assert trainer.data.train_y.sum(1).max() > 1  # several labels per image, never reduced
    assert 0 <= final["test"]["largest"]["acc"] <= 1 and final["test"]["largest"]["loss"] > 0


def test_checkpoint_round_trip_and_latest_pointer(tmp_path):
    space = new_space(3)
    random.seed(11)
    np.random.seed(11)
    torch.manual_seed(11)
    rng = capture_rng_state()
    save_checkpoint(tmp_path, "a", space, {"phase": "full"}, {"rng": rng, "progress": {"step": 1}})
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    with torch.no_grad():
        for p in space.parameters():
            p.add_(1.0)
    save_checkpoint(tmp_path, "b", space, {"phase": "depth"}, {"rng": rng, "progress": {"step": 2}})
    save_checkpoint(tmp_path, "c", space, {"phase": "depth"}, {"rng": rng, "progress": {"step": 2}})
    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["b.json", "b.safetensors", "b.state.pt", "c.json", "c.safetensors", "c.state.pt",
                     "latest.json"]  # the two newest tags are kept, the oldest is gone
    (tmp_path / "checkpoints" / "c.safetensors").write_bytes(b"\0" * 10)  # damaged: the one before it is read
    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.tag == "b" and checkpoint.metadata == {"phase": "depth"}
    assert checkpoint.state["progress"] == {"step": 2}
    restore_rng_state(checkpoint.state["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected
    other = new_space(4)
    from mednns.training import load_weights
    load_weights(other, checkpoint.weights)
    for (name, a), b in zip(space.state_dict().items(), other.state_dict().values()):
        assert torch.equal(a, b), name
    assert load_checkpoint(tmp_path / "nothing") is None


def test_damaged_checkpoints_fall_back_and_are_named(tmp_path, mednns_logs):
    import logging

    from mednns.errors import UsageError

    space = new_space(3)
    for tag in ("a", "b"):
        save_checkpoint(tmp_path, tag, space, {"phase": tag}, {"progress": {"tag": tag}})
    folder = tmp_path / "checkpoints"
    (folder / "b.state.pt").write_bytes(b"truncated")
    with mednns_logs.at_level(logging.WARNING, logger="mednns.training"):
        assert load_checkpoint(tmp_path).tag == "a"
    assert "checkpoint b" in mednns_logs.text and "b.state.pt is not readable" in mednns_logs.text
    (folder / "latest.json").write_text('{"tag": ')  # the pointer itself truncated: the folder is scanned
    assert load_checkpoint(tmp_path).tag == "a"
    (folder / "a.json").write_text("{")
    with pytest.raises(UsageError, match=r"no readable checkpoint in .*a: .*a.json is damaged") as error:
        load_checkpoint(tmp_path)
    assert "--restart" in error.value.hint


def run_training(directory, stop_after: int | None = None, **overrides):
    """Train a tiny supernet; with ``stop_after=k`` raise after the k-th checkpoint (a simulated kill)."""
    config = tiny_config(full_epochs=2, shrink_epochs=1, phases={"expand": {"epochs": 2}}, **overrides)
    events = []

    def on_checkpoint(event):
        events.append(event)
        if stop_after is not None and len(events) == stop_after:
            raise KeyboardInterrupt("simulated kill")

    torch.manual_seed(0)  # the model's initial weights; everything else derives from the seed
    trainer = SupernetTrainer(new_space(0), tiny_dataset(), directory, config, space_name="ofa_resnet", seed=7,
                              on_checkpoint=on_checkpoint)
    trainer.train()
    return trainer, events


@pytest.mark.parametrize("stop_after,every", [(2, None), (3, 4)], ids=["end-of-epoch", "mid-epoch"])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, stop_after, every):
    straight, _ = run_training(tmp_path / "straight")
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path / "resumed", stop_after=stop_after, checkpoint_every_steps=every)
    stopped_at = load_checkpoint(tmp_path / "resumed").metadata
    assert stopped_at["end_of_epoch"] is (every is None)
    resumed, events = run_training(tmp_path / "resumed", checkpoint_every_steps=every)
    assert events[0].global_step > stopped_at["global_step"]  # continued, did not restart
    expected, actual = straight.space.state_dict(), resumed.space.state_dict()
    assert list(expected) == list(actual)
    for name in expected:
        assert torch.equal(expected[name], actual[name]), name
    def measured(trainer):  # everything but the timings (NaN written alike by json)
        return json.dumps([{k: v for k, v in row.items() if k != "seconds"} for row in trainer.progress.history])

    assert len(straight.progress.history) == 6 and measured(resumed) == measured(straight)


def test_resume_refuses_a_checkpoint_of_another_configuration(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path, stop_after=1)
    with pytest.raises(UsageError, match="changed: training.batch_size"):
        run_training(tmp_path, batch_size=8)
    run_training(tmp_path, stop_after=None, progress=True)  # progress does not change results: resumes


def test_load_supernet_rebuilds_the_space_and_extract_works(tmp_path):
    trainer = SupernetTrainer(new_space(5), tiny_dataset(), tmp_path,
                              tiny_config(shrink_epochs=0, phases={"width": {"epochs": 1}}),
                              space_name="ofa_resnet", seed=1)
    final = trainer.fit()
    space, metadata = load_supernet(tmp_path, manager=make_manager())
    assert metadata["dataset"]["name"] == "tiny" and metadata["space"]["name"] == "ofa_resnet"
    assert metadata["training"]["full_epochs"] == 1 and metadata["mednns_version"]
    for name, value in trainer.space.state_dict().items():
        assert torch.equal(value, space.state_dict()[name]), name
    x = trainer.data.val_x[:8]
    arch = space.smallest()
    net = space.extract(arch).eval()
    space.set_active(arch)
    with torch.no_grad():
        assert torch.allclose(net(x), space.eval()(x), atol=1e-5)
    again = evaluate(space, arch, trainer.data.calibration, *trainer.data.test(), "multi-class")
    assert again["acc"] == pytest.approx(final["test"]["smallest"]["acc"])
    assert trainer.fit() == final  # complete: not trained again


def test_channels_last_training_matches_the_default_layout_closely(tmp_path):
    results = {}
    for channels_last in (False, True):
        config = tiny_config(channels_last=channels_last, phases={"expand": {"epochs": 0}, "width": {"epochs": 0}})
        trainer = SupernetTrainer(new_space(6), tiny_dataset(), tmp_path / str(channels_last), config,
                                  space_name="ofa_resnet", seed=2)
        trainer.train()
        results[channels_last] = trainer.progress.history
    for a, b in zip(results[False], results[True]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-3)
        assert a["val_loss_largest"] == pytest.approx(b["val_loss_largest"], rel=1e-3)


def _ddp_worker(rank: int, world_size: int, folder: str) -> None:
    """One process of a 2-process (gloo) training; saves its parameters and history for the parent."""
    from pathlib import Path

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{folder}/store", rank=rank, world_size=world_size)
    try:
        config = tiny_config(phases={"expand": {"epochs": 0}, "width": {"epochs": 0}})
        trainer = SupernetTrainer(new_space(0), tiny_dataset(), Path(folder) / f"out{rank}", config,
                                  space_name="ofa_resnet", seed=4, rank=rank, world_size=world_size)
        trainer.train()
        params = {n: p.detach().clone() for n, p in trainer.space.named_parameters()}
        torch.save({"params": params, "history": [{k: v for k, v in r.items() if k != "seconds"}
                                                  for r in trainer.progress.history],
                    "steps": trainer.data.steps_per_epoch}, Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_gradients_and_only_rank_0_writes(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 3  # 96 images / 2 ranks / 16 per batch
    for name, value in ranks[0]["params"].items():
        assert torch.equal(value, ranks[1]["params"][name]), name  # averaged gradients, same updates
    assert json.dumps(ranks[0]["history"]) == json.dumps(ranks[1]["history"])
    assert (tmp_path / "out0" / "metrics.csv").exists() and not (tmp_path / "out1").exists()


def test_a_space_names_the_dimensions_whose_release_sorts_channels_first():
    from mednns.training.config import plan_phases

    phases = plan_phases(("depth", "heads", "expand"), TrainConfig(), channel_dimensions=("heads",))
    assert [(p.name, p.sort_channels) for p in phases] == [("full", False), ("depth", False), ("heads", True),
                                                            ("expand", False)]
    default = plan_phases(("depth", "expand", "width"), TrainConfig())
    assert [p.sort_channels for p in default] == [False, False, True, True]
