"""The shared fine-tuning loop (mednns.finetune.train_model): what it counts and when it evaluates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mednns.finetune import FinetuneConfig, FinetuneData, train_model
from mednns.testing import tiny_dataset


def small_net(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


def test_rows_count_target_side_image_macs_and_seconds_and_follow_eval_epochs(one_thread):
    dataset = tiny_dataset("t", n_classes=3)
    config = FinetuneConfig(epochs=4, batch_size=16, max_train_images=40, seed=1)
    data = FinetuneData.from_dataset(dataset, config)
    assert len(data.train_x) == 40
    result = train_model(small_net(3), data, config, progress=False, macs=1000, eval_epochs=[2])
    rows = result["history"]
    assert [r["epoch"] for r in rows] == [2, 4]  # the last epoch is always evaluated
    trained = 40 // 16 * 16  # whole batches only
    n_val = len(data.val_x)
    assert rows[0]["image_macs"] == 3 * 1000 * trained * 2 + 1000 * n_val
    assert rows[1]["image_macs"] == 3 * 1000 * trained * 4 + 2 * 1000 * n_val  # the test split is not counted
    assert 0 < rows[0]["target_seconds"] < rows[1]["target_seconds"] <= rows[1]["seconds"]
    assert {"val_bal_acc", "test_bal_acc"} <= set(rows[0])
    assert 0 <= rows[1]["test_bal_acc"] <= 1


def test_without_macs_every_epoch_is_a_row_and_no_macs_are_claimed(one_thread):
    dataset = tiny_dataset("t", n_classes=2)
    config = FinetuneConfig(epochs=2, batch_size=16, seed=0)
    result = train_model(small_net(2), FinetuneData.from_dataset(dataset, config), config, progress=False)
    assert [r["epoch"] for r in result["history"]] == [1, 2]
    assert all(r["image_macs"] is None for r in result["history"])
    assert result["best"]["val_acc"] == pytest.approx(max(r["val_acc"] for r in result["history"]))
