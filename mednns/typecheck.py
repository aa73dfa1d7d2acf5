"""Validate config values against the type annotations of component factories.

A factory's signature is its config schema: parameter names are the allowed
``args`` keys, parameters without defaults are required, annotations give the
types. Supported annotations: ``bool``, ``int``, ``float`` (ints accepted),
``str``, ``pathlib.Path`` (strings accepted), ``None``, ``Optional``/``Union``/
``X | Y``, ``Literal[...]``, ``list[X]``, ``tuple[X, ...]``, ``dict[K, V]``,
``Any``, :class:`ComponentSpec` for nested components and dataclasses (a mapping of their
fields, checked field by field: a stage may take ``training: TrainConfig``). Anything else is
accepted as is: the factory itself stays the last line of defence.

:func:`takes_settings` lets a factory take the fields of a settings dataclass as flat keyword
arguments without restating them: its signature (the schema) gains the fields, with their types and
defaults, from the dataclass.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import os
import pathlib
import types
import typing
from dataclasses import dataclass
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Callable,
    Generic,
    Iterable,
    Literal,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from mednns.errors import ConfigIssue

NoneType = type(None)


@dataclass(frozen=True)
class ComponentOf:
    """Marker inside ``Annotated``: the value is a ``{name, args}`` component of ``kind``."""

    kind: str


_Kind = TypeVar("_Kind", bound=str)

if TYPE_CHECKING:
    class ComponentSpec(dict[str, Any], Generic[_Kind]):
        """To type checkers: a ``{name, args}`` dict (the kind is a ``Literal``)."""
else:
    class ComponentSpec:
        """Annotation for a factory parameter that takes a nested component.

        ``def make_stage(space: ComponentSpec[Literal["search-spaces"]]): ...`` makes the config
        validator check ``{name: ..., args: {...}}`` against the search-space registry; type checkers
        see a ``dict[str, Any]``. ``ComponentSpec["search-spaces"]`` (a bare string) means the same
        to the validator, but type checkers and linters read the string as an undefined name.
        """

        def __class_getitem__(cls, kind: Any) -> Any:
            if get_origin(kind) is Literal:
                (kind,) = get_args(kind)
            if not isinstance(kind, str):
                raise TypeError(f"ComponentSpec takes a component kind, such as Literal['losses'], not {kind!r}")
            return Annotated[dict, ComponentOf(kind)]


ComponentChecker = Callable[[Any, str, str], list[ConfigIssue]]


def suggest(name: str, choices: collections.abc.Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name``, or ``None``."""
    matches = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return matches[0] if matches else None


