"""Transferability: how well a pretrained network suits a target, judged from forward passes only.

:mod:`.scores` holds the contract of the ``transfer-scores`` plugin kind (:class:`TransferScore`)
and the built-in scores (LogME, k-NN accuracy, a ridge probe, LEEP, NCE); numpy only. :mod:`.reranking`
re-ranks a query's candidates with one; :mod:`.options` gives commands its options.
"""

from __future__ import annotations

from mednns._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "TransferScore": "mednns.transfer.scores",
    "RerankSettings": "mednns.transfer.reranking",
    "TargetSample": "mednns.transfer.reranking",
    "rerank": "mednns.transfer.reranking",
    "guard_text": "mednns.transfer.reranking",
    "rerank_options": "mednns.transfer.options",
    "rerank_from_options": "mednns.transfer.options",
})
