"""The evaluation report: figures, markdown and one self-contained HTML page from ``results.json``.

The ``evaluate`` stage writes ``<run>/stages/evaluate/results.json`` (format ``mednns-evaluation/2``:
leave-one-dataset-out fine-tuning of mednns's pick against baselines under one or more conditions,
a budget and a training-set size) and, per held-out dataset, ``embeddings/<dataset>.npz`` (the
fold's meta-space). Most functions take a *view* of one condition
(:func:`mednns.evaluation.results.condition_view`); the report shows the primary condition in full
and every condition's statistics, budgets side by side and the compute. The package turns them into:

* :func:`markdown_report`: the protocol, the overall and statistics tables, budgets and compute,
  one table per dataset (``report.md``);
* :func:`plot_overview`, :func:`plot_convergence`, :func:`plot_fid_heatmap`,
  :func:`plot_embeddings`, :func:`plot_forest`, :func:`plot_compute_curves`, :func:`plot_sizes`:
  PNG figures (matplotlib on an Agg canvas, no pyplot state);
* :func:`render_report`: all of them plus ``report.html``, a single page with the figures inlined.

Every number comes from what the stage computed (:mod:`mednns.evaluation.results`): each method's
``summary`` and each dataset's ``comparison``; this package only formats and draws. Modules:
:mod:`.view` (loading ``results.json`` and reading it), :mod:`.tables` (the table model and every
table), :mod:`.figures` (the PNG figures and which a report holds), :mod:`.page` (the sections,
markdown, HTML and :func:`render_report`).
"""

from __future__ import annotations

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
    tsne,
)
from mednns.evaluation.report.page import (
    INTRO,
    html_report,
    markdown_report,
    overall_rich_table,
    render_report,
    report_sections,
    title,
)
from mednns.evaluation.report.tables import (
    Row,
    Table,
    budgets_table,
    compute_table,
    condition_label,
    conditions,
    dataset_table,
    early_table,
    fmt,
    fmt_ci,
    fmt_gain,
    fmt_gain_stats,
    fmt_mean_std,
    fmt_p,
    fmt_params,
    fmt_seconds,
    method_items,
    overall_table,
    protocol_items,
    ranking_conditions,
    ranking_table,
    slug,
    statistics_table,
)
from mednns.evaluation.report.view import (
    FORMAT,
    MISSING,
    PNG_SIGNATURE,
    REFERENCE,
    RESULTS_FILE,
    STAGE,
    as_view,
    comparison,
    curve,
    dataset_order,
    epochs,
    is_ours,
    label,
    load_results,
    method_order,
    metric_at,
    results_path,
    shown_epochs,
)

__all__ = [
    "FORMAT",
    "INTRO",
    "MISSING",
    "PNG_SIGNATURE",
    "REFERENCE",
    "RESULTS_FILE",
    "Row",
    "STAGE",
    "Table",
    "as_view",
    "budgets_table",
    "comparison",
    "compute_curves_name",
    "compute_table",
    "condition_label",
    "conditions",
    "convergence_name",
    "curve",
    "dataset_order",
    "dataset_table",
    "early_table",
    "embeddings_name",
    "epochs",
    "fmt",
    "fmt_ci",
    "fmt_gain",
    "fmt_gain_stats",
    "fmt_mean_std",
    "fmt_p",
    "fmt_params",
    "fmt_seconds",
    "forest_name",
    "html_report",
    "is_ours",
    "label",
    "load_results",
    "markdown_report",
    "method_items",
    "method_order",
    "metric_at",
    "overall_rich_table",
    "overall_table",
    "planned_figures",
    "plot_compute_curves",
    "plot_convergence",
    "plot_embeddings",
    "plot_fid_heatmap",
    "plot_forest",
    "plot_overview",
    "plot_sizes",
    "protocol_items",
    "ranking_conditions",
    "ranking_table",
    "render_report",
    "shown_epochs",
    "report_sections",
    "results_path",
    "slug",
    "statistics_table",
    "title",
    "tsne",
]
