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
from .attribution import attribution_patch
from .knockout import EdgeKnockout, knockout
from .patching import component_selectors, kl_metric, logit_diff_metric, patch
from .selectors import Selector, Target, layer_thirds
from .state_patching import PatchState, patch_state
from .sweep import Sweep, first_layer, run_conditions

__all__ = [
    "Condition", "EdgeKnockout", "Intervention", "Mean", "Noise", "Patch", "PatchState", "Resample", "Scale",
    "Selector", "SkipLayer", "Sweep", "Target", "Zero", "attribution_patch", "component_selectors", "first_layer",
    "kl_metric", "knockout", "layer_thirds", "logit_diff_metric", "mean", "mixer_off", "noise", "patch", "patch_from",
    "patch_state", "resample", "run_conditions", "scale", "skip_layer", "zero",
]
