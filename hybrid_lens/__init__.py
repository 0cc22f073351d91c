"""hybrid-lens: mechanistic interpretability for hybrid (attention + linear-time mixer) language models.

Submodules: `interventions` (selectors, ablations, conditions, patching), `analysis` (hidden-state
metrics, logit lens, attribution, per-token contributions), `evals` (perplexity), `study` (the
component-ablation protocol), `viz` (figures), `zoo` (bundled models).
"""

from . import analysis, evals, interventions, zoo  # importing the zoo registers its model names
from .adapters import supported_architectures
from .cache import ActivationCache
from .hook_points import HookPoint
from .model import Component, HookedHybrid, next_token_loss

__all__ = [
    "ActivationCache", "Component", "HookPoint", "HookedHybrid", "analysis", "evals", "interventions",
    "next_token_loss", "supported_architectures",
]
__version__ = "0.1.0"
