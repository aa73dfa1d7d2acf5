"""The report's PNG figures (matplotlib on an Agg canvas, no pyplot state) and which of them a report holds."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

import numpy as np

from mednns.errors import UsageError
from mednns.evaluation.report.tables import condition_label, conditions, gain_stats, slug
from mednns.evaluation.report.view import (
    DPI,
    REFERENCE,
    as_view,
    curve,
    dataset_order,
    epochs,
    finite_number,
    has_runs,
    is_ours,
    label,
    method_order,
    metric_at,
    seeds_run,
)
from mednns.files import atomic_write_bytes


# -- figures: names and plan ----------------------------------------------------------------------------
def convergence_name(dataset: str) -> str:
    """File name of a dataset's convergence figure. :param dataset: the dataset."""
    return f"convergence_{slug(dataset)}.png"


def embeddings_name(dataset: str) -> str:
    """File name of a dataset's meta-space figure. :param dataset: the dataset."""
    return f"embeddings_{slug(dataset)}.png"


def has_fid_matrix(results: dict[str, Any]) -> bool:
    """Whether the results hold an FID matrix of at least two datasets. :param results: evaluation results."""
    matrix = results.get("fid_matrix") or {}
    return len(matrix.get("datasets") or []) >= 2 and bool(matrix.get("matrix"))


def _has_compute(results: dict[str, Any], dataset: str) -> bool:
    return any(has_runs(e) and all("compute" in r for r in e["runs"]) and
               "target_seconds_mean" in (e.get("summary") or {}).get("curve", {})
               for e in results["datasets"][dataset].get("methods", {}).values())


def _any_ran(results: dict[str, Any], dataset: str) -> bool:
    return any(has_runs(e) for e in results["datasets"][dataset].get("methods", {}).values())


def planned_figures(results: dict[str, Any], base: Path | None = None) -> list[str]:
    """The figure files a report of these results holds.

    :param results: evaluation results (all conditions).
    :param base: the folder holding ``results.json``: embeddings figures only for npz files that exist
        there (without it, for every dataset that names one).
    :returns: file names (``overview.png``, ``forest_<condition>.png``, ``sizes.png``,
        ``fid_heatmap.png``, ``convergence_<d>.png``, ``compute_<d>.png``, ``embeddings_<d>.png``).
    """
    from mednns.evaluation.results import condition_view

    view = condition_view(results)
    names = []
    if any(_any_ran(view, d) for d in view["datasets"]):
        names.append("overview.png")
    names += [forest_name(c) for c in conditions(results) if condition_view(results, c["id"]).get("statistics")]
    if len([c for c in conditions(results) if c["budget"] == "equal_epochs" and c.get("train_images")]) >= 2:
        names.append("sizes.png")
    if has_fid_matrix(results):
        names.append("fid_heatmap.png")
    for dataset in dataset_order(view):
        if _any_ran(view, dataset):
            names.append(convergence_name(dataset))
            if _has_compute(view, dataset):
                names.append(compute_curves_name(dataset))
        npz = results["datasets"][dataset].get("embeddings")
        if npz and (base is None or (base / npz).is_file()):
            names.append(embeddings_name(dataset))
    return names


# -- figures ------------------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Any, path: str | Path) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", pad_inches=0.1)  # legends below axes
    return atomic_write_bytes(path, buffer.getvalue())


def _colors(results: dict[str, Any]) -> dict[str, Any]:
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    others = [m for m in method_order(results) if m != REFERENCE]
    colormap = colormaps["tab10" if len(others) <= 9 else "tab20"]
    assert isinstance(colormap, ListedColormap)  # tab10 and tab20 are lists of colors
    palette: Any = colormap.colors  # RGB tuples
    colors = {REFERENCE: "#d62728"}
    red = (3,) if len(others) <= 9 else (6, 7)  # the reds are mednns's
    free = [c for i, c in enumerate(palette) if i not in red]
    colors.update({m: free[i % len(free)] for i, m in enumerate(others)})
    return colors


def _dataset(results: dict[str, Any], dataset: str) -> dict[str, Any]:
    if dataset not in results["datasets"]:
        raise UsageError(f"no results for dataset {dataset!r}",
                         hint=f"datasets in these results: {', '.join(dataset_order(results)) or 'none'}")
    return results["datasets"][dataset]


