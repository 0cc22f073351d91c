"""ActivationCache: the activations of one run by hook name, with TransformerLens's analysis methods.

`ActivationCache` is assembled from one mixin per concern, each in its own module: `mapping` (lookup by
hook name or TransformerLens key, `keys`: shorthand and "not cached" errors; devices; the model and its
`Layout`), `batch` (removing or slicing the batch axis), `residual` (stacks, the accumulated residual
stream and its decomposition into component outputs), `readout` (norms and unembedding applied to
stacks: `apply_ln_to_stack`, `logit_attrs`) and `units` (per-head and per-neuron results and the full
residual decomposition). `positions` says where each value keeps its positions (`pos_slice=`). A new
family of methods is a new mixin module added to the class below.
"""

from __future__ import annotations

from .batch import BatchAxis, BatchSizeError
from .mapping import CacheMapping, not_cached
from .positions import Slice
from .readout import StackReadout
from .residual import ResidualStream
from .units import HeadsAndNeurons

__all__ = ["ActivationCache", "BatchSizeError", "Slice", "not_cached"]


class ActivationCache(HeadsAndNeurons, ResidualStream, StackReadout, BatchAxis, CacheMapping):
    """Cached activations keyed by canonical hook name (e.g. `blocks.3.hook_ssm_out`), with the interface of
    TransformerLens's `ActivationCache`.

    Also indexable by TransformerLens keys: `cache["ssm_out", 3]`, `cache["resid_pre", -1]`,
    `cache["pattern", 3]` (`blocks.3.attn.hook_pattern`), `cache["k3a"]`, `cache["embed"]`, and
    `cache["q", 0, "linear_attn"]` for the inner points of the other mixers.

    Block-level points hold `Float[Tensor, "batch pos d_model"]` (without the batch axis when
    cached with `remove_batch_dim=True`); see the README for the inner points' shapes.

    Args:
        cache_dict: Hook name -> tensor.
        model: The `HookedHybrid` the values come from (or only its `Layout`: the methods that read the
            model's weights, `apply_ln_to_stack` and `logit_attrs`, then refuse).
        has_batch_dim: Whether the values have their batch axis.
        missing: Hook names asked for but not cached, and why (a run stopped early): looking one up
            says so instead of calling it unknown.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> logits, cache = model.run_with_cache("In the beginning", names_filter=model.hook_names(inner=False))
        >>> cache
        ActivationCache(75 tensors, 12 layers)
        >>> cache["ssm_out", 3].shape                  # same as cache["blocks.3.hook_ssm_out"]
        torch.Size([1, 4, 128])
    """
