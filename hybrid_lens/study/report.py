"""The study report: Markdown tables analogous to the paper's Tables 1-6, plotly figures in one
self-contained HTML page, and PNG copies of the figures (when a browser for kaleido is present).

Everything is computed from the stores under a study folder, so a finished study re-renders
without recomputing anything.
"""

from __future__ import annotations

import html
import os
import tempfile
from pathlib import Path

import pandas as pd
import plotly.io as pio

from .. import viz
from . import stats
from .tasks import ppl_text_label
from ..analysis import correlation
from .runner import CONTRIBUTIONS_FILE, HIDDEN_TASK
from .store import StudyStore
from .tasks import REPORTED_METRIC

STORE = "results.sqlite"


def load_studies(folder: str | Path) -> dict[str, StudyStore]:
    """model name -> store, for every `*/results.sqlite` (or `results.sqlite`) under `folder`.

    The examples of this module read the folder of a finished study, e.g. of
    `hybrid-lens study --model hybrid-lens/tiny-qwen3.5 --tasks ppl,arc --conditions group --n 2`.

    Examples:
        >>> stores = load_studies("hybrid-lens-study")
        >>> list(stores)
        ['hybrid-lens/tiny-qwen3.5']
        >>> stores["hybrid-lens/tiny-qwen3.5"].results().task.unique().tolist()
        ['ppl', 'arc', 'hidden']
    """
    folder = Path(folder)
    paths = sorted(folder.glob(f"*/{STORE}")) + ([folder / STORE] if (folder / STORE).exists() else [])
    if not paths:
        raise FileNotFoundError(f"No study under {folder}: expected {folder}/<model>/{STORE}.")
    stores = [StudyStore(p) for p in paths]
    return {s.meta["model"]: s for s in stores}