def _ran_on(view: dict[str, Any], dataset: str) -> tuple[dict[str, Any], list[str]]:
    """A dataset's method entries and the methods that ran on it, in table order.

    :raises UsageError: when none ran (nothing to plot).
    """
    entries = _dataset(view, dataset).get("methods", {})
    methods = [m for m in method_order(view) if has_runs(entries.get(m))]
    if not methods:
        raise UsageError(f"no method ran on {dataset!r}: nothing to plot")
    return entries, methods


def plot_convergence(results: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """Test ACC and test AUC against the fine-tuning epoch for every method that ran on ``dataset``.

    Mean over seeds, with a ±std band when there are several seeds; mednns's own methods drawn bold and on top.

    :param results: evaluation results. :param dataset: the dataset.
    :param path: the PNG file to write.
    :returns: ``path``.
    :raises UsageError: for an unknown dataset or one on which no method ran.
    """
    results = as_view(results)
    entries, methods = _ran_on(results, dataset)
    colors = _colors(results)
    figure = _figure(11.0, 4.4)
    panels = figure.subplots(1, 2)
    for axes, metric, name in zip(panels, ("test_acc", "test_auc"), ("test ACC", "test AUC")):
        for method in methods:
            xs, mean, std = curve(entries[method], metric)
            if not xs:
                continue
            ours = is_ours(results, method)
            width, order = (2.6, 10) if ours else (1.3, 3)
            axes.plot(xs, mean, "-", color=colors.get(method), linewidth=width, zorder=order,
                      marker="o" if len(xs) <= 12 else None, markersize=3.5 if ours else 2.5,
                      label=label(results, method))
            if seeds_run(entries[method]) > 1:
                low, high = np.asarray(mean) - np.asarray(std), np.asarray(mean) + np.asarray(std)
                axes.fill_between(xs, low, high, color=colors.get(method), alpha=0.15, linewidth=0, zorder=order - 1)
        axes.set_xlabel("fine-tuning epoch")
        axes.set_ylabel(name)
        axes.set_title(name)
        axes.grid(alpha=0.3)
        axes.xaxis.get_major_locator().set_params(integer=True)
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    figure.suptitle(f"{dataset}: fine-tuning convergence (mean over seeds)")
    rows = math.ceil(len(labels) / 4)
    figure.tight_layout(rect=(0, 0.06 * rows + 0.02, 1, 1))
    return _save(figure, path)


def plot_fid_heatmap(results: dict[str, Any], path: str | Path) -> Path:
    """The FID matrix between the datasets as an annotated heatmap.

    :param results: evaluation results (reads ``fid_matrix``).
    :param path: the PNG file to write.
    :returns: ``path``.
    :raises UsageError: when the results hold no FID matrix.
    """
    from mednns.metaspace.fid import save_heatmap

    matrix = results.get("fid_matrix") or {}
    names = [str(n) for n in matrix.get("datasets") or []]
    values = np.asarray(matrix.get("matrix") or [], dtype=np.float64)
    if not names or values.shape != (len(names), len(names)):
        raise UsageError(f"the results hold no usable FID matrix ({len(names)} names, values of shape {values.shape})")
    return save_heatmap(names, values, Path(path), title="FID between datasets")


EMBEDDING_KEYS = ("model_embeddings", "model_acc", "model_dataset", "dataset_embeddings", "dataset_names", "held_out")


def tsne(points: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``points`` (perplexity clamped below the number of points).

    :param points: ``(n, e)`` array, ``n >= 3``.
    :param seed: the random state.
    :returns: ``(n, 2)`` coordinates.
    """
    from sklearn.manifold import TSNE
    from threadpoolctl import threadpool_limits

    n = len(points)
    if n < 3:
        raise UsageError(f"t-SNE needs at least 3 points, got {n}")
    perplexity = float(min(30.0, max(1.0, (n - 1) / 3)))
    # one thread: OpenMP workers spinning on busy cores make this small problem take minutes instead of 0.3 s
    with threadpool_limits(1):
        return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
                    n_jobs=1).fit_transform(np.asarray(points, dtype=np.float64))


def plot_embeddings(npz_path: str | Path, path: str | Path, *, seed: int = 0) -> Path:
    """t-SNE of one fold's meta-space: zoo models as dots coloured by their accuracy, datasets as labelled
    stars, the held-out dataset in red.

    :param npz_path: the fold's ``embeddings/<dataset>.npz`` (keys ``model_embeddings``, ``model_acc``,
        ``model_dataset``, ``dataset_embeddings``, ``dataset_names``, ``held_out``).
    :param path: the PNG file to write.
    :param seed: t-SNE's random state.
    :returns: ``path``.
    :raises UsageError: when the file is missing or lacks a key, or shapes disagree.
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise UsageError(f"no embeddings file at {npz_path}")
    with np.load(npz_path, allow_pickle=False) as data:
        missing = [k for k in EMBEDDING_KEYS if k not in data.files]
        if missing:
            raise UsageError(f"{npz_path} lacks {', '.join(missing)}",
                             hint=f"expected keys: {', '.join(EMBEDDING_KEYS)}")
        models = np.asarray(data["model_embeddings"], dtype=np.float64)
        accuracy = np.asarray(data["model_acc"], dtype=np.float64)
        datasets = np.asarray(data["dataset_embeddings"], dtype=np.float64)
        names = [str(n) for n in data["dataset_names"]]
        held_out = str(data["held_out"])
    models = models.reshape(len(models), -1) if models.size else models.reshape(0, datasets.shape[-1])
    if len(accuracy) != len(models) or len(names) != len(datasets) or models.shape[1:] != datasets.shape[1:]:
        raise UsageError(f"{npz_path}: inconsistent shapes (models {models.shape}, accuracies {accuracy.shape}, "
                         f"datasets {datasets.shape}, names {len(names)})")
    coords = tsne(np.concatenate([datasets, models]), seed=seed)
    at_datasets, at_models = coords[:len(datasets)], coords[len(datasets):]

    figure = _figure(7.5, 6.0)
    axes = figure.add_subplot()
    if len(models):
        dots = axes.scatter(at_models[:, 0], at_models[:, 1], c=accuracy, cmap="viridis", s=9, alpha=0.85,
                            linewidths=0, label=f"zoo models ({len(models)})", zorder=2)
        figure.colorbar(dots, ax=axes, fraction=0.046, pad=0.04, label="zoo val ACC")
    for (x, y), name in zip(at_datasets, names):
        target = name == held_out
        axes.scatter([x], [y], marker="*", s=420 if target else 260, color="#d62728" if target else "#f2f2f2",
                     edgecolors="black", linewidths=0.9, zorder=5,
                     label="held-out dataset" if target else "source datasets")
        axes.annotate(f"{name} (held out)" if target else name, (x, y), xytext=(7, 7), textcoords="offset points",
                      fontsize=9, fontweight="bold" if target else "normal",
                      color="#b01010" if target else "black", zorder=6)
    handles, labels = axes.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes.legend(unique.values(), unique.keys(), loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=3, fontsize=8,
                markerscale=0.6, frameon=False)
    axes.margins(0.08)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title(f"meta-space (t-SNE): {held_out} held out")
    figure.tight_layout()
    return _save(figure, path)


def plot_overview(results: dict[str, Any], path: str | Path) -> Path:
    """Grouped bars: per dataset, every method's mean test ACC@K (error bars: std over seeds).

    :param results: evaluation results.
    :param path: the PNG file to write.
    :returns: ``path``.
    :raises UsageError: when no method ran anywhere.
    """
    results = as_view(results)
    k = epochs(results)
    names = dataset_order(results)
    methods = [m for m in method_order(results)
               if any(has_runs(results["datasets"][d].get("methods", {}).get(m)) for d in names)]
    if not methods:
        raise UsageError("no method ran on any dataset: nothing to plot")
    colors = _colors(results)
    figure = _figure(max(6.5, 1.0 + len(names) * (0.35 + 0.18 * len(methods))), 4.8)
    axes = figure.add_subplot()
    width = 0.8 / len(methods)
    lows, highs = [], []
    for i, method in enumerate(methods):
        xs, ys, errs = [], [], []
        for j, dataset in enumerate(names):
            entry = results["datasets"][dataset].get("methods", {}).get(method)
            if not has_runs(entry):
                continue
            mean, std = metric_at(entry, "test_acc", k)
            if mean is None:
                continue
            std = std if seeds_run(entry) > 1 and std is not None else 0.0
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(mean)
            errs.append(std)
            lows.append(mean - std)
            highs.append(mean + std)
        ours = is_ours(results, method)
        axes.bar(xs, ys, width=width, yerr=errs, color=colors.get(method), capsize=2,
                 edgecolor="black" if ours else "none", linewidth=1.2 if ours else 0,
                 hatch="//" if ours and method != REFERENCE else None, label=label(results, method),
                 error_kw={"elinewidth": 0.8, "alpha": 0.8}, zorder=3)
    bottom = max(0.0, math.floor((min(lows) - 0.05) * 20) / 20)
    top = min(1.0, max(highs) + 0.03) if max(highs) <= 1.0 else max(highs) * 1.03
    axes.set_ylim(bottom, max(top, bottom + 0.05))
    axes.set_xticks(range(len(names)), labels=names, rotation=20 if len(names) > 4 else 0,
                    ha="right" if len(names) > 4 else "center")
    axes.set_ylabel(f"test ACC after {k} epochs" + (f" (axis from {bottom:.2f})" if bottom > 0 else ""))
    axes.set_title(f"Leave-one-dataset-out: test ACC@{k} per held-out dataset\n(mean ± std over seeds)", fontsize=10)
    axes.grid(axis="y", alpha=0.3, zorder=0)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14 if len(names) <= 4 else -0.24),
                ncol=min(len(methods), 4), fontsize=8, frameon=False)
    figure.tight_layout()
    return _save(figure, path)


