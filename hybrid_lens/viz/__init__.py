"""Figures of study results: plotly for the HTML report, matplotlib PNG copies (`write_png`); and linear
mixers' signed implicit attention patterns scaled per head for circuitsvis (`SignedPattern`); circuits as
interactive graphs (`circuit_figure`)."""

from .circuits import circuit_figure
from .figures import (
    drop_heatmap,
    group_radar,
    layer_sweep_heatmaps,
    metric_vs_impact,
    perplexity_bars,
    targeted_vs_random_bars,
)
from .patterns import SignedPattern
from .static import write_png

__all__ = ["SignedPattern", "circuit_figure", "drop_heatmap", "group_radar", "layer_sweep_heatmaps", "metric_vs_impact", "perplexity_bars",
           "targeted_vs_random_bars", "write_png"]
