"""Named components per kind: who registered what, and how to build it."""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Protocol, TypeVar, cast

from mednns.errors import ConfigIssue, DuplicateComponentError, MednnsError, UnknownComponentError, UsageError
from mednns.paths import name_problem
from mednns.typecheck import ComponentSpec, check_args, suggest, with_defaults

if TYPE_CHECKING:  # pragma: no cover
    from mednns.manager import PluginManager

# kind (as typed on the command line) -> (hook that fills it, singular noun for messages)
KIND_HOOKS: dict[str, tuple[str, str]] = {
    "search-spaces": ("register_search_spaces", "search space"),
    "datasets": ("register_datasets", "dataset"),
    "dataset-encoders": ("register_dataset_encoders", "dataset encoder"),
    "model-encoders": ("register_model_encoders", "model encoder"),
    "losses": ("register_losses", "loss"),
    "transfer-scores": ("register_transfer_scores", "transfer score"),
    "stages": ("register_stages", "stage"),
}


class LazyFactory:
    """A factory named ``"module:attribute"``, imported on first use.

    Registering heavy components (torch models) lazily keeps ``mednns list`` and
    ``mednns plugins`` fast: the module is imported when the component is built
    or its arguments are validated.
    """

    def __init__(self, target: str):
        module, sep, attribute = target.partition(":")
        if not sep or not module or not attribute:
            raise ValueError(f"lazy factory target must be 'module:attribute', got {target!r}")
        self.target = target
        self._loaded: Callable[..., Any] | None = None

    def load(self) -> Callable[..., Any]:
        if self._loaded is None:
            module, _, attribute = self.target.partition(":")
            obj: Any = importlib.import_module(module)
            for part in attribute.split("."):
                obj = getattr(obj, part)
            self._loaded = obj
        return self._loaded

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.load()(*args, **kwargs)

    def __repr__(self) -> str:
        return f"lazy({self.target!r})"


def lazy(target: str) -> LazyFactory:
    """``register("name", mednns.lazy("my_pkg.models:MyNet"), description=...)``: import on first use."""
    return LazyFactory(target)


@dataclass(frozen=True)
class Component:
    """One registered component: its factory, a one-line description and the plugin that provided it."""

    kind: str
    name: str
    factory: Callable[..., Any]
    description: str
    provider: str


class Registry:
    """The components of one kind, by name.

    A name registered twice stays recorded as a conflict: asking for it raises
    :class:`DuplicateComponentError` naming both providers, so the ambiguity is
    never resolved silently by load order.
    """

    def __init__(self, kind: str):
        if kind not in KIND_HOOKS:
            raise UnknownComponentError(
                f"Unknown component kind {kind!r}.", hint=f"kinds: {', '.join(KIND_HOOKS)}"
            )
        self.kind = kind
        self.noun = KIND_HOOKS[kind][1]
        self._components: dict[str, Component] = {}
        self._conflicts: dict[str, list[str]] = {}

    def add(self, component: Component) -> None:
        """Add ``component``; raise :class:`DuplicateComponentError` when its name is taken, and a
        usage error when it cannot be a folder name (stages get folders named after them; runs
        keep files per dataset, supernet and component)."""
        problem = name_problem(component.name)
        if problem:
            raise UsageError(f"{self.noun} name {problem}", hint=f"registered by {component.provider}")
        existing = self._components.get(component.name)
        if existing is not None:
            providers = self._conflicts.setdefault(component.name, [existing.provider])
            providers.append(component.provider)
            raise self._duplicate_error(component.name)
        self._components[component.name] = component

    def _duplicate_error(self, name: str) -> DuplicateComponentError:
        providers = self._conflicts[name]
        return DuplicateComponentError(
            f"{self.noun.capitalize()} '{name}' is registered by more than one plugin: "
            + " and ".join(f"'{p}'" for p in providers),
            hint="uninstall or disable one of them (MEDNNS_DISABLE_PLUGINS=<name>)",
        )

    def get(self, name: str) -> Component:
        """The component called ``name``; unknown names fail with a suggestion."""
        if name in self._conflicts:
            raise self._duplicate_error(name)
        try:
            return self._components[name]
        except KeyError:
            raise self.unknown(name) from None

    def unknown(self, name: str) -> UnknownComponentError:
        close = suggest(name, self._components)
        maybe = f" Did you mean '{close}'?" if close else ""
        return UnknownComponentError(f"Unknown {self.noun} '{name}'.{maybe} Run 'mednns list {self.kind}'.")

    def names(self, pattern: str | None = None) -> list[str]:
        """Sorted names, filtered by a glob ``pattern`` (``*mnist*``) when given."""
        names = sorted(self._components)
        return [n for n in names if fnmatch.fnmatchcase(n, pattern)] if pattern else names

    def components(self, pattern: str | None = None) -> list[Component]:
        return [self._components[n] for n in self.names(pattern)]

    def __contains__(self, name: object) -> bool:
        return name in self._components

    def __len__(self) -> int:
        return len(self._components)


