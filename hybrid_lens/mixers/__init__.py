"""Mixer kinds: one module per kind with its inner hook points, eager path and math.

Each kind's module (`attention`, `gated_deltanet`, `mamba2`, ...) has `add_points(hooks, module,
pattern_mode)`, which the family adapters name in their `Mixer` specs: it creates the kind's inner
hook points on a `transformers` mixer and returns the taps that feed them. `gated_deltanet` and
`mamba2` also compute the exact token-to-token matrix of their mixer (its "implicit attention");
`state` holds the writable recurrent-state hook point and the split recurrence that feeds it;
`taps` the switchable plumbing shared by all kinds.
"""

from . import gated_deltanet, mamba2
from .state import StateHookPoint, cache_states, state_positions

__all__ = ["StateHookPoint", "cache_states", "gated_deltanet", "mamba2", "state_positions"]