def forest_name(condition: dict[str, Any]) -> str:
    """File name of a condition's forest plot. :param condition: a protocol condition."""
    return f"forest_{slug(condition['id'].replace('@', '_'))}.png"


def compute_curves_name(dataset: str) -> str:
    """File name of a dataset's test-ACC-against-target-seconds figure. :param dataset: the dataset."""
    return f"compute_{slug(dataset)}.png"


def plot_forest(view: dict[str, Any], path: str | Path, metric: str = "test_acc") -> Path:
    """Forest plot of one condition: one row per baseline, the gain of each mednns method over it
    with its 95% bootstrap interval (a marker per mednns method, offset vertically).

    :param view: a condition view of evaluation results.
    :param path: the PNG file to write.
    :raises UsageError: when the condition holds no statistics.
    """
    view = as_view(view)
    ours = [m for m in method_order(view) if is_ours(view, m) and (view.get("statistics") or {}).get(m)]
    others = [m for m in method_order(view)
              if not is_ours(view, m) and any(gain_stats(view, o, m, metric) for o in ours)]
    if not ours or not others:
        raise UsageError("no paired statistics in these results: nothing to plot")
    colors = _colors(view)
    figure = _figure(8.0, 1.0 + 0.42 * len(others) * max(1, len(ours)) ** 0.5 + 0.6)
    axes = figure.add_subplot()
    step = 0.7 / max(1, len(ours))
    for i, mine in enumerate(ours):
        legend: str | None = label(view, mine)
        for row, other in enumerate(others):
            stats = gain_stats(view, mine, other, metric)
            if not stats:
                continue
            y = row - 0.35 + step * (i + 0.5)
            interval = stats.get("ci")
            if interval:
                axes.plot(interval, [y, y], "-", color=colors.get(mine), linewidth=1.6)
            excludes_zero = interval is not None and bool(interval) and (interval[0] > 0 or interval[1] < 0)
            axes.plot([stats["mean"]], [y], "o", color=colors.get(mine), markersize=6,
                      markerfacecolor=colors.get(mine) if excludes_zero else "white", label=legend)
            legend = None
            p = finite_number(stats.get("p_wilcoxon"))
            if p is not None:
                axes.annotate(f"p={p:.2f}", (interval[1] if interval else stats["mean"], y), xytext=(4, -3),
                              textcoords="offset points", fontsize=6.5, color="#555")
    axes.axvline(0.0, color="black", linewidth=0.8)
    axes.set_yticks(range(len(others)), labels=[label(view, m) for m in others])
    axes.invert_yaxis()
    name = {"test_acc": "test ACC", "test_auc": "test AUC", "test_bal_acc": "balanced test ACC"}[metric]
    axes.set_xlabel(f"gain in final {name} (mean over datasets, 95% bootstrap CI)")
    condition = view.get("condition") or {}
    axes.set_title(f"mednns vs each method: {condition_label(condition, epochs(view)) if condition else ''}\n"
                   f"(filled: interval excludes 0)", fontsize=10)
    axes.grid(axis="x", alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=min(3, len(ours)), fontsize=8, frameon=False)
    figure.tight_layout()
    return _save(figure, path)