class StudyTables:
    """The statistics of one model's study.

    Args:
        store: the model's `StudyStore`.
        n_resamples: bootstrap resamples of every CI.
        seed: the bootstrap seed.

    Attributes:
        model: the model name.
        specs: the condition specs, in study order.
        drops: `stats.score_drops` of every benchmark, with its reported metric.
        ppl: `stats.perplexity_table` (empty without the `ppl` task).
        hidden: the clean model's per-layer hidden-state metrics (layer, metric, component, value).

    Examples:
        >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"], n_resamples=200)
        >>> tables.drops[["condition", "task", "score"]]
                 condition task  score
        0         attn_off  arc    ...
        1         baseline  arc    ...
        2  linear_attn_off  arc    ...
        >>> tables.ppl.condition.tolist()
        ['attn_off', 'baseline', 'linear_attn_off']
    """

    def __init__(self, store: StudyStore, n_resamples: int = 1000, seed: int = 0):
        self.model = store.meta["model"]
        self.ppl_text = ppl_text_label(self.model, store.meta.get("ppl_source", "auto"))
        self.specs = store.conditions()
        self.by_name = {s["name"]: s for s in self.specs}
        results = store.results()
        metrics = {t: m for t, m in REPORTED_METRIC.items() if t in set(results.task)}
        self.drops = stats.score_drops(results, metrics, n_resamples, seed)
        self.ppl = stats.perplexity_table(results, n_resamples, seed)
        hidden = results[results.task == HIDDEN_TASK]
        names = hidden.metric.str.split("|", expand=True) if not hidden.empty else pd.DataFrame(columns=[0, 1])
        self.hidden = pd.DataFrame(dict(layer=hidden.example.to_numpy(), metric=names[0].to_numpy(),
                                        component=names[1].to_numpy(), value=hidden.value.to_numpy()))

    def group_of(self, condition: str) -> str:
        """The condition group of a condition name.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.group_of("attn_off"), tables.group_of("baseline")
            ('group', 'baseline')
        """
        return self.by_name[condition]["group"]

    def drops_in(self, *groups: str) -> pd.DataFrame:
        """The rows of `drops` whose condition belongs to one of `groups`.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.drops_in("group").condition.tolist()
            ['attn_off', 'linear_attn_off']
        """
        if self.drops.empty:
            return self.drops
        return self.drops[self.drops.condition.map(self.group_of).isin(groups)]

    def scores_table(self, *groups: str) -> pd.DataFrame:
        """Absolute scores, condition x task (Tables 1 and 6).

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> table = tables.scores_table("baseline", "group")
            >>> table.index.tolist(), table.columns.tolist()
            (['attn_off', 'baseline', 'linear_attn_off'], ['arc'])
        """
        rows = self.drops_in(*groups)
        if rows.empty:
            return rows
        return rows.pivot_table(index="condition", columns="task", values="score", sort=False)

    def ppl_table(self, *groups: str) -> pd.DataFrame:
        """Loss, perplexity and multiple of baseline (Table 2), with the ratio's bootstrap CI.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.ppl_table("baseline", "group").columns.tolist()
            ['loss', 'ppl', 'log_ratio', 'ratio', 'ratio_ci_low', 'ratio_ci_high']
            >>> float(tables.ppl_table("baseline", "group").loc["baseline", "ratio"])
            1.0
        """
        if self.ppl.empty:
            return self.ppl
        return self.ppl[self.ppl.condition.map(self.group_of).isin(groups)].set_index("condition")

    def targeted_vs_random(self, value: str) -> pd.DataFrame:
        """Table 3 (mean benchmark score) or Table 4 (perplexity): targeted vs matched random.

        `value`: `"perplexity"`, or anything else for the mean benchmark score. Empty when the
        study has no random controls.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.targeted_vs_random("perplexity").empty         # no `random` group in this study
            True
        """
        if value == "perplexity":
            if self.ppl.empty:
                return pd.DataFrame()
            values = self.ppl.set_index("condition").ppl
        else:
            if self.drops.empty:
                return pd.DataFrame()
            values = self.drops.groupby("condition").score.mean()
        return stats.targeted_vs_random(values, self.specs)

    def removal_multiples(self) -> pd.DataFrame:
        """Table 5: perplexity of random layer removal as a multiple of baseline, mean over trials.

        Returns:
            removed (how many layers), mean, std, count; empty without such conditions.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.removal_multiples().empty                      # no `random`/`transformer` group
            True
        """
        if self.ppl.empty:
            return pd.DataFrame()
        ppl = self.ppl.set_index("condition")
        rows = []
        for spec in self.specs:
            if spec["group"] in ("transformer", "random") and spec["name"] in ppl.index:
                rows.append(dict(removed=len(spec["layers"]), ratio=ppl.loc[spec["name"], "ratio"]))
        if not rows:
            return pd.DataFrame()
        return pd.DataFrame(rows).groupby("removed").ratio.agg(["mean", "std", "count"]).reset_index()

    def layer_sweep(self, task: str) -> pd.DataFrame:
        """kind, layer, delta of the single-component conditions; for `ppl` delta is the log-ppl ratio.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> tables.layer_sweep("arc").columns.tolist()           # empty: no `layer` group here
            ['kind', 'layer', 'delta']
        """
        if task == stats.PPL_TASK:
            rows = self.ppl[self.ppl.condition.map(self.group_of) == "layer"] if not self.ppl.empty else self.ppl
            values = rows.log_ratio.to_numpy() if not rows.empty else []
        else:
            rows = self.drops_in("layer")
            rows = rows[rows.task == task] if not rows.empty else rows
            values = rows.delta.to_numpy() if not rows.empty else []
        if rows.empty:
            return pd.DataFrame(columns=["kind", "layer", "delta"])
        return pd.DataFrame(dict(kind=rows.condition.map(lambda c: self.by_name[c]["kind"]).to_numpy(),
                                 layer=rows.condition.map(lambda c: self.by_name[c]["layers"][0]).to_numpy(),
                                 delta=values))


    def hidden_table(self) -> pd.DataFrame:
        """Per-layer hidden-state metrics of the clean model, layer x (metric, component).

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> table = tables.hidden_table()
            >>> table.shape, table.columns[0]
            ((8, 10), ('ablation_kl', 'attn'))
        """
        if self.hidden.empty:
            return self.hidden
        return self.hidden.pivot_table(index="layer", columns=["metric", "component"], values="value")

    def impact_correlations(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Correlation of each hidden-state metric with each task's layer-sweep impact (Figure 6),
        and the joined points per (task, metric) for scatter plots.

        Returns:
            A table (task, metric and the `analysis.correlation` columns) and `{"task:metric":
            points}`; both empty without a layer sweep of at least three conditions.

        Examples:
            >>> tables = StudyTables(load_studies("hybrid-lens-study")["hybrid-lens/tiny-qwen3.5"])
            >>> correlations, points = tables.impact_correlations()
            >>> correlations.empty, points                            # no `layer` group in this study
            (True, {})
        """
        rows, points = [], {}
        tasks = ([stats.PPL_TASK] if not self.ppl.empty else []) + sorted(self.drops.task.unique() if not self.drops.empty else [])
        for task in tasks:
            impact = self.layer_sweep(task).rename(columns={"kind": "component", "delta": "impact"})
            if len(impact) < 3 or self.hidden.empty:
                continue
            for metric, metric_rows in self.hidden.groupby("metric"):
                per_component = set(metric_rows.component) & set(impact.component)
                on = ["layer", "component"] if per_component else ["layer"]
                joined = metric_rows.merge(impact, on=on, suffixes=("", "_impact"))
                if len(joined) < 3 or joined.value.nunique() < 2 or joined.impact.nunique() < 2:
                    continue
                rows.append(dict(task=task, metric=metric, **correlation(joined.value, joined.impact)))
                points[f"{task}:{metric}"] = joined.assign(label=joined.component.astype(str) + "@" + joined.layer.astype(str))
        return pd.DataFrame(rows), points


def markdown_tables(tables: dict[str, StudyTables]) -> str:
    """All tables of all models as one Markdown document.

    Examples:
        >>> tables = {model: StudyTables(store) for model, store in load_studies("hybrid-lens-study").items()}
        >>> print(markdown_tables(tables)[:112])
        # Component-ablation study
        <BLANKLINE>
        ## hybrid-lens/tiny-qwen3.5
        <BLANKLINE>
        ### Table 1 analogue: group ablation, absolute scores
    """
    parts = ["# Component-ablation study", ""]
    for model, t in tables.items():
        sections = [
            ("Table 1 analogue: group ablation, absolute scores", t.scores_table("baseline", "group")),
            (f"Table 2 analogue: perplexity ({t.ppl_text}) under group ablation", t.ppl_table("baseline", "group")),
            ("Table 3 analogue: mean benchmark score, targeted vs matched random", t.targeted_vs_random("score")),
            ("Table 4 analogue: perplexity, targeted vs matched random", t.targeted_vs_random("perplexity")),
            ("Table 5 analogue: random layer removal, perplexity as a multiple of baseline", t.removal_multiples()),
            ("Table 6 analogue: positional thirds, absolute scores", t.scores_table("baseline", "positional")),
            ("Hidden-state metrics of the clean model (diagnostic text)", t.hidden_table()),
            ("Hidden-state metric vs layer-ablation impact (Pearson, Spearman)", t.impact_correlations()[0]),
            ("Score drops with 95% bootstrap CIs (all conditions)", t.drops),
        ]
        parts += [f"## {model}", ""]
        for title, table in sections:
            if table is not None and not table.empty:
                parts += [f"### {title}", "", table.to_markdown(floatfmt=".4g"), ""]
    return "\n".join(parts)


def figures(tables: dict[str, StudyTables]) -> dict[str, object]:
    """name -> plotly figure, only for figures that have data.

    Examples:
        >>> tables = {model: StudyTables(store) for model, store in load_studies("hybrid-lens-study").items()}
        >>> list(figures(tables))
        ['hybrid-lens_tiny-qwen3.5_radar', 'hybrid-lens_tiny-qwen3.5_perplexity', 'score_drop_heatmap']
    """
    found = {}
    for model, t in tables.items():
        slug = model.replace("/", "_")
        group = t.drops_in("baseline", "group")
        if not group.empty:
            found[f"{slug}_radar"] = viz.group_radar(group, model)
        ppl = t.ppl_table("baseline", "group", "positional").reset_index()
        if not ppl.empty:
            found[f"{slug}_perplexity"] = viz.perplexity_bars(ppl, model, t.ppl_text)
        correlations, points = t.impact_correlations()
        for row in correlations.itertuples():
            joined = points[f"{row.task}:{row.metric}"]
            found[f"{slug}_{row.metric}_vs_{row.task}"] = viz.metric_vs_impact(
                joined, "value", "impact", row._asdict(), model, names=(row.metric, f"{row.task} impact"))
        for value in ("score", "perplexity"):
            table = t.targeted_vs_random(value)
            if not table.empty:
                found[f"{slug}_targeted_vs_random_{value}"] = viz.targeted_vs_random_bars(
                    table, model, "perplexity" if value == "perplexity" else "mean score")
    tasks = sorted({task for t in tables.values() for task in (t.drops.task.unique() if not t.drops.empty else [])})
    if any(not t.ppl.empty for t in tables.values()):
        tasks.append(stats.PPL_TASK)
    for task in tasks:
        sweeps = {model: t.layer_sweep(task) for model, t in tables.items()}
        if any(not s.empty for s in sweeps.values()):
            found[f"layer_sweep_{task}"] = viz.layer_sweep_heatmaps(sweeps, task)
    all_drops = pd.concat([t.drops.assign(model=m) for m, t in tables.items() if not t.drops.empty] or [pd.DataFrame()])
    if not all_drops.empty:
        found["score_drop_heatmap"] = viz.drop_heatmap(all_drops[all_drops.condition != "baseline"])
    return found


def render_report(folder: str | Path, png: bool = True) -> Path:
    """Write `report.html`, `report.md` and (if possible) `figures/*.png` into `folder`; return the HTML path.

    Examples:
        >>> render_report("hybrid-lens-study", png=False).as_posix()
        'hybrid-lens-study/report.html'
    """
    folder = Path(folder)
    stores = load_studies(folder)
    tables = {model: StudyTables(store) for model, store in stores.items()}
    markdown = markdown_tables(tables)
    figs = figures(tables)
    _atomic_write(folder / "report.md", markdown)
    body = [f"<h1>hybrid-lens component-ablation study</h1><p>Models: {html.escape(', '.join(tables))}</p>"]
    for i, (name, fig) in enumerate(figs.items()):
        body.append(pio.to_html(fig, full_html=False, include_plotlyjs="inline" if i == 0 else False, div_id=name))
    for model, store in stores.items():
        view = store.path.parent / CONTRIBUTIONS_FILE
        if view.exists():
            body.append(f"<h2>{html.escape(model)}: per-token component contribution</h2>" + view.read_text())
    for model, t in tables.items():
        body.append(f"<h2>{html.escape(model)}: score drops with 95% bootstrap CIs</h2>")
        body.append(t.drops.to_html(index=False, float_format=lambda x: f"{x:.4g}") if not t.drops.empty else "")
        if not t.ppl.empty:
            body.append(f"<h2>{html.escape(model)}: perplexity</h2>" + t.ppl.to_html(index=False, float_format=lambda x: f"{x:.4g}"))
    page = "<!doctype html><html><head><meta charset='utf-8'><title>hybrid-lens study</title></head><body>"
    _atomic_write(folder / "report.html", page + "\n".join(body) + "</body></html>")
    if png:
        write_pngs(figs, folder / "figures")
    return folder / "report.html"


def write_pngs(figs: dict[str, object], folder: Path) -> None:
    """PNG copies via kaleido; a missing browser skips them with a note instead of failing the report.

    Examples:
        >>> tables = {model: StudyTables(store) for model, store in load_studies("hybrid-lens-study").items()}
        >>> write_pngs(figures(tables), Path("hybrid-lens-study/figures"))
        >>> sorted(p.suffix for p in Path("hybrid-lens-study/figures").iterdir())[0] in (".png", ".txt")
        True
    """
    folder.mkdir(parents=True, exist_ok=True)
    try:
        for name, fig in figs.items():
            fig.write_image(folder / f"{name}.png", width=1000, height=600)
    except Exception as err:  # kaleido needs a Chrome/Chromium; the HTML report is complete without PNGs
        (folder / "PNG_SKIPPED.txt").write_text(f"PNG export failed ({err}); install chromium for kaleido.\n")


def _atomic_write(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp", encoding="utf-8") as f:
        f.write(text)
    os.replace(f.name, path)
