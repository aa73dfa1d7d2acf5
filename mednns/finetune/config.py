"""Fine-tuning hyper-parameters and the transfer recipe (no torch here: stages read it to validate)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from mednns.errors import UsageError

#: The transfer recipe's fields with the values that switch it off (the loop as it was before it; the
#: defaults of :class:`FinetuneConfig` turn part of it on).
RECIPE_OFF = {"recalibrate_bn": False, "head_epochs": 0, "body_lr_scale": 1.0, "colour_stem": False,
              "fit_head": False, "fit_head_cv": False}


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning hyper-parameters (the same for a retrieved model and for every baseline).

    :param epochs: training epochs (the head-only ones included). :param lr: peak learning rate
        (SGD, Nesterov ``momentum``). :param batch_size: images per step. :param weight_decay: not on
        BN parameters and biases. :param warmup_epochs: linear warm-up before the cosine schedule.
    :param label_smoothing: of the single-label loss. :param crop_padding: random-crop padding in
        pixels (0: none). :param hflip: random horizontal flips.
    :param max_train_images: fine-tune on a seeded random subset of this many training images.
    :param eval_batch_size: :param channels_last: evaluation batch, memory format.
    :param seed: of the head, the subset, the batch order and the augmentation.

    The **transfer recipe** acts only on a model that starts from pretrained weights (inherited
    from a supernet or ImageNet; ``train_model(..., pretrained=True)``), so that the features it
    hands over are not thrown away by a random head trained at full rate (Kumar et al., ICLR 2022).
    Its default, chosen by the evaluation and confirmed by a second run on other seeds (README,
    "Defaults"): BN re-estimated and the head solved with a cross-validated penalty
    (``recalibrate_bn``, ``fit_head``, ``fit_head_cv``); every field at its
    :data:`RECIPE_OFF` value gives the plain loop.

    :param recalibrate_bn: before the first step, re-estimate every BN layer's statistics on the
        target's training images (the inherited ones describe another dataset).
    :param head_epochs: the first epochs train the new head only (the body frozen, in eval mode,
        with those statistics): a linear probe, then full fine-tuning (LP-FT). They count in
        ``epochs`` (same budget) and cost one forward pass per image.
    :param body_lr_scale: the body's learning rate relative to ``lr`` (the head keeps ``lr``).
    :param colour_stem: a grey source's first convolution handed to an RGB target carries the same
        kernel on all three channels, so the network starts blind to colour; add seeded random
        colour-opponent kernels (zero sum over the channels, at a fresh convolution's scale): its
        response to grey images is unchanged (:func:`mednns.export.add_colour_kernels`). Nothing
        changes for any other first convolution.
    :param fit_head: before the first step (after the BN re-estimation), solve the head-only
        objective on the body's frozen features of the training images (L-BFGS; the loss plus the
        weight decay): the linear probe LP-FT trains to convergence, for one forward pass per image
        instead of head-only epochs (:func:`mednns.finetune.probe.fit_head`).
    :param fit_head_cv: with ``fit_head``, the probe's penalty chosen from ``weight_decay`` times
        1 to 10^4 by 5-fold cross-validated loss on the training images (the fine-tuning's decay
        lets a head memorize a small training set and start over-confident). Without ``fit_head``
        it does nothing.
    """

    epochs: int = 10
    lr: float = 0.05
    batch_size: int = 128
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: float = 1.0
    label_smoothing: float = 0.0
    crop_padding: int = 2
    hflip: bool = False
    max_train_images: int | None = None
    eval_batch_size: int = 256
    channels_last: bool = True
    recalibrate_bn: bool = True
    head_epochs: int = 0
    body_lr_scale: float = 1.0
    colour_stem: bool = False
    fit_head: bool = True
    fit_head_cv: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2 or self.lr <= 0:
            raise UsageError("epochs must be >= 1, batch_size >= 2 and lr > 0")
        if not 0 <= self.head_epochs < self.epochs:
            raise UsageError(f"head_epochs must be in [0, epochs) = [0, {self.epochs}), got {self.head_epochs}",
                             hint="the head-only epochs count in the budget; at least one epoch trains the body")
        if not 0 < self.body_lr_scale <= 1:
            raise UsageError(f"body_lr_scale must be in (0, 1], got {self.body_lr_scale}")
        if self.fit_head and self.fit_head_cv and self.weight_decay <= 0:
            raise UsageError("fit_head_cv chooses the penalty of fit_head's probe from multiples of weight_decay, "
                             f"which is {self.weight_decay}",
                             hint="set a weight_decay above 0, or fit_head_cv: false (the probe's penalty is then "
                                  "the weight decay)")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def recipe(self, pretrained: bool) -> dict[str, Any]:
        """The transfer recipe that applies to a start with (``pretrained``) or without weights:
        every recipe field, at its :data:`RECIPE_OFF` value where it does not act."""
        if not pretrained:
            return dict(RECIPE_OFF)
        recipe = {k: getattr(self, k) for k in RECIPE_OFF}
        if not recipe["fit_head"]:
            recipe["fit_head_cv"] = RECIPE_OFF["fit_head_cv"]
        return recipe

    def active_recipe(self, pretrained: bool = True, colour_blind: bool = True) -> dict[str, Any]:
        """The recipe's fields that act on such a start (those not at their :data:`RECIPE_OFF`
        value). ``colour_blind``: whether the start's stem is one ``colour_stem`` changes
        (:func:`mednns.export.is_colour_blind`)."""
        recipe = self.recipe(pretrained)
        if not colour_blind:
            recipe["colour_stem"] = RECIPE_OFF["colour_stem"]
        return {k: v for k, v in recipe.items() if v != RECIPE_OFF[k]}

    def identity(self, pretrained: bool, colour_blind: bool = True) -> dict[str, Any]:
        """What decides a run's result besides its start and seed: every field but ``seed``, the
        recipe's only where they act (so a run keyed before the recipe existed, or a from-scratch
        run, keeps its key whatever the recipe)."""
        active = self.active_recipe(pretrained, colour_blind)
        return {k: v for k, v in self.to_dict().items() if k != "seed" and (k not in RECIPE_OFF or k in active)}

    def image_passes(self, pretrained: bool, epochs: int | None = None) -> int:
        """Forward-pass equivalents per trained image over the run (3 per trained epoch: forward
        and backward; 1 per head-only epoch, for BN recalibration and for fitting the head), for
        ``epochs`` (default ``self.epochs``)."""
        recipe = self.recipe(pretrained)
        epochs = self.epochs if epochs is None else epochs
        head = min(recipe["head_epochs"], epochs)
        return 3 * (epochs - head) + head + int(recipe["recalibrate_bn"]) + int(recipe["fit_head"])