def plot_compute_curves(results: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """Test ACC against cumulative target-side compute for every method on ``dataset``, in seconds
    (left) and image-MACs (right, independent of the machine and of what else ran on it): each
    curve starts after what the method spent before fine-tuning (own supernet and search, query;
    for best-of-top-k the other candidates' fine-tuning). Drawn from the equal-compute condition
    when the protocol has one, else from the primary condition.

    :param results: evaluation results (all conditions). :param dataset: the dataset.
    :param path: the PNG file to write.
    """
    from matplotlib.ticker import NullFormatter

    from mednns.evaluation.results import condition_view

    chosen = next((c for c in conditions(results) if c["budget"] == "equal_compute"), conditions(results)[0])
    view = condition_view(results, chosen["id"])
    entries, methods = _ran_on(view, dataset)
    colors = _colors(results)
    figure = _figure(12.0, 4.8)
    panels = figure.subplots(1, 2)
    for axes, key, scale, name in ((panels[0], "seconds", 1.0, "cumulative target-side seconds"),
                                   (panels[1], "image_macs", 1e-9, "cumulative target-side image-GMACs")):
        for method in methods:
            entry = entries[method]
            spent = (entry.get("summary") or {}).get("curve", {}).get(
                "target_seconds_mean" if key == "seconds" else "image_macs_mean")
            _, mean, _ = curve(entry, "test_acc")
            offsets = [r["compute"].get(f"offset_{key}") for r in entry["runs"]]
            if not spent or len(spent) != len(mean) or any(o is None for o in offsets):
                continue
            offset = float(np.mean(offsets))
            ours = is_ours(results, method)
            axes.plot([(offset + x) * scale for x in spent], mean, "-o", color=colors.get(method),
                      linewidth=2.4 if ours else 1.2, markersize=3, zorder=10 if ours else 3,
                      label=label(results, method))
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(NullFormatter())  # major ticks only: minor labels overlap
        axes.set_xlabel(f"{name} (log scale)")
        axes.set_ylabel("test ACC (mean over seeds)")
        axes.grid(alpha=0.3, which="both")
    handles, labels = panels[0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="lower center", ncol=min(len(labels), 4), fontsize=8, frameon=False)
    figure.suptitle(f"{dataset}: test ACC against compute spent on the target ({condition_label(chosen)})",
                    fontsize=10)
    figure.tight_layout(rect=(0, 0.06 * math.ceil(len(labels) / 4) + 0.02, 1, 1))
    return _save(figure, path)


def plot_sizes(results: dict[str, Any], path: str | Path) -> Path:
    """mednns's gain in final test ACC over each method against the training-set size (equal-epochs
    conditions), with 95% bootstrap intervals.

    :param results: evaluation results (all conditions).
    :param path: the PNG file to write.
    :raises UsageError: with fewer than two sizes.
    """
    from mednns.evaluation.results import condition_view

    chosen = [c for c in conditions(results) if c["budget"] == "equal_epochs" and c.get("train_images")]
    if len(chosen) < 2:
        raise UsageError("the protocol has fewer than two training-set sizes: nothing to plot")
    chosen.sort(key=lambda c: c["train_images"])
    views = [condition_view(results, c["id"]) for c in chosen]
    others = [m for m in method_order(results) if m != REFERENCE
              and any(gain_stats(v, REFERENCE, m, "test_acc") for v in views)]
    colors = _colors(results)
    figure = _figure(8.0, 4.6)
    axes = figure.add_subplot()
    sizes = [c["train_images"] for c in chosen]
    for j, method in enumerate(others):
        xs, ys, low, high = [], [], [], []
        for size, view in zip(sizes, views):
            stats = gain_stats(view, REFERENCE, method, "test_acc")
            if not stats:
                continue
            jitter = 1 + 0.03 * (j - len(others) / 2)
            xs.append(size * jitter)
            ys.append(stats["mean"])
            interval = stats.get("ci") or [stats["mean"], stats["mean"]]
            low.append(stats["mean"] - interval[0])
            high.append(interval[1] - stats["mean"])
        axes.errorbar(xs, ys, yerr=[low, high], fmt="-o", color=colors.get(method), capsize=3, markersize=4,
                      linewidth=1.3, label=label(results, method))
    axes.axhline(0.0, color="black", linewidth=0.8)
    axes.set_xscale("log")
    axes.set_xticks(sizes, labels=[f"{s:,}" for s in sizes])
    axes.set_xticks([], minor=True)
    axes.set_xlabel("training images of the target")
    axes.set_ylabel(f"{label(results, REFERENCE)} gain in final test ACC")
    axes.set_title("Gain against target size (equal epochs; mean over datasets, 95% bootstrap CI)", fontsize=10)
    axes.grid(alpha=0.3)
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=3, fontsize=8, frameon=False)
    figure.tight_layout()
    return _save(figure, path)
