"""The report's tables as one model (:class:`Table` of :class:`Row`), rendered as markdown or HTML, and the
number formats they share."""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mednns.evaluation.report.view import (
    MISSING,
    REFERENCE,
    as_view,
    comparison,
    dataset_order,
    epochs,
    finite_number,
    has_runs,
    is_ours,
    label,
    method_order,
    metric_at,
    params_of,
    seeds_run,
    shown_epochs,
)
from mednns.evaluation.statistics import early_metric


# -- formatting ----------------------------------------------------------------------------------------
def fmt(value: float | None) -> str:
    """A metric with 3 decimals (``—`` when unknown).

    :param value: the number or None.
    """
    return MISSING if value is None else f"{value:.3f}"


def fmt_mean_std(mean: float | None, std: float | None, seeds: int) -> str:
    """``0.812 ± 0.013`` (std over seeds); just the mean for a single seed.

    :param mean: the mean over seeds. :param std: the standard deviation over seeds.
    :param seeds: how many seeds the numbers come from.
    """
    if mean is None:
        return MISSING
    return f"{mean:.3f} ± {std:.3f}" if seeds > 1 and std is not None else f"{mean:.3f}"


def fmt_gain(value: float | None) -> str:
    """A signed difference with 3 decimals (``+0.021``, ``-0.004``; ``—`` when unknown).

    :param value: the difference or None.
    """
    return MISSING if value is None else f"{value:+.3f}"


def fmt_ci(stats: dict[str, Any] | None) -> str:
    """``[-0.012, +0.034]`` from gain statistics (``—`` when unknown). :param stats: gain statistics."""
    interval = (stats or {}).get("ci")
    return MISSING if not interval else f"[{interval[0]:+.3f}, {interval[1]:+.3f}]"


def fmt_p(stats: dict[str, Any] | None) -> str:
    """The Wilcoxon p-value with 3 decimals (``—`` when it cannot be computed). :param stats: gain statistics."""
    p = finite_number((stats or {}).get("p_wilcoxon"))
    return MISSING if p is None else f"{p:.3f}"


def fmt_gain_stats(stats: dict[str, Any] | None) -> str:
    """One cell of a gain: ``+0.013 [-0.014, +0.039], p 0.312, 5/8`` (``—`` when unknown).

    :param stats: gain statistics (:func:`mednns.evaluation.statistics.gain_statistics`).
    """
    if not stats:
        return MISSING
    return f"{stats['mean']:+.3f} {fmt_ci(stats)}, p {fmt_p(stats)}, {stats['wins'][0]}/{stats['wins'][1]}"


def fmt_seconds(value: float | None) -> str:
    """Seconds in short form (``12.3``, ``1,234``; ``—`` when unknown). :param value: seconds or None."""
    if value is None:
        return MISSING
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def fmt_params(value: int | None) -> str:
    """A parameter count in short form (``11.18M``, ``456.8k``).

    :param value: the count or None.
    """
    if value is None:
        return MISSING
    if value >= 1_000_000:
        return f"{value / 1e6:.2f}M"
    if value >= 1_000:
        return f"{value / 1e3:.1f}k"
    return str(value)


