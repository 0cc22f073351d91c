"""Model-name resolution for `HookedHybrid.from_pretrained`, without the core knowing the zoo.

The core asks `resolve(name_or_path)`; the package that knows model names (`hybrid_lens.zoo`:
bundled and registered models, local folders, hub ids) registers its resolver here when it is
imported (`import hybrid_lens` does), so the dependency runs from the zoo to the core only.
"""

from __future__ import annotations

from collections.abc import Callable

Resolution = tuple[str, dict, dict]
Resolver = Callable[[str], Resolution]

_registered: list[Resolver] = []


def register_resolver(resolver: Resolver) -> Resolver:
    """Make `resolver` the one `resolve` asks (the last one registered is used).

    Args:
        resolver: `name_or_path -> (path, model kwargs, tokenizer kwargs)`; raises for a name it
            cannot find.

    Returns:
        `resolver`, so this can decorate it.

    Examples:
        >>> from hybrid_lens import zoo
        >>> register_resolver(zoo.resolve) is zoo.resolve       # what importing the zoo does
        True
    """
    _registered.append(resolver)
    return resolver


def resolve(name_or_path) -> Resolution:
    """(path, model kwargs, tokenizer kwargs) for `transformers`' `from_pretrained` calls, from
    the registered resolver (the name unchanged and no kwargs when none is registered).

    Examples:
        >>> path, model_kwargs, tokenizer_kwargs = resolve("hybrid-lens/tiny-qwen2.5")
        >>> path.endswith("tiny-qwen2.5"), model_kwargs, tokenizer_kwargs
        (True, {}, {})
    """
    if not _registered:
        return name_or_path, {}, {}
    return _registered[-1](name_or_path)