def describe(tp: Any) -> str:
    """A readable name for an annotation (``int``, ``list[str]``, ``one of 28, 64``)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is NoneType or tp is None:
        return "null"
    if origin is Annotated:
        for meta in args[1:]:
            if isinstance(meta, ComponentOf):
                return f"a {meta.kind} component {{name: ..., args: {{...}}}}"
        return describe(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is not None:
        inner = ", ".join("..." if a is Ellipsis else describe(a) for a in args)
        return f"{getattr(origin, '__name__', str(origin))}[{inner}]" if args else getattr(origin, "__name__", str(tp))
    return getattr(tp, "__name__", str(tp))


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "a list", dict: "a mapping", NoneType: "null"}
    return names.get(type(value), type(value).__name__)


def check_value(value: Any, tp: Any, path: str, on_component: ComponentChecker | None = None) -> list[ConfigIssue]:
    """Problems of ``value`` against annotation ``tp``; empty when it conforms."""
    if tp is Any or tp is inspect.Parameter.empty or tp is object or isinstance(tp, (str, typing.ForwardRef)):
        return []
    origin, args = get_origin(tp), get_args(tp)

    def mismatch() -> list[ConfigIssue]:
        return [ConfigIssue(path, f"expected {describe(tp)}, got {_type_name(value)} ({value!r})")]

    if origin is Annotated:
        for meta in args[1:]:
            if isinstance(meta, ComponentOf):
                return on_component(value, meta.kind, path) if on_component else []
        return check_value(value, args[0], path, on_component)
    if origin in (Union, types.UnionType):
        if value is None and NoneType in args:
            return []
        options = [a for a in args if a is not NoneType]
        results = [check_value(value, a, path, on_component) for a in options]
        if any(not r for r in results):
            return []
        return results[0] if len(results) == 1 else mismatch()
    if origin is Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        return [] if ok else [ConfigIssue(path, f"must be {describe(tp)}, got {value!r}")]
    if tp is NoneType or tp is None:
        return [] if value is None else mismatch()
    if tp is bool:
        return [] if isinstance(value, bool) else mismatch()
    if tp is int:
        return [] if isinstance(value, int) and not isinstance(value, bool) else mismatch()
    if tp is float:
        return [] if isinstance(value, (int, float)) and not isinstance(value, bool) else mismatch()
    if tp is str:
        return [] if isinstance(value, str) else mismatch()
    if tp in (pathlib.Path, pathlib.PurePath, os.PathLike):
        return [] if isinstance(value, (str, os.PathLike)) else mismatch()
    container = origin or tp
    if container in (list, tuple, collections.abc.Sequence, collections.abc.MutableSequence):
        if not isinstance(value, (list, tuple)):
            return mismatch()
        if container is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                return [ConfigIssue(path, f"expected {len(args)} items ({describe(tp)}), got {len(value)}")]
            item_types = list(args)
        else:
            item_types = [args[0] if args else Any] * len(value)
        issues: list[ConfigIssue] = []
        for i, (item, item_tp) in enumerate(zip(value, item_types)):
            issues += check_value(item, item_tp, f"{path}[{i}]", on_component)
        return issues
    if container in (dict, collections.abc.Mapping, collections.abc.MutableMapping):
        if not isinstance(value, dict):
            return mismatch()
        key_tp, value_tp = args if len(args) == 2 else (Any, Any)
        issues = []
        for key, item in value.items():
            issues += check_value(key, key_tp, f"{path}.{key}", on_component)
            issues += check_value(item, value_tp, f"{path}.{key}", on_component)
        return issues
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return [] if isinstance(value, tp) else check_fields(value, tp, path, on_component)
    if isinstance(tp, type):
        return [] if isinstance(value, tp) else mismatch()
    return []


def check_fields(value: Any, cls: type, path: str, on_component: ComponentChecker | None = None) -> list[ConfigIssue]:
    """Problems of a mapping ``value`` as the keyword arguments of the dataclass ``cls``: every key a
    field (with a suggestion), each value of its field's type, every field without a default given
    (``init=False`` fields are not arguments)."""
    if not isinstance(value, dict):
        return [ConfigIssue(path, f"expected a mapping of {cls.__name__} settings, got {_type_name(value)} "
                                  f"({value!r})")]
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    issues: list[ConfigIssue] = []
    for key, item in value.items():
        if key not in fields:
            close = suggest(str(key), fields)
            hint = (f"did you mean '{close}'? " if close else "") + f"accepted: {', '.join(fields)}"
            issues.append(ConfigIssue(f"{path}.{key}", f"not a {cls.__name__} setting", hint))
        else:
            issues += check_value(item, hints.get(key, Any), f"{path}.{key}", on_component)
    for name, field in fields.items():
        required = field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING
        if required and name not in value:
            issues.append(ConfigIssue(f"{path}.{name}", "missing required setting",
                                      f"add '{name}' ({describe(hints.get(name, Any))}) under {path}"))
    return issues


def factory_parameters(factory: Callable[..., Any]) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """``(keyword parameters, resolved annotations, accepts **kwargs)`` of a factory."""
    load = getattr(factory, "load", None)  # a mednns.lazy(...) factory: inspect what it imports
    if callable(load):
        factory = load()
    signature = inspect.signature(factory)
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable annotations: check names only
        hints = {}
    params = {
        name: p
        for name, p in signature.parameters.items()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    return params, hints, var_kw


def check_args(
    factory: Callable[..., Any], args: dict[str, Any], path: str, on_component: ComponentChecker | None = None,
    supplied: frozenset[str] = frozenset(),
) -> list[ConfigIssue]:
    """Missing, unexpected and mistyped ``args`` for ``factory``, each located under ``path``.

    :param supplied: required arguments the caller fills in later (not missing when absent).
    """
    params, hints, var_kw = factory_parameters(factory)
    accepted = ", ".join(params) or "none"
    issues: list[ConfigIssue] = []
    for name, param in params.items():
        if param.default is inspect.Parameter.empty and name not in args and name not in supplied:
            issues.append(ConfigIssue(f"{path}.{name}", "missing required argument",
                                      f"add '{name}' ({describe(hints.get(name, Any))}) under {path}"))
    for name, value in args.items():
        if name not in params:
            if var_kw:
                continue
            close = suggest(name, params)
            hint = f"did you mean '{close}'? " if close else ""
            issues.append(ConfigIssue(f"{path}.{name}", "unexpected argument", f"{hint}accepted: {accepted}"))
            continue
        issues += check_value(value, hints.get(name, params[name].annotation), f"{path}.{name}", on_component)
    return issues


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def with_defaults(factory: Callable[..., Any], args: dict[str, Any]) -> dict[str, Any]:
    """``args`` completed with the factory's plain (YAML-representable) defaults, for the resolved config."""
    params, _, _ = factory_parameters(factory)
    full = dict(args)
    for name, param in params.items():
        if name not in full and param.default is not inspect.Parameter.empty and _plain(param.default):
            default = param.default
            full[name] = list(default) if isinstance(default, tuple) else default
    return full


