"""The evaluation report: figures, markdown and one self-contained HTML page from ``results.json``.

The ``evaluate`` stage writes ``<run>/stages/evaluate/results.json`` (format ``mednns-evaluation/2``:
leave-one-dataset-out fine-tuning of mednns's pick against baselines under one or more conditions,
a budget and a training-set size) and, per held-out dataset, ``embeddings/<dataset>.npz`` (the
fold's meta-space). Most functions take a *view* of one condition
(:func:`mednns.evaluation.results.condition_view`); the report shows the primary condition in full
and every condition's statistics, budgets side by side and the compute. This module turns them into:

* :func:`markdown_report`: the protocol, the overall and statistics tables, budgets and compute,
  one table per dataset (``report.md``);
* :func:`plot_overview`, :func:`plot_convergence`, :func:`plot_fid_heatmap`,
  :func:`plot_embeddings`, :func:`plot_forest`, :func:`plot_compute_curves`, :func:`plot_sizes`:
  PNG figures (matplotlib on an Agg canvas, no pyplot state);
* :func:`render_report`: all of them plus ``report.html``, a single page with the figures inlined.

Every number comes from what the stage computed (:mod:`mednns.evaluation.results`): each method's
``summary`` and each dataset's ``comparison``; this module only formats and draws.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import re
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mednns.errors import UsageError
from mednns.files import atomic_write_bytes, atomic_write_text, read_json
from mednns.layout import EVALUATE_STAGE, STAGES, stage_dir

log = logging.getLogger(__name__)

#: The ``format`` value of the results this module reads.
FORMAT = "mednns-evaluation/2"
#: The method every other one is compared with (gains, wins, epochs to match).
REFERENCE = "mednns"
#: The stage folder of a run that holds ``results.json``.
STAGE = EVALUATE_STAGE
RESULTS_NAME = "results.json"
DPI = 150
MISSING = "—"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PRODUCE_HINT = ("`mednns evaluate CONFIG` (or `mednns run CONFIG` with the `evaluate` stage) writes "
                 "it to RUN_DIR/stages/evaluate/results.json")


# -- loading ---------------------------------------------------------------------------------------
def results_path(path: str | Path) -> Path:
    """Locate ``results.json`` from a run directory, the evaluate stage's folder or the file itself.

    :param path: ``RUN_DIR``, ``RUN_DIR/stages/evaluate`` or a ``results.json`` file.
    :returns: the path of the results file.
    :raises UsageError: when no evaluation results file is found there (naming where it looked).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [stage_dir(path, STAGE) / RESULTS_NAME, path / RESULTS_NAME]
        if (path / STAGES).is_dir():  # a run directory: its own results.json is the run's, not ours
            candidates = candidates[:1]
        for candidate in candidates:
            if candidate.is_file():
                return candidate
        looked = " or ".join(str(c) for c in candidates)
        raise UsageError(f"no evaluation results found: looked for {looked}", hint=_PRODUCE_HINT)
    raise UsageError(f"no evaluation results found: {path} does not exist", hint=_PRODUCE_HINT)


def load_results(path: str | Path) -> dict[str, Any]:
    """Read evaluation results and check their format.

    :param path: a run directory (reads ``RUN/stages/evaluate/results.json``), a folder holding
        ``results.json``, or the ``results.json`` file itself.
    :returns: the results as a dict (format ``mednns-evaluation/2``).
    :raises UsageError: when the file is missing, is not JSON or has another format.
    """
    file = results_path(path)
    try:
        results = read_json(file)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"cannot read evaluation results {file}: {exc}", hint=_PRODUCE_HINT) from exc
    found = results.get("format") if isinstance(results, dict) else None
    if found != FORMAT:
        raise UsageError(f"{file} is not a mednns evaluation results file (format {found!r}, expected {FORMAT!r})",
                         hint=_PRODUCE_HINT)
    for key in ("protocol", "methods", "datasets"):
        if not isinstance(results.get(key), dict):
            raise UsageError(f"{file}: the {key!r} section is missing or not an object",
                             hint="the file is incomplete; run the evaluate stage again")
    if not results["protocol"].get("conditions"):
        raise UsageError(f"{file}: the protocol lists no conditions", hint="run the evaluate stage again")
    return results


