"""Per-layer hidden-state metrics of the component-ablation protocol ("Experiment 2").

Every function returns a tidy `pandas.DataFrame` with columns `layer, layer_kind, component,
metric, value` (plus `batch, position` with `reduction="none"`), so the tables concatenate and
pivot freely. The study computes them on 512 tokens of WikiText-2 validation text; pass those
tokens (or any text) as `input`. Every token of every example counts: pass unpadded inputs.

Definitions, per token, then averaged over tokens with `reduction="mean"` (h = the block input
`resid_pre`, h' = the block output `resid_post`):
- `norm_change` = ||h' - h|| / ||h||, `cosine` = cos(h, h') (component `block`);
- `output_ratio` = ||f_c(h)|| / ||h|| for every component c of the block (`attn`, `linear_attn`,
  `ssm`, `mlp`), f_c(h) being its contribution added to the residual (`hook_{c}_out`, multipliers
  applied). The denominator is the block input for every component, the MLP included (rather than
  `resid_mid`), so the ratios of one block share one denominator and compare directly;
- `ablation_kl` = KL(p_clean || p_ablated) of the model's final next-token distribution when
  component c of layer l is ablated (`block`: the whole layer skipped), in nats.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pandas as pd
import torch
import torch.nn.functional as F

from ..cache import ActivationCache
from ..interventions import Condition, ablation_of, kl_divergence, run_conditions
from ._shared import Reduction, check_reduction, tidy_table
from .logit_lens import logit_lens_kl

Ablation = Callable[[str, int], Condition]


def hidden_state_metrics(cache: ActivationCache, reduction: Reduction = "mean") -> pd.DataFrame:
    """`norm_change` and `cosine` of every block and `output_ratio` of every component, from a
    cache holding the block-level hook points (the default `run_with_cache`).

    Args:
        cache: Block-level activations, `Float[Tensor, "batch pos d_model"]` each.
        reduction: `"mean"` over every token of every example, or `"none"` (one row per token,
            with `batch` and `position` columns).

    Returns:
        Tidy rows `layer, layer_kind, component, metric, value`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God created the heaven and the earth")
        >>> table = hidden_state_metrics(cache)
        >>> table.metric.unique().tolist()
        ['norm_change', 'cosine', 'output_ratio']
        >>> len(table)                      # 12 layers x (2 block metrics + 3 components)
        60
    """
    entries = []
    for block in cache.layout:
        layer, kind = block.index, block.type
        pre = cache["resid_pre", layer].float()
        post = cache["resid_post", layer].float()
        pre_norm = pre.norm(dim=-1)

        def keys(component: str, metric: str) -> dict:
            return dict(layer=layer, layer_kind=kind, component=component, metric=metric)

        entries.append((keys("block", "norm_change"), (post - pre).norm(dim=-1) / pre_norm))
        entries.append((keys("block", "cosine"), F.cosine_similarity(pre, post, dim=-1)))
        for component in block.components:
            output = cache[f"{component}_out", layer].float()
            entries.append((keys(component, "output_ratio"), output.norm(dim=-1) / pre_norm))
    return tidy_table(entries, reduction)


@torch.no_grad()
def ablation_kl(
    model,
    input,
    ablate: Ablation = ablation_of,
    components: Sequence[str] | None = None,
    batch_size: int = 8,
    reduction: Reduction = "mean",
) -> pd.DataFrame:
    """KL(p_clean || p_ablated) of the final distribution for each component of each layer ablated alone.

    Args:
        model: a `HookedHybrid`.
        input: one text or unpadded token ids `[batch, pos]`.
        ablate: `(component, layer) -> Condition`; default zeroes mixers and MLPs and skips blocks.
            E.g. `lambda c, l: mean(c, reference, layers=l)` for mean ablation.
        components: which component kinds (`attn`, `linear_attn`, `ssm`, `conv`, `mlp`) or `block` to
            ablate (default all present; the paper used `("ssm", "attn")` on Falcon-H1 and `("block",)`
            on Qwen3.5).
        batch_size: ablated runs per forward pass (their logits, `batch_size x batch x pos x vocab`,
            are held at once).
        reduction: mean over tokens, or per token (`"none"`).

    Returns:
        Tidy rows `layer, layer_kind, component, metric="ablation_kl", value` (in nats).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> text = "In the beginning God created the heaven and the earth"
        >>> table = ablation_kl(model, text, components=["ssm"])
        >>> len(table), table.component.unique().tolist()
        (12, ['ssm'])
        >>> from hybrid_lens.interventions import mean
        >>> reference = ["And God said", "Let there be light"]
        >>> mean_ablated = ablation_kl(model, text, lambda c, l: mean(c, reference, layers=l),
        ...                            components=["attn"])
    """
    check_reduction(reduction)
    jobs = [
        (layer, component)
        for layer in range(model.n_layers)
        for component in (*model.layout[layer].components, "block")
        if components is None or component in components
    ]
    if not jobs:
        raise ValueError(f"No component among {components} exists in this model (layer kinds: {model.layer_types}).")
    clean = model(input)
    entries = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        ablated = run_conditions(model, input, [ablate(component, layer) for layer, component in chunk])
        for (layer, component), logits in zip(chunk, ablated):
            keys = dict(layer=layer, layer_kind=model.layer_types[layer], component=component, metric="ablation_kl")
            entries.append((keys, kl_divergence(clean, logits)))
    return tidy_table(entries, reduction)


@torch.no_grad()
def layer_metrics(
    model,
    input,
    reduction: Reduction = "mean",
    ablate: Ablation = ablation_of,
    components: Sequence[str] | None = None,
    batch_size: int = 8,
) -> pd.DataFrame:
    """Every per-layer measure of one input in one table: `norm_change`, `cosine`, `output_ratio`,
    `ablation_kl` (see `ablation_kl` for its arguments) and the plain logit lens' `kl_to_final`.

    Args:
        model: A `HookedHybrid`.
        input: One text or unpadded token ids `Int[Tensor, "batch pos"]`.
        reduction: `"mean"` over tokens, or `"none"` (per token).
        ablate: As in `ablation_kl`.
        components: As in `ablation_kl`.
        batch_size: As in `ablation_kl`.

    Returns:
        Tidy rows `layer, layer_kind, component, metric, value`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens = model.to_tokens("In the beginning God created the heaven and the earth")
        >>> table = layer_metrics(model, tokens, components=["ssm", "attn"])
        >>> sorted(table.metric.unique())
        ['ablation_kl', 'cosine', 'kl_to_final', 'norm_change', 'output_ratio']
        >>> wide = table.pivot_table(index="layer", columns=["metric", "component"], values="value")
        >>> wide.shape
        (12, 8)
    """
    _, cache = model.run_with_cache(input, names_filter=model.hook_names(inner=False))
    return pd.concat(
        [
            hidden_state_metrics(cache, reduction),
            ablation_kl(model, input, ablate, components, batch_size, reduction),
            logit_lens_kl(model, cache, reduction),
        ],
        ignore_index=True,
    )
