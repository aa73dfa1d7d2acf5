"""Transferability scores: a number per (pretrained network, labelled target sample), computed from the
network's penultimate features (and, for LEEP and NCE, its source head's probabilities) without any
training. Higher means the network should transfer better. Kind ``transfer-scores``.

Built-ins (each short, written from its paper; numpy only):

* ``logme`` — LogME (You et al., ICML 2021): the log evidence per sample of a Bayesian linear
  model from the features to each one-hot target column, its prior and noise precisions fitted by
  the fixed-point iteration of MacKay, mean over columns. One SVD of the features.
* ``knn`` — leave-one-out k-nearest-neighbour accuracy on L2-normalized features (cosine
  similarity), which a 2025 study of 42,000 runs found as reliable as any learned metric.
* ``ridge`` — a closed-form ridge linear probe: k-fold cross-validated accuracy of a ridge
  regression onto one-hot targets, the penalty chosen from a grid by the same folds.
* ``leep`` — LEEP (Nguyen et al., ICML 2020): the log expected empirical prediction of the target
  labels through the source head's probabilities (needs the source head).
* ``nce`` — NCE (Tran et al., ICCV 2019): the negative conditional entropy of the target labels
  given the source head's hard predictions (needs the source head).

Multi-label targets count each label as a binary task (``leep``/``nce`` need one label per image).
"""

from __future__ import annotations

import abc

import numpy as np

from mednns.errors import UsageError


class TransferScore(abc.ABC):
    """The contract of a ``transfer-scores`` component.

    Set :attr:`needs_source_probabilities` when :meth:`score` reads the source head's output.
    """

    #: Whether :meth:`score` needs ``source_probabilities`` (the source head's softmax on the sample).
    needs_source_probabilities: bool = False

    @abc.abstractmethod
    def score(self, features: np.ndarray, labels: np.ndarray, task: str, *,
              source_probabilities: np.ndarray | None = None) -> float:
        """How well the network that produced ``features`` should transfer to these labels.

        :param features: ``(N, D)`` penultimate features of N labelled target images.
        :param labels: ``(N,)`` class indices (multi-hot ``(N, L)`` for multi-label).
        :param task: the target's task (``binary``, ``multi-class``, ``ordinal``, ``multi-label``).
        :param source_probabilities: ``(N, C_source)`` the source head's probabilities on the images.
        :returns: a finite float, higher for better transfer (comparable across networks for one sample).
        """

    def per_image(self, features: np.ndarray, labels: np.ndarray, task: str, *,
                  source_probabilities: np.ndarray | None = None) -> np.ndarray | None:
        """The score split over the images, when it is a mean of per-image terms (optional).

        The guarded re-ranking (``combine: guarded``) compares two networks image by image with these
        values, so they must be paired across networks: the same image at the same position.

        :returns: ``(N,)`` terms whose mean over the finite ones is :meth:`score` (NaN for an image the
            score could not use), or ``None`` (the default) when the score does not split over images.
        """
        return None


def target_columns(labels: np.ndarray, task: str) -> np.ndarray:
    """``(N, K)`` 0/1 targets: one-hot columns of the classes present, or the multi-hot labels."""
    labels = np.asarray(labels)
    if task == "multi-label":
        return labels.reshape(len(labels), -1).astype(np.float64)
    y = labels.reshape(len(labels), -1)[:, 0].astype(np.int64)
    return (y[:, None] == np.unique(y)[None, :]).astype(np.float64)


def _check(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float64)
    if features.ndim != 2 or len(features) != len(labels) or len(features) < 2:
        raise UsageError(f"a transfer score needs (N, D) features for N >= 2 labelled images, got "
                         f"{features.shape} for {len(labels)} labels")
    if not np.isfinite(features).all():
        raise UsageError("the features hold NaN or infinite values")
    return features


