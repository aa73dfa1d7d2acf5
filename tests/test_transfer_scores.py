"""Transferability scores (mednns.transfer.scores, kind ``transfer-scores``): each against a naive
reference implementation written here, and on constructed data whose answer is known."""

from __future__ import annotations

import numpy as np
import pytest

import mednns
from mednns.errors import UsageError
from mednns.testing import using_plugins
from mednns.transfer.scores import LEEP, NCE, KNNAccuracy, LogME, RidgeProbe, TransferScore, target_columns


def separable(n: int = 120, d: int = 16, classes: int = 3, spread: float = 4.0, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(0, spread, (classes, d))
    return centres[labels] + rng.normal(0, 1, (n, d)), labels


def naive_logme(f: np.ndarray, labels: np.ndarray, iterations: int = 11, tolerance: float = 1e-3) -> float:
    """The paper's algorithm with explicit matrices: A = alpha I + beta F'F, m = beta A^-1 F'y."""
    n, d = f.shape
    out = []
    for y in target_columns(labels, "multi-class").T:
        alpha, beta = 1.0, 1.0

        def posterior(alpha: float, beta: float, y: np.ndarray = y):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ y)
            return a, m

        for _ in range(iterations):
            a, m = posterior(alpha, beta)
            gamma = d - alpha * np.trace(np.linalg.inv(a))
            new_alpha = gamma / (m @ m)
            new_beta = (n - gamma) / np.sum((f @ m - y) ** 2)
            done = abs(new_alpha - alpha) / alpha < tolerance and abs(new_beta - beta) / beta < tolerance
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a, m = posterior(alpha, beta)
        evidence = (n * np.log(beta) + d * np.log(alpha) - n * np.log(2 * np.pi) - beta * np.sum((f @ m - y) ** 2)
                    - alpha * m @ m - np.linalg.slogdet(a)[1]) / 2
        out.append(evidence / n)
    return float(np.mean(out))


def naive_knn(f: np.ndarray, labels: np.ndarray, k: int) -> float:
    correct = 0
    for i in range(len(f)):
        sims = [(float(f[i] @ f[j] / np.linalg.norm(f[i]) / np.linalg.norm(f[j])), labels[j])
                for j in range(len(f)) if j != i]
        sims.sort(key=lambda t: -t[0])
        votes: dict[int, list[float]] = {}
        for sim, label in sims[:k]:
            votes.setdefault(int(label), []).append(sim)
        winner = max(votes, key=lambda c: (len(votes[c]), sum(votes[c])))
        correct += winner == labels[i]
    return correct / len(f)


def naive_ridge(f: np.ndarray, labels: np.ndarray, probe: RidgeProbe) -> float:
    targets = target_columns(labels, "multi-class")
    folds = probe.fold_of(targets)
    best = 0.0
    for penalty in probe.penalties:
        hits = 0
        for fold in range(probe.folds):
            train, test = folds != fold, folds == fold
            mean, std = f[train].mean(0), f[train].std(0) + 1e-8
            x, xt = (f[train] - mean) / std, (f[test] - mean) / std
            y = targets[train] - targets[train].mean(0)
            w = np.linalg.solve(x.T @ x + penalty * train.sum() * np.eye(f.shape[1]), x.T @ y)
            hits += np.sum((xt @ w + targets[train].mean(0)).argmax(1) == targets[test].argmax(1))
        best = max(best, hits / len(f))
    return best


def naive_leep(theta: np.ndarray, labels: np.ndarray) -> float:
    classes, sources = np.unique(labels), range(theta.shape[1])
    joint = {(y, z): sum(theta[i, z] for i in range(len(labels)) if labels[i] == y) / len(labels)
             for y in classes for z in sources}
    marginal = {z: sum(joint[(y, z)] for y in classes) for z in sources}
    total = 0.0
    for i, y in enumerate(labels):
        total += np.log(sum(joint[(y, z)] / marginal[z] * theta[i, z] for z in sources))
    return total / len(labels)


def naive_nce(theta: np.ndarray, labels: np.ndarray) -> float:
    z = theta.argmax(1)
    n = len(labels)
    total = 0.0
    for y_value in np.unique(labels):
        for z_value in np.unique(z):
            p_yz = np.sum((labels == y_value) & (z == z_value)) / n
            if p_yz > 0:
                total += p_yz * np.log(p_yz / (np.sum(z == z_value) / n))
    return total


@pytest.mark.parametrize("shape", [(80, 12), (30, 50)])  # more images than features, and fewer
def test_logme_equals_the_explicit_matrix_algorithm(shape):
    rng = np.random.default_rng(1)
    f = rng.normal(size=shape)
    labels = rng.integers(0, 3, shape[0])
    assert LogME().score(f, labels, "multi-class") == pytest.approx(naive_logme(f, labels), rel=1e-6)


def test_knn_equals_a_loop_over_neighbours():
    f, labels = separable(spread=0.7, seed=2)
    for k in (1, 3, 5):
        assert KNNAccuracy(k).score(f, labels, "multi-class") == pytest.approx(naive_knn(f, labels, k))


