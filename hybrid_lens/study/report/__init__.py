"""The study report: a summary, then one section per analogue of the paper's Tables 1-6 and per
figure, each with a one-line "how to read this" and the settings its numbers were measured with,
written as `report.md` and a self-contained `report.html` (plotly's JS embedded; no network), plus
PNG copies of the figures drawn with matplotlib (no browser needed).

The statistics come from `study.tables`; this package only formats them: `wording` (headings, names,
cells, `Section`), `paper` (the published values' columns), `sections` (`ReportBuilder`: the sections
from each model's tables), `pages` (Markdown and HTML); `render_report` writes the files.
"""

from __future__ import annotations

from pathlib import Path

from ... import viz
from ..files import atomic_write, writable
from ..store import StudyStore
from ..tables import StudyTables
from .pages import figure_id, html_page, markdown
from .sections import N_RESAMPLES, ReportBuilder, contributions_section
from .wording import HEADINGS, Fragment

STORE = "results.sqlite"


def load_studies(folder: str | Path) -> dict[str, StudyStore]:
    """model name -> store, for every `*/results.sqlite` (or `results.sqlite`) under `folder`.

    Examples:
        >>> import tempfile
        >>> load_studies(tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        FileNotFoundError: No study under ...: expected .../<model>/results.sqlite.
    """
    folder = Path(folder)
    paths = sorted(folder.glob(f"*/{STORE}")) + ([folder / STORE] if (folder / STORE).exists() else [])
    if not paths:
        raise FileNotFoundError(f"No study under {folder}: expected {folder}/<model>/{STORE}.")
    stores = [StudyStore(p) for p in paths]
    return {s.meta["model"]: s for s in stores}


def render_report(folder: str | Path, png: bool = True, out: str | Path | None = None) -> Path:
    """Write `report.html`, `report.md` and (unless `png=False`) `figures/*.png` of the study in
    `folder` into `out` (default: `folder`, which may then be read-only); return the HTML path.

    Every file is written atomically; figures of an earlier rendering are replaced, no other file
    is touched.

    Examples:
        >>> render_report("hybrid-lens-study").name
        'report.html'
        >>> sorted(p.name for p in Path("hybrid-lens-study/figures").iterdir())[-2:]
        ['layers_All_models_log_perplexity_ratio.png', 'table2_hybrid-lens_tiny-qwen2.5.png']
    """
    folder = Path(folder)
    out = folder if out is None else Path(out)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder: pass a folder to write the report into.")
    if not writable(out):
        raise PermissionError(f"{out} is read-only, so the report cannot be written there; render it into another "
                              f"folder: `hybrid-lens report {folder} --out OTHER_FOLDER`.")
    stores = load_studies(folder)
    out.mkdir(parents=True, exist_ok=True)
    tables = {model: StudyTables(store, N_RESAMPLES) for model, store in stores.items()}
    folders = {model: store.path.parent for model, store in stores.items()}
    for store in stores.values():  # all read: nothing stays open while the report is written
        store.close()
    sections = ReportBuilder(tables).sections()
    contributions = contributions_section(folders, tables, out)
    sections += [contributions] if contributions.parts else []
    figures = {figure_id(s, i): fig for s in sections for i, (_, _, _, fig) in enumerate(s.parts)
               if fig is not None and not isinstance(fig, Fragment)}
    written = {} if png else None
    if png:
        (out / "figures").mkdir(exist_ok=True)
        for stale in (out / "figures").glob("*.png"):  # our figures of an earlier rendering
            if stale.stem.split("_", 1)[0] in HEADINGS and stale.is_file():
                stale.unlink()
        for name, fig in figures.items():
            viz.write_png(fig, out / "figures" / f"{name}.png")
            written[name] = f"figures/{name}.png"
    atomic_write(out / "report.md", markdown(sections, written))
    atomic_write(out / "report.html", html_page(sections))
    return out / "report.html"
