"""Circuits from edge scores: keep the edges that matter, and check what they recover by exact patching.

`prune` keeps the edges whose score magnitude reaches a threshold (or the `top` ones); `faithfulness_curve`
evaluates the top-k circuits for a range of k by exact patching (every edge outside the circuit patched
from the corrupted run, `circuit_metric`): the metric recovered against the number of edges kept. `acdc`
prunes by exact patching alone (Conmy et al. 2023): one forward pass per edge tried.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from jaxtyping import Bool
from torch import Tensor

from ..checks import check_number
from ..interventions.patching import Metric
from .edge_patching import circuit_metric, positive, prepare
from .graph import Graph
from .runs import patched_logits

__all__ = ["acdc", "faithfulness_curve", "prune"]


def ranked(graph: Graph, table: pd.DataFrame) -> list[str]:
    """The edges of a score table (`edge_attribution`, `edge_patch`) as `upstream->downstream`, largest
    |score| first (ties in table order)."""
    if not {"upstream", "downstream", "score"} <= set(table.columns):
        raise ValueError(f"The table needs upstream, downstream and score columns, got {list(table.columns)}.")
    order = table.score.abs().sort_values(ascending=False, kind="stable").index
    return [f"{table.upstream[i]}->{table.downstream[i]}" for i in order]


def prune(graph: Graph, table: pd.DataFrame, threshold: float | None = None,
          top: int | None = None) -> Bool[Tensor, "source target"]:
    """The circuit of the edges whose |score| is at least `threshold`, or of the `top` highest |scores|.

    Args:
        graph: The graph the table scores.
        table: Edge scores (`upstream`, `downstream`, `score`), e.g. from `edge_attribution`.
        threshold: Keep edges with |score| >= threshold.
        top: Keep this many edges (instead of a threshold).

    Returns:
        The kept edges as a `[source, target]` mask, for `circuit_metric`.

    Examples:
        >>> from hybrid_lens.circuits import edge_attribution
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> graph = Graph.of(model)
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> table = edge_attribution(model, "went out of the land of", "went out of the city of", metric, graph)
        >>> int(prune(graph, table, top=10).sum())
        10
    """
    if (threshold is None) == (top is None):
        raise ValueError("Give exactly one of threshold (keep |score| >= threshold) and top (keep that many edges).")
    if top is not None:
        return graph.mask(ranked(graph, table)[:positive("top", top)])
    threshold = check_number("threshold", threshold, minimum=0.0)
    kept = table[table.score.abs() >= threshold]
    return graph.mask(f"{row.upstream}->{row.downstream}" for row in kept.itertuples())


def faithfulness_curve(model, clean, corrupt, metric: Metric, table: pd.DataFrame, graph: Graph | None = None,
                       sizes: Sequence[int] | None = None, batch_size: int = 16) -> pd.DataFrame:
    """The metric recovered by the top-k edges of `table`, for each k in `sizes`, by exact patching.

    Args:
        model: A `HookedHybrid`.
        clean: The run patched into (text, texts or `Int[Tensor, "batch pos"]`).
        corrupt: The run patched from, of the same token shape.
        metric: Logits `Float[Tensor, "batch pos vocab"]` -> one number.
        table: Edge scores ranking the edges (`edge_attribution`, `edge_patch`).
        graph: The graph the table scores (default `Graph.of(model)`).
        sizes: Numbers of edges kept (default: 0, every power of two below the number of edges, and all).
        batch_size: Circuits evaluated per forward pass.

    Returns:
        One row per size (`circuit_metric`'s table): `edges`, `metric`, `recovered` (1 at the full graph,
        0 with every edge patched).

    Examples:
        >>> from hybrid_lens.circuits import edge_attribution
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> clean, corrupt = "went out of the land of", "went out of the city of"
        >>> table = edge_attribution(model, clean, corrupt, metric)
        >>> curve = faithfulness_curve(model, clean, corrupt, metric, table, sizes=[0, 153])
        >>> curve.recovered.round(3).tolist()
        [0.0, 1.0]
    """
    graph = graph or Graph.of(model)
    order = ranked(graph, table)
    if sizes is None:
        sizes = [0, *(2 ** k for k in range(len(order).bit_length()) if 2 ** k < len(order)), len(order)]
    sizes = [int(size) for size in sizes]
    bad = [size for size in sizes if not 0 <= size <= len(order)]
    if bad:
        raise ValueError(f"sizes must be between 0 and the number of edges ({len(order)}), got {bad}.")
    circuits = [graph.mask(order[:size]) for size in sizes]
    return circuit_metric(model, clean, corrupt, metric, circuits, graph, batch_size)


def acdc(model, clean, corrupt, metric: Metric, threshold: float, graph: Graph | None = None) -> Bool[Tensor, "source target"]:
    """ACDC (Conmy et al. 2023) with exact edge patching: from the full graph, visit the targets from the
    logits backwards and, for each edge into the target (latest source first), patch it from `corrupt`
    for good when that moves the metric of the current circuit by less than `threshold`. A target whose
    output no kept edge reads loses its input edges untried (they cannot reach the logits).

    Args:
        model: A `HookedHybrid`.
        clean: The run patched into (text, texts or `Int[Tensor, "batch pos"]`).
        corrupt: The run patched from, of the same token shape.
        metric: Logits `Float[Tensor, "batch pos vocab"]` -> one number.
        graph: The graph (default `Graph.of(model)`).
        threshold: The largest |change of the metric| an edge's removal may cause (>= 0).

    Returns:
        The kept edges as a `[source, target]` mask, for `circuit_metric`. The circuit's metric is within
        `threshold` times the number of removed edges of the clean one (each removal moved it by less).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> kept = acdc(model, "went out of the land of", "went out of the city of", metric, threshold=0.05)
        >>> 0 < int(kept.sum()) < 153
        True
    """
    threshold = check_number("threshold", threshold, minimum=0.0)
    clean_tokens, _, graph, _, corrupt_outputs, values = prepare(model, clean, corrupt, metric, graph)
    kept = graph.allowed.clone()
    current = values["clean"]
    writes = {index: [s for s, source in enumerate(graph.sources) if (source.layer, source.kind) ==
                      (target.layer, target.kind)] for index, target in enumerate(graph.targets)}
    for target in reversed(range(len(graph.targets))):
        if graph.targets[target].kind != "logits" and not kept[writes[target]].any():
            kept[:, target] = False
            continue
        for source in reversed(kept[:, target].nonzero().flatten().tolist()):
            kept[source, target] = False
            value = float(metric(patched_logits(model, graph, clean_tokens, corrupt_outputs,
                                                (graph.allowed & ~kept)[None])[0]))
            if abs(value - current) < threshold:
                current = value
            else:
                kept[source, target] = True
    return kept
