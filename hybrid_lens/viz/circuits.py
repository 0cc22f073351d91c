"""An interactive figure of a circuit: the nodes of a `hybrid_lens.circuits.Graph` in forward order, its
strongest scored edges drawn between them (plotly)."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from ..circuits.graph import Graph

__all__ = ["circuit_figure"]


def node_positions(graph: Graph) -> dict[str, tuple[float, float]]:
    """Node name -> (x, y): one column per place in the forward pass (embedding, each block's mixers, its
    MLP, the logits), the nodes of a column stacked around 0 (a split mixer's input above its heads)."""
    columns: dict[tuple, list[str]] = {}
    for node in (*graph.targets, *graph.sources):
        names = columns.setdefault(node.order, [])
        if node.name not in names:
            names.append(node.name)
    ordered = sorted(columns)
    return {name: (float(x), (len(names) - 1) / 2 - y) for x, key in enumerate(ordered)
            for y, name in enumerate(columns[key])}


def circuit_figure(graph: Graph, table: pd.DataFrame, top: int = 50, title: str = "Circuit") -> go.Figure:
    """The `top` edges of `table` by |score| as lines between the graph's nodes (blue: the score is
    positive, red: negative; width by |score|; hover: the edge and its score), every node labelled.

    Args:
        graph: The graph the table scores.
        table: Edge scores (`upstream`, `downstream`, `score`: `edge_attribution`, `edge_patch`), or only
            a circuit's kept edges.
        top: How many edges to draw (the largest |score| first).
        title: The figure's title.

    Examples:
        >>> from hybrid_lens.circuits import Graph, edge_attribution
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> graph = Graph.of(model)
        >>> metric = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
        >>> table = edge_attribution(model, "went out of the land of", "went out of the city of", metric, graph)
        >>> figure = circuit_figure(graph, table, top=10)
        >>> len(figure.data), figure.data[-1].name              # ten edges, then the nodes
        (11, 'nodes')
    """
    if table is None or table.empty:
        raise ValueError("No edges for the circuit figure.")
    where = node_positions(graph)
    unknown = sorted({*table.upstream, *table.downstream} - set(where))
    if unknown:
        raise ValueError(f"The table names nodes that are not in the graph: {unknown[:5]}.")
    shown = table.loc[table.score.abs().sort_values(ascending=False, kind="stable").index[:top]]
    largest = float(shown.score.abs().max()) or 1.0
    fig = go.Figure()
    for row in shown.itertuples():
        (x0, y0), (x1, y1) = where[row.upstream], where[row.downstream]
        fig.add_trace(go.Scatter(
            x=[x0, x1], y=[y0, y1], mode="lines", showlegend=False, name=f"{row.upstream}->{row.downstream}",
            line=dict(width=1 + 7 * abs(row.score) / largest, color="#2166ac" if row.score >= 0 else "#b2182b"),
            opacity=0.35 + 0.65 * abs(row.score) / largest, hoverinfo="text",
            hovertext=f"{row.upstream} -> {row.downstream}: {row.score:.4g}"))
    names = list(where)
    fig.add_trace(go.Scatter(x=[where[n][0] for n in names], y=[where[n][1] for n in names], mode="markers+text",
                             text=names, textposition="top center", name="nodes", showlegend=False,
                             marker=dict(size=9, color="#444")))
    fig.update_layout(title=title, xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="white")
    return fig
