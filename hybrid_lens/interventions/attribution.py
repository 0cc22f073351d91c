"""Attribution patching: the first-order (gradient) estimate of `patch` from two forward passes and one backward pass."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch

from .patching import Metric, kl_metric, patch_jobs, same_shape_tokens
from .selectors import Selector
from .validation import check_metric


def attribution_patch(model, clean, corrupt, where: Selector | Sequence[Selector] | None = None,
                      positions: Sequence[int] | str | None = None, metric: Metric | None = None) -> pd.DataFrame:
    """Estimate `patch(...)` for every component at once: `metric(corrupt) + (a_clean - a_corrupt) . grad`.

    The gradient of the metric with respect to each hook point's activation `a` is taken on the
    corrupted run (backward hooks on the hook points), around the point that patching starts from,
    so each row is the linear approximation of patching that one activation from the clean run
    (Nanda 2023; Syed, Rager & Conmy 2023). One clean forward, one corrupted forward and backward,
    whatever the number of components; no parameter gradient is accumulated.

    Args:
        model: A `HookedHybrid`.
        clean: The clean input (text, texts or token ids `Int[Tensor, "batch pos"]`).
        corrupt: The corrupted input, of the same token shape as `clean`.
        where: Selector(s) of the components; default every mixer, MLP and `resid_pre` of every
            layer (inner points such as `hook_v` work too; `hook_pattern` and `hook_state` do not).
        positions: None: the whole activation at once; `"each"`: every position separately; an
            int or a list: each listed position separately (checked before any forward pass).
        metric: Maps logits `Float[Tensor, "batch pos vocab"]` to one number, differentiably (checked
            on the clean logits before the corrupted run); default KL(clean || run) at the last position.

    Returns:
        The table of `patch(...)` (`layer, kind, hook, position, metric`, with `attrs` holding the
        clean and corrupted metric values), the metric column being the estimate.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> clean, corrupt = "And God said unto Moses", "And God said unto Aaron"
        >>> table = attribution_patch(model, clean, corrupt, where=Selector("attn"))
        >>> table.columns.tolist(), len(table)
        (['layer', 'kind', 'hook', 'position', 'metric'], 12)
    """
    clean_tokens, corrupt_tokens = same_shape_tokens(model, clean, corrupt)
    jobs = patch_jobs(model, where, positions, clean_tokens.shape[1])
    names = sorted({target.hook_names[0] for target, _ in jobs}, key=model.hook_order.__getitem__)
    refused = [name for name in names if name.endswith(("hook_pattern", "hook_state"))]
    if refused:
        raise ValueError(f"attribution_patch takes [batch, pos, ...] activations; {refused} are not.")
    with torch.no_grad():
        clean_logits = model(clean_tokens)
    metric = metric or kl_metric(clean_logits)
    check_metric(metric, clean_logits, differentiable=True)  # one number, with a gradient: before the backward
    _, clean_cache = model.run_with_cache(clean_tokens, names_filter=names)

    corrupt_acts, grads = {}, {}

    def keep(value, hook):
        corrupt_acts[hook.name] = value.detach()

    def keep_grad(grad, hook):
        grads[hook.name] = grad.detach()

    with torch.enable_grad(), model.hooks(fwd_hooks=[(n, keep) for n in names], bwd_hooks=[(n, keep_grad) for n in names]):
        start = {}

        def leaf(value, hook):  # differentiate from the embeddings on, not the parameters
            start["embed"] = value.detach().requires_grad_(True)
            return start["embed"]

        with model.hooks(fwd_hooks=[("hook_embed", leaf)]):
            corrupt_value = metric(model(corrupt_tokens))
            torch.autograd.grad(corrupt_value, start["embed"], allow_unused=True)
    missing = [name for name in names if name not in grads]
    if missing:
        raise RuntimeError(f"No gradient reached {missing}; does the metric depend on them?")

    per_position = {name: ((clean_cache[name] - corrupt_acts[name]) * grads[name]).flatten(2).sum((0, 2))
                    for name in names}
    rows = []
    for target, position in jobs:
        name = target.hook_names[0]
        effect = per_position[name].sum() if position is None else per_position[name][position]
        rows.append(dict(layer=target.layer, kind=target.kind, hook=name, position=position,
                         metric=float(corrupt_value.detach() + effect)))
    table = pd.DataFrame(rows)
    table.attrs.update(clean=float(metric(clean_logits)), corrupt=float(corrupt_value.detach()))
    return table

