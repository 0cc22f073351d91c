"""Registries by name: families, mixer kinds and interventions are found by name, and a name names one thing.

`discover` collects the declarations (instances of a type) defined at the top level of every module
of a package, so adding a family or a mixer kind is adding a file; `register` adds one entry by hand
(interventions register their classes). Both refuse a second, different entry under a taken name.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def register(registry: dict[str, T], name: str, entry: T, what: str) -> None:
    """`registry[name] = entry`, refusing a name already taken by a different entry.

    Args:
        registry: Name -> entry.
        name: The new entry's name.
        entry: The entry (registering the same object twice is a no-op).
        what: What the entries are, for the error (`intervention types`).

    Examples:
        >>> names = {}
        >>> register(names, "zero", int, "intervention types")
        >>> register(names, "zero", float, "intervention types")
        Traceback (most recent call last):
        ...
        ValueError: Two intervention types are named 'zero': int and float; rename one.
    """
    taken = registry.get(name)
    if taken is not None and taken is not entry:
        raise ValueError(f"Two {what} are named {name!r}: {_describe(taken)} and {_describe(entry)}; rename one.")
    registry[name] = entry


def discover(package: str, cls: type[T], name: Callable[[T], str], what: str) -> dict[str, T]:
    """Every instance of `cls` at the top level of the modules of `package`, by `name(instance)`, in
    the order first found (modules in alphabetical order, names in definition order).

    An instance imported by several modules counts once; two different instances with the same name
    raise `ValueError` naming both.

    Examples:
        >>> from hybrid_lens.adapters import Family
        >>> list(discover("hybrid_lens.adapters", Family, lambda family: family.family, "families"))[:3]
        ['bamba', 'qwen2', 'llama']
    """
    found: dict[str, T] = {}
    where: dict[str, str] = {}
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda info: info.name):
        module = importlib.import_module(f"{package}.{info.name}")
        for attribute, value in vars(module).items():
            if not isinstance(value, cls):
                continue
            key = name(value)
            if key in found and found[key] is not value:
                raise ValueError(f"Two {what} are named {key!r}: {where[key]} and {module.__name__}.{attribute}; "
                                 "rename one.")
            found.setdefault(key, value)
            where.setdefault(key, f"{module.__name__}.{attribute}")
    return found


def _describe(entry) -> str:
    if isinstance(entry, type) and entry.__module__ != "builtins":
        return f"{entry.__module__}.{entry.__qualname__}"
    return getattr(entry, "__name__", repr(entry))
