"""A linear probe solved before fine-tuning: the transfer recipe's ``fit_head``.

LP-FT (Kumar et al., ICLR 2022) trains the new head on frozen features to convergence before the
body moves, so that the first full steps do not push a random head's errors back into the
inherited features. The head-only epochs of the recipe approximate it with a few SGD steps and
cost whole epochs of the budget; :func:`fit_head` solves the same objective (the loss of the
head on the body's features plus the fine-tuning's weight decay, none on the bias) with L-BFGS on
features computed once.
"""

from __future__ import annotations

import torch

from mednns.export import head_module
from mednns.training.losses import supervised_loss


def head_features(model: torch.nn.Module, images: torch.Tensor, *, batch_size: int, device: str | torch.device,
                  memory_format: torch.memory_format = torch.contiguous_format) -> torch.Tensor:
    """The inputs of ``model``'s classifier for ``images`` (eval mode, no gradients), float32 ``(N, F)``."""
    _, head = head_module(model)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0].detach().flatten(1)))
    model.eval()
    try:
        with torch.no_grad():
            for chunk in images.split(batch_size):
                model(chunk.to(device).contiguous(memory_format=memory_format))
    finally:
        handle.remove()
    return torch.cat(captured).float()


def fit_head(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, task: str, *,
             weight_decay: float, label_smoothing: float = 0.0, batch_size: int = 256,
             device: str | torch.device = "cpu", memory_format: torch.memory_format = torch.contiguous_format,
             max_iter: int = 500) -> dict[str, float]:
    """Replace the classifier's weights of ``model`` by the minimum of the head-only objective.

    :param images: :param labels: the target's training images and labels (as the loop feeds them).
    :param weight_decay: on the weights, as the fine-tuning's SGD applies it (``wd/2 * ||W||^2``).
    :returns: ``{"loss_before", "loss_after", "iterations"}`` of the objective.
    """
    _, head = head_module(model)
    features = head_features(model, images, batch_size=batch_size, device=device, memory_format=memory_format)
    target = labels.to(features.device)
    loss_fn = supervised_loss(task, label_smoothing)
    weight = head.weight.detach().float().clone().requires_grad_(True)
    bias = (head.bias.detach().float().clone() if head.bias is not None
            else torch.zeros(weight.shape[0], device=weight.device)).requires_grad_(head.bias is not None)

    def objective() -> torch.Tensor:
        return loss_fn(features @ weight.T + bias, target) + weight_decay / 2 * weight.pow(2).sum()

    optimizer = torch.optim.LBFGS([weight, bias] if head.bias is not None else [weight], lr=1.0,
                                  max_iter=max_iter, tolerance_grad=1e-6, tolerance_change=1e-9,
                                  history_size=20, line_search_fn="strong_wolfe")

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
        head.weight.copy_(weight.to(head.weight.dtype))
        if head.bias is not None:
            head.bias.copy_(bias.to(head.bias.dtype))
    return {"loss_before": before, "loss_after": after,
            "iterations": float(optimizer.state[weight]["n_iter"])}
