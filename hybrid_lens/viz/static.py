"""Static PNG copies of the report's plotly figures, drawn with matplotlib (no browser needed).

`write_png` redraws a figure from its own traces (bars with error bars, scatter points, radar
polygons, heatmaps, one panel per subplot), so the PNG shows the same numbers as the HTML.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


def write_png(fig, path: str | Path, width: float = 10, height: float | None = None) -> Path:
    """Draw plotly figure `fig` with matplotlib into `path` (atomic write); return the path.

    Handles the trace types of `hybrid_lens.viz.figures`: Bar, Scatter, Scatterpolar, Heatmap.

    Examples:
        >>> import tempfile, plotly.graph_objects as go
        >>> fig = go.Figure(go.Bar(x=["baseline", "ssm_off"], y=[20.0, 41.0]))
        >>> path = write_png(fig, Path(tempfile.mkdtemp()) / "bars.png")
        >>> path.read_bytes()[:4]
        b'\\x89PNG'
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(fig.data)
    polar = any(t.type == "scatterpolar" for t in traces)
    panels = sorted({getattr(t, "yaxis", None) or "y" for t in traces}, key=lambda a: int(a[1:] or 1))
    height = height or (4.5 if len(panels) == 1 else 2.6 * len(panels) + 1)
    figure, axes = plt.subplots(len(panels), 1, figsize=(width, height), squeeze=False,
                                subplot_kw=dict(projection="polar") if polar else None)
    for index, panel in enumerate(panels):
        ax = axes[index][0]
        for trace in traces:
            if (getattr(trace, "yaxis", None) or "y") == panel:
                _draw(ax, trace, fig, figure)
        _axes_style(ax, fig, panel, polar)
        if fig.layout.annotations and len(panels) > 1 and index < len(fig.layout.annotations):
            ax.set_title(fig.layout.annotations[index].text, fontsize=10)
    for note in fig.layout.annotations[len(panels) if len(panels) > 1 else 0:] if fig.layout.annotations else []:
        if note.x is not None and note.y is not None and not polar:
            axes[0][0].annotate(note.text, (note.x, note.y), xytext=(8, 8), textcoords="offset points", fontsize=8)
    if any(t.name for t in traces) and len(traces) > 1:
        axes[0][0].legend(fontsize=8, loc="best")
    title = fig.layout.title.text or ""
    figure.suptitle(title, fontsize=10, wrap=True)
    figure.tight_layout()
    from ..study.files import atomic_write

    png = io.BytesIO()
    figure.savefig(png, format="png", dpi=100)
    plt.close(figure)
    return atomic_write(path, png.getvalue())


def _draw(ax, trace, fig, figure) -> None:
    """One trace onto matplotlib axes."""
    if trace.type == "bar":
        x = [str(v) for v in trace.x]
        bars = len([t for t in fig.data if t.type == "bar"])
        offset = ([t for t in fig.data if t.type == "bar"].index(trace) - (bars - 1) / 2) * 0.8 / bars
        positions = np.arange(len(x)) + offset
        error = trace.error_y
        yerr = None
        if error is not None and error.array is not None:
            yerr = np.vstack([np.asarray(error.arrayminus if error.arrayminus is not None else error.array, float),
                              np.asarray(error.array, float)])
        ax.bar(positions, np.asarray(trace.y, float), width=0.8 / bars, yerr=yerr, label=trace.name, capsize=3)
        ax.set_xticks(np.arange(len(x)), x, rotation=30, ha="right", fontsize=8)
        for position, y, text in zip(positions, trace.y, trace.text or []):
            ax.annotate(text, (position, y), xytext=(0, 3), textcoords="offset points", ha="center", fontsize=7)
    elif trace.type == "scatter":
        ax.scatter(np.asarray(trace.x, float), np.asarray(trace.y, float), label=trace.name, s=25)
    elif trace.type == "scatterpolar":
        theta = np.linspace(0, 2 * np.pi, len(trace.r) - 1, endpoint=False)
        theta = np.append(theta, theta[0])
        ax.plot(theta, np.asarray(trace.r, float), label=trace.name)
        ax.fill(theta, np.asarray(trace.r, float), alpha=0.2)
        ax.set_xticks(theta[:-1], list(trace.theta)[:-1], fontsize=8)
    elif trace.type == "heatmap":
        z = np.asarray(trace.z, float)
        scale = fig.layout.coloraxis if trace.coloraxis else trace
        colors = "RdBu_r" if "RdBu_r" in str(getattr(scale, "colorscale", "")) or _reversed(fig) else "RdBu"
        shared = [np.asarray(t.z, float) for t in fig.data if t.type == "heatmap" and t.coloraxis and trace.coloraxis]
        values = np.concatenate([m.ravel() for m in shared or [z]])
        limit = np.nanmax(np.abs(values)) if np.isfinite(values).any() else 1.0  # one colour scale, as in plotly
        image = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap=colors, vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(trace.x)), [str(v) for v in trace.x], fontsize=8, rotation=90 if len(trace.x) > 12 else 0)
        ax.set_yticks(range(len(trace.y)), [str(v) for v in trace.y], fontsize=8)
        figure.colorbar(image, ax=ax, fraction=0.03)


def _reversed(fig) -> bool:
    """Whether the figure's shared colour axis uses the reversed red-blue scale (perplexity: red = worse)."""
    scale = fig.layout.coloraxis.colorscale if fig.layout.coloraxis else None
    return bool(scale) and scale[0][1] != "rgb(103,0,31)"


def _axes_style(ax, fig, panel: str, polar: bool) -> None:
    """Axis titles and log scale as the plotly layout has them."""
    if polar:
        return
    yaxis = fig.layout["yaxis" + panel[1:]] if panel != "y" else fig.layout.yaxis
    xaxis = fig.layout["xaxis" + panel[1:]] if panel != "y" else fig.layout.xaxis
    if yaxis and yaxis.type == "log":
        ax.set_yscale("log")
    if yaxis and yaxis.title and yaxis.title.text:
        ax.set_ylabel(yaxis.title.text, fontsize=9)
    if xaxis and xaxis.title and xaxis.title.text:
        ax.set_xlabel(xaxis.title.text, fontsize=9)
