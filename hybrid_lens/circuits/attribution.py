"""Edge attribution patching: EAP and EAP-IG scores for every edge of a `Graph` from one forward and backward pass.

The first-order estimate of patching edge `U -> D` (Syed, Rager & Conmy 2023) is

    score(U -> D) = (corrupt output of U - clean output of U) . d metric / d (input of D)

summed over batch, positions and `d_model`. Each target's input gradient is its own: a zero tensor
added to that target's input only (`runs.graph_hooks`), so the mixers of a parallel block, which read
one stream, get separate gradients. EAP takes the gradient on the clean run; EAP-IG (Hanna, Pezzelle &
Belinkov 2024) averages it over `steps` runs whose embedding is interpolated from the clean to the
corrupted one (midpoints `(k + 0.5) / steps`), all of them stacked in one batch.
"""

from __future__ import annotations

import pandas as pd
import torch

from ..interventions.patching import Metric, same_shape_tokens
from ..interventions.validation import check_metric
from .edge_patching import positive
from .graph import Graph
from .runs import graph_hooks, source_outputs

__all__ = ["METHODS", "edge_attribution"]

METHODS = ("eap", "eap-ig")


def edge_attribution(model, clean, corrupt, metric: Metric, graph: Graph | None = None, method: str = "eap-ig",
                     steps: int = 5) -> pd.DataFrame:
    """Score every edge of `graph` by its estimated effect on `metric` when patched from `corrupt` into `clean`.

    Args:
        model: A `HookedHybrid`.
        clean: The run patched into (text, texts or `Int[Tensor, "batch pos"]`).
        corrupt: The run patched from, of the same token shape.
        metric: Logits `Float[Tensor, "batch pos vocab"]` -> one number, differentiably (a logit
            difference; KL from the clean run has zero gradient there, so EAP would score every edge 0).
        graph: The graph (default `Graph.of(model)`).
        method: `eap` (gradient on the clean run) or `eap-ig` (gradient averaged along the path from the
            clean to the corrupted embedding).
        steps: Points on the path for `eap-ig` (ignored by `eap`).

    Returns:
        One row per edge (`graph.edges` order): `upstream`, `downstream`, `score` (estimated
        metric(patched) - metric(clean), comparable with `edge_patch`); `attrs` hold the `clean` and
        `corrupt` metric values and the `method`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> table = edge_attribution(model, "went out of the land of", "went out of the city of", metric)
        >>> table.columns.tolist(), len(table), table.attrs["method"]
        (['upstream', 'downstream', 'score'], 691, 'eap-ig')
    """
    if method not in METHODS:
        raise ValueError(f"Unknown method {method!r}; choose one of {METHODS}.")
    steps = positive("steps", steps) if method == "eap-ig" else 1
    clean_tokens, corrupt_tokens = same_shape_tokens(model, clean, corrupt)
    graph = graph or Graph.of(model)
    clean_outputs, clean_logits = source_outputs(model, graph, clean_tokens)
    check_metric(metric, clean_logits, differentiable=True)
    corrupt_outputs, corrupt_logits = source_outputs(model, graph, corrupt_tokens)
    alphas = [0.0] if method == "eap" else [(k + 0.5) / steps for k in range(steps)]
    batch = clean_tokens.shape[0]
    start, end = clean_outputs[0], corrupt_outputs[0]  # the embedding: source 0
    alpha = torch.tensor(alphas, dtype=start.dtype, device=start.device).repeat_interleave(batch)[:, None, None]
    embedding = start.repeat(steps, 1, 1) + alpha * (end - start).repeat(steps, 1, 1)
    leaves = [torch.zeros_like(embedding, requires_grad=True) for _ in graph.targets]

    def interpolate(value, hook):
        return embedding.to(value.dtype)

    with torch.enable_grad(), graph_hooks(model, graph, lambda target, _: leaves[target]), \
            model.hooks(fwd_hooks=[("hook_embed", interpolate)] if method == "eap-ig" else []):
        logits = model(clean_tokens.repeat(steps, 1))
        value = sum(metric(part) for part in logits.split(batch)) / steps
        grads = torch.autograd.grad(value, leaves, allow_unused=True)
    grads = torch.stack([torch.zeros_like(leaf) if grad is None else grad for leaf, grad in zip(leaves, grads)])
    grads = grads.unflatten(1, (steps, batch)).sum(1)  # [target, batch, pos, d_model]: the mean gradient
    scores = torch.einsum("sbpd,tbpd->st", (corrupt_outputs - clean_outputs).double(), grads.double())
    table = graph.table(scores.cpu() * graph.allowed)
    table.attrs.update(clean=float(metric(clean_logits)), corrupt=float(metric(corrupt_logits)), method=method)
    return table