# -- components as configs write them: {name, args} ------------------------------------------

#: Required factory arguments that whoever builds the component supplies, per kind: a search space
#: gets ``in_channels`` and ``num_classes`` from the dataset it is trained on.
SUPPLIED_ARGS: dict[str, frozenset[str]] = {"search-spaces": frozenset({"in_channels", "num_classes"})}


class ComponentSource(Protocol):
    """What building components takes from a plugin manager (:class:`mednns.manager.PluginManager` is
    one; a test may pass any object with these two methods)."""

    def registry(self, kind: str) -> Registry: ...

    def create(self, kind: str, name: str, /, **args: Any) -> Any: ...


def check_component(manager: "PluginManager", value: Any, kind: str, path: str,
                    args_path: str | None = None) -> list[ConfigIssue]:
    """Problems of one ``{name, args}`` component of ``kind`` (recursing into nested components).

    :param args_path: where its arguments are located (default: ``<path>.args``).
    """
    registry = manager.registry(kind)
    if not isinstance(value, dict):
        example = registry.names()[0] if len(registry) else "..."
        return [ConfigIssue(path, f"expected a {registry.noun} component, got {value!r}",
                            f"write {{name: {example}, args: {{...}}}}")]
    issues = []
    for key in value:
        if key not in ("name", "args"):
            close = suggest(str(key), ["name", "args"])
            issues.append(ConfigIssue(f"{path}.{key}", "unknown key in a component",
                                      f"did you mean '{close}'? " if close
                                      else "components have only 'name' and 'args'"))
    name = value.get("name")
    if not isinstance(name, str):
        issues.append(ConfigIssue(f"{path}.name", "missing or not a string",
                                  f"the registered name of a {registry.noun}; run 'mednns list {kind}'"))
        return issues
    try:
        component = registry.get(name)
    except MednnsError as exc:
        return issues + [ConfigIssue(f"{path}.name", exc.message, exc.hint)]
    args = value.get("args")
    if args is None:
        args = {}
    if not isinstance(args, dict):
        return issues + [ConfigIssue(f"{path}.args", f"expected a mapping of arguments, got {args!r}")]
    on_component = lambda v, k, p: check_component(manager, v, k, p)  # noqa: E731
    return issues + check_args(component.factory, args, args_path or f"{path}.args", on_component,
                               supplied=SUPPLIED_ARGS.get(kind, frozenset()))


_Kind = TypeVar("_Kind", bound=str)


def resolve_component(manager: "PluginManager", value: dict[str, Any], kind: _Kind) -> ComponentSpec[_Kind]:
    """A validated component with its factory's defaults filled in (for the resolved config)."""
    component = manager.registry(kind).get(value["name"])
    spec = {"name": value["name"], "args": with_defaults(component.factory, dict(value.get("args") or {}))}
    return cast("ComponentSpec[_Kind]", spec)  # a plain dict at run time (see mednns.typecheck)
