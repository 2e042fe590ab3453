"""Plugins: a name in the config resolves to a class, in one function per kind.

A name is looked up, in order, among

1. the built-in short names of that kind (``titan``, ``fedprox``, ...);
2. the installed entry points of its group (``fedtitan.selectors``, ``fedtitan.strategies``),
   so ``--set selection.method=myselector`` works once a package declaring
   ``[project.entry-points."fedtitan.selectors"] myselector = "mypkg.sel:MySelector"`` is
   installed;
3. ``package.module:ClassName``, imported directly.

Every failure is one line naming what was tried. Nothing is registered by import side
effects, and the library never imports a plugin until a config names it.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable, Mapping
from importlib import metadata
from typing import Any

from fedtitan.errors import ConfigError, did_you_mean


def entry_point_names(group: str) -> list[str]:
    return sorted({ep.name for ep in metadata.entry_points(group=group)})


def load_object(spec: str, key: str, group: str | None = None) -> Any:
    """Import ``package.module:Name`` (``Name`` may be dotted: ``Outer.Inner``). A module that
    is not found is one line saying how Python finds it: its folder on ``PYTHONPATH``, or an
    installed package (with a ``group`` entry point, when one is named)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{key}: {spec!r} is not package.module:ClassName")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        missing = getattr(exc, "name", None)
        if isinstance(exc, ModuleNotFoundError) and missing and (module_name + ".").startswith(missing + "."):
            top = module_name.split(".")[0]
            how = f"install it as a package (with a {group!r} entry point)" if group else "install it as a package"
            raise ConfigError(f"{key}: cannot import module {module_name!r} for plugin {spec!r}: Python finds no "
                              f"{missing!r}; put the folder holding {top!r} on PYTHONPATH (on every Ray node) or "
                              f"{how}") from None
        raise ConfigError(f"{key}: cannot import module {module_name!r} for plugin {spec!r} ({exc})") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigError(f"{key}: module {module_name!r} has no {attr!r} (plugin {spec!r})") from None
    return obj


def resolve(name: str, *, key: str, group: str, builtins: Mapping[str, Any], what: str = "ClassName") -> Any:
    """The object a config name stands for: built-in, entry point, or ``module:Name``
    (``what`` is how errors call ``Name``: a class, a factory)."""
    if name in builtins:
        return builtins[name]
    if ":" in name:
        return load_object(name, key, group)
    for ep in metadata.entry_points(group=group):
        if ep.name == name:
            try:
                return ep.load()
            except Exception as exc:  # a broken plugin package: say which and why
                raise ConfigError(f"{key}: entry point {name!r} ({ep.value}) of group {group!r} failed to load: "
                                  f"{type(exc).__name__}: {exc}") from None
    if "." in name:
        raise ConfigError(f"config {key}: {name!r} looks like a module path; name the "
                          f"{'class' if what == 'ClassName' else what} too: "
                          f"{name}:{what} (package.module:{what})")
    known = [*builtins, *entry_point_names(group)]
    raise ConfigError(f"config {key}: unknown value {name!r}{did_you_mean(name, known)} Allowed: {', '.join(known)}, an installed "
                      f"'{group}' entry point, or package.module:{what}")


def require_methods(obj: Any, methods: Iterable[str], key: str, name: str, protocol: str) -> None:
    """A one-line error when ``obj`` lacks any of ``methods``."""
    missing = [m for m in methods if not callable(getattr(obj, m, None))]
    if missing:
        raise ConfigError(f"{key}: {name!r} does not implement the {protocol} protocol "
                          f"(missing: {', '.join(missing)})")


def _params(fn: Callable[..., Any]) -> tuple[set[str], bool]:
    params = inspect.signature(fn).parameters.values()
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"self"}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


_ACCEPTED: dict[Any, tuple[frozenset[str], bool]] = {}


def accepted(factory: Callable[..., Any]) -> tuple[frozenset[str], bool]:
    """Keyword parameters ``factory`` takes, and whether it takes any keyword at all.

    For a class whose ``__init__`` passes ``**kwargs`` on (``super().__init__(**kwargs)``),
    the parameters of the base classes' ``__init__`` count too, up the MRO. Looked up once
    per factory (a client builds its selector every round)."""
    try:
        return _ACCEPTED[factory]
    except (KeyError, TypeError):  # TypeError: not hashable, looked at every time
        pass
    names, var_kw = _accepted(factory)
    got = frozenset(names), var_kw
    try:
        _ACCEPTED[factory] = got
    except TypeError:
        pass
    return got


def _accepted(factory: Callable[..., Any]) -> tuple[set[str], bool]:
    try:
        if not inspect.isclass(factory):
            return _params(factory)
        names: set[str] = set()
        for cls in factory.__mro__:
            if cls is object:
                return names, False
            if "__init__" not in vars(cls):
                continue
            own, var_kw = _params(vars(cls)["__init__"])
            names |= own
            if not var_kw:
                return names, False
        return names, False
    except (TypeError, ValueError):
        return set(), True


def check_options(factory: Callable[..., Any], options: Mapping[str, Any], key: str, name: str,
                  reserved: Mapping[str, str] | None = None) -> None:
    """Every option must be a keyword ``factory`` takes (unless it takes ``**kwargs``), and
    none may be a ``reserved`` one (name -> why)."""
    for opt in options:
        if reserved and opt in reserved:
            raise ConfigError(f"config {key}.{opt}: not settable for {name!r}: {reserved[opt]}")
    names, var_kw = accepted(factory)
    if var_kw:
        return
    allowed = sorted(names - set(reserved or {}))
    for opt in options:
        if opt not in names:
            raise ConfigError(f"config {key}: unknown option {opt!r} for {name!r}{did_you_mean(opt, allowed)} "
                              f"Options: {', '.join(allowed) or '(none)'}")


def call_with_accepted(factory: Callable[..., Any], offered: Mapping[str, Any], given: Mapping[str, Any]) -> Any:
    """``factory(**kw)`` with the ``offered`` keywords it accepts plus every ``given`` one."""
    names, var_kw = accepted(factory)
    kw = {k: v for k, v in offered.items() if var_kw or k in names}
    kw.update(given)
    return factory(**kw)


__all__ = ["accepted", "call_with_accepted", "check_options", "entry_point_names", "load_object", "require_methods",
           "resolve"]
