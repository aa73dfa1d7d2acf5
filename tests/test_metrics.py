"""Metrics follow medmnist's Evaluator (getAUC/getACC, built on sklearn) exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from mednns.data import Task, compute_metrics, logits_to_scores, roc_auc

evaluator = pytest.importorskip("medmnist.evaluator")


def softmax_scores(rng, n, k):
    return logits_to_scores(Task.MULTI_CLASS, rng.normal(size=(n, k)))


def reference(y_true, y_score, medmnist_task):
    return {
        "acc": evaluator.getACC(y_true, y_score, medmnist_task),
        "auc": evaluator.getAUC(y_true, y_score, medmnist_task),
    }


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize(
    "task, medmnist_task", [(Task.MULTI_CLASS, "multi-class"), (Task.ORDINAL, "ordinal-regression")]
)
def test_single_label_multiclass_matches_medmnist(seed, task, medmnist_task):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, (200, 1))
    y_score = softmax_scores(rng, 200, 5)
    ours = compute_metrics(task, y_true, y_score)
    assert ours == pytest.approx(reference(y_true, y_score, medmnist_task), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1])
def test_binary_matches_medmnist_with_two_columns_and_one(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, (150, 1))
    y_score = softmax_scores(rng, 150, 2)
    expected = reference(y_true, y_score, "binary-class")
    assert compute_metrics(Task.BINARY, y_true, y_score) == pytest.approx(expected, abs=1e-12)
    positive = y_score[:, 1]
    assert compute_metrics("binary", y_true[:, 0], positive) == pytest.approx(expected, abs=1e-12)
    assert compute_metrics("binary", y_true, y_score, threshold=0.7) == pytest.approx(
        {"acc": evaluator.getACC(y_true, y_score, "binary-class", threshold=0.7), "auc": expected["auc"]}
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_multilabel_matches_medmnist(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 2, (120, 6))
    y_score = logits_to_scores(Task.MULTI_LABEL, rng.normal(size=(120, 6)))
    ours = compute_metrics(Task.MULTI_LABEL, y_true, y_score)
    assert ours == pytest.approx(reference(y_true, y_score, "multi-label, binary-class"), abs=1e-12)


def test_ties_count_one_half_like_sklearn():
    rng = np.random.default_rng(3)
    y_true = rng.integers(0, 2, (300, 4))
    y_score = np.round(rng.random((300, 4)), 1)  # many ties
    expected = [roc_auc_score(y_true[:, k], y_score[:, k]) for k in range(4)]
    assert roc_auc(y_true, y_score) == pytest.approx(expected, abs=1e-12)
    assert roc_auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)


def test_absent_class_gives_nan_and_is_skipped():
    rng = np.random.default_rng(4)
    y_true = rng.integers(0, 3, (90, 1))  # class 3 of 4 never occurs
    y_score = softmax_scores(rng, 90, 4)
    try:  # older scikit-learn raises; newer warns and gives nan for the class, so the whole average is nan
        with pytest.warns(Warning):
            assert math.isnan(evaluator.getAUC(y_true, y_score, "multi-class"))
    except ValueError:
        pass
    per_class = roc_auc(y_true == np.arange(4), y_score)
    assert math.isnan(per_class[3]) and not np.isnan(per_class[:3]).any()
    present = np.mean([roc_auc_score(y_true[:, 0] == k, y_score[:, k]) for k in range(3)])
    assert compute_metrics(Task.MULTI_CLASS, y_true, y_score)["auc"] == pytest.approx(present)
    only_negatives = compute_metrics(Task.MULTI_LABEL, np.array([[0, 1], [0, 0], [0, 1]]), np.full((3, 2), 0.9))
    assert only_negatives["auc"] == pytest.approx(0.5)  # label 0 (no positives) skipped, label 1 all tied
    assert only_negatives["acc"] == pytest.approx(2 / 6)


def test_all_classes_absent_gives_nan_without_warning(recwarn):
    metrics = compute_metrics(Task.BINARY, np.ones(5, int), np.linspace(0, 1, 5))
    assert math.isnan(metrics["auc"]) and metrics["acc"] == pytest.approx(0.4)  # 0.75 and 1.0 exceed 0.5
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_logits_to_scores():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    soft = logits_to_scores(Task.MULTI_CLASS, logits)
    assert soft.shape == (2, 3) and np.allclose(soft.sum(axis=1), 1)
    assert np.allclose(soft[1], 1 / 3)
    sig = logits_to_scores(Task.MULTI_LABEL, logits)
    assert np.allclose(sig, 1 / (1 + np.exp(-logits.numpy())))
    single = logits_to_scores(Task.BINARY, np.array([[0.0], [1000.0], [-1000.0]]))
    assert np.allclose(single[:, 0], [0.5, 1.0, 0.0])
    two = logits_to_scores(Task.BINARY, np.array([[0.0, 0.0]]))
    assert np.allclose(two, 0.5)


def test_compute_metrics_accepts_tensors_and_rejects_bad_shapes():
    y_true = torch.tensor([0, 1, 2, 1])
    scores = torch.eye(3)[[0, 1, 2, 0]]
    metrics = compute_metrics(Task.MULTI_CLASS, y_true, scores)
    assert metrics["acc"] == pytest.approx(0.75)
    with pytest.raises(ValueError):
        compute_metrics(Task.MULTI_LABEL, np.zeros((4, 2)), np.zeros((4, 3)))
    with pytest.raises(ValueError):
        compute_metrics(Task.MULTI_CLASS, np.zeros(4), np.zeros(3))


def naive_balanced_accuracy(truth: list[int], predicted: list[int]) -> float:
    recalls = []
    for c in sorted(set(truth)):
        hits = [p == c for t, p in zip(truth, predicted) if t == c]
        recalls.append(sum(hits) / len(hits))
    return sum(recalls) / len(recalls)


def test_balanced_accuracy_is_the_mean_per_class_recall():
    from mednns.data import balanced_accuracy

    rng = np.random.default_rng(0)
    truth = rng.integers(0, 4, 200)
    scores = rng.random((200, 4))
    assert balanced_accuracy("multi-class", truth, scores) == pytest.approx(
        naive_balanced_accuracy(list(truth), list(scores.argmax(1))))
    # a majority-class predictor: ACC is the majority rate, balanced accuracy 1/K
    imbalanced = np.array([0] * 90 + [1] * 10)
    always_zero = np.tile([0.9, 0.1], (100, 1))
    assert compute_metrics("binary", imbalanced, always_zero)["acc"] == pytest.approx(0.9)
    assert balanced_accuracy("binary", imbalanced, always_zero) == pytest.approx(0.5)
    # binary with a threshold on the positive score; multi-label: the mean over labels
    positive = rng.random(50)
    labels = rng.integers(0, 2, 50)
    assert balanced_accuracy("binary", labels[:, None], positive) == pytest.approx(
        naive_balanced_accuracy(list(labels), list((positive > 0.5).astype(int))))
    multi = rng.integers(0, 2, (60, 3))
    probs = rng.random((60, 3))
    expected = np.mean([naive_balanced_accuracy(list(multi[:, k]), list((probs[:, k] > 0.5).astype(int)))
                        for k in range(3)])
    assert balanced_accuracy("multi-label", multi, probs) == pytest.approx(expected)