def slug(name: str) -> str:
    """A file-name-safe form of a dataset name (``[A-Za-z0-9._-]`` kept, anything else ``_``).

    :param name: the dataset name.
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "_"


# -- tables: one model, rendered as markdown or HTML -----------------------------------------------------
@dataclass
class Row:
    """One table row: its cells, or a label and a note spanning the other columns.

    :param cells: the cell texts (plain text, not escaped).
    :param note: when set, the row is ``cells[0]`` followed by this text across the remaining columns.
    :param ours: the row of one of mednns's own methods (shown bold).
    """

    cells: list[str]
    note: str | None = None
    ours: bool = False


@dataclass
class Table:
    """A table of plain-text cells with an optional footnote.

    :param headers: column headers. :param rows: the rows. :param footnote: text shown below it.
    :param align: per column ``"l"`` or ``"r"``.
    """

    headers: list[str]
    rows: list[Row] = field(default_factory=list)
    footnote: str | None = None
    align: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        """The table as GitHub-flavoured markdown (cells with ``|`` escaped)."""
        def cell(text: str) -> str:
            return text.replace("|", "\\|").replace("\n", " ")

        align = self.align or ["l"] * len(self.headers)
        lines = ["| " + " | ".join(cell(h) for h in self.headers) + " |",
                 "| " + " | ".join("---:" if a == "r" else "---" for a in align) + " |"]
        for row in self.rows:
            cells = list(row.cells)
            if row.ours and cells and cells[0]:
                cells[0] = f"**{cells[0]}**"
            if row.note is not None:
                cells = cells[:1] + [row.note] + [""] * (len(self.headers) - 2)
            lines.append("| " + " | ".join(cell(c) for c in cells) + " |")
        if self.footnote:
            lines += ["", f"*{self.footnote}*"]
        return "\n".join(lines)

    def to_html(self) -> str:
        """The table as an HTML ``<table>`` (every text escaped)."""
        align = self.align or ["l"] * len(self.headers)
        out = ["<table>", "<thead><tr>" + "".join(
            f'<th class="{a}">{html.escape(h)}</th>' for h, a in zip(self.headers, align)) + "</tr></thead>", "<tbody>"]
        for row in self.rows:
            css = ' class="ours"' if row.ours else ""
            if row.note is not None:
                cells = (f'<td class="l">{html.escape(row.cells[0])}</td>'
                         f'<td class="note" colspan="{len(self.headers) - 1}">{html.escape(row.note)}</td>')
            else:
                cells = "".join(f'<td class="{a}">{html.escape(c)}</td>' for c, a in zip(row.cells, align))
            out.append(f"<tr{css}>{cells}</tr>")
        out.append("</tbody></table>")
        if self.footnote:
            out.append(f'<p class="footnote">{html.escape(self.footnote)}</p>')
        return "\n".join(out)


def protocol_items(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The protocol as ``(name, value)`` pairs for the report's bullet list.

    :param results: evaluation results.
    :returns: fine-tuning epochs, seeds, report epochs, retrieval settings, fine-tuning settings, caps.
    """
    protocol = results["protocol"]
    finetune = dict(protocol.get("finetune") or {})
    items = [("fine-tuning epochs (K)", str(epochs(results))),
             ("seeds", ", ".join(str(s) for s in protocol.get("seeds") or []) or MISSING),
             ("report epochs", ", ".join(str(e) for e in shown_epochs(results)))]
    retrieval = [f"{key} {protocol[key]}" for key in ("top_k", "by", "search_budget") if protocol.get(key) is not None]
    if retrieval:
        items.append(("retrieval", ", ".join(retrieval)))
    caps = {k: v for k, v in {**protocol, **finetune}.items() if k.startswith("max_") and v is not None}
    settings = [f"{k} {v}" for k, v in finetune.items() if not k.startswith("max_")]
    if settings:
        items.append(("fine-tuning", ", ".join(settings)))
    if caps:
        items.append(("caps", ", ".join(f"{k} {v}" for k, v in caps.items())))
    listed = [f"{condition_label(c, epochs(results))} (seeds {', '.join(str(x) for x in c.get('seeds') or [])})"
              for c in conditions(results)]
    if listed:
        items.append(("conditions", "; ".join(listed)))
    for name, variant in (protocol.get("variants") or {}).items():
        items.append((f"variant {name}", ", ".join(f"{k} {v}" for k, v in variant.items())))
    items.append(("datasets (each held out in turn)", ", ".join(dataset_order(results))))
    return items


def method_items(results: dict[str, Any]) -> list[tuple[str, str]]:
    """The methods as ``(label, "name, kind: description")`` pairs, in report order.

    :param results: evaluation results.
    """
    items = []
    for method in method_order(results):
        meta = results.get("methods", {}).get(method, {})
        head = ", ".join(str(x) for x in (method, meta.get("kind")) if x)
        items.append((label(results, method), f"{head}: {meta['description']}" if meta.get("description") else head))
    return items


