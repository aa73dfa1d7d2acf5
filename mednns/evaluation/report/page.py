"""The whole report: its sections, rendered as ``report.md`` and as one self-contained ``report.html``, and
:func:`render_report`, which writes them with every figure."""

from __future__ import annotations

import base64
import html
import logging
from collections.abc import Collection
from pathlib import Path
from typing import Any

from mednns.evaluation.report.figures import (
    compute_curves_name,
    convergence_name,
    embeddings_name,
    forest_name,
    planned_figures,
    plot_compute_curves,
    plot_convergence,
    plot_embeddings,
    plot_fid_heatmap,
    plot_forest,
    plot_overview,
    plot_sizes,
)
from mednns.evaluation.report.tables import (
    budgets_table,
    compute_table,
    condition_label,
    conditions,
    dataset_heading,
    dataset_table,
    early_table,
    fid_line,
    method_items,
    overall_table,
    protocol_items,
    ranking_conditions,
    ranking_noise_table,
    ranking_table,
    separation_line,
    statistics_table,
)
from mednns.evaluation.report.view import dataset_order, epochs, load_results, results_path
from mednns.files import atomic_write_text

log = logging.getLogger(__name__)

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
        faster = early_table(cview)
        if faster is not None:
            blocks += [("p", "Does it train faster?"), ("table", faster)]
        blocks += figure(forest_name(condition), f"gains with 95% intervals: {condition_label(condition, k)}")
    if len(conditions(results)) > 1:
        blocks += [("h2", "Budgets side by side"), ("table", budgets_table(results))]
    blocks += [("h2", "Target-side compute"), ("table", compute_table(results))]
    found = {c["id"]: c for c in conditions(results)}
    for measured in ranking_conditions(results):
        ranked = ranking_table(results, measured)
        if ranked is not None:
            label = f" ({condition_label(found[measured], k)})" if measured in found else ""
            blocks += [("h2", "Ranking quality" + label), ("table", ranked)]
            noise = ranking_noise_table(results, measured)
            if noise is not None:
                blocks += [("p", "Do the candidates differ by more than fine-tuning's noise?"), ("table", noise)]
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
