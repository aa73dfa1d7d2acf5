"""Accuracy and ROC AUC, defined exactly as MedMNIST's ``Evaluator`` (``getACC``/``getAUC``).

Per task (``y_score`` are probabilities, see :func:`logits_to_scores`):

- multi-class / ordinal: ACC = accuracy of ``argmax(y_score)``; AUC = mean over
  classes of the one-vs-rest AUC of ``y_score[:, k]``.
- binary: the score is the last column of ``y_score`` (or ``y_score`` itself when
  1-d); ACC = accuracy of ``score > threshold``; AUC = AUC of the score.
- multi-label: ACC = mean over labels of the accuracy of ``y_score[:, l] > threshold``;
  AUC = mean over labels of the AUC of ``y_score[:, l]``.

One difference: a class (or label) whose AUC is undefined, because ``y_true`` holds
only positives or only negatives for it, gets ``nan`` and the mean skips it
(``nanmean``). There medmnist's ``getAUC`` fails: scikit-learn's ``roc_auc_score``
raises ``ValueError`` (older versions) or warns and returns ``nan``, which makes the
whole average ``nan`` (recent versions). Small validation splits routinely miss a
rare class, and one absent class should neither abort a run nor void the metric.

The AUC is the Mann–Whitney statistic computed from average ranks
(``scipy.stats.rankdata``), so ties count one half, as in sklearn's ROC AUC.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from mednns.data.info import Task


def _as_numpy(values: Any) -> np.ndarray:
    if hasattr(values, "detach"):  # torch.Tensor
        values = values.detach().cpu().numpy()
    return np.asarray(values)


def roc_auc(y_true: np.ndarray, y_score: np.ndarray) -> np.ndarray:
    """Column-wise ROC AUC of scores ``(N, K)`` against 0/1 truths ``(N, K)``.

    Returns ``(K,)`` floats; ``nan`` where a column of ``y_true`` holds a single class.
    1-d inputs give a 0-d array.
    """
    from scipy.stats import rankdata

    truth = np.asarray(y_true).astype(bool)
    score = np.asarray(y_score, dtype=np.float64)
    if truth.shape != score.shape:
        raise ValueError(f"y_true has shape {truth.shape} but y_score {score.shape}")
    ranks = rankdata(score, axis=0)  # average ranks: ties count 1/2
    n_pos = truth.sum(axis=0).astype(np.float64)
    n_neg = truth.shape[0] - n_pos
    rank_sum = np.where(truth, ranks, 0.0).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        auc = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return np.where((n_pos > 0) & (n_neg > 0), auc, np.nan)


def _nanmean(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan: "Mean of empty slice"
        return float(np.nanmean(values))


def compute_metrics(task: Task | str, y_true: Any, y_score: Any, threshold: float = 0.5) -> dict[str, float]:
    """``{"acc": ..., "auc": ...}`` for one task, following medmnist's ``getACC``/``getAUC``.

    :param task: a :class:`~mednns.data.Task` (or its value).
    :param y_true: class indices ``(N,)``/``(N, 1)``, or multi-hot ``(N, L)`` for multi-label.
    :param y_score: probabilities: ``(N, K)`` softmax outputs for single-label tasks
        (``(N,)`` or ``(N, 1)`` positive-class probabilities also work for binary),
        ``(N, L)`` sigmoid outputs for multi-label.
    :param threshold: decision threshold of binary and multi-label tasks.
    """
    task = Task(task)
    y_true = _as_numpy(y_true)
    y_score = _as_numpy(y_score).astype(np.float64)
    if y_true.shape[0] != y_score.shape[0]:
        raise ValueError(f"{y_true.shape[0]} labels but {y_score.shape[0]} scores")

    if task is Task.MULTI_LABEL:
        if y_true.ndim != 2 or y_true.shape != y_score.shape:
            raise ValueError(
                f"multi-label needs y_true and y_score of one shape (N, L), got {y_true.shape}, {y_score.shape}"
            )
        acc = float(np.mean(y_true.astype(bool) == (y_score > threshold)))
        return {"acc": acc, "auc": _nanmean(roc_auc(y_true, y_score))}

    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    if y_true.ndim != 1:
        raise ValueError(f"a {task} task needs y_true of shape (N,) or (N, 1), got {y_true.shape}")
    y_true = y_true.astype(np.int64)

    if task is Task.BINARY:
        score = y_score[:, -1] if y_score.ndim == 2 else y_score
        if score.ndim != 1:
            raise ValueError(f"binary scores must be (N,), (N, 1) or (N, 2), got {y_score.shape}")
        acc = float(np.mean(y_true == (score > threshold)))
        return {"acc": acc, "auc": _nanmean(roc_auc(y_true == 1, score))}

    if y_score.ndim != 2:
        raise ValueError(f"a {task} task needs y_score of shape (N, n_classes), got {y_score.shape}")
    one_hot = y_true[:, None] == np.arange(y_score.shape[1])[None, :]
    acc = float(np.mean(np.argmax(y_score, axis=1) == y_true))
    return {"acc": acc, "auc": _nanmean(roc_auc(one_hot, y_score))}


def majority_rate(task: Task | str, labels: Any) -> float:
    """The ACC of always predicting the most frequent class (multi-label: each label's most frequent
    value): a model that ends here learned nothing that ACC can see."""
    y = _as_numpy(labels)
    if Task(task) is Task.MULTI_LABEL:
        positive = y.astype(bool).mean(axis=0)
        return float(np.mean(np.maximum(positive, 1 - positive)))
    _, counts = np.unique(y.reshape(len(y), -1)[:, 0], return_counts=True)
    return float(counts.max() / counts.sum())


def balanced_accuracy(task: Task | str, y_true: Any, y_score: Any, threshold: float = 0.5) -> float:
    """Mean per-class recall of the predictions :func:`compute_metrics` scores (argmax, or
    ``score > threshold`` for binary), over the classes present in ``y_true``. Unlike ACC it is
    1/K for a model that always predicts one class, whatever the class balance. Multi-label: the
    mean over labels of each label's balanced accuracy (recall of positives and of negatives).
    """
    task = Task(task)
    y_true = _as_numpy(y_true)
    y_score = _as_numpy(y_score).astype(np.float64)
    if task is Task.MULTI_LABEL:
        truth, predicted = y_true.astype(bool), y_score > threshold
        per_label = [_mean_recall(truth[:, k].astype(np.int64), predicted[:, k].astype(np.int64))
                     for k in range(truth.shape[1])]
        return _nanmean(np.asarray(per_label))
    if y_true.ndim == 2 and y_true.shape[1] == 1:
        y_true = y_true[:, 0]
    y_true = y_true.astype(np.int64)
    if task is Task.BINARY:
        score = y_score[:, -1] if y_score.ndim == 2 else y_score
        return _mean_recall(y_true, (score > threshold).astype(np.int64))
    return _mean_recall(y_true, np.argmax(y_score, axis=1))


def _mean_recall(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    classes = np.unique(y_true)
    if not len(classes):
        return float("nan")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in classes]))


def logits_to_scores(task: Task | str, logits: Any) -> np.ndarray:
    """Probabilities from model outputs: sigmoid for multi-label, softmax over the last axis otherwise.

    A binary model with a single output (``(N,)`` or ``(N, 1)``) gets the sigmoid,
    its positive-class probability. Accepts numpy arrays or torch tensors;
    returns float64 numpy.
    """
    from scipy.special import expit, softmax

    task = Task(task)
    logits = _as_numpy(logits).astype(np.float64)
    if task is Task.MULTI_LABEL or (task is Task.BINARY and (logits.ndim == 1 or logits.shape[-1] == 1)):
        return expit(logits)
    if logits.ndim != 2:
        raise ValueError(f"a {task} task needs logits of shape (N, n_classes), got {logits.shape}")
    return softmax(logits, axis=-1)