class LogME(TransferScore):
    """LogME: mean over target columns of the maximized log evidence per sample.

    :param max_iterations: fixed-point iterations of the two precisions (the paper's 11 suffice).
    :param tolerance: stop when both precisions change by less than this fraction.
    """

    def __init__(self, max_iterations: int = 11, tolerance: float = 1e-3):
        self.max_iterations, self.tolerance = max_iterations, tolerance

    def score(self, features, labels, task, *, source_probabilities=None) -> float:
        f = _check(features, labels)
        n, d = f.shape
        u, s, _ = np.linalg.svd(f, full_matrices=False)
        sigma = s**2  # eigenvalues of F^T F (the others are 0)
        evidences = []
        for y in target_columns(labels, task).T:
            projected = u.T @ y  # y in the basis of F's left singular vectors
            residual_out = float(y @ y - projected @ projected)  # the part of y F cannot explain
            alpha, beta = 1.0, 1.0
            for _ in range(self.max_iterations):
                gamma = float(np.sum(beta * sigma / (alpha + beta * sigma)))
                m_coords = beta * s * projected / (alpha + beta * sigma)  # the posterior mean in V's basis
                m2 = float(m_coords @ m_coords)
                fit = s * m_coords - projected
                res2 = float(fit @ fit) + residual_out
                new_alpha, new_beta = gamma / max(m2, 1e-12), (n - gamma) / max(res2, 1e-12)
                done = (abs(new_alpha - alpha) / alpha < self.tolerance
                        and abs(new_beta - beta) / beta < self.tolerance)
                alpha, beta = new_alpha, new_beta
                if done:
                    break
            m_coords = beta * s * projected / (alpha + beta * sigma)
            m2 = float(m_coords @ m_coords)
            fit = s * m_coords - projected
            res2 = float(fit @ fit) + residual_out
            log_det = float(np.sum(np.log(alpha + beta * sigma))) + (d - len(sigma)) * np.log(alpha)
            evidence = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * res2 - alpha * m2
                        - log_det) / 2
            evidences.append(evidence / n)
        return float(np.mean(evidences))


class KNNAccuracy(TransferScore):
    """Leave-one-out k-NN accuracy with cosine similarity (ties: the larger summed similarity).

    :param k: neighbours.
    """

    def __init__(self, k: int = 5):
        if k < 1:
            raise UsageError("k must be >= 1")
        self.k = k

    def score(self, features, labels, task, *, source_probabilities=None) -> float:
        return float(np.mean(self.per_image(features, labels, task)))

    def per_image(self, features, labels, task, *, source_probabilities=None) -> np.ndarray:
        """1 where an image's neighbours vote its class (multi-label: the share of its labels they get right)."""
        f = _check(features, labels)
        f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
        similarity = f @ f.T
        np.fill_diagonal(similarity, -np.inf)  # leave each image out of its own neighbours
        k = min(self.k, len(f) - 1)
        neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
        weights = np.take_along_axis(similarity, neighbours, axis=1)
        targets = target_columns(labels, task)
        votes = targets[neighbours]  # (N, k, K)
        if task == "multi-label":  # per label: the majority of the neighbours
            predicted = votes.mean(axis=1) > 0.5
            return np.mean(predicted == targets.astype(bool), axis=1)
        scores = votes.sum(axis=1) + 1e-6 * (votes * weights[:, :, None]).sum(axis=1)
        return (scores.argmax(axis=1) == targets.argmax(axis=1)).astype(np.float64)


