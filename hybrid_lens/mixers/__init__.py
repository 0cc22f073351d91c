"""Mixer kinds: one module per kind with its inner hook points, eager path and math.

Each kind's module has `add_points(hooks, module, pattern_mode)`, which the family adapters name in
their `Mixer` specs: it creates the kind's inner hook points on a `transformers` mixer and returns
the taps that feed them. Softmax attention: `attention` (also multi-head latent attention); linear
attention: `gated_deltanet`, `kimi_delta`, `lightning`; SSMs: `mamba1`, `mamba2`, `rg_lru`; LFM2's
`short_conv`; MoE routers: `router`. The recurrent ones also compute the exact token-to-token matrix
of their mixer (its "implicit attention", `hook_pattern`); `state` holds the writable recurrent-state hook point and the split recurrence that feeds it;
`taps` the switchable plumbing shared by all kinds.
"""

from . import gated_deltanet, lightning, mamba2
from .state import StateHookPoint, cache_states, state_positions

__all__ = ["StateHookPoint", "cache_states", "gated_deltanet", "lightning", "mamba2", "state_positions"]
