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
    bootstrap CI of the ratio to baseline as error bars and the multiple of baseline (4 significant
    digits) written above each error bar.

    Args:
        ppl: `study.stats.perplexity_table` rows (columns `condition`, `loss`, `ratio`,
            `ratio_ci_low`, `ratio_ci_high`), including the `baseline` condition.
        model: Model name for the title.
        text: What the perplexity was measured on, for the title.
        labels: condition -> what it removes, shown on hover.

    Examples:
        >>> import pandas as pd
        >>> ppl = pd.DataFrame(dict(condition=["baseline", "ssm_off"], loss=[3.2, 3.247], ratio=[1.0, 1.048],
        ...                         ratio_ci_low=[1.0, 1.026], ratio_ci_high=[1.0, 1.067]))
        >>> fig = perplexity_bars(ppl, "hybrid-lens/tiny-falcon-h1")
        >>> fig.layout.yaxis.type, [note.text for note in fig.layout.annotations]
        ('log', ['baseline', '1.048x'])
    """
    _require(ppl, "perplexity")
    ppl = pd.concat([ppl[ppl.condition == "baseline"], ppl[ppl.condition != "baseline"]])
    base = float(np.exp(ppl.loc[ppl.condition == "baseline", "loss"].iloc[0]))
    heights = np.exp(np.minimum(ppl.loss.to_numpy(), 700))
    tops = np.maximum(heights, ppl.ratio_ci_high.to_numpy() * base)
    fig = go.Figure(go.Bar(
        x=ppl.condition, y=heights,
        hovertext=[labels(c) for c in ppl.condition] if labels else None,
        error_y=dict(type="data", symmetric=False, array=(ppl.ratio_ci_high - ppl.ratio) * base,
                     arrayminus=(ppl.ratio - ppl.ratio_ci_low) * base),
    ))
    for condition, ratio, top in zip(ppl.condition, ppl.ratio, tops):  # above the error bar, not on it
        fig.add_annotation(x=condition, y=np.log10(top), text="baseline" if condition == "baseline" else multiple(ratio),
                           showarrow=False, yanchor="bottom", yshift=3, font=dict(size=11))
    fig.update_layout(title=f"{model}: {text} perplexity (log scale; error bars: 95% CI; labels: multiple of baseline)",
                      yaxis=dict(type="log", title="perplexity",  # bars start well below the smallest
                                 range=[np.log10(heights.min()) - 0.5, np.log10(tops.max()) + 0.35]),
                      xaxis=dict(type="category", categoryorder="array", categoryarray=list(ppl.condition)))
    return fig


def multiple(ratio: float) -> str:
    """A multiple of baseline as a bar label: 4 significant digits, so that 1.048x is not 1.0x.

    Examples:
        >>> multiple(1.0481), multiple(115.08), multiple(2915.3)
        ('1.048x', '115.1x', '2,915x')
    """
    return f"{ratio:,.4g}x"


ABSENT_COLOR = "#a8a8a8"  # heatmap cells with no value (a layer without that component): not a colour of the scale


def layer_sweep_heatmaps(sweeps: dict[str, pd.DataFrame], task: str) -> go.Figure:
    """Effect of single-component ablations, what was removed x layer, one panel per model, each
    panel with its own colour scale (centred on 0) and colour bar; a layer without that component
    is grey (absent), not a colour of the scale.

    Args:
        sweeps: model -> rows with columns `layer`, `delta` and `removed` (what was removed and how,
            the panel's rows; default: the `kind` column) for `task`.
        task: Task name (`ppl` plots the log perplexity ratio with a reversed color scale).

    Examples:
        >>> import pandas as pd
        >>> sweep = pd.DataFrame(dict(removed=["SSM path zeroed"] * 3 + ["attention path zeroed"] * 3,
        ...                           layer=[0, 1, 2] * 2, delta=[-0.12, -0.02, -0.01, -0.05, 0.0, -0.03]))
        >>> fig = layer_sweep_heatmaps({"hybrid-lens/tiny-falcon-h1": sweep, "other": sweep * 1}, "hellaswag")
        >>> [trace.coloraxis for trace in fig.data]     # one colour scale per model
        ['coloraxis', 'coloraxis2']
    """
    sweeps = {m: t for m, t in sweeps.items() if t is not None and not t.empty}
    _require(pd.concat(sweeps.values()) if sweeps else pd.DataFrame(), f"{task} layer-sweep")
    grids = {}
    for model, table in sweeps.items():
        rows = table.removed if "removed" in table else table.kind
        grid = table.assign(row=rows).pivot_table(index="row", columns="layer", values="delta", sort=False)
        grid = grid.sort_index(axis=1)
        grid.columns = [f"L{layer}" for layer in grid.columns]
        grids[model] = grid
    what = "log perplexity ratio" if task == "ppl" else "score change"
    fig = _heatmap_panels(grids, "RdBu_r" if task == "ppl" else "RdBu", "Δ log PPL" if task == "ppl" else "Δ score")
    fig.update_layout(title=f"Layer-wise ablation: {task} {what} vs baseline (each model its own colour scale; grey: "
                            "the layer has no such component)")
    return fig


def _heatmap_panels(grids: dict[str, pd.DataFrame], colorscale: str, unit: str) -> go.Figure:
    """One heatmap panel per grid (rows x columns, NaN = absent, drawn grey), each on its own colour
    axis centred on 0 with a colour bar beside its panel; rows at least 40 px tall, so that a one-row
    panel keeps a readable colour bar."""
    panel = [44 * max(2, len(grid)) for grid in grids.values()]  # px
    gap, top, bottom = 80, 110, 60
    area = sum(panel) + gap * (len(grids) - 1)
    fig = make_subplots(rows=len(grids), cols=1, subplot_titles=list(grids), row_heights=panel,
                        vertical_spacing=gap / area if len(grids) > 1 else 0)
    for row, grid in enumerate(grids.values(), start=1):
        axis = "coloraxis" if row == 1 else f"coloraxis{row}"
        values = grid.to_numpy(dtype=float)
        fig.add_trace(go.Heatmap(z=values, x=grid.columns.tolist(), y=grid.index.tolist(), coloraxis=axis,
                                 hoverongaps=False), row=row, col=1)
        fig.update_xaxes(type="category", showgrid=False, row=row, col=1)
        fig.update_yaxes(type="category", showgrid=False, autorange="reversed", row=row, col=1)
        domain = fig.layout["yaxis" if row == 1 else f"yaxis{row}"].domain
        limit = float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.0
        fig.update_layout({axis: dict(colorscale=colorscale, cmin=-limit or -1, cmax=limit or 1,
                                      colorbar=dict(title=unit, y=(domain[0] + domain[1]) / 2, len=domain[1] - domain[0],
                                                    yanchor="middle", thickness=14))})
    fig.update_layout(plot_bgcolor=ABSENT_COLOR, height=area + top + bottom,
                      margin=dict(l=220, t=top, b=bottom))
    return fig


def targeted_vs_random_bars(table: pd.DataFrame, model: str, value: str) -> go.Figure:
    """Targeted ablation vs the mean of its matched random controls, with the range (min to max) of
    the random trials as error bars: drawable on a log axis, where mean - std can be negative.

    Args:
        table: `study.stats.targeted_vs_random` rows (columns `condition`, `targeted`,
            `random_mean`, `random_min`, `random_max`, `trials`).
        model: Model name for the title.
        value: What the values are (axis title; a name starting with "perplexity" gives a log axis).

    Examples:
        >>> import pandas as pd
        >>> table = pd.DataFrame(dict(condition=["attn_off"], targeted=[31.4], random_mean=[1481.0],
        ...                           random_min=[40.2], random_max=[4251.0], trials=[3]))
        >>> fig = targeted_vs_random_bars(table, "hybrid-lens/tiny-qwen3.5", "perplexity")
        >>> [trace.name for trace in fig.data], float(fig.data[1].error_y.arrayminus[0])
        (['targeted', 'random: mean, bar = min to max of 3 trials'], 1440.8)
    """
    _require(table, "targeted-vs-random")
    trials = "/".join(str(n) for n in sorted(set(table.trials)))
    fig = go.Figure([
        go.Bar(name="targeted", x=table.condition, y=table.targeted),
        go.Bar(name=f"random: mean, bar = min to max of {trials} trials", x=table.condition, y=table.random_mean,
               error_y=dict(type="data", symmetric=False, array=table.random_max - table.random_mean,
                            arrayminus=table.random_mean - table.random_min)),
    ])
    log = value.lower().startswith("perplexity")
    fig.update_layout(title=f"{model}: targeted vs matched random ablation ({value})", barmode="group",
                      yaxis=dict(title=value, type="log" if log else "linear"))
    return fig


def metric_vs_impact(table: pd.DataFrame, metric: str, impact: str, stats: dict, model: str,
                     names: tuple[str, str] | None = None) -> go.Figure:
    """Per-layer hidden-state metric against the layer's ablation impact, one point per distinct
    (layer, component), with n, Pearson r and p and Spearman ρ and p in the title; the point whose
    removal would undo a significant correlation (`stats["driven"]`) is ringed and named.

    Args:
        table: one row per point with columns `metric`, `impact` and `label`.
        metric: Column of the x values.
        impact: Column of the y values.
        stats: `pearson_r`, `pearson_p`, `spearman_rho`, `spearman_p`, `n` (`analysis.correlation`),
            optionally `driven`, `driver_label`, `driver_r`, `driver_p` (`study.stats.leave_one_out`).
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
    for component, rows in table.groupby(table.get("kind", table.get("component", pd.Series("", index=table.index))),
                                         sort=False):
        fig.add_trace(go.Scatter(x=rows[metric], y=rows[impact], mode="markers", name=str(component) or "layer",
                                 hovertext=rows.label, marker=dict(size=9)))
    for row in _isolated(table, metric, impact).itertuples():  # label points that stand apart; the rest on hover
        fig.add_annotation(x=getattr(row, metric), y=getattr(row, impact), text=row.label, showarrow=True,
                           arrowhead=0, ax=20, ay=-20, font=dict(size=10))
    title = (f"{model}: {x_name} vs {y_name}<br><sup>n = {stats['n']} points; Pearson r = {stats['pearson_r']:.2f} "
             f"(p = {stats['pearson_p']:.2g}); Spearman ρ = {stats['spearman_rho']:.2f} (p = {stats['spearman_p']:.2g})")
    if stats.get("driven"):
        driver = table[table.label == stats["driver_label"]]
        fig.add_trace(go.Scatter(x=driver[metric], y=driver[impact], mode="markers", name="drives r",
                                 marker=dict(size=18, symbol="circle-open", color="black", line=dict(width=2))))
        title += f"; without {stats['driver_label']}: r = {stats['driver_r']:.2f} (p = {stats['driver_p']:.2g})"
    fig.update_layout(title=title + "</sup>", xaxis_title=x_name, yaxis_title=y_name)
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
    """Score change (ablated - baseline) of each condition x benchmark, one panel per model, each
    with its own colour scale centred on 0 (blue: better, red: worse); grey: not run.

    Args:
        drops: `score_drops` rows of every model (columns `model`, `condition`, `task`, `delta`).

    Examples:
        >>> import pandas as pd
        >>> drops = pd.DataFrame(dict(model=["tiny-falcon-h1"] * 2 + ["tiny-qwen3.5"] * 2,
        ...                           condition=["ssm_off", "attn_off"] * 2, task="hellaswag",
        ...                           delta=[-0.10, -0.04, -0.08, -0.02]))
        >>> fig = drop_heatmap(drops)
        >>> list(fig.data[0].y), [trace.coloraxis for trace in fig.data]   # one panel per model
        (['ssm_off', 'attn_off'], ['coloraxis', 'coloraxis2'])
    """
    _require(drops, "score-drop")
    grids = {model: rows.pivot_table(index="condition", columns="task", values="delta", sort=False)
             for model, rows in drops.groupby("model", sort=False)}
    fig = _heatmap_panels(grids, "RdBu", "Δ score")
    fig.update_layout(title="Score change vs baseline per model, condition and benchmark (each model its own colour "
                            "scale)", margin=dict(l=160))
    return fig
