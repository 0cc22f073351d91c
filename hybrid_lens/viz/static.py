"""Static PNG copies of the report's plotly figures, drawn with matplotlib (no browser needed).

`write_png` redraws a figure from its own traces (bars with error bars, scatter points, radar
polygons, heatmaps, one panel per subplot), so the PNG shows the same numbers as the HTML.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np

from .figures import ABSENT_COLOR


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
            ax.set_title(_plain(fig.layout.annotations[index].text), fontsize=10)
    notes = list(fig.layout.annotations or [])[len(panels) if len(panels) > 1 else 0:]
    categories = next(([str(v) for v in t.x] for t in traces if t.type == "bar"), [])  # bar positions 0, 1, ...
    log = bool(fig.layout.yaxis and fig.layout.yaxis.type == "log")
    for note in notes if not polar else []:
        if note.x is None or note.y is None:
            continue
        x = categories.index(str(note.x)) if str(note.x) in categories else note.x
        y = 10 ** note.y if log else note.y  # plotly places annotations on a log axis by log10
        axes[0][0].annotate(note.text, (x, y), xytext=(8, 8) if note.showarrow else (0, 3), textcoords="offset points",
                            ha="left" if note.showarrow else "center", fontsize=8)
    if any(t.name for t in traces) and len(traces) > 1:
        axes[0][0].legend(fontsize=8, loc="best")
    title = _plain(fig.layout.title.text or "")
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
    elif trace.type == "scatter":
        ring = "open" in str(trace.marker.symbol or "")  # a ringed point (e.g. the one that drives a correlation)
        ax.scatter(np.asarray(trace.x, float), np.asarray(trace.y, float), label=trace.name, s=120 if ring else 25,
                   facecolors="none" if ring else None, edgecolors="black" if ring else None)
    elif trace.type == "scatterpolar":
        theta = np.linspace(0, 2 * np.pi, len(trace.r) - 1, endpoint=False)
        theta = np.append(theta, theta[0])
        ax.plot(theta, np.asarray(trace.r, float), label=trace.name)
        ax.fill(theta, np.asarray(trace.r, float), alpha=0.2)
        ax.set_xticks(theta[:-1], list(trace.theta)[:-1], fontsize=8)
    elif trace.type == "heatmap":
        z = np.asarray(trace.z, float)
        scale = fig.layout[trace.coloraxis] if trace.coloraxis else trace  # each panel's own colour axis
        limit = max(abs(scale.cmin or 0), abs(scale.cmax or 0)) or (np.nanmax(np.abs(z)) if np.isfinite(z).any() else 1.0)
        ax.set_facecolor(ABSENT_COLOR)  # NaN cells: the component is absent, not a value
        image = ax.imshow(np.ma.masked_invalid(z), aspect="auto", cmap="RdBu_r" if _reversed(scale) else "RdBu",
                          vmin=-limit, vmax=limit)
        ax.set_xticks(range(len(trace.x)), [str(v) for v in trace.x], fontsize=8, rotation=90 if len(trace.x) > 12 else 0)
        ax.set_yticks(range(len(trace.y)), [str(v) for v in trace.y], fontsize=8)
        bar = figure.colorbar(image, ax=ax, fraction=0.03)
        if scale.colorbar and scale.colorbar.title and scale.colorbar.title.text:
            bar.set_label(scale.colorbar.title.text, fontsize=8)


def _reversed(scale) -> bool:
    """Whether a colour scale (a plotly colour axis or trace) is the reversed red-blue one (red = high)."""
    colors = scale.colorscale if scale is not None else None
    return bool(colors) and colors[0][1] != "rgb(103,0,31)"


def _axes_style(ax, fig, panel: str, polar: bool) -> None:
    """Axis titles and log scale as the plotly layout has them."""
    if polar:
        return
    yaxis = fig.layout["yaxis" + panel[1:]] if panel != "y" else fig.layout.yaxis
    xaxis = fig.layout["xaxis" + panel[1:]] if panel != "y" else fig.layout.xaxis
    if yaxis and yaxis.type == "log":
        ax.set_yscale("log")
    if yaxis and yaxis.range:
        ax.set_ylim(*(10 ** np.asarray(yaxis.range, float) if yaxis.type == "log" else yaxis.range))
    if yaxis and yaxis.type == "log":
        from matplotlib.ticker import FuncFormatter, NullFormatter

        plain = FuncFormatter(lambda value, _: f"{value:,.0f}" if value >= 10 else f"{value:.4g}")  # 40, not 4 x 10^1
        low, high = ax.get_ylim()
        ax.yaxis.set_major_formatter(plain)
        ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())  # minor labels within a decade
    if yaxis and yaxis.title and yaxis.title.text:
        ax.set_ylabel(yaxis.title.text, fontsize=9)
    if xaxis and xaxis.title and xaxis.title.text:
        ax.set_xlabel(xaxis.title.text, fontsize=9)


def _plain(text: str) -> str:
    """Plotly's title markup (`<br>`, `<sup>`) as plain text with line breaks."""
    return re.sub(r"<[^>]+>", "", text.replace("<br>", "\n"))
