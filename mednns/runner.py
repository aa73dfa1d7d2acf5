"""Execute the stages of a run in order, skipping those already complete for an unchanged config."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from mednns.distributed import barrier, broadcast
from mednns.errors import MednnsError, UsageError
from mednns.files import read_json, write_json
from mednns.locks import held
from mednns.paths import inside
from mednns.runs import Run, write_run_metadata
from mednns.seeding import derive_seed, seed_everything

log = logging.getLogger("mednns")

STAGE_STATE = "stage.json"
#: The run directory's lock file (:mod:`mednns.locks`): one process at a time runs it.
LOCK_FILE = ".mednns.lock"
#: What rank 0 tells the other ranks of a torchrun job about each stage.
RUN, SKIP = "run", "skip"


def stage_fingerprint(run: Run, spec: dict[str, Any], previous: str,
                      omits: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """Hash of what a stage's results depend on: its spec, the datasets, the seed and the stage before it.

    :param omits: arguments left out while they hold these values (:attr:`Stage.fingerprint_omits`).
    """
    omitted = omits or {}
    args = {k: v for k, v in (spec.get("args") or {}).items() if not (k in omitted and omitted[k] == v)}
    inputs = {"stage": {**spec, "args": args}, "datasets": run.config.datasets, "seed": run.config.seed,
              "previous": previous}
    text = json.dumps(inputs, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16], inputs


def _upstream(reads: tuple[str, ...] | None, previous: str, fingerprints: dict[str, str]) -> str:
    """What enters a stage's fingerprint from the stages before it: the one listed just before it
    (``reads`` is ``None``), nothing (``()``), the fingerprint of the one stage it reads, or a hash
    of those of several (a stage it reads that the config does not list counts as ``""``)."""
    if reads is None:
        return previous
    found = [fingerprints.get(name, "") for name in reads]
    if len(found) == 1:
        return found[0]
    return hashlib.sha256(json.dumps(found).encode()).hexdigest()[:16] if found else ""


def _changed_keys(old: Any, new: Any, path: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        keys = list(dict.fromkeys([*old, *new]))
        return [k for key in keys for k in _changed_keys(old.get(key), new.get(key), f"{path}.{key}" if path else key)]
    return [] if old == new else [path or "<root>"]


def _attach_log_file(directory: Path) -> logging.Handler:
    handler = logging.FileHandler(directory / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)
    if log.level == logging.NOTSET or log.level > logging.INFO:
        log.setLevel(logging.INFO)
    return handler


def execute(run: Run, *, restart: bool = False) -> dict[str, Any]:
    """Run every stage; return (and write) ``results.json``.

    A stage is skipped when its ``stage.json`` records ``complete`` under the same
    fingerprint and its outputs exist. A stage interrupted under a *different*
    config is refused (its partial state belongs to the old config) unless
    ``restart`` is set, which discards that partial state. A stage whose
    :attr:`~mednns.stages.Stage.keeps_state` is true keeps its directory when its
    config changes (``restart`` still discards it). The run directory is locked
    for the whole run: a second process on it gets a usage error naming the first.

    Under torchrun, rank 0 does all of the above and tells the other ranks, stage by stage, whether
    it runs; they take part in the stages that are :attr:`~mednns.stages.Stage.distributed` and
    wait for rank 0 in the others (:func:`_follow`).
    """
    if not run.distributed.is_main:
        return _follow(run)
    with held(run.directory / LOCK_FILE, f"the run directory {run.directory}"):
        return _execute(run, restart)


def _execute(run: Run, restart: bool) -> dict[str, Any]:
    write_run_metadata(run)
    handler = _attach_log_file(run.directory)
    results: dict[str, Any] = {"run": run.config.name, "directory": str(run.directory), "status": "running",
                               "stages": {}}
    error: BaseException | None = None
    try:
        log.info("run %s in %s (device %s, seed %d)", run.config.name, run.directory, run.device, run.seed)
        run.manager.notify("run_started", run=run, abort=True)  # a plugin may refuse the run
        previous = ""
        fingerprints: dict[str, str] = {}
        for spec, stage in run.stages:
            name = spec["name"]
            upstream = _upstream(getattr(stage, "reads", None), previous, fingerprints)
            fingerprint, inputs = stage_fingerprint(run, spec, upstream, getattr(stage, "fingerprint_omits", None))
            previous = fingerprints[name] = fingerprint
            results["stages"][name] = _run_stage(run, name, stage, fingerprint, inputs, restart)
            write_json(run.directory / "results.json", results)
        results["status"] = "complete"
    except BaseException as exc:
        error = exc
        results["status"] = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
        results["error"] = f"{type(exc).__name__}: {exc}"
        log.error("run %s %s: %s", run.config.name, results["status"], results["error"])
        raise
    finally:
        write_json(run.directory / "results.json", results)
        try:
            run.manager.notify("run_finished", run=run, results=results, error=error)
        finally:
            log.removeHandler(handler)
            handler.close()
    return results


def _follow(run: Run) -> dict[str, Any]:
    """A rank other than 0: run the distributed stages rank 0 runs, in step with it; write nothing."""
    for spec, stage in run.stages:
        if broadcast(run.distributed, None) == RUN:
            seed_everything(derive_seed(run.seed, spec["name"]))
            if getattr(stage, "distributed", False):
                stage.run(run)
            barrier(run.distributed)
    return {"run": run.config.name, "directory": str(run.directory), "status": "complete",
            "rank": run.distributed.rank, "stages": {}}


def _describe(directory: Path) -> str:
    """``<dir> (N files, X MB)``: what deleting a stage folder would lose."""
    files = [p for p in directory.rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    return f"{directory} ({len(files)} files, {size / 2**20:.1f} MB)"


def _discard(run: Run, name: str) -> Path:
    """Delete a stage's folder (checked to lie inside the run's ``stages/``) and make it again."""
    shutil.rmtree(inside(run.stage_dir(name), run.directory / "stages"))
    return run.stage_dir(name)


def _run_stage(run: Run, name: str, stage: Any, fingerprint: str, inputs: dict[str, Any],
               restart: bool) -> dict[str, Any]:
    directory = run.stage_dir(name)
    state_path = directory / STAGE_STATE
    try:
        state = read_json(state_path) if state_path.exists() else None
    except UsageError:  # a damaged stage.json: --restart discards the stage's state anyway
        if not restart:
            raise
        log.warning("stage %s: %s is damaged; --restart starts the stage over", name, state_path)
        state, directory = None, _discard(run, name)
    if state is not None and state.get("fingerprint") == fingerprint and state.get("status") == "complete":
        missing = [str(p) for p in stage.outputs(run) if not Path(p).exists()]
        damaged = [] if missing else list(getattr(stage, "damaged_outputs", lambda _: [])(run))
        if damaged and not restart:
            raise UsageError(f"stage '{name}' is complete, but its outputs are damaged: {'; '.join(damaged)}",
                             hint="restore them from a copy, or run with --restart so that the stage makes them "
                                  "again")
        if damaged:
            log.warning("stage %s: outputs damaged (%s); --restart starts the stage over", name, "; ".join(damaged))
            directory = _discard(run, name)
        elif not missing:
            log.info("stage %s: complete for this config, skipped", name)
            broadcast(run.distributed, SKIP)
            record = {"status": "skipped", "seconds": state.get("seconds"), "results": state.get("results", {})}
            run.manager.notify("stage_finished", run=run, stage=name, results=record["results"], skipped=True)
            return record
        else:
            log.info("stage %s: outputs missing (%s), running again", name, ", ".join(missing))
    elif state is not None and state.get("fingerprint") != fingerprint:
        changed = _changed_keys(state.get("inputs", {}), inputs)
        decide = getattr(stage, "keeps_state_for", None)
        keep = not restart and (decide(changed) if decide else bool(getattr(stage, "keeps_state", False)))
        if state.get("status") != "complete" and not restart and not keep:
            raise UsageError(
                f"stage '{name}' in {run.directory} was interrupted under a different config "
                f"(changed: {', '.join(changed) or 'unknown'}); refusing to resume it",
                hint="restore the old config, pass --restart to discard its partial state, or use --output-dir",
            )
        if not keep and not restart and state.get("status") == "complete" and getattr(stage, "expensive", False):
            raise UsageError(
                f"stage '{name}' finished in {run.directory} under another config (changed: "
                f"{', '.join(changed) or 'unknown'}); running it again would delete {_describe(directory)}",
                hint="restore the old config to keep them, pass --restart to discard them, or use --output-dir")
        log.info("stage %s: config changed (%s), running again%s", name, ", ".join(changed) or "unknown",
                 " on its kept files" if keep else "")
        if not keep:
            directory = _discard(run, name)
    elif restart and state is not None and state.get("status") != "complete":
        directory = _discard(run, name)

    broadcast(run.distributed, RUN)
    seed_everything(derive_seed(run.seed, name))
    write_json(state_path, {"stage": name, "fingerprint": fingerprint, "inputs": inputs, "status": "running"})
    log.info("stage %s: running", name)
    start = time.perf_counter()
    try:
        stage_results = stage.run(run) or {}
        barrier(run.distributed)  # the other ranks' part of a distributed stage is done too
    except BaseException as exc:
        write_json(state_path, {"stage": name, "fingerprint": fingerprint, "inputs": inputs, "status": "failed",
                                "error": f"{type(exc).__name__}: {exc}"})
        raise
    seconds = round(time.perf_counter() - start, 3)
    try:
        json.dumps(stage_results)
    except TypeError as exc:
        raise MednnsError(f"stage '{name}' returned results that are not JSON-serializable: {exc}") from None
    missing = [str(p) for p in stage.outputs(run) if not Path(p).exists()]
    if missing:
        raise MednnsError(f"stage '{name}' finished without writing its outputs: {', '.join(missing)}")
    write_json(state_path, {"stage": name, "fingerprint": fingerprint, "inputs": inputs, "status": "complete",
                            "seconds": seconds, "results": stage_results})
    log.info("stage %s: complete in %.1f s", name, seconds)
    run.manager.notify("stage_finished", run=run, stage=name, results=stage_results, skipped=False)
    return {"status": "complete", "seconds": seconds, "results": stage_results}
