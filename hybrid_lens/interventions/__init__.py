"""Interventions: selectors, interventions as hook functions, composable conditions, sweeps, patching.

Every module of this package is imported here, so every `Intervention` subclass registers (by its
`type`, for `Intervention.from_dict`) and is exported by its class name, wherever it is defined.
"""

import importlib
import pkgutil

from .base import REGISTRY, Intervention
from .attribution import attribution_patch
from .conditions import (
    Condition,
    ablation_of,
    mean,
    mixer_off,
    noise,
    patch_from,
    resample,
    scale,
    skip_layer,
    zero,
)
from .knockout import knockout
from .patching import component_selectors, kl_divergence, kl_metric, logit_diff_metric, patch
from .selectors import THIRDS, Selector, Target, layer_thirds
from .state_patching import patch_state
from .steering import add
from .sweep import Sweep, as_sweep, first_layer, run_conditions

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
globals().update({cls.__name__: cls for cls in REGISTRY.values()})

__all__ = sorted([
    "Condition", "Intervention", "Selector", "Sweep", "THIRDS", "Target", "ablation_of", "add", "as_sweep",
    "attribution_patch", "component_selectors", "first_layer", "kl_divergence", "kl_metric", "knockout",
    "layer_thirds", "logit_diff_metric", "mean", "mixer_off", "noise", "patch", "patch_from", "patch_state",
    "resample", "run_conditions", "scale", "skip_layer", "zero", *(cls.__name__ for cls in REGISTRY.values()),
])
