"""Run configuration: YAML loading, ``--set`` overrides, ``${ENV}`` expansion and validation.

A config is a YAML mapping::

    name: pneumonia-summary        # run name (default: the config file's stem)
    seed: 0                        # seeds python, numpy, torch and data loaders
    device: auto                   # auto | cpu | cuda | cuda:N
    output_dir: runs               # run directory = output_dir/name
    strict_plugins: false          # any plugin load problem is an error
    datasets:                      # components: {name: <registered name>, args: {...}}
      - name: pneumoniamnist
        args: {size: 28}
    stages:
      - name: dataset_summary

Strings may use ``${VAR}`` or ``${VAR:-default}`` to read the environment.
Everything is validated before any work starts; all problems are reported at
once, each with its key path.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Sequence

import yaml

from mednns.errors import ConfigError, ConfigIssue, UsageError
from mednns.paths import name_problem
from mednns.registry import check_component, resolve_component
from mednns.typecheck import ComponentSpec, check_value, describe, suggest

if TYPE_CHECKING:  # pragma: no cover
    from mednns.manager import PluginManager

DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
_ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


@dataclass
class RunConfig:
    """The top-level keys of a run config; the annotations are the schema."""

    stages: list[ComponentSpec[Literal["stages"]]]
    datasets: list[ComponentSpec[Literal["datasets"]]] = field(default_factory=list)
    name: str | None = None
    seed: int = 0
    device: str = "auto"
    output_dir: str = "runs"
    strict_plugins: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {f.name: copy.deepcopy(getattr(self, f.name)) for f in fields(self)}


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that rejects duplicate keys instead of keeping the last one."""


