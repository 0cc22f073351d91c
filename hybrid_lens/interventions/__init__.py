"""Interventions: selectors, ablations as hook functions, composable conditions, batching, patching."""

from .ablations import Intervention, Mean, Noise, Patch, Resample, Scale, SkipLayer, Zero
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
from .attribution import attribution_patch
from .knockout import EdgeKnockout, knockout
from .patching import component_selectors, kl_divergence, kl_metric, logit_diff_metric, patch
from .selectors import THIRDS, Selector, Target, layer_thirds
from .state_patching import PatchState, patch_state
from .sweep import Sweep, as_sweep, first_layer, run_conditions

__all__ = [
    "Condition", "EdgeKnockout", "Intervention", "Mean", "Noise", "Patch", "PatchState", "Resample", "Scale",
    "Selector", "SkipLayer", "Sweep", "THIRDS", "Target", "Zero", "ablation_of", "as_sweep", "attribution_patch",
    "component_selectors", "first_layer", "kl_divergence", "kl_metric", "knockout", "layer_thirds",
    "logit_diff_metric", "mean", "mixer_off", "noise", "patch", "patch_from", "patch_state", "resample",
    "run_conditions", "scale", "skip_layer", "zero",
]