class RidgeProbe(TransferScore):
    """Cross-validated accuracy of a closed-form ridge regression from standardized features onto
    one-hot targets; the penalty is the grid value with the best mean accuracy over the same folds.

    :param folds: cross-validation folds (stratified by the target's first column order, seeded).
    :param penalties: the ridge penalties tried (relative to the number of training images).
    :param seed: fold assignment seed.
    """

    def __init__(self, folds: int = 5, penalties: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0),
                 seed: int = 0):
        if folds < 2 or not penalties:
            raise UsageError("folds must be >= 2 and penalties non-empty")
        self.folds, self.penalties, self.seed = folds, tuple(penalties), seed

    def fold_of(self, targets: np.ndarray) -> np.ndarray:
        """Each image's fold, dealt round-robin within each target pattern so every fold sees every class."""
        rng = np.random.default_rng(self.seed)
        folds = np.empty(len(targets), dtype=np.int64)
        _, pattern = np.unique(targets, axis=0, return_inverse=True)
        for value in np.unique(pattern):
            members = np.flatnonzero(pattern == value)
            folds[rng.permutation(members)] = np.arange(len(members)) % self.folds
        return folds

    def score(self, features, labels, task, *, source_probabilities=None) -> float:
        hits = self.hits(features, labels, task)
        scored = np.isfinite(hits[0])
        return float(hits[:, scored].mean(axis=1).max()) if scored.any() else 0.0

    def per_image(self, features, labels, task, *, source_probabilities=None) -> np.ndarray:
        """Each image's held-out hit (multi-label: the share of its labels right) under the best penalty."""
        hits = self.hits(features, labels, task)
        return hits[int(np.argmax(np.nansum(hits, axis=1)))]

    def hits(self, features: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
        """``(penalties, N)``: whether each image is classified right when its fold is held out, per
        penalty (multi-label: the share of its labels right; NaN in a fold too small to hold out)."""
        f = _check(features, labels)
        targets = target_columns(labels, task)
        folds = self.fold_of(targets)
        hits = np.full((len(self.penalties), len(f)), np.nan)
        for fold in range(self.folds):
            test, train = folds == fold, folds != fold
            if not test.any() or train.sum() < 2:
                continue
            mean, std = f[train].mean(axis=0), f[train].std(axis=0) + 1e-8
            x_train, x_test = (f[train] - mean) / std, (f[test] - mean) / std
            y_mean = targets[train].mean(axis=0)
            centred = targets[train] - y_mean
            # The exact ridge solution through the eigenvectors of the smaller Gram matrix: the images'
            # (X X^T, when fewer images than features) or the features' (X^T X); several times
            # faster than an SVD of X for wide features, and every penalty reuses it.
            if len(x_train) <= x_train.shape[1]:
                eigenvalues, vectors = np.linalg.eigh(x_train @ x_train.T)
                left, right = (x_test @ x_train.T) @ vectors, vectors.T @ centred
            else:
                eigenvalues, vectors = np.linalg.eigh(x_train.T @ x_train)
                left, right = x_test @ vectors, vectors.T @ (x_train.T @ centred)
            for i, penalty in enumerate(self.penalties):
                predicted = left @ (right / (eigenvalues + penalty * train.sum())[:, None]) + y_mean
                if task == "multi-label":
                    hits[i, test] = np.mean((predicted > 0.5) == targets[test].astype(bool), axis=1)
                else:
                    hits[i, test] = predicted.argmax(axis=1) == targets[test].argmax(axis=1)
        return hits


def _source_joint(labels: np.ndarray, task: str, probabilities: np.ndarray | None, name: str) -> tuple:
    if probabilities is None:
        raise UsageError(f"{name} needs the source head's probabilities on the target images")
    if task == "multi-label":
        raise UsageError(f"{name} needs one label per image; this target is multi-label")
    theta = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels).reshape(len(labels), -1)[:, 0].astype(np.int64)
    if theta.ndim != 2 or len(theta) != len(y):
        raise UsageError(f"{name}: source probabilities must be (N, C_source), got {theta.shape} for {len(y)} labels")
    onehot = (y[:, None] == np.unique(y)[None, :]).astype(np.float64)
    return theta, onehot


class LEEP(TransferScore):
    """LEEP: mean log-likelihood of the target labels under the "expected empirical predictor"
    ``P(y | x) = sum_z P(y | z) theta(x)_z`` built from the source head's probabilities ``theta``."""

    needs_source_probabilities = True

    def score(self, features, labels, task, *, source_probabilities=None) -> float:
        return float(np.mean(self.per_image(features, labels, task, source_probabilities=source_probabilities)))

    def per_image(self, features, labels, task, *, source_probabilities=None) -> np.ndarray:
        """Each image's log-likelihood of its label under the expected empirical predictor."""
        theta, onehot = _source_joint(labels, task, source_probabilities, "LEEP")
        joint = onehot.T @ theta / len(theta)  # P(y, z)
        conditional = joint / np.maximum(joint.sum(axis=0, keepdims=True), 1e-12)  # P(y | z)
        likelihood = np.sum((theta @ conditional.T) * onehot, axis=1)
        return np.log(np.maximum(likelihood, 1e-12))


class NCE(TransferScore):
    """NCE: ``-H(Y | Z)`` with ``Z`` the source head's hard prediction on each target image."""

    needs_source_probabilities = True

    def score(self, features, labels, task, *, source_probabilities=None) -> float:
        theta, onehot = _source_joint(labels, task, source_probabilities, "NCE")
        hard = np.zeros_like(theta)
        hard[np.arange(len(theta)), theta.argmax(axis=1)] = 1.0
        joint = onehot.T @ hard / len(theta)
        marginal = joint.sum(axis=0, keepdims=True)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(joint > 0, joint * np.log(joint / marginal), 0.0)
        return float(terms.sum())


__all__ = ["KNNAccuracy", "LEEP", "LogME", "NCE", "RidgeProbe", "TransferScore", "target_columns"]
