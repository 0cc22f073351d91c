"""The math of linear mixers: implicit attention matrices and recurrent-state points.

`gated_deltanet` and `mamba2` compute the exact token-to-token matrix of each mixer (its
"implicit attention"); `state` holds the writable recurrent-state hook point and the split
recurrence that feeds it.
"""

from . import gated_deltanet, mamba2
from .state import StateHookPoint, cache_states, state_positions

__all__ = ["StateHookPoint", "cache_states", "gated_deltanet", "mamba2", "state_positions"]
