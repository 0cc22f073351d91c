"""Exact edge patching: the metric when chosen edges carry the corrupted run's upstream output.

Patching edge `U -> D` runs the clean input with `D`'s input changed to
`clean input - U's output + U's corrupted output`, every other node reading what it reads in that pass
(`runs.patched_logits`). `edge_patch` does it for every edge, `batch_size` edges per forward pass;
`circuit_metric` evaluates circuits (the kept edges stay clean, every other edge is patched).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import torch
from jaxtyping import Bool
from torch import Tensor

from ..checks import as_int
from ..interventions.patching import Metric, same_shape_tokens
from ..interventions.validation import check_metric
from .graph import Graph
from .runs import patched_logits, source_outputs

__all__ = ["circuit_metric", "edge_patch"]


def positive(what: str, value) -> int:
    """`value` as an int >= 1; `ValueError` naming `what` otherwise."""
    value = as_int(what, value, "a positive int")
    if value < 1:
        raise ValueError(f"{what} must be a positive int, not {value}.")
    return value


def prepare(model, clean, corrupt, metric: Metric, graph: Graph | None):
    """Tokens of both runs, the graph, the corrupted run's source outputs and both runs' metric values."""
    clean_tokens, corrupt_tokens = same_shape_tokens(model, clean, corrupt)
    graph = graph or Graph.of(model)
    clean_outputs, clean_logits = source_outputs(model, graph, clean_tokens)
    check_metric(metric, clean_logits, differentiable=False)
    corrupt_outputs, corrupt_logits = source_outputs(model, graph, corrupt_tokens)
    values = dict(clean=float(metric(clean_logits)), corrupt=float(metric(corrupt_logits)))
    return clean_tokens, corrupt_tokens, graph, clean_outputs, corrupt_outputs, values


def group_metrics(model, graph: Graph, tokens: Tensor, corrupt: Tensor, patched: Tensor, metric: Metric,
                  batch_size: int) -> list[float]:
    """The metric of each group of `patched` `[group, source, target]`, `batch_size` groups per pass."""
    values = []
    for start in range(0, len(patched), batch_size):
        logits = patched_logits(model, graph, tokens, corrupt, patched[start:start + batch_size])
        values += [float(metric(group)) for group in logits]
    return values


def edge_patch(model, clean, corrupt, metric: Metric, graph: Graph | None = None,
               batch_size: int = 16) -> pd.DataFrame:
    """Patch every edge of `graph` alone from `corrupt` into `clean`: its effect on `metric`.

    Args:
        model: A `HookedHybrid`.
        clean: The run patched into (text, texts or `Int[Tensor, "batch pos"]`).
        corrupt: The run patched from, of the same token shape.
        metric: Logits `Float[Tensor, "batch pos vocab"]` -> one number (e.g. `logit_diff_metric`).
        graph: The graph (default `Graph.of(model)`).
        batch_size: Edges patched per forward pass (each as its own copy of the batch).

    Returns:
        One row per edge (`graph.edges` order): `upstream`, `downstream`, `score` = metric(patched) -
        metric(clean); `attrs` hold the `clean` and `corrupt` metric values.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> table = edge_patch(model, "went out of the land of", "went out of the city of", metric)
        >>> table.columns.tolist(), len(table)
        (['upstream', 'downstream', 'score'], 153)
    """
    batch_size = positive("batch_size", batch_size)
    clean_tokens, _, graph, _, corrupt_outputs, values = prepare(model, clean, corrupt, metric, graph)
    scores = []
    for chunk in graph.edge_index.split(batch_size):  # one mask per edge, built a pass at a time
        patched = torch.zeros(len(chunk), *graph.allowed.shape, dtype=torch.bool)
        patched[torch.arange(len(chunk)), chunk[:, 0], chunk[:, 1]] = True
        scores += group_metrics(model, graph, clean_tokens, corrupt_outputs, patched, metric, batch_size)
    table = graph.table()
    table["score"] = [value - values["clean"] for value in scores]
    table.attrs.update(values)
    return table


def circuit_metric(model, clean, corrupt, metric: Metric, circuits: Sequence[Bool[Tensor, "source target"]],
                   graph: Graph | None = None, batch_size: int = 16) -> pd.DataFrame:
    """The metric of each circuit: its edges carry the clean run, every other edge of `graph` is patched
    from `corrupt` (so the empty circuit gives the corrupted run's metric and the full graph the clean one's).

    Args:
        model: A `HookedHybrid`.
        clean: The run patched into (text, texts or `Int[Tensor, "batch pos"]`).
        corrupt: The run patched from, of the same token shape.
        metric: Logits `Float[Tensor, "batch pos vocab"]` -> one number.
        graph: The graph (default `Graph.of(model)`).
        batch_size: Circuits evaluated per forward pass.
        circuits: Each circuit's kept edges, a `[source, target]` mask (`Graph.mask`, `prune`).

    Returns:
        One row per circuit: `edges` (how many kept), `metric`, and `recovered` =
        (metric - corrupt) / (clean - corrupt), the share of the clean-corrupt gap the circuit keeps.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> graph = Graph.of(model)
        >>> table = circuit_metric(model, "went out of the land of", "went out of the city of", metric,
        ...                        [graph.allowed, graph.mask([])], graph)
        >>> table.recovered.round(3).tolist()
        [1.0, 0.0]
    """
    batch_size = positive("batch_size", batch_size)
    clean_tokens, _, graph, _, corrupt_outputs, values = prepare(model, clean, corrupt, metric, graph)
    kept = torch.stack([torch.as_tensor(circuit, dtype=torch.bool) for circuit in circuits]) if len(circuits) else \
        torch.zeros(0, *graph.allowed.shape, dtype=torch.bool)
    if kept.shape[1:] != graph.allowed.shape:
        raise ValueError(f"Each circuit is a [source, target] = {tuple(graph.allowed.shape)} mask, got {tuple(kept.shape[1:])}.")
    patched = graph.allowed & ~kept
    scores = group_metrics(model, graph, clean_tokens, corrupt_outputs, patched, metric, batch_size)
    gap = values["clean"] - values["corrupt"]
    table = pd.DataFrame({"edges": (kept & graph.allowed).flatten(1).sum(1).tolist(), "metric": scores})
    table["recovered"] = (table.metric - values["corrupt"]) / gap if gap else float("nan")
    table.attrs.update(values)
    return table
