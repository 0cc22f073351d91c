"""hybrid-lens: mechanistic interpretability for hybrid (attention + linear-time mixer) language models.

Submodules: `interventions` (selectors, ablations, conditions, patching), `analysis` (hidden-state
metrics, logit lens, attribution, per-token contributions), `evals` (perplexity), `study` (the
component-ablation protocol), `viz` (figures), `zoo` (bundled models).

Importing the package imports only the zoo (which registers the bundled model names); torch,
`transformers` and the rest load on first use of a name below, so the `hybrid-lens` command answers
`--help` and argument errors at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import zoo  # importing the zoo registers its model names (light: no torch)

if TYPE_CHECKING:
    from . import analysis, evals, interventions
    from .adapters import supported_architectures
    from .cache import ActivationCache
    from .hook_points import HookPoint
    from .model import Component, HookedHybrid, next_token_loss

_LAZY = {"ActivationCache": "cache", "Component": "model", "HookPoint": "hook_points", "HookedHybrid": "model",
         "next_token_loss": "model", "supported_architectures": "adapters"}
_SUBMODULES = ("analysis", "evals", "interventions")

__all__ = [
    "ActivationCache", "Component", "HookPoint", "HookedHybrid", "analysis", "evals", "interventions",
    "next_token_loss", "supported_architectures",
]
__version__ = "0.1.0"


def __getattr__(name: str):
    """The public names, imported on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