def overall_table(results: dict[str, Any]) -> Table:
    """The overall table of one condition: per method its mean final test ACC, AUC and balanced
    accuracy over the datasets where it ran, its mean target-side seconds, and for the others
    mednns's mean gain in test ACC with its 95% interval, the Wilcoxon p-value and its wins.

    :param results: a condition view of evaluation results (reads ``overall`` and ``statistics``).
    """
    results = as_view(results)
    overall = results.get("overall") or {}
    names = dataset_order(results)
    table = Table(["method", "datasets", "ACC", "AUC", "bal. ACC", "target-side s", "gain (ACC)", "95% CI", "p",
                   "wins"], align=["l"] + ["r"] * 9)
    for method in method_order(results):
        ran = sum(has_runs(results["datasets"][d].get("methods", {}).get(method)) for d in names)
        wins = (overall.get("wins") or {}).get(method)
        reference = method == REFERENCE
        stats = gain_stats(results, REFERENCE, method, "test_acc")
        seconds = ((overall.get("mean_compute") or {}).get(method) or {}).get("seconds")
        table.rows.append(Row([label(results, method), f"{ran}/{len(names)}",
                               *(fmt(finite_number((overall.get(f"mean_{m}") or {}).get(method)))
                                 for m in ("test_acc", "test_auc", "test_bal_acc")),
                               fmt_seconds(seconds), _overall_gain(results, method),
                               "" if reference else fmt_ci(stats), "" if reference else fmt_p(stats),
                               "" if reference or not wins else f"{wins[0]}/{wins[1]}"],
                              ours=is_ours(results, method)))
    table.footnote = (f"Means over the datasets where each method ran (column 'datasets') of the mean test metrics "
                      f"over seeds after the last fine-tuning epoch; target-side s: seconds spent on the target "
                      f"dataset (supernet training and search, query, fine-tuning). Gain: {REFERENCE}'s mean ACC "
                      f"minus the method's, averaged over the datasets where both ran; 95% CI: bootstrap over "
                      f"datasets and seeds within them; p: two-sided Wilcoxon signed-rank test of the per-dataset "
                      f"gains; wins: datasets where {REFERENCE}'s mean ACC is higher.")
    return table


def gain_stats(results: dict[str, Any], ours: str, other: str, metric: str) -> dict[str, Any] | None:
    return (((results.get("statistics") or {}).get(ours) or {}).get(other) or {}).get(metric)


def _overall_gain(results: dict[str, Any], method: str) -> str:
    gains = (results.get("overall") or {}).get("mean_gain_acc") or {}
    if method == REFERENCE or (method not in gains and is_ours(results, method)):
        return ""
    return fmt_gain(finite_number(gains.get(method)))


