"""Figures of the component-ablation study, each from a tidy table produced by `study.stats`.

Every function returns a `plotly.graph_objects.Figure` and raises `ValueError` when its table has
nothing to plot, so a report never shows an empty figure.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots


def _require(table: pd.DataFrame, what: str) -> None:
    if table is None or table.empty:
        raise ValueError(f"No data for the {what} figure.")


def group_radar(drops: pd.DataFrame, model: str, names: dict[str, str] | None = None) -> go.Figure:
    """Radar of absolute scores per task for baseline and each group ablation (the paper's Figure 1).

    Args:
        drops: `score_drops` rows of one model restricted to baseline + group conditions
            (columns `condition`, `task`, `score`), baseline first.
        model: Model name for the title.
        names: task -> axis name (default: the task names).

    Examples:
        >>> import pandas as pd
        >>> drops = pd.DataFrame(dict(condition=["baseline"] * 3 + ["ssm_off"] * 3,
        ...                           task=["arc_challenge", "hellaswag", "mmlu"] * 2,
        ...                           score=[0.31, 0.42, 0.27, 0.25, 0.30, 0.26]))
        >>> fig = group_radar(drops, "hybrid-lens/tiny-falcon-h1")
        >>> [trace.name for trace in fig.data]
        ['baseline', 'ssm_off']
    """
    _require(drops, "group-ablation radar")
    fig = go.Figure()
    for condition, rows in drops.groupby("condition", sort=False):
        tasks = [(names or {}).get(task, task) for task in rows.task]
        fig.add_trace(go.Scatterpolar(r=[*rows.score, rows.score.iloc[0]], theta=[*tasks, tasks[0]],
                                      name=condition, fill="toself", opacity=0.5))
    fig.update_layout(title=f"{model}: group ablations (score per benchmark)",
                      polar=dict(radialaxis=dict(range=[0, max(0.05, float(drops.score.max()) * 1.1)])))
    return fig


def perplexity_bars(ppl: pd.DataFrame, model: str, text: str = "WikiText-2", labels=None) -> go.Figure:
    """Perplexity per condition on a log axis (baseline first, then in the table's order), with the
    bootstrap CI of the ratio to baseline.

    Args:
        ppl: `study.stats.perplexity_table` rows (columns `condition`, `loss`, `ratio`,
            `ratio_ci_low`, `ratio_ci_high`), including the `baseline` condition.
        model: Model name for the title.
        text: What the perplexity was measured on, for the title.
        labels: condition -> what it removes, shown on hover.

    Examples:
        >>> import pandas as pd
        >>> ppl = pd.DataFrame(dict(condition=["baseline", "ssm_off"], loss=[3.2, 4.1], ratio=[1.0, 2.46],
        ...                         ratio_ci_low=[1.0, 2.31], ratio_ci_high=[1.0, 2.62]))
        >>> fig = perplexity_bars(ppl, "hybrid-lens/tiny-falcon-h1")
        >>> fig.layout.yaxis.type
        'log'
    """
    _require(ppl, "perplexity")
    ppl = pd.concat([ppl[ppl.condition == "baseline"], ppl[ppl.condition != "baseline"]])
    base = float(np.exp(ppl.loc[ppl.condition == "baseline", "loss"].iloc[0]))
    heights = np.exp(np.minimum(ppl.loss.to_numpy(), 700))
    fig = go.Figure(go.Bar(
        x=ppl.condition, y=heights,
        hovertext=[labels(c) for c in ppl.condition] if labels else None,
        error_y=dict(type="data", symmetric=False, array=(ppl.ratio_ci_high - ppl.ratio) * base,
                     arrayminus=(ppl.ratio - ppl.ratio_ci_low) * base),
        text=[f"{r:,.1f}x" for r in ppl.ratio], textposition="outside",
    ))
    fig.update_layout(title=f"{model}: {text} perplexity (log scale; labels: multiple of baseline)",
                      yaxis=dict(type="log", title="perplexity",  # bars start well below the smallest
                                 range=[np.log10(heights.min()) - 0.5, np.log10(heights.max()) + 0.3]),
                      xaxis=dict(type="category", categoryorder="array", categoryarray=list(ppl.condition)))
    return fig


def layer_sweep_heatmaps(sweeps: dict[str, pd.DataFrame], task: str) -> go.Figure:
    """Score drop of single-component ablations, component kind x layer, one panel per model.

    Args:
        sweeps: model -> rows with columns kind, layer, delta for `task`.
        task: Task name (`ppl` plots the log perplexity ratio with a reversed color scale).

    Examples:
        >>> import pandas as pd
        >>> sweep = pd.DataFrame(dict(kind=["ssm"] * 3 + ["attn"] * 3, layer=[0, 1, 2] * 2,
        ...                           delta=[-0.12, -0.02, -0.01, -0.05, 0.0, -0.03]))
        >>> fig = layer_sweep_heatmaps({"hybrid-lens/tiny-falcon-h1": sweep}, "hellaswag")
        >>> len(fig.data)                               # one heatmap per model
        1
    """
    sweeps = {m: t for m, t in sweeps.items() if t is not None and not t.empty}
    _require(pd.concat(sweeps.values()) if sweeps else pd.DataFrame(), f"{task} layer-sweep")
    fig = make_subplots(rows=len(sweeps), cols=1, subplot_titles=list(sweeps), vertical_spacing=0.15)
    for row, table in enumerate(sweeps.values(), start=1):
        grid = table.pivot_table(index="kind", columns="layer", values="delta").sort_index(axis=1)
        fig.add_trace(go.Heatmap(z=grid.to_numpy(), x=[f"L{layer}" for layer in grid.columns], y=grid.index.tolist(),
                                 coloraxis="coloraxis"), row=row, col=1)
        fig.update_xaxes(title_text="layer", type="category", row=row, col=1)
    what = "log perplexity ratio" if task == "ppl" else "score drop"
    fig.update_layout(coloraxis=dict(colorscale="RdBu_r" if task == "ppl" else "RdBu", cmid=0, colorbar=dict(title="Δ")))
    fig.update_layout(title=f"Layer-wise ablation: {task} {what} vs baseline",
                      height=260 * len(sweeps) + 120)
    return fig


def targeted_vs_random_bars(table: pd.DataFrame, model: str, value: str) -> go.Figure:
    """Targeted ablation vs the mean of its matched random controls (error bars: std over trials).

    Args:
        table: `study.stats.targeted_vs_random` rows (columns `condition`, `targeted`,
            `random_mean`, `random_std`).
        model: Model name for the title.
        value: What the values are (axis title; a name starting with "perplexity" gives a log axis).

    Examples:
        >>> import pandas as pd
        >>> table = pd.DataFrame(dict(condition=["attn_off"], targeted=[41.0], random_mean=[18.5],
        ...                           random_std=[2.1]))
        >>> fig = targeted_vs_random_bars(table, "hybrid-lens/tiny-qwen3.5", "perplexity")
        >>> [trace.name for trace in fig.data]
        ['targeted', 'random (mean ± std)']
    """
    _require(table, "targeted-vs-random")
    fig = go.Figure([
        go.Bar(name="targeted", x=table.condition, y=table.targeted),
        go.Bar(name="random (mean ± std)", x=table.condition, y=table.random_mean,
               error_y=dict(type="data", array=table.random_std)),
    ])
    log = value.lower().startswith("perplexity")
    fig.update_layout(title=f"{model}: targeted vs matched random ablation ({value})", barmode="group",
                      yaxis=dict(title=value, type="log" if log else "linear"))
    return fig


def metric_vs_impact(table: pd.DataFrame, metric: str, impact: str, stats: dict, model: str,
                     names: tuple[str, str] | None = None) -> go.Figure:
    """Per-layer hidden-state metric against the layer's ablation impact, with Pearson r and p.

    Args:
        table: one row per point with columns `metric`, `impact` and `label`.
        metric: Column of the x values.
        impact: Column of the y values.
        stats: `pearson_r`, `pearson_p` and `spearman_rho`, as returned by
            `analysis.correlation`.
        model: Model name for the title.
        names: axis titles (default: the column names).

    Examples:
        >>> from hybrid_lens.analysis import correlation, layer_metrics
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> table = layer_metrics(model, "In the beginning God created the heaven", components=["ssm"])
        >>> points = table[(table.metric == "output_ratio") & (table.component == "ssm")].merge(
        ...     table[table.metric == "ablation_kl"], on=["layer", "component"], suffixes=("", "_kl"))
        >>> points["label"] = points.layer.astype(str)
        >>> fig = metric_vs_impact(points, "value", "value_kl", correlation(points.value, points.value_kl),
        ...                        "hybrid-lens/tiny-falcon-h1", names=("SSM output ratio", "ablation KL"))
        >>> len(fig.data[0].x)                          # one point per layer
        12
    """
    _require(table, "metric-vs-impact")
    x_name, y_name = names or (metric, impact)
    fig = go.Figure()
    for component, rows in table.groupby(table.get("component", pd.Series("", index=table.index)), sort=False):
        fig.add_trace(go.Scatter(x=rows[metric], y=rows[impact], mode="markers", name=str(component) or "layer",
                                 hovertext=rows.label, marker=dict(size=9)))
    for row in _isolated(table, metric, impact).itertuples():  # label points that stand apart; the rest on hover
        fig.add_annotation(x=getattr(row, metric), y=getattr(row, impact), text=row.label, showarrow=True,
                           arrowhead=0, ax=20, ay=-20, font=dict(size=10))
    fig.update_layout(title=f"{model}: {x_name} vs {y_name} (Pearson r = {stats['pearson_r']:.2f}, "
                            f"p = {stats['pearson_p']:.3g}; Spearman ρ = {stats['spearman_rho']:.2f})",
                      xaxis_title=x_name, yaxis_title=y_name)
    return fig


def _isolated(table: pd.DataFrame, x: str, y: str, gap: float = 0.08, most: int = 5) -> pd.DataFrame:
    """The rows whose point lies at least `gap` (in axis-normalised units) from every other point,
    the `most` largest |y| of them: labels that cannot pile on top of each other."""
    xy = table[[x, y]].to_numpy(dtype=float)
    span = np.ptp(xy, axis=0)
    xy = (xy - xy.min(axis=0)) / np.where(span > 0, span, 1)
    distance = np.linalg.norm(xy[:, None] - xy[None], axis=-1) + np.eye(len(xy)) * 9
    keep = table[distance.min(axis=1) >= gap]
    return keep.loc[keep[y].abs().sort_values(ascending=False).index[:most]]


def drop_heatmap(drops: pd.DataFrame) -> go.Figure:
    """Score drop over (model, condition) x benchmark.

    Args:
        drops: `score_drops` rows of every model (columns `model`, `condition`, `task`, `delta`).

    Examples:
        >>> import pandas as pd
        >>> drops = pd.DataFrame(dict(model=["tiny-falcon-h1"] * 2 + ["tiny-qwen3.5"] * 2,
        ...                           condition=["ssm_off", "attn_off"] * 2, task="hellaswag",
        ...                           delta=[-0.10, -0.04, -0.08, -0.02]))
        >>> fig = drop_heatmap(drops)
        >>> list(fig.data[0].y[:2])                      # one row per (model, condition)
        ['tiny-falcon-h1 · ssm_off', 'tiny-falcon-h1 · attn_off']
    """
    _require(drops, "score-drop")
    grid = drops.assign(row=drops.model + " · " + drops.condition).pivot_table(index="row", columns="task",
                                                                               values="delta", sort=False)
    fig = go.Figure(go.Heatmap(z=grid.to_numpy(), x=grid.columns.tolist(), y=grid.index.tolist(),
                               colorscale="RdBu", zmid=0, colorbar=dict(title="Δ score")))
    fig.update_layout(title="Score drop vs baseline per model, condition and benchmark",
                      height=max(400, 22 * len(grid) + 150), yaxis=dict(autorange="reversed"))
    return fig
