"""Plotly figures of study results."""

from .figures import (
    drop_heatmap,
    group_radar,
    layer_sweep_heatmaps,
    metric_vs_impact,
    perplexity_bars,
    targeted_vs_random_bars,
)

__all__ = ["drop_heatmap", "group_radar", "layer_sweep_heatmaps", "metric_vs_impact", "perplexity_bars",
           "targeted_vs_random_bars"]