# -- conditions, statistics and compute ------------------------------------------------------------
def conditions(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The protocol's conditions (budget, training-set size, seeds), the primary one first."""
    return list(results["protocol"].get("conditions") or [])


def condition_label(condition: dict[str, Any], k: int | None = None) -> str:
    """``equal epochs (8), 800 training images`` or ``equal compute, all training images``."""
    size = condition.get("train_images")
    images = f"{size:,} training images" if size else "all training images"
    budget = "equal compute" if condition["budget"] == "equal_compute" else (
        f"equal epochs ({k})" if k else "equal epochs")
    return f"{budget}, {images}"


def statistics_table(view: dict[str, Any]) -> Table:
    """Paired statistics of one condition: every mednns method against every other method, for
    test ACC, AUC and balanced accuracy (mean gain, 95% bootstrap interval, Wilcoxon p, wins).

    :param view: a condition view of evaluation results.
    """
    view = as_view(view)
    table = Table(["mednns method", "vs", "datasets", "ACC gain", "95% CI", "p", "wins", "AUC gain", "95% CI",
                   "bal. ACC gain", "95% CI"], align=["l", "l"] + ["r"] * 9)
    for ours in [m for m in method_order(view) if is_ours(view, m)]:
        for other in method_order(view):
            acc = gain_stats(view, ours, other, "test_acc")
            if acc is None:
                continue
            auc, bal = (gain_stats(view, ours, other, m) for m in ("test_auc", "test_bal_acc"))
            wins = acc.get("wins") or [0, 0]
            table.rows.append(Row([label(view, ours), label(view, other), str(wins[1]), fmt_gain(acc.get("mean")),
                                   fmt_ci(acc), fmt_p(acc), f"{wins[0]}/{wins[1]}",
                                   fmt_gain((auc or {}).get("mean")), fmt_ci(auc),
                                   fmt_gain((bal or {}).get("mean")), fmt_ci(bal)], ours=ours == REFERENCE))
    table.footnote = ("Paired by dataset and seed (same training subset, data order and augmentation): per dataset the "
                      "mean difference of the final test metric over its seeds; gain: their mean over datasets; 95% "
                      "CI: percentile bootstrap resampling datasets and seeds within them; p: two-sided Wilcoxon "
                      "signed-rank test of the per-dataset differences (with 8 datasets the smallest possible p is "
                      "0.008); wins: datasets with a positive difference. An interval that contains 0 is no win.")
    return table


def early_epochs(view: dict[str, Any]) -> list[int]:
    """The epochs before the last with paired statistics of test ACC in one condition (``test_acc@k``)."""
    found = {int(metric.split("@")[1]) for versus in (view.get("statistics") or {}).values()
             for metrics in versus.values() for metric in metrics if metric.startswith("test_acc@")}
    return sorted(found)


def early_table(view: dict[str, Any]) -> Table | None:
    """Does a method train faster? Paired test ACC gains of every mednns method after each earlier
    report epoch and at the end (mean gain, 95% bootstrap interval, wins); ``None`` when the condition
    has no early statistics (equal compute: the methods train for different epochs).

    :param view: a condition view of evaluation results.
    """
    view = as_view(view)
    early = early_epochs(view)
    if not early:
        return None
    metrics = [early_metric("test_acc", e) for e in early] + ["test_acc"]
    headers = ["mednns method", "vs"]
    for e in early:
        headers += [f"after epoch {e}", "95% CI", "wins"]
    headers += ["final", "95% CI", "wins"]
    table = Table(headers, align=["l", "l"] + ["r"] * (3 * len(metrics)))
    for ours in [m for m in method_order(view) if is_ours(view, m)]:
        for other in method_order(view):
            found = [gain_stats(view, ours, other, metric) for metric in metrics]
            if found[-1] is None:
                continue
            cells = [label(view, ours), label(view, other)]
            for stats in found:
                wins = (stats or {}).get("wins") or [0, 0]
                cells += [fmt_gain((stats or {}).get("mean")), fmt_ci(stats), f"{wins[0]}/{wins[1]}"]
            table.rows.append(Row(cells, ours=ours == REFERENCE))
    table.footnote = ("Test ACC gains after each earlier epoch and at the end, paired and resampled as in the table "
                      "above: a method that trains faster is ahead early; one that ends better, at the end.")
    return table


def budgets_table(results: dict[str, Any]) -> Table:
    """Every condition side by side: per method its mean final test ACC and mean target-side seconds.

    :param results: evaluation results (all conditions).
    """
    from mednns.evaluation.results import condition_view

    k = epochs(results)
    chosen = conditions(results)
    views = [condition_view(results, c["id"]) for c in chosen]
    headers = ["method"]
    for condition in chosen:
        headers += [f"ACC · {condition_label(condition, k)}", "s"]
    table = Table(headers, align=["l"] + ["r"] * (2 * len(chosen)))
    for method in method_order(results):
        cells = [label(results, method)]
        for view in views:
            overall = view.get("overall") or {}
            cells += [fmt(finite_number((overall.get("mean_test_acc") or {}).get(method))),
                      fmt_seconds(((overall.get("mean_compute") or {}).get(method) or {}).get("seconds"))]
        table.rows.append(Row(cells, ours=is_ours(results, method)))
    table.footnote = ("Mean over datasets of the final test ACC (mean over the condition's seeds) and of the "
                      "target-side seconds. Equal compute: every method fine-tunes until its target-side image-MACs "
                      "reach those of the most expensive method at equal epochs (capped at max_epochs).")
    return table


def compute_table(results: dict[str, Any]) -> Table:
    """Target-side compute per method, split by phase (primary condition), and the equal-compute epochs.

    :param results: evaluation results (all conditions).
    """
    from mednns.evaluation.results import condition_view

    primary = condition_view(results)
    equal = next((c for c in conditions(results) if c["budget"] == "equal_compute"), None)
    equal_view = condition_view(results, equal["id"]) if equal else None
    phases = ["supernet_training", "search", "query"]
    table = Table(["method", "supernet training s", "search s", "query s", "fine-tuning s", "total s",
                   "total image-GMACs", *(["equal-compute epochs"] if equal else [])], align=["l"] + ["r"] * 7)
    names = dataset_order(primary)
    for method in method_order(results):
        entries = [primary["datasets"][d]["methods"].get(method) for d in names]
        entries = [e for e in entries if has_runs(e) and e.get("compute")]
        if not entries:
            continue
        cells = [label(results, method)]
        for phase in phases:
            values = [((e["compute"].get("setup") or {}).get(phase) or {}).get("seconds") for e in entries]
            known = [v for v in values if v is not None]
            cells.append(fmt_seconds(float(np.mean(known))) if known else "")
        cells.append(fmt_seconds(float(np.mean([e["compute"]["finetune"]["seconds"] for e in entries]))))
        cells.append(fmt_seconds(float(np.mean([e["compute"]["total_seconds"] for e in entries]))))
        macs = [e["compute"].get("total_image_macs") for e in entries]
        cells.append(MISSING if any(m is None for m in macs) else f"{np.mean(macs) / 1e9:,.1f}")
        if equal_view is not None:
            found = [equal_view["datasets"][d]["methods"].get(method) for d in dataset_order(equal_view)]
            found = [e for e in found if has_runs(e) and e.get("compute")]
            epochs_run = sorted({x for e in found for x in e["compute"].get("epochs", [])})
            capped = any(e["compute"].get("capped") for e in found)
            cells.append(f"{epochs_run[0]}-{epochs_run[-1]}" if len(epochs_run) > 1 else
                         (str(epochs_run[0]) if epochs_run else MISSING))
            cells[-1] += " (capped)" if capped else ""
        table.rows.append(Row(cells, ours=is_ours(results, method)))
    table.footnote = ("Mean over datasets of what each method spent on the target dataset at equal epochs: training "
                      "the target's own supernet and searching it (own-supernet search), encoding the target's images "
                      "and ranking the zoo (query), fine-tuning (training and validation passes; the test passes are "
                      "measurement, not cost). Image-MACs: multiply-accumulates summed over every image passed (3x "
                      "the forward MACs per trained image), independent of the machine. Source supernets, their zoo "
                      "and the meta-space are built once for every future target and are not counted.")
    return table


def ranking_conditions(results: dict[str, Any]) -> list[str | None]:
    """The conditions with a ranking-quality measurement: ``None`` (the primary one) when there is
    one, then the further ones (``ranking.train_images``) by id."""
    if "ranking" not in results:
        return []
    return [None, *results.get("ranking_at", {})]


def ranking_entries(results: dict[str, Any], condition: str | None) -> tuple[dict[str, Any], list[str]]:
    """Each target's ranking measurement under the primary condition (``None``) or ``condition``,
    and the targets in the report's order."""
    datasets = results.get("datasets", {})
    per_target = ({d: e["ranking"] for d, e in datasets.items() if e.get("ranking")} if condition is None else
                  {d: e["ranking_at"][condition] for d, e in datasets.items() if condition in e.get("ranking_at", {})})
    names = dataset_order(results)
    return per_target, [d for d in names if d in per_target] + [d for d in per_target if d not in names]


def ranking_noise_table(results: dict[str, Any], condition: str | None = None) -> Table | None:
    """Per target: do the ranking sample's candidates differ by more than fine-tuning's noise?
    (:func:`mednns.evaluation.ranking.separation`; ``None`` with one seed)."""
    from mednns.evaluation.ranking import separation

    per_target, names = ranking_entries(results, condition)
    measured = {d: separation(per_target[d]) for d in names}
    found = {d: s for d, s in measured.items() if s is not None}
    if not found:
        return None
    table = Table(["target", "spread of the candidates' mean test ACC", "noise of one fine-tuning",
                   "reliability of the truth", "reliability of one fine-tuning"], align=["l", "r", "r", "r", "r"])
    keys = ("spread", "noise", "reliability", "reliability_once")
    for name, facts in found.items():
        table.rows.append(Row([name, *(fmt(facts[k]) for k in keys)]))
    table.rows.append(Row(["mean", *(fmt(float(np.mean([f[k] for f in found.values()]))) for k in keys)]))
    seeds = next(iter(found.values()))["seeds"]
    table.footnote = (f"The truth above is each candidate's mean over {seeds} seeds. Noise: the residual standard "
                      f"deviation once each candidate's and each seed's mean are taken out (a seed's training "
                      f"subset is shared by every candidate). Reliability: the share of the truth's variance "
                      f"that is the candidates' own differences (ICC(3,k); of one fine-tuning ICC(3,1)); near 0 "
                      f"no ranking can correlate with the truth, whatever it knows.")
    return table


def ranking_table(results: dict[str, Any], condition: str | None = None) -> Table | None:
    """Ranking quality (the ``ranking`` option): per ranking of the fine-tuned candidate sample,
    Kendall's tau against their test ACC (mean, range, per dataset) and the top-1 regret, under the
    primary condition or the further ``condition``."""
    from mednns.evaluation import ranking
    from mednns.evaluation.ranking import overall

    per_target, names = ranking_entries(results, condition)
    if not per_target:
        return None
    table = Table(["ranking", "mean tau", "range", "mean top-1 regret", "top-1 vs a random candidate [95% CI]", *names],
                  align=["l"] + ["r"] * (4 + len(names)))
    for name, entry in overall(per_target).items():
        taus = [per_target[d]["rankings"].get(name, {}).get("kendall") for d in names]
        low, high = finite_number(entry["min_kendall"]), finite_number(entry["max_kendall"])
        table.rows.append(Row([name, fmt(finite_number(entry["mean_kendall"])), f"{fmt(low)} to {fmt(high)}",
                               fmt(finite_number(entry["mean_top1_regret"])),
                               f"{fmt_gain(entry['top1_gain']['mean'])} {fmt_ci(entry['top1_gain'])}",
                               *(fmt(finite_number(t)) for t in taus)],
                              ours=name.startswith("meta-space")))
    first = next(iter(per_target.values()))
    seeds = first.get("seeds", [first["seed"]])
    table.footnote = (f"{len(first['candidates'])} random transfer candidates per target, each fine-tuned under "
                      f"{first['condition']} (seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}); "
                      f"Kendall's tau of each ranking against their final test ACC"
                      f"{' (mean over the seeds)' if len(seeds) > 1 else ''} (— where a ranking or the truth is "
                      f"constant); regret: the sample's best test ACC minus that of the ranking's first; top-1 vs a "
                      f"random candidate: the test ACC of the ranking's first minus the sample's mean (targets "
                      f"and seeds resampled). Scores see "
                      f"only the fine-tuning subset."
                      + (f" {ranking.ONCE}: each seed's test ACC as a ranking of the other seeds' mean, what "
                         f"fine-tuning every candidate once reaches." if len(seeds) > 1 else ""))
    return table


def dataset_heading(results: dict[str, Any], dataset: str) -> str:
    """``<dataset> (<modality>, <task>, <n> classes, <train> train images)``, leaving out what is unknown.

    :param results: evaluation results. :param dataset: the dataset.
    """
    info = results["datasets"][dataset].get("info") or {}
    parts = [str(info[k]) for k in ("modality", "task") if info.get(k)]
    if info.get("n_classes") is not None:
        parts.append(f"{info['n_classes']} classes")
    if info.get("train") is not None:
        parts.append(f"{info['train']:,} train images")
    if info.get("majority_rate") is not None:
        parts.append(f"majority-class rate {info['majority_rate']:.3f}")
    return f"{dataset} ({', '.join(parts)})" if parts else dataset


def separation_line(results: dict[str, Any], dataset: str) -> str | None:
    """A warning when no method ends above the dataset's majority-class rate (it cannot separate
    the methods); None otherwise. :param results: a condition view. :param dataset: the dataset."""
    from mednns.evaluation.results import SEPARATION_MARGIN, separates

    entry = results["datasets"][dataset]
    majority = (entry.get("info") or {}).get("majority_rate")
    if separates(entry.get("methods") or {}, majority) is False:
        return (f"No method ends more than {SEPARATION_MARGIN} above the majority-class rate ({majority:.3f}): under "
                f"this budget the dataset cannot separate the methods; its differences are noise.")
    return None


def dataset_table(results: dict[str, Any], dataset: str) -> Table:
    """One dataset's table: per method params, mean ± std test ACC and AUC at the report epochs, mednns's gain
    in ACC@K and the epochs mednns needs to match the method; a skipped method gets its reason.

    :param results: evaluation results. :param dataset: the dataset.
    """
    results = as_view(results)
    shown = shown_epochs(results)
    k = shown[-1]
    table = Table(["method", "params", *(f"ACC@{e}" for e in shown), *(f"AUC@{e}" for e in shown),
                   f"gain (ACC@{k})", "epochs to match"], align=["l"] + ["r"] * (2 * len(shown) + 3))
    entries = results["datasets"][dataset].get("methods", {})
    for method in method_order(results):
        entry = entries.get(method)
        if entry is None:
            continue
        name, ours = label(results, method), is_ours(results, method)
        if not has_runs(entry):
            reason = entry.get("reason") or ("no runs" if entry.get("status") == "ok" else entry.get("status", ""))
            table.rows.append(Row([name], note=f"skipped: {reason}", ours=ours))
            continue
        seeds = seeds_run(entry)
        cells = [name, fmt_params(params_of(entry))]
        for metric in ("test_acc", "test_auc"):
            cells += [fmt_mean_std(*metric_at(entry, metric, e), seeds) for e in shown]
        if method == REFERENCE:
            cells += ["", ""]
        else:
            gain, match, known = comparison(results, dataset, method)
            cells += [fmt_gain(gain), (MISSING if match is None else str(match)) if known else ""]
        table.rows.append(Row(cells, ours=ours))
    several = any(has_runs(e) and seeds_run(e) > 1 for e in entries.values())
    table.footnote = (("Test metrics, mean ± std over seeds. " if several else "Test metrics (one seed). ")
                      + f"Gain: {REFERENCE}'s mean ACC@{k} minus the method's. Epochs to match: the first epoch at "
                      f"which {REFERENCE}'s mean test ACC reaches the method's mean ACC@{k} ({MISSING}: never).")
    return table


def fid_line(results: dict[str, Any], dataset: str) -> str | None:
    """``FID to the source datasets: a 12.3, b 15.0`` (nearest first), or None when the results give none.

    :param results: evaluation results. :param dataset: the dataset.
    """
    fid = {k: finite_number(v) for k, v in (results["datasets"][dataset].get("fid") or {}).items()}
    finite = {k: v for k, v in fid.items() if v is not None}
    if not finite:
        return None
    return "FID to the source datasets (nearest first): " + ", ".join(
        f"{k} {v:.3g}" for k, v in sorted(finite.items(), key=lambda kv: kv[1]))