# -- reading the results -----------------------------------------------------------------------------
def as_view(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as a view of one condition: views pass through, whole results give the primary one."""
    from mednns.evaluation.results import condition_view

    return results if "condition" in results else condition_view(results)


def method_order(results: dict[str, Any]) -> list[str]:
    """Methods in ``protocol.methods`` order, then any others the results describe.

    :param results: evaluation results.
    :returns: method names.
    """
    order = list(results["protocol"].get("methods") or [])
    return order + [m for m in results.get("methods", {}) if m not in order]


def dataset_order(results: dict[str, Any]) -> list[str]:
    """Datasets in ``protocol.datasets`` order (those with results), then any others.

    :param results: evaluation results.
    :returns: dataset names.
    """
    order = [d for d in results["protocol"].get("datasets") or [] if d in results["datasets"]]
    return order + [d for d in results["datasets"] if d not in order]


def label(results: dict[str, Any], method: str) -> str:
    """A method's display label (its name when the results give none).

    :param results: evaluation results.
    :param method: the method name.
    """
    return str(results.get("methods", {}).get(method, {}).get("label") or method)


def is_ours(results: dict[str, Any], method: str) -> bool:
    """Whether ``method`` is one of mednns's own (``kind: ours``).

    :param results: evaluation results.
    :param method: the method name.
    """
    kind = results.get("methods", {}).get(method, {}).get("kind")
    return kind == "ours" if kind else method.startswith(REFERENCE)


def epochs(results: dict[str, Any]) -> int:
    """The fine-tuning epochs K of the protocol (the longest history when the protocol omits it).

    :param results: evaluation results.
    """
    k = results["protocol"].get("epochs")
    if k:
        return int(k)
    longest = [len(run.get("history", [])) for d in results["datasets"].values()
               for m in d.get("methods", {}).values() for run in m.get("runs", [])]
    return max(longest, default=1)


def report_epochs(results: dict[str, Any]) -> list[int]:
    """The epochs the tables report: ``protocol.report_epochs`` within ``1..K``, deduplicated, sorted, ending at K.

    :param results: evaluation results.
    """
    k = epochs(results)
    chosen = {int(e) for e in results["protocol"].get("report_epochs") or [] if 1 <= int(e) <= k}
    return sorted(chosen | {k})


def _ran(entry: dict[str, Any] | None) -> bool:
    if not entry:
        return False
    return entry.get("status") == "ok" and bool(entry.get("runs") or entry.get("summary"))


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def metric_at(entry: dict[str, Any], metric: str, epoch: int) -> tuple[float | None, float | None]:
    """Mean and std over seeds of a test metric at an epoch for one method on one dataset.

    :param entry: ``results["datasets"][d]["methods"][m]``.
    :param metric: ``test_acc`` or ``test_auc``.
    :param epoch: the epoch (1-based).
    :returns: ``(mean, std)``; ``(None, None)`` when unknown.
    """
    cell = (entry.get("summary") or {}).get(metric, {}).get(str(epoch))
    if isinstance(cell, dict) and _finite(cell.get("mean")) is not None:
        return _finite(cell["mean"]), _finite(cell.get("std"))
    return None, None


def curve(entry: dict[str, Any], metric: str) -> tuple[list[int], list[float], list[float]]:
    """A method's test metric over epochs: ``(epochs, mean over seeds, std over seeds)``.

    :param entry: ``results["datasets"][d]["methods"][m]``.
    :param metric: ``test_acc`` or ``test_auc``.
    :returns: three equally long lists (epochs with no finite value are left out).
    """
    summary = (entry.get("summary") or {}).get("curve") or {}
    stds = summary.get(f"{metric}_std") or [0.0] * len(summary.get("epochs", []))
    points = [(int(e), _finite(m), _finite(sd) or 0.0)
              for e, m, sd in zip(summary.get("epochs", []), summary.get(f"{metric}_mean", []), stds)]
    kept = [(e, m, sd) for e, m, sd in points if m is not None]
    return [p[0] for p in kept], [p[1] for p in kept], [p[2] for p in kept]


def seeds_run(entry: dict[str, Any]) -> int:
    """How many seeds a method ran with on a dataset (1 when only a summary is given).

    :param entry: ``results["datasets"][d]["methods"][m]``.
    """
    return len(entry.get("runs") or []) or 1


def params_of(entry: dict[str, Any]) -> int | None:
    """A method's parameter count on a dataset (the median over seeds, from its summary).

    :param entry: ``results["datasets"][d]["methods"][m]``.
    """
    value = (entry.get("summary") or {}).get("params")
    return None if value is None else int(value)


def comparison(results: dict[str, Any], dataset: str, method: str) -> tuple[float | None, int | None, bool]:
    """mednns against ``method`` on one dataset, from the dataset's ``comparison``: the gain in mean
    ACC@K and the epochs mednns needs to reach ``method``'s mean ACC@K.

    :param results: evaluation results.
    :param dataset: the dataset.
    :param method: the compared method (not mednns itself).
    :returns: ``(gain, epochs_to_match, known)``; ``known`` is false when either method did not run.
    """
    given = (results["datasets"][dataset].get("comparison") or {}).get(method)
    if not isinstance(given, dict) or "gain_acc" not in given:
        return None, None, False
    match = given.get("epochs_to_match")
    return _finite(given.get("gain_acc")), None if match is None else int(match), True


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
    p = _finite((stats or {}).get("p_wilcoxon"))
    return MISSING if p is None else f"{p:.3f}"


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
             ("report epochs", ", ".join(str(e) for e in report_epochs(results)))]
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
        ran = sum(_ran(results["datasets"][d].get("methods", {}).get(method)) for d in names)
        wins = (overall.get("wins") or {}).get(method)
        reference = method == REFERENCE
        stats = _gain_stats(results, REFERENCE, method, "test_acc")
        seconds = ((overall.get("mean_compute") or {}).get(method) or {}).get("seconds")
        table.rows.append(Row([label(results, method), f"{ran}/{len(names)}",
                               *(fmt(_finite((overall.get(f"mean_{m}") or {}).get(method)))
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


def _gain_stats(results: dict[str, Any], ours: str, other: str, metric: str) -> dict[str, Any] | None:
    return (((results.get("statistics") or {}).get(ours) or {}).get(other) or {}).get(metric)


def _overall_gain(results: dict[str, Any], method: str) -> str:
    gains = (results.get("overall") or {}).get("mean_gain_acc") or {}
    if method == REFERENCE or (method not in gains and is_ours(results, method)):
        return ""
    return fmt_gain(_finite(gains.get(method)))


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
            acc = _gain_stats(view, ours, other, "test_acc")
            if acc is None:
                continue
            auc, bal = (_gain_stats(view, ours, other, m) for m in ("test_auc", "test_bal_acc"))
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
            cells += [fmt(_finite((overall.get("mean_test_acc") or {}).get(method))),
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
        entries = [e for e in entries if _ran(e) and e.get("compute")]
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
            found = [e for e in found if _ran(e) and e.get("compute")]
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


def ranking_table(results: dict[str, Any]) -> Table | None:
    """Ranking quality (the ``ranking`` option): per ranking of the fine-tuned candidate sample,
    Kendall's tau against their test ACC (mean, range, per dataset) and the top-1 regret."""
    from mednns.evaluation.ranking import overall

    per_target = {d: e["ranking"] for d, e in results.get("datasets", {}).items() if e.get("ranking")}
    if not per_target:
        return None
    names = dataset_order(results)
    names = [d for d in names if d in per_target] + [d for d in per_target if d not in names]
    table = Table(["ranking", "mean tau", "range", "mean top-1 regret", *names], align=["l"] + ["r"] * (3 + len(names)))
    for name, entry in overall(per_target).items():
        taus = [per_target[d]["rankings"].get(name, {}).get("kendall") for d in names]
        table.rows.append(Row([name, fmt(_finite(entry["mean_kendall"])),
                               f"{fmt(_finite(entry['min_kendall']))} to {fmt(_finite(entry['max_kendall']))}",
                               fmt(_finite(entry["mean_top1_regret"])), *(fmt(_finite(t)) for t in taus)],
                              ours=name.startswith("meta-space")))
    first = next(iter(per_target.values()))
    table.footnote = (f"{len(first['candidates'])} random transfer candidates per target, each fine-tuned under "
                      f"{first['condition']} (seed {first['seed']}); Kendall's tau of each ranking against their "
                      f"final test ACC (— where a ranking or the truth is constant); regret: the sample's best "
                      f"test ACC minus that of the ranking's first. Scores see only the fine-tuning subset.")
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
    shown = report_epochs(results)
    k = shown[-1]
    table = Table(["method", "params", *(f"ACC@{e}" for e in shown), *(f"AUC@{e}" for e in shown),
                   f"gain (ACC@{k})", "epochs to match"], align=["l"] + ["r"] * (2 * len(shown) + 3))
    entries = results["datasets"][dataset].get("methods", {})
    for method in method_order(results):
        entry = entries.get(method)
        if entry is None:
            continue
        name, ours = label(results, method), is_ours(results, method)
        if not _ran(entry):
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
    several = any(_ran(e) and seeds_run(e) > 1 for e in entries.values())
    table.footnote = (("Test metrics, mean ± std over seeds. " if several else "Test metrics (one seed). ")
                      + f"Gain: {REFERENCE}'s mean ACC@{k} minus the method's. Epochs to match: the first epoch at "
                      f"which {REFERENCE}'s mean test ACC reaches the method's mean ACC@{k} ({MISSING}: never).")
    return table


def fid_line(results: dict[str, Any], dataset: str) -> str | None:
    """``FID to the source datasets: a 12.3, b 15.0`` (nearest first), or None when the results give none.

    :param results: evaluation results. :param dataset: the dataset.
    """
    fid = {k: _finite(v) for k, v in (results["datasets"][dataset].get("fid") or {}).items()}
    finite = {k: v for k, v in fid.items() if v is not None}
    if not finite:
        return None
    return "FID to the source datasets (nearest first): " + ", ".join(
        f"{k} {v:.3g}" for k, v in sorted(finite.items(), key=lambda kv: kv[1]))


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
    return any(_ran(e) and all("compute" in r for r in e["runs"]) and
               "target_seconds_mean" in (e.get("summary") or {}).get("curve", {})
               for e in results["datasets"][dataset].get("methods", {}).values())


def _any_ran(results: dict[str, Any], dataset: str) -> bool:
    return any(_ran(e) for e in results["datasets"][dataset].get("methods", {}).values())


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


def title(results: dict[str, Any]) -> str:
    """The report's title: ``mednns evaluation: <run>``. :param results: evaluation results."""
    run = str(results.get("run") or "")
    return f"mednns evaluation: {run}" if run else "mednns evaluation"


INTRO = ("Leave-one-dataset-out: each dataset is held out in turn, mednns picks a model for it from the zoo of the "
         "other datasets' supernets, and every method fine-tunes its model on it.")


# -- markdown ---------------------------------------------------------------------------------------------
def report_sections(results: dict[str, Any], figures: Collection[str]) -> list[tuple[str, Any]]:
    """The report as a list of blocks, rendered alike as markdown and HTML: ``("h1"|"h2"|"h3"|"p",
    text)``, ``("items", [(name, value)])``, ``("table", Table)``, ``("figure", (file, caption))``.

    :param results: evaluation results (all conditions).
    :param figures: the figure files that exist.
    """
    from mednns.evaluation.results import condition_view

    figures = set(figures)
    view = condition_view(results)
    k = epochs(results)
    primary = conditions(results)[0]

    def figure(name: str, caption: str) -> list[tuple[str, Any]]:
        return [("figure", (name, caption))] if name in figures else []

    blocks: list[tuple[str, Any]] = [("h1", title(results)), ("p", INTRO), ("h2", "Protocol"),
                                     ("items", protocol_items(view)), ("h2", "Methods"), ("items", method_items(view)),
                                     ("h2", f"Overall ({condition_label(primary, k)})"), ("table", overall_table(view))]
    blocks += figure("overview.png", f"test ACC after {k} epochs per held-out dataset and method")
    blocks += [("h2", "Paired statistics")]
    for condition in conditions(results):
        cview = condition_view(results, condition["id"])
        if not cview.get("statistics"):
            continue
        seeds = ", ".join(str(x) for x in condition.get("seeds") or [])
        blocks += [("h3", f"{condition_label(condition, k)} (seeds {seeds})"), ("table", statistics_table(cview))]
        blocks += figure(forest_name(condition), f"gains with 95% intervals: {condition_label(condition, k)}")
    if len(conditions(results)) > 1:
        blocks += [("h2", "Budgets side by side"), ("table", budgets_table(results))]
    blocks += [("h2", "Target-side compute"), ("table", compute_table(results))]
    ranked = ranking_table(results)
    if ranked is not None:
        blocks += [("h2", "Ranking quality"), ("table", ranked)]
    blocks += figure("sizes.png", "mednns's gain against the target's training-set size")
    blocks += figure("fid_heatmap.png", "FID between datasets")
    blocks += [("h2", f"Per dataset ({condition_label(primary, k)})")]
    for dataset in dataset_order(view):
        blocks.append(("h3", dataset_heading(view, dataset)))
        blocks += [("p", line) for line in (separation_line(view, dataset), fid_line(view, dataset)) if line]
        blocks.append(("table", dataset_table(view, dataset)))
        blocks += figure(convergence_name(dataset), f"{dataset}: test ACC and AUC while fine-tuning")
        blocks += figure(compute_curves_name(dataset), f"{dataset}: test ACC against target-side seconds")
        blocks += figure(embeddings_name(dataset), f"{dataset}: the fold's meta-space (t-SNE)")
    return blocks


def markdown_report(results: dict[str, Any], *, figures: Collection[str] | None = None) -> str:
    """The report as markdown (:func:`report_sections`); figures referenced by relative paths.

    :param results: evaluation results (format ``mednns-evaluation/2``).
    :param figures: file names of the figures next to the markdown file (default: :func:`planned_figures`).
    :returns: the markdown text.
    """
    lines: list[str] = []
    for kind, value in report_sections(results, planned_figures(results) if figures is None else figures):
        if kind in ("h1", "h2", "h3"):
            lines += [f"{'#' * int(kind[1])} {value}", ""]
        elif kind == "p":
            lines += [value, ""]
        elif kind == "items":
            lines += [f"- **{name}**: {text}" for name, text in value] + [""]
        elif kind == "table":
            lines += [value.to_markdown(), ""]
        else:
            lines += [f"![{value[1]}]({value[0]})", ""]
    return "\n".join(lines).rstrip() + "\n"


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


def plot_convergence(results: dict[str, Any], dataset: str, path: str | Path) -> Path:
    """Test ACC and test AUC against the fine-tuning epoch for every method that ran on ``dataset``.

    Mean over seeds, with a ±std band when there are several seeds; mednns's own methods drawn bold and on top.

    :param results: evaluation results. :param dataset: the dataset.
    :param path: the PNG file to write.
    :returns: ``path``.
    :raises UsageError: for an unknown dataset or one on which no method ran.
    """
    results = as_view(results)
    entries = _dataset(results, dataset).get("methods", {})
    methods = [m for m in method_order(results) if _ran(entries.get(m))]
    if not methods:
        raise UsageError(f"no method ran on {dataset!r}: nothing to plot")
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
               if any(_ran(results["datasets"][d].get("methods", {}).get(m)) for d in names)]
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
            if not _ran(entry):
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
              if not is_ours(view, m) and any(_gain_stats(view, o, m, metric) for o in ours)]
    if not ours or not others:
        raise UsageError("no paired statistics in these results: nothing to plot")
    colors = _colors(view)
    figure = _figure(8.0, 1.0 + 0.42 * len(others) * max(1, len(ours)) ** 0.5 + 0.6)
    axes = figure.add_subplot()
    step = 0.7 / max(1, len(ours))
    for i, mine in enumerate(ours):
        legend: str | None = label(view, mine)
        for row, other in enumerate(others):
            stats = _gain_stats(view, mine, other, metric)
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
            p = _finite(stats.get("p_wilcoxon"))
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
    entries = _dataset(view, dataset).get("methods", {})
    methods = [m for m in method_order(view) if _ran(entries.get(m))]
    if not methods:
        raise UsageError(f"no method ran on {dataset!r}: nothing to plot")
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
              and any(_gain_stats(v, REFERENCE, m, "test_acc") for v in views)]
    colors = _colors(results)
    figure = _figure(8.0, 4.6)
    axes = figure.add_subplot()
    sizes = [c["train_images"] for c in chosen]
    for j, method in enumerate(others):
        xs, ys, low, high = [], [], [], []
        for size, view in zip(sizes, views):
            stats = _gain_stats(view, REFERENCE, method, "test_acc")
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


