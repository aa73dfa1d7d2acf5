"""Finding, loading and asking plugins: the mednns plugin manager.

Built-in and third-party plugins are found the same way, through the ``mednns``
entry-point group, and loaded one by one so that a plugin that fails to import,
declares a bad hook implementation or registers a taken name is reported with
its distribution and error while the others keep working.

Environment:

- ``MEDNNS_LOAD_PLUGINS``: comma-separated allow-list of third-party plugins
  (entry-point or distribution names); set but empty = built-ins only.
- ``MEDNNS_DISABLE_PLUGINS``: comma-separated deny-list (built-ins included).
- ``MEDNNS_STRICT_PLUGINS=1``: any plugin problem is an error (also the config
  key ``strict_plugins``).
- ``MEDNNS_TRACE_PLUGINS=1``: print the calls of the command and lifecycle hooks to stderr
  (the ``register_*`` hooks run once, at load; ``mednns plugins`` shows what they registered).
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping

import pluggy

from mednns import hookspecs
from mednns.errors import ConfigError, ConfigIssue, MednnsError, PluginLoadError
from mednns.registry import KIND_HOOKS, Component, Registry, check_component
from mednns.typecheck import suggest

log = logging.getLogger("mednns")

ENTRY_POINT_GROUP = "mednns"
BUILTIN_DISTRIBUTION = "mednns"
ENV_LOAD = "MEDNNS_LOAD_PLUGINS"
ENV_DISABLE = "MEDNNS_DISABLE_PLUGINS"
ENV_STRICT = "MEDNNS_STRICT_PLUGINS"
ENV_TRACE = "MEDNNS_TRACE_PLUGINS"


def _normalize(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(".", "-")


def _env_list(value: str) -> set[str]:
    return {_normalize(item) for item in value.split(",") if item.strip()}


def env_flag(environ: Mapping[str, str], key: str) -> bool:
    return environ.get(key, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PluginRecord:
    """What mednns knows about one plugin, for ``mednns plugins`` and error reports."""

    name: str
    distribution: str
    version: str
    builtin: bool
    target: str
    status: str = "pending"  # loaded | failed | disabled | not-allowed
    hooks: list[str] = field(default_factory=list)
    components: dict[str, list[str]] = field(default_factory=dict)
    load_errors: list[str] = field(default_factory=list)
    registration_errors: list[str] = field(default_factory=list)
    #: seconds its import took (entry points only): every command pays them
    import_seconds: float | None = None

    @property
    def errors(self) -> list[str]:
        """Import/validation problems, then problems met while registering components."""
        return [*self.load_errors, *self.registration_errors]

    @property
    def label(self) -> str:
        version = f" {self.version}" if self.version else ""
        return f"'{self.name}' ({self.distribution}{version})"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        del data["load_errors"], data["registration_errors"]
        data["errors"] = self.errors
        return data


class PluginManager:
    """Loads plugins and answers registry questions; one per CLI invocation or test.

    :param strict: turn every plugin problem into :class:`PluginLoadError`
        (default: ``MEDNNS_STRICT_PLUGINS``).
    :param load_entry_points: load the ``mednns`` entry-point group now.
    :param environ: environment to read the ``MEDNNS_*`` variables from.
    """

    def __init__(
        self,
        *,
        strict: bool | None = None,
        load_entry_points: bool = True,
        environ: Mapping[str, str] | None = None,
    ):
        self.environ = os.environ if environ is None else environ
        self.strict = env_flag(self.environ, ENV_STRICT) if strict is None else strict
        self.hooks = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.hooks.add_hookspecs(hookspecs)
        self.records: dict[str, PluginRecord] = {}
        self._registries: dict[str, Registry] | None = None
        if env_flag(self.environ, ENV_TRACE):
            self.hooks.trace.root.setwriter(sys.stderr.write)
            self.hooks.enable_tracing()
        if load_entry_points:
            self.load_entry_points()

    # -- loading -----------------------------------------------------------------
    def load_entry_points(self, entry_points: Iterable[importlib.metadata.EntryPoint] | None = None) -> None:
        """Load every plugin of the ``mednns`` group: built-ins first, then by distribution and name."""
        if entry_points is None:
            entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        allow = _env_list(self.environ[ENV_LOAD]) if ENV_LOAD in self.environ else None
        deny = _env_list(self.environ.get(ENV_DISABLE, ""))

        def describe(ep: importlib.metadata.EntryPoint) -> PluginRecord:
            dist = ep.dist.name if ep.dist is not None else "unknown"
            version = ep.dist.version if ep.dist is not None else ""
            builtin = _normalize(dist) == BUILTIN_DISTRIBUTION
            return PluginRecord(ep.name, dist, version, builtin, ep.value)

        pending = sorted(((describe(ep), ep) for ep in entry_points),
                         key=lambda pair: (not pair[0].builtin, _normalize(pair[0].distribution), pair[0].name))
        for record, ep in pending:
            names = {_normalize(record.name), _normalize(record.distribution)}
            if names & deny:
                record.status = "disabled"
                self.records.setdefault(record.name, record)
                continue
            if allow is not None and not record.builtin and not names & allow:
                record.status = "not-allowed"
                self.records.setdefault(record.name, record)
                continue
            start = time.perf_counter()
            try:
                plugin = ep.load()
            except (Exception, SystemExit) as exc:  # any import-time failure (even sys.exit) is reported
                self._fail(record, f"import of '{record.target}' failed: {type(exc).__name__}: {exc}")
                continue
            finally:
                record.import_seconds = round(time.perf_counter() - start, 3)
            self._add(plugin, record)
        self._ensure_registries()

    def register(self, plugin: object, name: str | None = None, *, distribution: str = "(registered in code)",
                 version: str = "") -> PluginRecord:
        """Register a plugin object directly (notebooks, tests); same checks as entry points."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        record = PluginRecord(name, distribution, version, builtin=False, target=repr(plugin))
        self._add(plugin, record)
        return record

    def unregister(self, name: str) -> None:
        """Remove a plugin and the components it registered."""
        if self.hooks.get_plugin(name) is not None:
            self.hooks.unregister(name=name)
        self.records.pop(name, None)
        self._registries = None

    def _add(self, plugin: object, record: PluginRecord) -> None:
        taken = self.records.get(record.name)
        if taken is not None and taken.status == "loaded":
            self._fail(record, f"plugin name '{record.name}' is already used by {taken.label}",
                       key=f"{record.name}@{record.distribution}")
            return
        try:
            self.hooks.register(plugin, name=record.name)
        except Exception as exc:  # pluggy.PluginValidationError, or the same object registered twice
            if self.hooks.get_plugin(record.name) is plugin:  # pluggy keeps a half-registered plugin
                self.hooks.unregister(name=record.name)
            self._fail(record, f"invalid plugin: {exc}")
            return
        callers = self.hooks.get_hookcallers(plugin) or []
        unknown = sorted(c.name for c in callers if c.spec is None)
        if unknown:
            self.hooks.unregister(plugin)
            known = [n for n in dir(hookspecs) if n.startswith(("register_", "run_", "stage_"))]
            details = []
            for hook in unknown:
                close = suggest(hook, known)
                details.append(f"'{hook}'" + (f" (did you mean '{close}'?)" if close else ""))
            self._fail(record, f"hook implementation {', '.join(details)} matches no mednns hook")
            return
        record.hooks = sorted(c.name for c in callers)
        record.status = "loaded"
        self.records[record.name] = record
        if self._registries is not None:
            self._register_components(record, self._registries)

    def _fail(self, record: PluginRecord, message: str, key: str | None = None, *, registering: bool = False) -> None:
        record.status = "failed"
        (record.registration_errors if registering else record.load_errors).append(message)
        self.records.setdefault(key or record.name, record)
        if self.strict:
            raise PluginLoadError(f"Error loading plugin {record.label}: {message}",
                                  hint=f"unset {ENV_STRICT} / strict_plugins to load the other plugins anyway")

    # -- queries -----------------------------------------------------------------
    @property
    def errors(self) -> list[tuple[PluginRecord, str]]:
        """``(plugin, message)`` for every problem seen so far (registration included)."""
        self._ensure_registries()
        return [(r, e) for r in self.records.values() for e in r.errors]

    def raise_for_errors(self) -> None:
        """Strict mode after the fact (e.g. ``strict_plugins: true`` in a config)."""
        problems = self.errors
        if problems:
            lines = "; ".join(f"{r.label}: {e}" for r, e in problems)
            raise PluginLoadError(f"Plugin errors (strict mode): {lines}")

    def notify(self, hook: str, *, abort: bool = False, **kwargs: Any) -> list[tuple[str, str]]:
        """Call every implementation of the lifecycle or command hook ``hook`` on its own, so that a
        failure names its plugin. By default one that raises is logged as a warning and the others
        still run (a notification must not end a long run); with ``abort`` (``run_started``, which
        may refuse a run) the first failure is raised again as a :class:`MednnsError` naming the
        plugin (a deliberate :class:`MednnsError` keeps its exit code and hint). Returns
        ``(plugin, message)`` for each failure."""
        failures = []
        for impl in reversed(getattr(self.hooks.hook, hook).get_hookimpls()):  # pluggy's order: last first
            try:
                impl.function(*[kwargs[name] for name in impl.argnames])
            except Exception as exc:
                if abort:
                    if isinstance(exc, MednnsError):
                        raise type(exc)(f"plugin '{impl.plugin_name}' ({hook}): {exc.message}", exc.hint) from exc
                    raise MednnsError(f"plugin '{impl.plugin_name}': its {hook} hook failed: "
                                      f"{type(exc).__name__}: {exc}",
                                      hint="fix or disable the plugin (MEDNNS_DISABLE_PLUGINS=<name>)") from exc
                message = f"its {hook} hook failed: {type(exc).__name__}: {exc}"
                log.warning("plugin '%s': %s", impl.plugin_name, message)
                failures.append((impl.plugin_name, message))
        return failures

    def plugin_names(self) -> list[str]:
        return [r.name for r in self.records.values() if r.status == "loaded"]

    def registry(self, kind: str) -> Registry:
        """The :class:`Registry` of ``kind`` (``datasets``, ``search-spaces`` ...)."""
        registries = self._ensure_registries()
        if kind not in registries:
            Registry(kind)  # raises the unknown-kind error
        return registries[kind]

    def check(self, kind: str, name: str, args: dict[str, Any], path: str) -> list[ConfigIssue]:
        """Problems of ``args`` for the component ``name`` of ``kind``, as a config check finds them
        (missing, unexpected and mistyped arguments, nested components too), each located under
        ``path`` (``path.<argument>``); nothing is built."""
        return check_component(self, {"name": name, "args": args}, kind, path, args_path=path)

    def create(self, kind: str, name: str, /, **args: Any) -> Any:
        """Build a component after validating ``args`` against its factory's signature."""

        issues = check_component(self, {"name": name, "args": args}, kind, f"{kind}:{name}")
        if issues:
            raise ConfigError(issues)
        return self.registry(kind).get(name).factory(**args)

    def _ensure_registries(self) -> dict[str, Registry]:
        if self._registries is None:
            self._registries = {kind: Registry(kind) for kind in KIND_HOOKS}
            for record in list(self.records.values()):
                if not record.load_errors and self.hooks.get_plugin(record.name) is not None:
                    record.components, record.registration_errors = {}, []
                    record.status = "loaded"
                    self._register_components(record, self._registries)
        return self._registries

    def _register_components(self, record: PluginRecord, registries: dict[str, Registry]) -> None:
        """Call one plugin's ``register_*`` hooks, in kind order, into ``registries``."""
        plugin = self.hooks.get_plugin(record.name)
        for kind, (hook, _) in KIND_HOOKS.items():
            for impl in getattr(self.hooks.hook, hook).get_hookimpls():
                if impl.plugin is plugin:
                    self._call_register(impl, registries[kind], record)

    def _call_register(self, impl: pluggy.HookImpl, registry: Registry, record: PluginRecord) -> None:
        def register(name: str, factory: Callable[..., Any], *, description: str) -> None:
            if not isinstance(name, str) or not name:
                raise TypeError(f"component name must be a non-empty string, got {name!r}")
            if not callable(factory):
                raise TypeError(f"factory of '{name}' is not callable: {factory!r}")
            if not isinstance(description, str):
                raise TypeError(f"description of '{name}' must be a string")
            try:
                registry.add(Component(registry.kind, name, factory, description.strip(), record.name))
            except Exception as exc:
                self._fail(record, str(exc).split("\n")[0], registering=True)
            else:
                record.components.setdefault(registry.kind, []).append(name)

        try:
            impl.function(*[{"register": register}[arg] for arg in impl.argnames])
        except PluginLoadError:
            raise
        except Exception as exc:
            self._fail(record, f"{impl.function.__name__} raised {type(exc).__name__}: {exc}", registering=True)


_default: PluginManager | None = None


def get_plugin_manager() -> PluginManager:
    """The process-wide manager used by the public API (created on first use)."""
    global _default
    if _default is None:
        _default = PluginManager()
    return _default


def set_plugin_manager(manager: PluginManager | None) -> None:
    """Replace (or with ``None`` drop) the process-wide manager; the CLI and tests use this."""
    global _default
    _default = manager


_pinned = False


def plugin_manager_pinned() -> bool:
    """Whether :func:`pinned_plugin_manager` holds the process-wide manager (the CLI then keeps it)."""
    return _pinned


@contextlib.contextmanager
def pinned_plugin_manager(manager: PluginManager) -> Iterator[PluginManager]:
    """Use ``manager`` process-wide within the block, CLI invocations included (which otherwise
    start with a fresh manager); the previous one is restored afterwards."""
    global _pinned
    previous, was_pinned = _default, _pinned
    set_plugin_manager(manager)
    _pinned = True
    try:
        yield manager
    finally:
        _pinned = was_pinned
        set_plugin_manager(previous)
