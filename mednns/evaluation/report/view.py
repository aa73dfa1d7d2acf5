"""Reading ``results.json``: loading and checking it, and the accessors every table and figure uses
(method and dataset order, labels, epochs, metrics at an epoch, curves, comparisons)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from mednns.errors import UsageError
from mednns.evaluation.results import FORMAT, REFERENCE, RESULTS_FILE
from mednns.files import read_json
from mednns.layout import EVALUATE_STAGE, STAGES, stage_dir

#: The stage folder of a run that holds ``results.json``.
STAGE = EVALUATE_STAGE
DPI = 150
MISSING = "—"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PRODUCE_HINT = ("`mednns evaluate CONFIG` (or `mednns run CONFIG` with the `evaluate` stage) writes "
                 "it to RUN_DIR/stages/evaluate/results.json")


# -- loading ---------------------------------------------------------------------------------------
def results_path(path: str | Path) -> Path:
    """Locate ``results.json`` from a run directory, the evaluate stage's folder, a folder holding it
    (or its compressed copy ``results.json.gz``, as ``benchmarks/evaluation.py`` publishes it) or the
    file itself.

    :param path: ``RUN_DIR``, ``RUN_DIR/stages/evaluate``, a published folder or a results file.
    :returns: the path of the results file.
    :raises UsageError: when no evaluation results file is found there (naming where it looked).
    """
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        candidates = [stage_dir(path, STAGE) / RESULTS_FILE, path / RESULTS_FILE, path / f"{RESULTS_FILE}.gz"]
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
        ``results.json`` (or ``results.json.gz``), or the file itself.
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


def shown_epochs(results: dict[str, Any]) -> list[int]:
    """The epochs the tables report: ``protocol.report_epochs`` within ``1..K``, deduplicated, sorted, ending at K.

    :param results: evaluation results.
    """
    k = epochs(results)
    chosen = {int(e) for e in results["protocol"].get("report_epochs") or [] if 1 <= int(e) <= k}
    return sorted(chosen | {k})


def has_runs(entry: dict[str, Any] | None) -> bool:
    if not entry:
        return False
    return entry.get("status") == "ok" and bool(entry.get("runs") or entry.get("summary"))


def finite_number(value: Any) -> float | None:
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
    if isinstance(cell, dict) and finite_number(cell.get("mean")) is not None:
        return finite_number(cell["mean"]), finite_number(cell.get("std"))
    return None, None


def curve(entry: dict[str, Any], metric: str) -> tuple[list[int], list[float], list[float]]:
    """A method's test metric over epochs: ``(epochs, mean over seeds, std over seeds)``.

    :param entry: ``results["datasets"][d]["methods"][m]``.
    :param metric: ``test_acc`` or ``test_auc``.
    :returns: three equally long lists (epochs with no finite value are left out).
    """
    summary = (entry.get("summary") or {}).get("curve") or {}
    stds = summary.get(f"{metric}_std") or [0.0] * len(summary.get("epochs", []))
    points = [(int(e), finite_number(m), finite_number(sd) or 0.0)
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
    return finite_number(given.get("gain_acc")), None if match is None else int(match), True