#: Bounds on what a config may be: a few kilobytes are typical; these stop inputs that would take
#: minutes or gigabytes (an alias bomb expands 10 lines into 9^10 values).
MAX_CONFIG_BYTES = 2 * 2**20
MAX_CONFIG_VALUES = 200_000
MAX_CONFIG_DEPTH = 64
_MERGE_TAG = "tag:yaml.org,2002:merge"


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:  # '<<: *base' merges; the keys written here win (YAML's rule)
            continue
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping", node.start_mark, f"found duplicate key {key!r}", key_node.start_mark
            )
        seen[key] = True
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Read a config file (safe loader, duplicate keys rejected) into a dict."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"Config file not found: {path}", hint="check the path, or start from examples/configs/")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise UsageError(f"{path} is {size / 2**20:.1f} MB; a config is at most {MAX_CONFIG_BYTES // 2**20} MB",
                         hint="is it the right file? Put data in files that a dataset reads, not in the config")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start})",
                         hint="save the config as UTF-8 (editors call it 'UTF-8' or 'Unicode')") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(ConfigIssue("", f"invalid YAML at {where}: {exc.problem}"), source=str(path)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(ConfigIssue("", f"invalid YAML: {exc}"), source=str(path)) from None
    except RecursionError:
        raise ConfigError(ConfigIssue("", "nested too deeply to read"), source=str(path)) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(ConfigIssue("", f"the top level must be a mapping, got {type(data).__name__}"),
                          source=str(path))
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.0.c=value`` overrides (values parsed as YAML) to a copy of ``data``."""
    data = copy.deepcopy(data)
    issues = []
    for override in overrides:
        key, sep, raw = override.partition("=")
        if not sep or not key.strip():
            issues.append(ConfigIssue(f"--set {override}", "expected KEY=VALUE", "e.g. --set seed=1"))
            continue
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.strip().split(".")
        node: Any = data
        for depth, part in enumerate(parts):
            last = depth == len(parts) - 1
            here = ".".join(parts[: depth + 1])
            if isinstance(node, list):
                if not part.isdigit() or int(part) >= len(node):
                    issues.append(ConfigIssue(f"--set {key}", f"'{here}' is not an index of a {len(node)}-item list"))
                    break
                index = int(part)
                if last:
                    node[index] = value
                else:
                    node = node[index]
            elif isinstance(node, dict):
                if last:
                    node[part] = value
                else:
                    if node.get(part) is None:
                        node[part] = {}
                    node = node[part]
            else:
                issues.append(ConfigIssue(f"--set {key}", f"'{'.'.join(parts[:depth])}' is a value, not a mapping"))
                break
    if issues:
        raise ConfigError(issues)
    return data


def expand_env(data: Any, environ: dict[str, str] | os._Environ = os.environ, path: str = "") -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string; unset variables without default are errors."""
    issues: list[ConfigIssue] = []
    visited = 0

    def walk(value: Any, where: str, depth: int = 0) -> Any:
        nonlocal visited
        visited += 1
        if visited > MAX_CONFIG_VALUES:
            raise ConfigError(ConfigIssue("", f"the config expands to more than {MAX_CONFIG_VALUES:,} values",
                                          "YAML aliases (*name) that repeat aliases multiply; write it out"))
        if depth > MAX_CONFIG_DEPTH:
            raise ConfigError(ConfigIssue(where, f"nested deeper than {MAX_CONFIG_DEPTH} levels"))
        if isinstance(value, dict):
            return {k: walk(v, f"{where}.{k}" if where else str(k), depth + 1) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
        if isinstance(value, str):
            def substitute(match: re.Match) -> str:
                name, default = match.group(1), match.group(2)
                if name in environ:
                    return environ[name]
                if default is not None:
                    return default
                issues.append(ConfigIssue(where, f"environment variable {name} is not set",
                                          f"set it, or write ${{{name}:-default}}"))
                return match.group(0)
            return _ENV_PATTERN.sub(substitute, value)
        return value

    result = walk(data, path)
    if issues:
        raise ConfigError(issues)
    return result


def validate_config(manager: "PluginManager", data: dict[str, Any], source: str | None = None) -> RunConfig:
    """Check a raw config mapping and return the resolved :class:`RunConfig`, or raise :class:`ConfigError`."""
    schema = {f.name: f for f in fields(RunConfig)}
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in schema:
            close = suggest(str(key), schema)
            issues.append(ConfigIssue(str(key), "unknown key",
                                      f"did you mean '{close}'?" if close else f"allowed keys: {', '.join(schema)}"))
    hints = {"stages": "add e.g. 'stages: [{name: dataset_summary}]'; run 'mednns list stages'"}
    on_component = lambda v, k, p: check_component(manager, v, k, p)  # noqa: E731
    annotations = typing.get_type_hints(RunConfig, include_extras=True)
    for name, f in schema.items():
        if name in data:
            issues += check_value(data[name], annotations[name], name, on_component)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            issues.append(ConfigIssue(name, "missing required key", hints.get(name)))
    if isinstance(data.get("name"), str) and name_problem(data["name"]):
        issues.append(ConfigIssue("name", f"the run name {name_problem(data['name'])}",
                                  "the run directory is output_dir/name"))
    device = data.get("device", "auto")
    if isinstance(device, str) and not DEVICE_PATTERN.match(device):
        issues.append(ConfigIssue("device", f"invalid device {device!r}", "use auto, cpu, cuda or cuda:N"))
    stages = data.get("stages")
    if isinstance(stages, list):
        seen: set[str] = set()
        for i, stage in enumerate(stages):
            stage_name = stage.get("name") if isinstance(stage, dict) else None
            if isinstance(stage_name, str):
                if stage_name in seen:
                    issues.append(ConfigIssue(f"stages[{i}].name", f"stage '{stage_name}' is listed twice"))
                seen.add(stage_name)
        if not stages:
            issues.append(ConfigIssue("stages", "no stages to run", hints["stages"]))
    if issues:
        raise ConfigError(issues, source=source)
    config = RunConfig(**{k: copy.deepcopy(v) for k, v in data.items()})
    config.datasets = [resolve_component(manager, d, "datasets") for d in config.datasets]
    config.stages = [resolve_component(manager, s, "stages") for s in config.stages]
    return config


def load_config(
    manager: "PluginManager",
    path: str | os.PathLike,
    overrides: Sequence[str] = (),
    environ: dict[str, str] | os._Environ = os.environ,
) -> RunConfig:
    """Read, override, expand and validate a config file; name defaults to the file's stem."""
    data = read_yaml(path)
    data = apply_overrides(data, list(overrides))
    try:
        data = expand_env(data, environ)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source=str(path)) from None
    config = validate_config(manager, data, source=str(path))
    if config.name is None:
        config.name = Path(path).stem
        problem = name_problem(config.name)
        if problem:
            raise ConfigError(ConfigIssue("name", f"the run name (the config file's stem) {problem}",
                                          "set 'name' in the config"), source=str(path))
    return config


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def parse_key_values(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """Command-line ``KEY=VALUE`` pairs: ``("a=1", "b=x")`` → ``{"a": 1, "b": "x"}`` (values parsed as YAML).

    :param option: the option's name, for error messages (e.g. ``--set``).
    """
    values: dict[str, Any] = {}
    issues = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            issues.append(ConfigIssue(f"{option} {pair}", "expected KEY=VALUE"))
            continue
        try:
            values[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            values[key.strip()] = raw
    if issues:
        raise ConfigError(issues)
    return values


__all__ = ["RunConfig", "apply_overrides", "describe", "expand_env", "load_config", "parse_key_values", "read_yaml",
           "validate_config"]
