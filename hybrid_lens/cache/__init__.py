"""ActivationCache: the activations of one run by hook name, with TransformerLens's analysis methods.

`ActivationCache` is assembled from one mixin per concern, each in its own module: `mapping`
(lookup by hook name or `(kind, layer)` key, device moves, the model's `Layout`), `residual`
(stacks, the accumulated residual stream and its decomposition into component outputs) and `units`
(per-head and per-neuron results and the full residual decomposition). A new
family of methods (logit attributions, norms applied to stacks) is a new mixin
module added to the class below.
"""

from __future__ import annotations

from .mapping import CacheMapping
from .residual import ResidualStream
from .units import HeadsAndNeurons

__all__ = ["ActivationCache"]


class ActivationCache(HeadsAndNeurons, ResidualStream, CacheMapping):
    """Cached activations keyed by canonical hook name (e.g. `blocks.3.hook_ssm_out`).

    Also indexable TransformerLens-style by `(kind, layer)`: `cache["ssm_out", 3]`,
    `cache["resid_pre", 0]`, `cache["q", 3, "attn"]`.

    Block-level points hold `Float[Tensor, "batch pos d_model"]` (without the batch axis when
    cached with `remove_batch_dim=True`); see the README for the inner points' shapes.

    Args:
        values: Hook name -> tensor.
        layout: The `Layout` of the model the values come from (`model.layout`).
        model: That model (`run_with_cache` passes it): the per-head and per-neuron methods read its weights.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> cache
        ActivationCache(75 tensors, 12 layers)
        >>> cache["ssm_out", 3].shape                  # same as cache["blocks.3.hook_ssm_out"]
        torch.Size([1, 3, 128])
    """