_Factory = TypeVar("_Factory", bound=Callable[..., Any])


def takes_settings(settings: type, *, exclude: Iterable[str] = ()) -> Callable[[_Factory], _Factory]:
    """Decorator of a factory (a stage's ``__init__``) that takes the fields of the dataclass
    ``settings`` through its ``**kwargs``: its signature, the schema that config validation checks,
    gains every init field of ``settings`` but ``exclude`` as a keyword-only parameter with the
    field's type and default, so that a config keeps those settings flat beside the factory's own
    arguments and the dataclass stays their one definition. A call with any other keyword raises
    ``TypeError`` as a plain signature would::

        class TrainSupernet(Stage):
            @takes_settings(TrainConfig)
            def __init__(self, space=None, datasets=None, **training):
                self.config = TrainConfig(**training)
    """
    left_out = set(exclude)
    fields = [f for f in dataclasses.fields(settings) if f.init and f.name not in left_out]
    hints = typing.get_type_hints(settings, include_extras=True)

    def default(field: dataclasses.Field[Any]) -> Any:
        if field.default is not dataclasses.MISSING:
            return field.default
        if field.default_factory is not dataclasses.MISSING:
            return field.default_factory()
        return inspect.Parameter.empty

    def decorate(factory: _Factory) -> _Factory:
        import functools

        own = inspect.signature(factory)
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in own.parameters.values()):
            raise TypeError(f"{factory.__qualname__} needs **kwargs to take the {settings.__name__} settings")
        clash = sorted({f.name for f in fields} & set(own.parameters))
        if clash:
            raise TypeError(f"{factory.__qualname__}: {', '.join(clash)} are both its own parameters and "
                            f"{settings.__name__} fields (exclude them)")
        parameters = [p for p in own.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        parameters += [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default(f),
                                         annotation=hints.get(f.name, Any)) for f in fields]
        signature = own.replace(parameters=parameters)

        @functools.wraps(factory)
        def checked(*args: Any, **kwargs: Any) -> Any:
            try:
                signature.bind(*args, **kwargs)
            except TypeError as exc:  # an unexpected or missing argument, named as Python names it
                raise TypeError(f"{factory.__qualname__}() {exc}") from None
            return factory(*args, **kwargs)

        checked.__signature__ = signature  # type: ignore[attr-defined]
        checked.__annotations__ = {**factory.__annotations__, **{f.name: hints.get(f.name, Any) for f in fields}}
        return checked  # type: ignore[return-value]

    return decorate
