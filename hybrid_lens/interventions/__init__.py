"""Interventions: selectors, ablations as hook functions, composable conditions, batching, patching."""

from .ablations import Intervention, Mean, Noise, Patch, Resample, Scale, SkipLayer, Zero
from .conditions import (
    Condition,
    mean,
    mixer_off,
    noise,
    patch_from,
    resample,
    scale,
    skip_layer,
    zero,
)
from .patching import component_selectors, kl_metric, logit_diff_metric, patch
from .selectors import Selector, Target, layer_thirds
from .sweep import Sweep, first_layer, run_conditions

__all__ = [
    "Condition", "Intervention", "Mean", "Noise", "Patch", "Resample", "Scale", "Selector", "SkipLayer", "Sweep", "Target",
    "Zero", "component_selectors", "first_layer", "kl_metric", "layer_thirds", "logit_diff_metric", "mean", "mixer_off", "noise",
    "patch", "patch_from", "resample", "run_conditions", "scale", "skip_layer", "zero",
]
