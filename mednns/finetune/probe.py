"""A linear probe solved before fine-tuning: the transfer recipe's ``fit_head``.

LP-FT (Kumar et al., ICLR 2022) trains the new head on frozen features to convergence before the
body moves, so that the first full steps do not push a random head's errors back into the
inherited features. The head-only epochs of the recipe approximate it with a few SGD steps and
cost whole epochs of the budget; :func:`fit_head` solves the same objective (the loss of the
head on the body's features plus the fine-tuning's weight decay, none on the bias) with L-BFGS on
features computed once; with ``cross_validate`` (the recipe's ``fit_head_cv``) the penalty is
chosen by held-out loss instead, so that a probe of a small training set does not start over-confident.
"""

from __future__ import annotations

import torch

from mednns.export import head_module
from mednns.metaspace.functional import capture_head_input
from mednns.training.losses import supervised_loss

#: Folds of ``fit_head(cross_validate=True)`` (fewer for fewer images).
FOLDS = 5


def head_features(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int, device: str | torch.device,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The inputs of ``model``'s classifier (the head the fine-tuning trains:
    :func:`~mednns.export.head_module`) for ``images`` (eval mode, no gradients), float32 ``(N, F)``."""
    model.eval()
    with torch.no_grad(), capture_head_input(model) as captured:
        for chunk in images.split(batch_size):
            model(chunk.to(device).contiguous(memory_format=memory_format))
    return torch.cat(captured).float()


def fit_head(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, task: str, *,
             weight_decay: float, label_smoothing: float = 0.0, batch_size: int = 256,
             device: str | torch.device = "cpu", memory_format: torch.memory_format = torch.contiguous_format,
             max_iter: int = 500, cross_validate: bool = False, seed: int = 0) -> dict[str, float]:
    """Replace the classifier's weights of ``model`` by the minimum of the head-only objective.

    :param images: :param labels: the target's training images and labels (as the loop feeds them).
    :param weight_decay: on the weights, as the fine-tuning's SGD applies it (``wd/2 * ||W||^2``).
    :param cross_validate: choose the penalty instead from ``weight_decay`` times 1, 10, ..., 10^4
        by the mean held-out loss of :data:`FOLDS` folds of the images (seeded by ``seed``): the
        least confident head that still fits, where the fine-tuning's decay lets a head memorize
        a small training set.
    :returns: ``{"loss_before", "loss_after", "iterations", "penalty"}`` of the objective.
    """
    _, head = head_module(model)
    features = head_features(model, images, batch_size=batch_size, device=device, memory_format=memory_format)
    target = labels.to(features.device)
    loss_fn = supervised_loss(task, label_smoothing)
    start = (head.weight.detach().float(), head.bias.detach().float() if head.bias is not None else None)
    penalty = weight_decay
    if cross_validate:
        k = min(FOLDS, len(target))
        folds = fold_assignment(target, k, seed)
        held_out = {}
        for scale in (1, 10, 100, 1_000, 10_000):
            losses = []
            for fold in range(k):
                fit, test = folds != fold, folds == fold
                w, b, _ = _solve(features[fit], target[fit], loss_fn, weight_decay * scale, start, max_iter)
                with torch.no_grad():
                    losses.append(float(loss_fn(features[test] @ w.T + b, target[test])))
            held_out[weight_decay * scale] = sum(losses) / len(losses)
        penalty = min(held_out, key=held_out.__getitem__)
    weight, bias, facts = _solve(features, target, loss_fn, penalty, start, max_iter)
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
    return {**facts, "penalty": penalty}


def fold_assignment(labels: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """Each image's fold in ``range(k)``, dealt round-robin within each label (each label
    pattern for multi-label targets) in a seeded order, so that every fold sees every class."""
    generator = torch.Generator().manual_seed(seed)
    keys = labels.reshape(len(labels), -1).cpu()
    folds = torch.empty(len(labels), dtype=torch.long)
    for pattern in torch.unique(keys, dim=0):
        members = torch.nonzero((keys == pattern).all(dim=1)).flatten()
        members = members[torch.randperm(len(members), generator=generator)]
        folds[members] = torch.arange(len(members)) % k
    return folds.to(labels.device)


def _solve(features: torch.Tensor, target: torch.Tensor, loss_fn: torch.nn.Module, penalty: float,
           start: tuple[torch.Tensor, torch.Tensor | None], max_iter: int
           ) -> tuple[torch.Tensor, torch.Tensor, dict[str, float]]:
    """The head ``(weight, bias)`` minimizing ``loss + penalty/2 * ||weight||^2`` (L-BFGS from ``start``;
    a head without a bias keeps a zero one)."""
    weight = start[0].clone().to(features.device).requires_grad_(True)
    fixed = start[1] is None
    bias = (torch.zeros(len(weight)) if start[1] is None else start[1].clone()).to(features.device)
    bias.requires_grad_(not fixed)

    def objective() -> torch.Tensor:
        return loss_fn(features @ weight.T + bias, target) + penalty / 2 * weight.pow(2).sum()

    optimizer = torch.optim.LBFGS([weight] if fixed else [weight, bias], lr=1.0, max_iter=max_iter,
                                  tolerance_grad=1e-6, tolerance_change=1e-9, history_size=20,
                                  line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = objective()
        loss.backward()
        return loss

    with torch.no_grad():
        before = float(objective())
    optimizer.step(closure)
    with torch.no_grad():
        after = float(objective())
    facts = {"loss_before": before, "loss_after": after, "iterations": float(optimizer.state[weight]["n_iter"])}
    return weight.detach(), bias.detach(), facts