# -- the whole report -------------------------------------------------------------------------------------------
_STYLE = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; margin: 2em auto; max-width: 1200px;
       padding: 0 1em; color: #222; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; white-space: nowrap; }
th { background: #f4f4f4; }
td.r, th.r { text-align: right; font-variant-numeric: tabular-nums; }
td.l, th.l { text-align: left; }
tr.ours td { font-weight: bold; background: #fff6f6; }
td.note { color: #777; font-style: italic; }
p.footnote { font-size: 0.85em; color: #555; max-width: 60em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: 0.85em; color: #555; }
"""


def _img(folder: Path, name: str, caption: str) -> str:
    data = base64.b64encode((folder / name).read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_report(results: dict[str, Any], folder: Path, figures: Collection[str]) -> str:
    """The report as one self-contained HTML page (:func:`report_sections`; figures inlined as base64
    data URIs, inline style).

    :param results: evaluation results.
    :param folder: the folder holding the figure files.
    :param figures: file names of the figures to include.
    :returns: the HTML text.
    """
    heading = html.escape(title(results))
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">', f"<title>{heading}</title>",
             f"<style>{_STYLE}</style>", "</head>", "<body>"]
    for kind, value in report_sections(results, figures):
        if kind in ("h1", "h2", "h3"):
            parts.append(f"<{kind}>{html.escape(value)}</{kind}>")
        elif kind == "p":
            parts.append(f"<p>{html.escape(value)}</p>")
        elif kind == "items":
            parts += ["<ul>", *(f"<li><b>{html.escape(n)}</b>: {html.escape(t)}</li>" for n, t in value), "</ul>"]
        elif kind == "table":
            parts.append(value.to_html())
        else:
            parts.append(_img(folder, *value))
    parts += ["</body>", "</html>"]
    return "\n".join(parts) + "\n"


def render_report(results_path_or_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """Write the whole report: every figure, ``report.md`` and the self-contained ``report.html``.

    Figures: ``overview.png``, ``fid_heatmap.png`` (when the results hold an FID matrix of >= 2
    datasets), ``convergence_<dataset>.png`` per dataset, ``embeddings_<dataset>.png`` per dataset
    whose embeddings file (relative to the folder holding ``results.json``) exists. Rerunning overwrites.

    :param results_path_or_dir: a run directory, the evaluate stage's folder or ``results.json``.
    :param out_dir: the output folder (default: ``report/`` beside ``results.json``).
    :returns: the path of ``report.html``.
    :raises UsageError: when the results are missing or malformed.
    """
    source = results_path(results_path_or_dir)
    results = load_results(source)
    base = source.parent
    out = Path(out_dir) if out_dir is not None else base / "report"
    out.mkdir(parents=True, exist_ok=True)
    from mednns.evaluation.results import condition_view

    view = condition_view(results)
    forests = {forest_name(c): c for c in conditions(results)}
    written = []
    for name in planned_figures(results, base):
        if name == "overview.png":
            plot_overview(view, out / name)
        elif name == "fid_heatmap.png":
            plot_fid_heatmap(results, out / name)
        elif name == "sizes.png":
            plot_sizes(results, out / name)
        elif name in forests:
            plot_forest(condition_view(results, forests[name]["id"]), out / name)
        else:
            for dataset in dataset_order(view):
                if name == convergence_name(dataset):
                    plot_convergence(view, dataset, out / name)
                elif name == compute_curves_name(dataset):
                    plot_compute_curves(results, dataset, out / name)
                elif name == embeddings_name(dataset):
                    plot_embeddings(base / results["datasets"][dataset]["embeddings"], out / name)
        written.append(name)
    for dataset in dataset_order(view):
        npz = results["datasets"][dataset].get("embeddings")
        if npz and embeddings_name(dataset) not in written:
            log.warning("embeddings of %s not found at %s; the report leaves that figure out", dataset, base / npz)
    atomic_write_text(out / "report.md", markdown_report(results, figures=written))
    return atomic_write_text(out / "report.html", html_report(results, out, written))


def overall_rich_table(results: dict[str, Any], condition: str | None = None) -> Any:
    """The report's overall table of one condition (one row per method) as a rich Table.

    :param results: evaluation results (format ``mednns-evaluation/2``).
    :param condition: a condition id (default: the primary condition).
    :returns: the table, mednns's own methods in bold.
    """
    from rich.markup import escape
    from rich.table import Table as RichTable

    from mednns.evaluation.results import condition_view

    view = condition_view(results, condition)
    model = overall_table(view)
    heading = f"mednns evaluation: {results.get('run', '')} · {condition_label(view['condition'], epochs(results))}"
    table = RichTable(title=escape(heading), caption=escape(model.footnote or ""), caption_justify="left")
    for header, align in zip(model.headers, model.align):
        table.add_column(escape(header), justify="right" if align == "r" else "left", no_wrap=True)
    for row in model.rows:
        table.add_row(*(escape(c) for c in row.cells), style="bold" if row.ours else None)
    return table


__all__ = ["FORMAT", "INTRO", "REFERENCE", "Row", "Table", "as_view", "budgets_table", "comparison", "compute_table",
           "conditions", "curve", "dataset_table", "html_report", "load_results", "markdown_report", "method_items",
           "overall_rich_table", "metric_at", "overall_table", "planned_figures", "plot_compute_curves",
           "plot_convergence", "plot_embeddings", "plot_fid_heatmap", "plot_forest", "plot_overview", "plot_sizes",
           "protocol_items", "render_report", "report_sections", "results_path", "statistics_table", "title", "tsne"]