@pytest.mark.parametrize("d", [16, 300])  # more images than features, and fewer (the images' Gram matrix)
def test_ridge_probe_equals_explicit_solves_over_the_same_folds(d):
    f, labels = separable(d=d, spread=0.5 if d < 100 else 0.12, seed=3)
    probe = RidgeProbe()
    assert 0.4 < probe.score(f, labels, "multi-class") < 1.0  # neither chance nor perfect: the penalty matters
    assert probe.score(f, labels, "multi-class") == pytest.approx(naive_ridge(f, labels, probe))
    folds = probe.fold_of(target_columns(labels, "multi-class"))
    for fold in range(probe.folds):  # every fold holds every class
        assert set(labels[folds == fold]) == {0, 1, 2}


def test_leep_and_nce_equal_their_definitions():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 60)
    theta = rng.dirichlet(np.ones(5), 60)
    assert LEEP().score(None, labels, "multi-class", source_probabilities=theta) == pytest.approx(
        naive_leep(theta, labels))
    assert NCE().score(None, labels, "multi-class", source_probabilities=theta) == pytest.approx(
        naive_nce(theta, labels))


@pytest.mark.parametrize("score", [LogME(), KNNAccuracy(), RidgeProbe()])
def test_separable_features_score_above_random_ones(score):
    f, labels = separable()
    noise = np.random.default_rng(9).normal(size=f.shape)
    assert score.score(f, labels, "multi-class") > score.score(noise, labels, "multi-class")
    binary = labels % 2  # binary targets and multi-label (two labels) work too
    assert score.score(f, binary, "binary") > score.score(noise, binary, "binary")
    multi = np.stack([labels == 0, labels == 1], axis=1).astype(int)
    assert score.score(f, multi, "multi-label") > score.score(noise, multi, "multi-label")


def test_informative_source_predictions_score_above_uninformative_ones():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, 90)
    informative = np.full((90, 4), 0.05)
    informative[np.arange(90), labels] = 0.85  # source class z tracks target class y
    uninformative = rng.dirichlet(np.ones(4), 90)
    for score in (LEEP(), NCE()):
        assert score.needs_source_probabilities
        assert (score.score(None, labels, "multi-class", source_probabilities=informative)
                > score.score(None, labels, "multi-class", source_probabilities=uninformative))


def test_scores_refuse_what_they_cannot_score():
    f, labels = separable(n=20)
    with pytest.raises(UsageError, match="source head"):
        LEEP().score(f, labels, "multi-class")
    with pytest.raises(UsageError, match="multi-label"):
        NCE().score(f, np.ones((20, 2)), "multi-label", source_probabilities=np.full((20, 3), 1 / 3))
    with pytest.raises(UsageError, match="features"):
        LogME().score(f[:5], labels, "multi-class")
    with pytest.raises(UsageError, match="NaN"):
        KNNAccuracy().score(np.full((20, 3), np.nan), labels, "multi-class")


def test_builtins_and_a_third_party_score_come_from_the_registry():
    assert isinstance(mednns.create("transfer-scores", "knn", k=3), KNNAccuracy)
    assert set(mednns.list_components("transfer-scores")) >= {"logme", "knn", "ridge", "leep", "nce"}

    class Centroid(TransferScore):
        """A third-party score: accuracy of the nearest class centroid."""

        def score(self, features, labels, task, *, source_probabilities=None):
            centres = np.stack([features[labels == c].mean(0) for c in np.unique(labels)])
            distance = ((features[:, None] - centres[None]) ** 2).sum(-1)
            return float(np.mean(distance.argmin(1) == labels))

    class Plugin:
        @mednns.hookimpl
        def register_transfer_scores(self, register):
            register("centroid", Centroid, description="nearest class centroid accuracy")

    with using_plugins(Plugin()) as manager:
        score = manager.create("transfer-scores", "centroid")
        f, labels = separable()
        assert score.score(f, labels, "multi-class") == pytest.approx(1.0)


@pytest.mark.parametrize("task", ["multi-class", "binary", "multi-label"])
def test_per_image_values_average_to_the_score_and_stay_paired(task):
    f, labels = separable(n=90, spread=0.6, seed=6)
    if task == "binary":
        labels = labels % 2
    elif task == "multi-label":
        labels = np.stack([labels == 0, labels == 1], axis=1).astype(int)
    for score in (KNNAccuracy(), RidgeProbe()):
        values = score.per_image(f, labels, task)
        assert values.shape == (90,) and np.nanmean(values) == pytest.approx(score.score(f, labels, task))
        assert 0 < np.nanmean(values) < 1  # neither nothing nor everything right: the terms vary
    # the ridge probe's terms are its held-out hits under the best penalty: each image alone
    probe = RidgeProbe()
    hits = probe.hits(f, labels, task)
    assert hits.shape == (len(probe.penalties), 90)
    np.testing.assert_array_equal(probe.per_image(f, labels, task), hits[np.argmax(np.nansum(hits, axis=1))])
    assert LogME().per_image(f, labels, task) is None  # a score of columns, not of images


