"""The shared fine-tuning loop (mednns.finetune.train_model): what it counts and when it evaluates."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mednns.errors import UsageError
from mednns.export import adapt_network, add_colour_kernels, is_colour_blind
from mednns.finetune import RECIPE_OFF, FinetuneConfig, FinetuneData, train_model
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


def bn_net(classes: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, classes))


def test_transfer_recipe_recalibrates_bn_then_trains_the_head_alone_and_counts_its_passes(one_thread):
    from mednns.supernets import recalibrate_bn

    dataset = tiny_dataset("t", n_classes=3)
    config = FinetuneConfig(epochs=3, batch_size=16, max_train_images=40, seed=1, recalibrate_bn=True,
                            head_epochs=1, body_lr_scale=0.5, fit_head=False)
    data = FinetuneData.from_dataset(dataset, config)
    model = bn_net(3)
    start = copy.deepcopy(model)
    expected_bn = copy.deepcopy(model)
    recalibrate_bn(expected_bn, [data.train_x[:16], data.train_x[16:32]])  # the run's whole batches
    after_probe = {}

    def first_epoch(m, row):
        if row["epoch"] == 1:
            after_probe.update({k: v.clone() for k, v in m.state_dict().items()})

    result = train_model(model, data, config, progress=False, macs=1000, on_best=first_epoch, pretrained=True,
                         eval_epochs=[1])
    assert after_probe, "epoch 1 is evaluated and is the first best"
    for name, value in start.state_dict().items():
        if name.startswith("5."):  # the head moved during the linear probe
            assert not torch.equal(after_probe[name], value)
        elif "running" in name:  # BN statistics are the target's, and stay so under the frozen body
            assert torch.allclose(after_probe[name], expected_bn.state_dict()[name], atol=1e-5)
        elif "num_batches" not in name:  # the body did not move
            assert torch.equal(after_probe[name], value), name
    trained, n_val = 32, len(data.val_x)
    assert config.image_passes(True) == 1 + 1 + 3 * 2  # recalibration, head-only epoch, two full epochs
    assert result["history"][-1]["image_macs"] == config.image_passes(True) * 1000 * trained + 2 * 1000 * n_val
    assert all(p.requires_grad for p in model.parameters())  # nothing stays frozen after the run


def test_the_recipe_applies_only_to_pretrained_starts_and_off_keeps_the_loop_and_its_run_keys(one_thread):
    dataset = tiny_dataset("t", n_classes=2)
    plain = FinetuneConfig(epochs=2, batch_size=16, seed=0, **RECIPE_OFF)
    recipe = FinetuneConfig(epochs=2, batch_size=16, seed=0, **{**RECIPE_OFF, "recalibrate_bn": True, "head_epochs": 1,
                                                                 "body_lr_scale": 0.1})
    data = FinetuneData.from_dataset(dataset, plain)
    scratch = [train_model(bn_net(2), data, c, progress=False)["history"] for c in (plain, recipe)]
    strip = [[{k: v for k, v in r.items() if "seconds" not in k} for r in h] for h in scratch]
    assert strip[0] == strip[1]  # from scratch the recipe changes nothing
    pretrained_plain = train_model(bn_net(2), data, plain, progress=False, pretrained=True)["history"]
    assert [{k: v for k, v in r.items() if "seconds" not in k} for r in pretrained_plain] == strip[0]
    assert plain.identity(True) == plain.identity(False) == {k: v for k, v in plain.to_dict().items()
                                                              if k != "seed" and k not in RECIPE_OFF}
    assert recipe.identity(False) == plain.identity(False)
    assert recipe.identity(True) == {**plain.identity(True), "recalibrate_bn": True, "head_epochs": 1,
                                     "body_lr_scale": 0.1}
    # the default recipe: BN re-estimated, the head solved with a cross-validated penalty
    default = FinetuneConfig(epochs=2, batch_size=16, seed=0)
    assert default.active_recipe() == {"recalibrate_bn": True, "fit_head": True, "fit_head_cv": True}
    assert default.identity(True) == {**plain.identity(True), **default.active_recipe()}
    assert default.identity(False) == plain.identity(False) and default.active_recipe(pretrained=False) == {}
    cv_alone = FinetuneConfig(**{**RECIPE_OFF, "fit_head_cv": True})  # without fit_head it does nothing
    assert cv_alone.recipe(True) == RECIPE_OFF
    assert cv_alone.identity(True) == FinetuneConfig(**RECIPE_OFF).identity(True)
    with pytest.raises(UsageError, match="head_epochs"):
        FinetuneConfig(epochs=2, head_epochs=2)
    with pytest.raises(UsageError, match="body_lr_scale"):
        FinetuneConfig(body_lr_scale=0)


def grey_source_on_rgb() -> nn.Module:
    """A 'grey source' network handed to a 3-channel target the way an export adapts it."""
    model = bn_net(2)
    adapt_network(model, in_channels=3)
    return model


def test_colour_kernels_keep_the_grey_response_and_add_a_seeded_colour_one():
    model = grey_source_on_rgb()
    stem = model[0]
    assert is_colour_blind(stem)
    before = copy.deepcopy(stem)
    torch.manual_seed(1)
    grey = torch.rand(5, 1, 8, 8).repeat(1, 3, 1, 1)  # R = G = B
    tinted = grey.clone()
    tinted[:, 0] += 0.5  # the same image, redder
    assert torch.allclose(before(tinted), before(grey + 0.5 / 3), atol=1e-5)  # blind: redder = a third brighter
    assert add_colour_kernels(model, torch.Generator().manual_seed(3))
    assert not is_colour_blind(stem)
    added = stem.weight - before.weight
    assert torch.allclose(added.sum(1), torch.zeros_like(added.sum(1)), atol=1e-6)  # zero over the channels
    bound = 1 / (3 * 3 * 3) ** 0.5
    assert added.abs().max() <= 2 * bound and added.abs().max() > 0.1 * bound  # a fresh conv's scale
    assert torch.allclose(stem(grey), before(grey), atol=1e-5)  # grey images: the inherited response
    assert not torch.allclose(stem(tinted), stem(grey + 0.5 / 3), atol=1e-3)  # colour now reaches the features
    again = grey_source_on_rgb()
    add_colour_kernels(again, torch.Generator().manual_seed(3))
    assert torch.equal(again[0].weight, stem.weight)  # seeded
    assert not add_colour_kernels(model, torch.Generator().manual_seed(3))  # no longer blind: left alone


def test_colour_kernels_leave_every_other_stem_alone():
    for model in (bn_net(2), nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), nn.Sequential(nn.Linear(3, 2))):
        state = copy.deepcopy(model.state_dict())
        assert not add_colour_kernels(model, torch.Generator().manual_seed(0))
        assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    adapted = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Flatten())
    adapt_network(adapted, in_channels=1)
    assert not add_colour_kernels(adapted, torch.Generator().manual_seed(0))  # an RGB source on a grey target


def test_colour_stem_is_part_of_the_recipe_applied_to_pretrained_starts_only(one_thread):
    dataset = tiny_dataset("t", n_classes=2, channels=3)
    config = FinetuneConfig(epochs=1, batch_size=16, seed=0, **{**RECIPE_OFF, "colour_stem": True})
    data = FinetuneData.from_dataset(dataset, config)
    scratch, pretrained = grey_source_on_rgb(), grey_source_on_rgb()
    train_model(scratch, data, config, progress=False)
    train_model(pretrained, data, config, progress=False, pretrained=True)
    assert not torch.equal(scratch[0].weight, pretrained[0].weight)  # the recipe's kernels: another run
    plain = FinetuneConfig(epochs=1, batch_size=16, seed=0, **RECIPE_OFF)
    assert config.identity(False) == plain.identity(False)
    assert config.identity(True) == {**plain.identity(True), "colour_stem": True}
    assert config.identity(True, colour_blind=False) == plain.identity(True)  # a start it would not change
    assert config.image_passes(True) == plain.image_passes(True)  # no forward pass: free


def probe_objective(features, labels, weight, bias, weight_decay):
    loss = torch.nn.functional.cross_entropy(features @ weight.T + bias, labels)
    return loss + weight_decay / 2 * weight.pow(2).sum()


def test_fit_head_solves_the_head_only_objective_as_plain_gradient_descent_does():
    from mednns.finetune.probe import fit_head, head_features

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(6, 3))
    images, labels = torch.randn(60, 1, 8, 8), torch.arange(60) % 3
    images[labels == 1] += 0.8  # the classes differ in brightness: the features tell them apart, roughly
    body = [p.clone() for p in model[0].parameters()]
    features = head_features(model, images, batch_size=16, device="cpu")
    assert features.shape == (60, 6)
    start_weight, start_bias = model[4].weight.detach().clone(), model[4].bias.detach().clone()
    facts = fit_head(model, images, labels, "multi-class", weight_decay=5e-3, batch_size=16)
    weight, bias = model[4].weight.detach(), model[4].bias.detach()
    assert all(torch.equal(a, b) for a, b in zip(body, model[0].parameters()))  # the body is untouched
    reached = float(probe_objective(features, labels, weight, bias, 5e-3))
    assert facts["loss_after"] == pytest.approx(reached, rel=1e-5)
    assert reached < facts["loss_before"] == pytest.approx(
        float(probe_objective(features, labels, start_weight, start_bias, 5e-3)), rel=1e-5)
    # the naive reference: full-batch gradient descent on the same convex objective, for long enough
    w, b = start_weight.clone().requires_grad_(True), start_bias.clone().requires_grad_(True)
    for _ in range(5_000):
        loss = probe_objective(features, labels, w, b, 5e-3)
        gw, gb = torch.autograd.grad(loss, (w, b))
        with torch.no_grad():
            w -= 0.5 * gw
            b -= 0.5 * gb
    assert reached == pytest.approx(float(probe_objective(features, labels, w, b, 5e-3).detach()), abs=1e-4)
    w_, b_ = weight.clone().requires_grad_(True), bias.clone().requires_grad_(True)
    grads = torch.autograd.grad(probe_objective(features, labels, w_, b_, 5e-3), (w_, b_))
    assert max(float(g.abs().max()) for g in grads) < 1e-4  # a minimum: no gradient left


def test_fit_head_is_part_of_the_recipe_and_counted_as_one_forward_pass(one_thread):
    from mednns.finetune.probe import fit_head, head_features
    from mednns.supernets import recalibrate_bn

    dataset = tiny_dataset("t", n_classes=3)
    config = FinetuneConfig(epochs=2, batch_size=16, max_train_images=40, seed=1, recalibrate_bn=True, fit_head=True,
                            fit_head_cv=False)
    plain = FinetuneConfig(epochs=2, batch_size=16, max_train_images=40, seed=1, recalibrate_bn=True, fit_head=False)
    data = FinetuneData.from_dataset(dataset, config)
    result = train_model(bn_net(3), data, config, progress=False, macs=1000, pretrained=True)
    trained, n_val = 32, len(data.val_x)
    assert config.image_passes(True) == 1 + 1 + 3 * 2  # recalibration, the probe's features, two full epochs
    assert result["history"][-1]["image_macs"] == config.image_passes(True) * 1000 * trained + 2 * 1000 * n_val
    without = train_model(bn_net(3), data, plain, progress=False, macs=1000, pretrained=True)
    assert result["history"][0]["train_loss"] != without["history"][0]["train_loss"]  # another start
    assert result["fit_head"]["penalty"] == config.weight_decay and "fit_head" not in without  # recorded
    assert result["fit_head"]["loss_after"] < result["fit_head"]["loss_before"]
    scratch = train_model(bn_net(3), data, config, progress=False, macs=1000)
    assert scratch["history"][-1]["image_macs"] == 3 * 2 * 1000 * trained + 2 * 1000 * n_val  # no recipe
    assert config.identity(True) == {**plain.identity(True), "fit_head": True}
    assert config.identity(False) == plain.identity(False)
    # the start it gives: lower training loss than the seeded random head, on the loop's whole batches
    start = bn_net(3)
    recalibrate_bn(start, [data.train_x[:16], data.train_x[16:32]])
    features = head_features(start, data.train_x[:32], batch_size=16, device="cpu")
    with torch.no_grad():
        random_loss = float(torch.nn.functional.cross_entropy(start[5](features), data.train_y[:32]))
        fit_head(start, data.train_x[:32], data.train_y[:32], "multi-class", weight_decay=config.weight_decay)
        assert float(torch.nn.functional.cross_entropy(start[5](features), data.train_y[:32])) < random_loss


def test_fit_head_cross_validation_picks_the_held_out_loss_minimum_of_its_penalties():
    from mednns.finetune.probe import FOLDS, fit_head, fold_assignment

    torch.manual_seed(1)
    features = torch.randn(40, 12) * 2  # the head's input as it is: the model only flattens
    labels = (features[:, 0] + 2.0 * torch.randn(40) > 0).long()  # one informative feature, noisy labels
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
    folds = fold_assignment(labels, FOLDS, seed=4)
    sizes = torch.bincount(folds, minlength=FOLDS)
    assert int(sizes.sum()) == 40 and int(sizes.max() - sizes.min()) <= 2  # dealt round-robin within each class
    assert all(set(labels[folds == f].tolist()) == {0, 1} for f in range(FOLDS))  # every fold sees both classes
    start_weight, start_bias = model[1].weight.detach().clone(), model[1].bias.detach().clone()
    facts = fit_head(model, features, labels, "binary", weight_decay=1e-3, cross_validate=True, seed=4)
    # the naive reference: every penalty, every fold, solved by plain gradient descent
    held_out = {}
    for penalty in (1e-3, 1e-2, 1e-1, 1.0, 10.0):
        losses = []
        for fold in range(FOLDS):
            fit, test = folds != fold, folds == fold
            w, b = start_weight.clone().requires_grad_(True), start_bias.clone().requires_grad_(True)
            for _ in range(2_000):
                gw, gb = torch.autograd.grad(probe_objective(features[fit], labels[fit], w, b, penalty), (w, b))
                with torch.no_grad():
                    w -= 0.05 * gw
                    b -= 0.05 * gb
            losses.append(float(torch.nn.functional.cross_entropy(features[test] @ w.T + b, labels[test]).detach()))
        held_out[penalty] = sum(losses) / len(losses)
    assert facts["penalty"] == pytest.approx(min(held_out, key=held_out.__getitem__))
    assert facts["penalty"] > 1e-3  # noisy labels: a head more regularized than the decay's generalizes better
    solved = probe_objective(features, labels, model[1].weight, model[1].bias, facts["penalty"])
    assert float(solved.detach()) == pytest.approx(facts["loss_after"], rel=1e-5)  # the final fit uses it
    with pytest.raises(UsageError, match="fit_head_cv") as error:
        FinetuneConfig(weight_decay=0.0)  # the default recipe has no penalties to choose from
    assert "weight_decay" in error.value.hint
    assert FinetuneConfig(weight_decay=0.0, fit_head_cv=False).recipe(True)["fit_head"]
