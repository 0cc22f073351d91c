"""Direct logit attribution: each component's direct contribution to a logit or logit difference.

The residual stream after the last block is exactly the sum of the embedding and every mixer and
MLP output (`ActivationCache.decompose_resid`). The final RMSNorm, `g * x / rms(x)`, is not linear;
the usual approximation freezes `rms` at its value on the actual final residual, which makes the
norm a per-token diagonal linear map. Each component's attribution is then its frozen-normed
output dotted with the target's unembedding direction, and the attributions of all components
(embedding included) sum to the actual final logit (difference). What the approximation leaves
out is the component's indirect effect through the norm's scale.
"""

from __future__ import annotations

import pandas as pd
import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..cache import ActivationCache
from ..vocabulary import ComponentLabel
from ._shared import Reduction, check_reduction, tidy_table

Target = int | Int[Tensor, "batch pos"] | tuple[int | Tensor, int | Tensor]


def logit_direction(model, target: Target) -> Float[Tensor, "... d_model"]:
    """The unembedding direction whose dot product with a final-normed residual gives the target:
    `W_U[:, t]` for a token id, `W_U[:, a] - W_U[:, b]` for a pair `(a, b)` (logit difference).
    Ids may be tensors `[batch, pos]`, one target per token; the result then has shape
    `[batch, pos, d_model]`, else `[d_model]`.

    Args:
        model: A `HookedHybrid`.
        target: A token id, a pair `(a, b)`, or ids `Int[Tensor, "batch pos"]` (also in pairs).

    Returns:
        `Float[Tensor, "d_model"]`, or `Float[Tensor, "batch pos d_model"]` for tensor ids.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> god, lord = (int(model.to_tokens(f" {word}")[0, -1]) for word in ("God", "LORD"))
        >>> logit_direction(model, (god, lord)).shape
        torch.Size([128])
        >>> logit_direction(model, model.to_tokens("In the beginning")).shape
        torch.Size([1, 4, 128])
    """
    rows = model.W_U.T

    def pick(ids) -> Tensor:
        return rows[torch.as_tensor(ids, device=rows.device)]

    if isinstance(target, tuple):
        correct, wrong = target
        return pick(correct) - pick(wrong)
    return pick(target)


@torch.no_grad()
def frozen_final_norm(model, final_resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
    """Factors `w` such that `x -> w * x` is the final norm with its scale frozen at `final_resid`
    (so `w * final_resid` is the actual normed final residual).

    Read from the model's own norm, whatever its parametrisation (`g`, or Qwen3.5's `1 + g`): the
    gain up to a uniform factor from the norm of a constant vector, then the per-token scale as
    `||norm(x)|| / ||gain * x||`. Computed in float32 whatever the model's dtype (a bf16 model's
    own logits then approximate the attributions' sum). Raises `ValueError` if the norm is not of
    the RMSNorm form.

    Args:
        model: A `HookedHybrid`.
        final_resid: `Float[Tensor, "batch pos d_model"]`, the last block's `resid_post`.

    Returns:
        `Float[Tensor, "batch pos d_model"]` factors (float32).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created")
        >>> final = cache["resid_post", model.n_layers - 1]
        >>> factors = frozen_final_norm(model, final)
        >>> torch.allclose(factors * final, model.apply_final_norm(final), atol=1e-5)
        True
    """
    x = final_resid.to(model.device).float()
    gain = model.apply_final_norm(torch.ones(x.shape[-1], device=x.device)).float()
    normed = model.apply_final_norm(x).float()
    scale = normed.norm(dim=-1, keepdim=True) / (gain * x).norm(dim=-1, keepdim=True)
    factors = gain * scale
    if not torch.allclose(factors * x, normed, rtol=1e-4, atol=1e-4 * float(normed.abs().mean())):
        raise ValueError("The final norm is not an RMSNorm (gain * x / rms(x)); its frozen-scale form is unknown.")
    return factors


@torch.no_grad()
def logit_attribution(
    model, cache: ActivationCache, target: Target
) -> tuple[Float[Tensor, "component batch pos"], list[ComponentLabel]]:
    """Direct logit attribution of every component at every token, labelled as
    `cache.decompose_resid` (`embed`, `0_attn_out`, `0_mlp_out`, ...). Summed over components it equals
    the final logit (difference) of `target` up to float error.

    Args:
        model: A `HookedHybrid`.
        cache: A cache with the block-level hook points (the default `run_with_cache`).
        target: A token id, a pair `(a, b)`, or ids `Int[Tensor, "batch pos"]` (see
            `logit_direction`).

    Returns:
        `(values, labels)`: `Float[Tensor, "component batch pos"]` and one `ComponentLabel` per
        component.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> logits, cache = model.run_with_cache("In the beginning God created")
        >>> god = int(model.to_tokens(" God")[0, -1])
        >>> values, labels = logit_attribution(model, cache, god)
        >>> values.shape, labels[:4]           # embed + 12 layers x (ssm, attn, mlp)
        (torch.Size([37, 1, 6]), ['embed', '0_ssm_out', '0_attn_out', '0_mlp_out'])
        >>> torch.allclose(values.sum(0), logits[..., god], atol=1e-3)
        True
    """
    stack, labels = cache.decompose_resid(return_labels=True)
    factors = frozen_final_norm(model, cache["resid_post", cache.n_layers - 1])
    weights = factors * logit_direction(model, target).float()
    values = torch.einsum("cbpd,bpd->cbp", stack.to(weights.device).float(), weights.expand_as(factors))
    return values, labels


def direct_logit_attribution(
    model, cache: ActivationCache, target: Target, position: int | None = -1, reduction: Reduction = "mean"
) -> pd.DataFrame:
    """Direct logit attribution of every component as a tidy table.

    Args:
        model: A `HookedHybrid`.
        cache: A cache with the block-level hook points (the default `run_with_cache`).
        target: a token id, a pair `(a, b)` for the logit difference `a - b`, or ids
            `Int[Tensor, "batch pos"]`.
        position: the token position attributed (default the last); None keeps every position.
        reduction: mean over the selected tokens (and examples), or one row per token (`"none"`).

    Returns:
        Rows `layer, layer_kind, component, metric="dla", value`; the embedding has `layer=-1`
        and `layer_kind="embed"`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("And God said unto")
        >>> moses, aaron = (int(model.to_tokens(f" {name}")[0, -1]) for name in ("Moses", "Aaron"))
        >>> table = direct_logit_attribution(model, cache, (moses, aaron))
        >>> table.columns.tolist(), len(table)
        (['layer', 'layer_kind', 'component', 'metric', 'value'], 37)
        >>> top = table.sort_values("value", ascending=False).head(3)   # most pro-Moses components
    """
    check_reduction(reduction)
    values, labels = logit_attribution(model, cache, target)
    n_positions = values.shape[-1]
    if position is not None:
        values = values[..., [position]]
    entries = []
    for label, value in zip(labels, values):
        if label.layer is None:
            keys = dict(layer=-1, layer_kind=label.kind, component=label.kind)
        else:
            keys = dict(layer=label.layer, layer_kind=model.layer_types[label.layer], component=label.kind)
        entries.append((dict(keys, metric="dla"), value))
    table = tidy_table(entries, reduction)
    if reduction == "none" and position is not None:
        table["position"] = position % n_positions
    return table