def test_leep_per_image_is_each_images_log_likelihood():
    rng = np.random.default_rng(4)
    labels = rng.integers(0, 3, 60)
    theta = rng.dirichlet(np.ones(5), 60)
    values = LEEP().per_image(None, labels, "multi-class", source_probabilities=theta)
    assert values.shape == (60,) and (values < 0).all()
    assert values.mean() == pytest.approx(naive_leep(theta, labels))


def test_the_guard_lets_a_clear_winner_through_and_keeps_the_meta_space_first_against_noise():
    from mednns.transfer.reranking import guard_text, guarded_order

    rng = np.random.default_rng(7)
    incumbent = (rng.random(400) < 0.5).astype(float)  # the meta-space's first: half of the images right
    clear = np.where(rng.random(400) < 0.6, 1.0, incumbent)  # right on 60% more of them: far beyond noise
    noisy = incumbent.copy()  # 21 images gained, 19 lost: a better mean, well within noise
    wrong, right = np.flatnonzero(incumbent == 0), np.flatnonzero(incumbent == 1)
    noisy[wrong[:21]], noisy[right[:19]] = 1.0, 0.0
    meta_ranks = [1, 2, 3]
    order, test = guarded_order(meta_ranks, [incumbent.mean(), clear.mean(), 0.0], [incumbent, clear, noisy], 0.05)
    assert order == [1, 0, 2] and test["passed"] and test["challenger"] == 1 and test["incumbent"] == 0
    assert test["threshold"] == pytest.approx(0.05 / 2) and test["p"] < 1e-6 and test["images"] == 400
    assert test["gain"] == pytest.approx((clear - incumbent).mean())
    assert "replaced" in guard_text(test)
    order, test = guarded_order(meta_ranks, [incumbent.mean(), noisy.mean(), 0.0], [incumbent, noisy, clear], 0.05)
    assert noisy.mean() > incumbent.mean() and not test["passed"] and order == [0, 1, 2]
    assert test["p"] > test["threshold"] and "kept" in guard_text(test)
    order, test = guarded_order(meta_ranks, [0.2, 0.3, 0.1], [incumbent, incumbent + 0.01, noisy], 0.05)
    assert test["passed"] and order[0] == 1  # a constant per-image gain: no spread, its sign decides
    order, test = guarded_order(meta_ranks, [0.9, 0.5, 0.1], [clear, incumbent, noisy], 0.05)
    assert order == [0, 1, 2] and not test["passed"] and "is the meta-space's first" in guard_text(test)


@pytest.mark.parametrize("name", ["logme", "knn", "ridge", "leep", "nce"])
def test_builtins_pass_the_contract_check_plugin_authors_get(name):
    from mednns.testing import check_transfer_score

    found = check_transfer_score(mednns.create("transfer-scores", name))
    assert found["per_image"] == (name in ("knn", "ridge", "leep"))
    assert ("multi-label" in found) == (name not in ("leep", "nce"))  # these two need one label per image


def test_the_contract_check_names_what_breaks():
    from mednns.testing import check_transfer_score

    class Backwards(TransferScore):
        def score(self, features, labels, task, *, source_probabilities=None):
            return -KNNAccuracy().score(features, labels, task)

    class Inconsistent(KNNAccuracy):
        def score(self, features, labels, task, *, source_probabilities=None):
            return super().score(features, labels, task) + 0.1  # no longer the mean of its per-image terms

    with pytest.raises(AssertionError, match="higher must mean better"):
        check_transfer_score(Backwards())
    with pytest.raises(AssertionError, match="the mean of per_image"):
        check_transfer_score(Inconsistent())


def test_the_guides_example_score_passes_the_contract_check(tmp_path, monkeypatch):
    """The centroid score of docs/writing-plugins.md, as a plugin author would write it."""
    from mednns.testing import check_transfer_score, plugin_manager
    from test_hook_coverage import example_files, guide_text

    files = {path: text for path, text in example_files(guide_text()).items() if path.startswith("mednns_clinic/")}
    for path in ("mednns_clinic/scores.py", "mednns_clinic/centroid.py"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text(files[path])
    (tmp_path / "mednns_clinic" / "__init__.py").touch()
    monkeypatch.syspath_prepend(str(tmp_path))
    import mednns_clinic.scores

    score = plugin_manager(mednns_clinic.scores).create("transfer-scores", "centroid")
    found = check_transfer_score(score)
    assert found["per_image"] and found["multi-class"][0] == pytest.approx(1.0)


def test_every_way_in_to_re_ranking_shares_its_defaults():
    """The query stage, the commands' options and RerankSettings: one set of defaults (the stage said
    rank_sum after the commands had moved to the measured score order)."""
    import inspect

    import click

    from mednns.plugins.query import Query
    from mednns.transfer import RerankSettings, rerank_options

    settings = RerankSettings()
    stage = inspect.signature(Query).parameters
    command = {p.name: p.default for p in rerank_options(click.command()(lambda **_: None)).params}
    assert stage["combine"].default == command["combine"] == settings.combine == "score"
    assert stage["candidates"].default == command["candidates"] == settings.candidates
    assert stage["rerank_images"].default == command["rerank_images"] == settings.images
