"""Leave-one-dataset-out evaluation of mednns against baselines, and its report.

:mod:`.methods` names what is compared, :mod:`.settings` what the ``evaluate`` stage is asked
(conditions, variants), :mod:`.candidates` builds each method's starting network,
:mod:`.leave_one_out` runs the protocol, :mod:`.results` turns histories into mean ± std, gains and
epochs-to-match, :mod:`.statistics` pairs runs into gains with intervals and p-values,
:mod:`.report` renders figures, markdown and HTML.
"""

from __future__ import annotations

from mednns._exports import lazy_exports

__all__, __getattr__, __dir__ = lazy_exports(__name__, globals(), {
    "EvaluationSettings": "mednns.evaluation.settings",
    "DEFAULT_TANS_LOSSES": "mednns.evaluation.settings",
    "evaluate": "mednns.evaluation.leave_one_out",
    "load_results": "mednns.evaluation.report",
    "render_report": "mednns.evaluation.report",
    "overall_rich_table": "mednns.evaluation.report",
    "compare_methods": "mednns.evaluation.statistics",
    "compare_evaluations": "mednns.evaluation.statistics",
})
