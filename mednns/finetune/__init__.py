"""Fine-tuning an exported model (or any export folder) on a target dataset.

K epochs of SGD with momentum, weight decay and a cosine schedule with warm-up (timm's scheduler,
as supernet training), random-crop (and optional flip) augmentation, the target's training
statistics for normalization. After every epoch: validation and test metrics into ``metrics.csv``;
the best epoch by validation ACC is saved as an export folder (``best/``) that
:func:`mednns.load_model` reads, with ``final.json`` summarizing the run. The test split never
chooses anything: it is only reported.

Modules: :mod:`~mednns.finetune.config` (:class:`FinetuneConfig`, the transfer recipe; free of
torch), :mod:`~mednns.finetune.loop` (the data, the loop, the export of the best epoch) and
:mod:`~mednns.finetune.probe` (the recipe's linear probe solved before the first step).
"""

from __future__ import annotations

from mednns._exports import lazy_exports

# imported on first access so that reading FinetuneConfig stays free of torch
__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "BEST": "mednns.finetune.loop",
    "COLUMNS": "mednns.finetune.loop",
    "FINAL": "mednns.finetune.loop",
    "METRICS": "mednns.finetune.loop",
    "RECIPE_OFF": "mednns.finetune.config",
    "FinetuneConfig": "mednns.finetune.config",
    "FinetuneData": "mednns.finetune.loop",
    "finetune": "mednns.finetune.loop",
    "train_model": "mednns.finetune.loop",
})
