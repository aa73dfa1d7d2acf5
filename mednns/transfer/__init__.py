"""Transferability: how well a pretrained network suits a target, judged from forward passes only.

:mod:`.scores` holds the contract of the ``transfer-scores`` plugin kind (:class:`TransferScore`)
and the built-in scores (LogME, k-NN accuracy, a ridge probe, LEEP, NCE); numpy only.
"""
