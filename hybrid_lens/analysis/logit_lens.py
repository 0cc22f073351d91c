"""The plain logit lens: each layer's residual stream decoded through the final norm and unembedding.

Layer l's decoded distribution is `softmax(unembed(final_norm(resid_post[l])))`, so the last layer's
is the model's own output distribution.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from ..cache import ActivationCache
from ..interventions import kl_divergence
from ._shared import Reduction, check_reduction, tidy_table


def decode_resid(model, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
    """Logits of any residual-stream tensor: the model's final norm, then its unembedding.

    Args:
        model: A `HookedHybrid`.
        resid: `Float[Tensor, "... d_model"]`.

    Returns:
        `Float[Tensor, "... vocab"]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created")
        >>> decode_resid(model, cache["resid_post", 5]).shape
        torch.Size([1, 6, 4096])
    """
    return model.unembed(model.apply_final_norm(resid.to(model.device)))


@torch.no_grad()
def logit_lens_logits(
    model, cache: ActivationCache, layers: Sequence[int] | None = None
) -> Float[Tensor, "layer batch pos vocab"]:
    """Decoded logits of `resid_post` of the given layers (default all: mind the memory,
    `n_layers x batch x pos x vocab`).

    Args:
        model: A `HookedHybrid`.
        cache: A cache with every `resid_post` asked for.
        layers: Layer indices; None for all.

    Returns:
        `Float[Tensor, "layer batch pos vocab"]`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created")
        >>> logit_lens_logits(model, cache, layers=[0, 5, 11]).shape
        torch.Size([3, 1, 6, 4096])
    """
    layers = range(cache.n_layers) if layers is None else layers
    return torch.stack([decode_resid(model, cache["resid_post", layer]) for layer in layers])


@torch.no_grad()
def logit_lens_kl(model, cache: ActivationCache, reduction: Reduction = "mean") -> pd.DataFrame:
    """KL(p_final || p_layer) of every layer's decoded distribution, in nats (0 at the last layer).

    Args:
        model: A `HookedHybrid`.
        cache: A cache with every `resid_post` (the default `run_with_cache`).
        reduction: `"mean"` over tokens, or `"none"` (per token).

    Returns:
        Tidy rows `layer, layer_kind, component="resid_post", metric="kl_to_final", value`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created")
        >>> table = logit_lens_kl(model, cache)
        >>> len(table), float(table.value.iloc[-1])          # 0 at the last layer
        (12, 0.0)
    """
    check_reduction(reduction)
    final = decode_resid(model, cache["resid_post", cache.n_layers - 1])
    entries = [
        (
            dict(layer=layer, layer_kind=model.layer_types[layer], component="resid_post", metric="kl_to_final"),
            kl_divergence(final, decode_resid(model, cache["resid_post", layer])),
        )
        for layer in range(cache.n_layers)
    ]
    return tidy_table(entries, reduction)


@torch.no_grad()
def logit_lens_top_k(model, cache: ActivationCache, k: int = 5, position: int = -1, batch: int = 0) -> pd.DataFrame:
    """The `k` most probable tokens of every layer's decoded distribution at one position.

    Args:
        model: A `HookedHybrid`.
        cache: A cache with every `resid_post`.
        k: Tokens per layer.
        position: Token position decoded.
        batch: Example of the batch decoded.

    Returns:
        Rows `layer, layer_kind, rank, token_id, token, prob` (`token` is the decoded string, or
        the id as text when the model has no tokenizer).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created")
        >>> top = logit_lens_top_k(model, cache, k=3)
        >>> len(top), top.columns.tolist()
        (36, ['layer', 'layer_kind', 'rank', 'token_id', 'token', 'prob'])
    """
    resid = torch.stack([cache["resid_post", layer][batch, position] for layer in range(cache.n_layers)])
    probs = decode_resid(model, resid).float().softmax(-1)
    top = probs.topk(k, dim=-1)
    rows = []
    for layer, (values, ids) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
        for rank, (prob, token_id) in enumerate(zip(values, ids)):
            token = model.to_string([token_id]) if model.tokenizer is not None else str(token_id)
            rows.append(dict(layer=layer, layer_kind=model.layer_types[layer], rank=rank,
                             token_id=token_id, token=token, prob=prob))
    return pd.DataFrame(rows)
