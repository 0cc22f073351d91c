"""hybrid-lens: mechanistic interpretability for hybrid (attention + linear-time mixer) language models."""

from .adapters import supported_architectures
from .cache import ActivationCache
from .hook_points import HookPoint
from .model import Component, HookedHybrid, next_token_loss

__all__ = ["ActivationCache", "Component", "HookPoint", "HookedHybrid", "next_token_loss", "supported_architectures"]
__version__ = "0.1.0"
