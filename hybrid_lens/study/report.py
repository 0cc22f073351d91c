"""The study report: a summary, then one section per analogue of the paper's Tables 1-6 and per
figure, each with a one-line "how to read this" and the settings its numbers were measured with,
written as `report.md` and a self-contained `report.html` (plotly's JS embedded; no network), plus
PNG copies of the figures drawn with matplotlib (no browser needed).

The statistics come from `study.tables`; this module only formats them.
"""

from __future__ import annotations

import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.io as pio

from ..vocabulary import KIND_NAMES
from .. import viz
from . import published
from .diagnostics import CONTRIBUTION_TOKENS, CONTRIBUTIONS_FILE, contributions_view
from .files import atomic_write, writable
from .store import StudyStore
from .tables import StudyTables

STORE = "results.sqlite"
ABSENT = "—"
N_RESAMPLES = 1000
METRIC_NAMES = {"norm_change": "norm change", "cosine": "cosine", "output_ratio": "output ratio",
                "ablation_kl": "ablation KL", "kl_to_final": "logit-lens KL to final"}
TASK_NAMES = {"ppl": "perplexity", "mmlu": "MMLU", "arc": "ARC-C", "hellaswag": "HellaSwag",
              "truthfulqa": "TruthfulQA MC1", "gsm8k": "GSM8K"}

# Section key -> (title, how to read it), in report order.
HEADINGS = {
    "summary": ("Summary",
        "What was run, the headline effects with their 95% CIs, and the paper's published values beside them (for a "
        "bundled model, its full-size analogue's: other text, a far smaller model; compare directions, not "
        "magnitudes)."),
    "table1": ("Table 1 analogue: group ablation, absolute scores",
        "Score per benchmark with all instances of one component kind removed; Δ = ablated - baseline score "
        "(negative: worse) with its 95% CI. Radar (three or more benchmarks): one polygon per condition; the further "
        "out, the higher the score."),
    "table2": ("Table 2 analogue: perplexity under group ablation",
        "Loss and perplexity with all instances of one component kind removed; x baseline is the perplexity ratio "
        "with its 95% CI. Bars: log scale, baseline first, error bars the 95% CI; labels are multiples of the "
        "baseline."),
    "table3": ("Table 3 analogue: mean benchmark score, targeted vs matched random",
        "Mean score over the benchmarks run, targeted ablation vs the same number of randomly chosen layers; random /"
        " targeted > 1 means the targeted components matter more (the random controls keep a higher score). No CIs:"
        " a few random draws per condition; their mean, std and range are shown. Bars: error bars span the draws."),
    "table4": ("Table 4 analogue: perplexity, targeted vs matched random",
        "Perplexity of the targeted ablation (with the 95% CI of its multiple of baseline) vs the mean of its matched "
        "random controls; random / targeted > 1 means random layers hurt more than the targeted ones. The random "
        "side has no CI (a few draws): its mean, std and range (min to max) are shown, and the bars' error bars span "
        "the draws."),
    "table5": ("Table 5 analogue: random layer removal, perplexity as a multiple of baseline",
        "Whole layers skipped at random (sequential skip); mean, std and range of the perplexity multiple over the "
        "random draws (no CI: a few draws per size)."),
    "table6": ("Table 6 analogue: positional thirds",
        "One component kind removed in the early, middle or late third of the layers only; which third carries the "
        "component's contribution."),
    "layers": ("Layer-wise ablation",
        "One layer (or one path of a layer) removed at a time; each column says what was removed and how. Heatmap: "
        "layers left to right, one row per kind of removal, darker = larger effect, each model on its own colour "
        "scale; grey = the layer has no such component."),
    "hidden": ("Hidden-state metrics of the clean model",
        "Per layer: norm change ||h_post - h_pre|| / ||h_pre||, cosine(h_pre, h_post), component output ratio "
        "||f_c(h)|| / ||h||, ablation KL(p_clean || p_ablated) and the logit lens' KL to the final distribution; — = "
        "the layer has no such component."),
    "correlations": ("Hidden-state metric vs layer-ablation impact",
        "Does a layer's metric predict what removing it costs? Each point pairs one removal (a whole layer, or one "
        "path) with the metric of what was removed; n counts distinct points. Pearson and Spearman side by side; "
        "'one point drives it': the correlation is significant (p < 0.05) with every point but not without that "
        "one (or changes sign); the range is Pearson r over the n leave-one-out subsets."),
    "drops": ("Score drops with 95% bootstrap CIs (all conditions)",
        "Every condition on every benchmark: score, Δ = ablated - baseline score (negative: worse) and its paired "
        "bootstrap 95% CI; significant = the CI excludes 0. Heatmap: blue = better, red = worse than baseline, each "
        "model on its own colour scale."),
    "contributions": ("Per-token component contribution",
        "Each token coloured by the component kind that contributes most to the residual stream there (clean "
        "model); one row per layer. In report.md: a link to each model's HTML view."),
}


@dataclass
class Section:
    """One part of the report: a heading, how to read it, what was measured, and its tables and figures.

    Attributes:
        key: anchor id (unique in the report).
        title: the heading.
        read: one line on how to read it.
        parts: `(subheading, a line on what the numbers are (led by its own label, e.g. "Measured on:"),
            display table or None, figure or `Fragment` or None)` tuples.

    Examples:
        >>> section = Section("table2", "Table 2 analogue", "Perplexity ratio to baseline.")
        >>> section.parts.append(("hybrid-lens/tiny-qwen2.5", "Measured on: 8 windows of 256 tokens", None, None))
        >>> len(section.parts)
        1
    """

    key: str
    title: str
    read: str
    parts: list[tuple[str, str, pd.DataFrame | None, object | None]] = field(default_factory=list)


@dataclass
class Fragment:
    """An HTML view kept in its own file (a model's per-token contributions): inlined in report.html,
    linked from report.md.

    Examples:
        >>> Fragment("hybrid-lens_tiny-qwen2.5/contributions.html", "<div>...</div>").path
        'hybrid-lens_tiny-qwen2.5/contributions.html'
    """

    path: str
    html: str


def measured(what: str) -> str:
    """The line under a subheading that says what its numbers were measured on.

    Examples:
        >>> measured("8 windows of 256 tokens")
        'Measured on: 8 windows of 256 tokens'
    """
    return f"Measured on: {what}"


def removal(kind: str | None, method: str) -> str:
    """What a layer-wise condition removes and how, as a column or heatmap row name: a whole-layer
    skip is never named after one component.

    Examples:
        >>> removal("attn", "skip"), removal("ssm", "zero"), removal("attn", "mixer_off")
        ('whole layer skipped (attention layer)', 'SSM path zeroed', 'attention output zeroed (MLP kept)')
    """
    name = KIND_NAMES.get(kind, kind or "block")
    return {"skip": f"whole layer skipped ({name} layer)", "zero": f"{name} path zeroed",
            "mixer_off": f"{name} output zeroed (MLP kept)"}.get(method, f"{name} removed ({method})")


def _section(key: str) -> Section:
    """An empty section with the heading and reading line of `HEADINGS[key]`."""
    return Section(key, *HEADINGS[key])


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


def number(x) -> str:
    """A table cell: 4 significant digits, thousands separators for large values, `—` for absent.

    Examples:
        >>> number(0.48913), number(268337.2), number(float("nan")), number(float("inf")), number(3)
        ('0.4891', '268,337', '—', '∞', '3')
    """
    if x is None or isinstance(x, float) and np.isnan(x):
        return ABSENT
    if isinstance(x, (bool, np.bool_)):
        return "yes" if x else "no"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    if np.isinf(x):
        return "∞"
    return f"{x:,.0f}" if abs(x) >= 10_000 else f"{x:.4g}"


def interval(low: float, high: float) -> str:
    """A 95% CI cell.

    Examples:
        >>> interval(1.2345, 1.5)
        '[1.234, 1.5]'
    """
    return f"[{number(low)}, {number(high)}]"


class ReportBuilder:
    """The sections of the report of several models' studies (see `sections`).

    The examples of this module read the folder of a finished study: `hybrid-lens study --model
    hybrid-lens/tiny-qwen2.5 --tasks ppl --conditions group,layer,transformer --n 2 --out hybrid-lens-study`.

    Examples:
        >>> builder = ReportBuilder({m: StudyTables(s) for m, s in load_studies("hybrid-lens-study").items()})
        >>> [section.title for section in builder.sections()][:2]
        ['Summary', 'Table 2 analogue: perplexity under group ablation']
    """

    def __init__(self, tables: dict[str, StudyTables]):
        self.tables = tables

    def sections(self) -> list[Section]:
        """Every section that has data, summary first.

        Examples:
            >>> builder = ReportBuilder({m: StudyTables(s) for m, s in load_studies("hybrid-lens-study").items()})
            >>> [(s.key, len(s.parts)) for s in builder.sections()][:3]
            [('summary', 2), ('table2', 1), ('table5', 1)]
        """
        found = [self._summary(), self._table1(), self._table2(), self._targeted_vs_random("score"),
                 self._targeted_vs_random("perplexity"), self._table5(), self._table6(), self._layer_sweep(),
                 self._hidden(), self._correlations(), self._drops()]
        return [s for s in found if s.parts]

    def _per_model(self, key: str, parts) -> Section:
        """Section `key` with the parts `parts(model, tables)` gives for each model (none: no data there)."""
        section = _section(key)
        for model, t in self.tables.items():
            section.parts.extend(parts(model, t))
        return section

    # -- settings lines --------------------------------------------------------------------------
    def _ppl_windows(self, t: StudyTables) -> str:
        s = t.settings
        return (f"{s['ppl_text']}, first {t.ppl_windows} windows of {s['ppl_context']} tokens, stride "
                f"{s['ppl_stride'] or ABSENT} ({t.ppl_tokens:,} scored tokens)")

    def _ppl_setting(self, t: StudyTables, cis: str | None = "") -> str:
        """The perplexity windows; `cis`: which CIs the table shows ("": all of them; None: no CI)."""
        return measured(self._ppl_windows(t) + ("" if cis is None else
                        f"; 95% CIs{cis}: paired bootstrap over windows, {N_RESAMPLES} resamples, seed 0"))

    def _bench_examples(self, t: StudyTables) -> str:
        return ", ".join(f"{TASK_NAMES.get(task, task)} n={n}" for task, n in t.benchmark_sizes().items())

    def _bench_setting(self, t: StudyTables, cis: str | None = "") -> str:
        """The benchmark examples; `cis` as in `_ppl_setting`."""
        return measured(f"{self._bench_examples(t)}; data: {t.meta.get('data', 'bundled')}; few-shot seed "
                        f"{t.meta.get('seed', 0)}" + ("" if cis is None else
                        f"; 95% CIs{cis}: paired bootstrap over examples, {N_RESAMPLES} resamples"))

    def _setting(self, t: StudyTables, task: str, cis: str | None = "") -> str:
        """The settings line of `task`'s numbers: perplexity windows or benchmark examples."""
        return self._ppl_setting(t, cis) if task == "ppl" else self._bench_setting(t, cis)

    def _random_setting(self, t: StudyTables) -> str:
        return (f"{t.meta.get('trials', 3)} random trials per targeted condition, drawn with numpy "
                f"default_rng(seed + 1), seed {t.meta.get('seed', 0)}")

    # -- sections --------------------------------------------------------------------------------
    def _summary(self) -> Section:
        section = _section("summary")
        runs, rows = [], []
        for model, t in self.tables.items():
            tasks = (["ppl"] if not t.ppl.empty else []) + sorted(set(t.drops.task) if not t.drops.empty else set())
            paper, same = published.paper_model(model)
            where = f" ({paper.split('/')[-1]}{'' if same else ', full-size analogue'})" if paper else ""
            for r in t.in_groups(t.ppl, "group").itertuples():
                value = published.PERPLEXITY.get(paper, {}).get(r.condition)
                rows.append({"model": model, "condition": r.condition, "removed": t.label(r.condition),
                             "measure": f"perplexity x baseline ({t.settings['ppl_text']})",
                             "ours [95% CI]": f"{number(r.ratio)} {interval(r.ratio_ci_low, r.ratio_ci_high)}",
                             "paper": _paper_cell(value[2], paper) + where if value else ABSENT})
            for r in t.in_groups(t.drops, "group").itertuples():
                value = published.score_change(paper, r.condition, r.task)
                rows.append({"model": model, "condition": r.condition, "removed": t.label(r.condition),
                             "measure": f"{TASK_NAMES.get(r.task, r.task)} score change (ablated - baseline)",
                             "ours [95% CI]": f"{number(r.delta)} {interval(r.ci_low, r.ci_high)}",
                             "paper": _paper_cell(value, paper) + where if value is not None else ABSENT})
            counts = [f"{n} {g}" for g, n in t.condition_counts().items()]
            runs.append({"model": model, "conditions": f"{len(t.specs)}: {', '.join(counts)}",
                         "tasks": ", ".join(TASK_NAMES.get(x, x) for x in tasks),
                         "perplexity windows": self._ppl_windows(t) if not t.ppl.empty else ABSENT,
                         "benchmarks": self._bench_examples(t) if not t.drops.empty else ABSENT,
                         "evaluation time": f"{t.timings.seconds.sum():.0f} s"})
        section.parts.append(("What was run", "Note: evaluation time is wall seconds summed over (condition, task) "
                              "pairs, without model loading and hidden-state diagnostics.", pd.DataFrame(runs), None))
        if rows:
            section.parts.append(("Headline effects: group ablations", "Paper column: " + published.CITATION,
                                  pd.DataFrame(rows), None))
        return section

    def _table1(self) -> Section:
        def parts(model: str, t: StudyTables) -> list:
            rows = t.in_groups(t.drops, "baseline", "group")
            if rows.empty:
                return []
            radar = viz.group_radar(rows, model, names=TASK_NAMES) if rows.task.nunique() >= 3 else None
            return [(model, self._bench_setting(t), self._scores_display(t, rows), radar)]

        return self._per_model("table1", parts)

    def _table2(self) -> Section:
        return self._per_model("table2", lambda model, t: self._ppl_parts(model, t, "group", published.PERPLEXITY))

    def _targeted_vs_random(self, value: str) -> Section:
        """Table 3 (`value="score"`) or Table 4 (`"perplexity"`)."""
        published_values = published.TARGETED_VS_RANDOM_SCORE if value == "score" else published.TARGETED_VS_RANDOM_PPL

        def parts(model: str, t: StudyTables) -> list:
            table = t.targeted_vs_random(value)
            if table.empty:
                return []
            setting = (self._bench_setting(t, None) if value == "score" else
                       self._ppl_setting(t, " (targeted ablation's multiple of baseline)"))
            ratios = t.ppl.set_index("condition") if value == "perplexity" else None
            return [(model, f"{setting}; {self._random_setting(t)}",
                     self._random_display(t, table, published_values, ratios),
                     viz.targeted_vs_random_bars(table, model, "mean score" if value == "score" else "perplexity"))]

        return self._per_model("table3" if value == "score" else "table4", parts)

    def _table5(self) -> Section:
        def parts(model: str, t: StudyTables) -> list:
            table = t.removal_multiples()
            if table.empty:
                return []
            paper, same = published.paper_model(model)
            n_layers = len(t.meta.get("layer_mixers", [])) or None
            display = pd.DataFrame({
                "layers removed": [f"{int(k)} of {n_layers}" for k in table.removed],
                "x baseline (mean)": table["mean"].map(number), "std": table["std"].map(number),
                "range (min to max)": [f"{number(a)} to {number(b)}" for a, b in zip(table["min"], table["max"])],
                "trials": table["count"].map(number),
                _paper_header("x baseline, 6 or 18 of 24 layers", paper, same) if paper else "paper": [
                    _paper_cell(published.removal_multiple(paper, int(k), n_layers), paper) for k in table.removed]})
            return [(model, f"{self._ppl_setting(t, None)}; {self._random_setting(t)}; no CI: the spread is over the "
                     "random draws", display, None)]

        return self._per_model("table5", parts)

    def _table6(self) -> Section:
        def parts(model: str, t: StudyTables) -> list:
            scores = t.in_groups(t.drops, "baseline", "positional")
            found = []
            if t.in_groups(scores, "positional").shape[0]:
                found.append((f"{model}: scores", self._bench_setting(t), self._scores_display(t, scores), None))
            return found + self._ppl_parts(model, t, "positional", {}, f"{model}: perplexity")

        return self._per_model("table6", parts)

    def _ppl_parts(self, model: str, t: StudyTables, group: str, paper_table: dict, heading: str | None = None) -> list:
        """The perplexity table and bars of the baseline and the conditions of `group`: none without
        perplexity, or (positional thirds) without a condition of `group`."""
        rows = t.in_groups(t.ppl, "baseline", group)
        if rows.empty or group == "positional" and t.in_groups(rows, group).empty:
            return []
        return [(heading or model, self._ppl_setting(t), self._ppl_display(t, rows, paper_table),
                 viz.perplexity_bars(rows, model, t.settings["ppl_text"], labels=t.label))]

    def _layer_sweep(self) -> Section:
        section = _section("layers")
        tasks = sorted({task for t in self.tables.values() for task in (t.drops.task.unique() if not t.drops.empty else [])})
        tasks = (["ppl"] if any(not t.ppl.empty for t in self.tables.values()) else []) + tasks
        for task in tasks:
            sweeps = {model: t.layer_sweep(task) for model, t in self.tables.items()}
            sweeps = {m: s for m, s in sweeps.items() if not s.empty}
            if not sweeps:
                continue
            what = "perplexity x baseline" if task == "ppl" else f"{TASK_NAMES.get(task, task)} score change"
            for model, sweep in sweeps.items():
                t = self.tables[model]
                grid = t.layer_grid(task)
                grid.index = [f"L{i}" for i in grid.index]
                method = dict(zip(sweep.kind, sweep.method))
                grid.columns = [removal(kind, method[kind]) for kind in grid.columns]
                display = grid.map(number).reset_index(names="layer")
                setting = self._setting(t, task, None) + \
                    f"; method: {', '.join(_METHODS.get(m, m) for m in sorted(set(sweep.method)))}; values: " + \
                    ("perplexity x baseline" if task == "ppl" else "score change vs baseline (ablated - baseline)") + \
                    "; point estimates (the CI of each condition is in the data, not shown here)"
                section.parts.append((f"{model}: {what}", setting, display, None))
                sweeps[model] = sweep.assign(removed=[removal(k, m) for k, m in zip(sweep.kind, sweep.method)])
            shown = "log perplexity ratio" if task == "ppl" else what
            section.parts.append((f"All models: {shown}", "Note: a heatmap of the tables above, one panel per model.",
                                  None, viz.layer_sweep_heatmaps(sweeps, task)))
        return section

    def _hidden(self) -> Section:
        def parts(model: str, t: StudyTables) -> list:
            wide = t.hidden_wide()
            if wide.empty:
                return []
            display = wide.map(number)
            display.columns = [f"{METRIC_NAMES.get(m, m)} ({KIND_NAMES.get(c, c)})" for m, c in wide.columns]
            display.index = [f"L{i}" for i in wide.index]
            setting = measured(f"the first {t.settings.get('diagnostic_tokens') or ABSENT} tokens of the "
                               f"{t.settings['ppl_text']} text; ablation KL: zero the mixer or MLP, skip the block")
            return [(model, setting, display.reset_index(names="layer"), None)]

        return self._per_model("hidden", parts)

    def _correlations(self) -> Section:
        def impact(task: str) -> str:
            return "log perplexity ratio" if task == "ppl" else f"{TASK_NAMES.get(task, task)} score change"

        def removed(row) -> str:
            if row.removed == "block":
                return "whole layer skipped"
            if row.removed == "all":
                return "each path " + ("zeroed" if row.method == "zero" else "removed") + " (pooled)"
            return removal(row.removed, row.method)

        def driven(row) -> str:
            if row.driver is None or np.isnan(row.loo_low):
                return f"{ABSENT} (n < 4)"
            if not row.driven:
                return "no"
            return f"yes: without {row.driver_label}, r = {number(row.driver_r)} (p = {number(row.driver_p)})"

        def parts(model: str, t: StudyTables) -> list:
            table, points = t.impact_correlations()
            if table.empty:
                return []
            metric = [f"{METRIC_NAMES.get(m, m)} ({COMPONENT_NAMES.get(c, KIND_NAMES.get(c, c))})"
                      for m, c in zip(table.metric, table.component)]
            what = [f"{impact(r.task)}, {removed(r)}" for r in table.itertuples()]
            display = pd.DataFrame({
                "impact (what was removed, how)": what, "metric (of what)": metric,
                "n (distinct points)": table.n.map(number),
                "Pearson r": table.pearson_r.map(number), "Pearson p": table.pearson_p.map(number),
                "Spearman ρ": table.spearman_rho.map(number), "Spearman p": table.spearman_p.map(number),
                "Pearson r leaving one point out": [f"{number(a)} to {number(b)}" if not np.isnan(a) else ABSENT
                                                    for a, b in zip(table.loo_low, table.loo_high)],
                "one point drives it": [driven(r) for r in table.itertuples()]})
            found = [(model, "Computed from: the hidden-state metrics and the layer-wise ablation tables above, one "
                             "point per removal.", display, None)]
            for row, x_name, y_name in zip(table.itertuples(), metric, what):
                shown = points[row.key].assign(kind=lambda p: p.kind.map(lambda k: KIND_NAMES.get(k, k)))  # legend
                found.append((f"{model}: {x_name} vs {y_name}", "", None, viz.metric_vs_impact(
                    shown, "value", "impact", row._asdict(), model, names=(x_name, y_name))))
            return found

        return self._per_model("correlations", parts)

    def _drops(self) -> Section:
        def parts(model: str, t: StudyTables) -> list:
            if t.drops.empty:
                return []
            d = t.drops
            display = pd.DataFrame({
                "condition": d.condition, "removed": d.condition.map(t.label),
                "task": d.task.map(lambda x: TASK_NAMES.get(x, x)), "metric": d.metric, "n": d.n.map(number),
                "baseline": d.baseline.map(number), "score": d.score.map(number), "Δ": d.delta.map(number),
                "95% CI of Δ": [interval(a, b) for a, b in zip(d.ci_low, d.ci_high)],
                "significant": d.significant.map(number)})
            return [(model, self._bench_setting(t), display, None)]

        section = self._per_model("drops", parts)
        every = [t.drops.assign(model=model) for model, t in self.tables.items() if not t.drops.empty]
        if every:
            drops = pd.concat(every)
            section.parts.append(("All models", "score change (ablated - baseline) per model, condition and benchmark", None,
                                  viz.drop_heatmap(drops[drops.condition != "baseline"])))
        return section

    # -- display helpers -------------------------------------------------------------------------
    def _scores_display(self, t: StudyTables, rows: pd.DataFrame) -> pd.DataFrame:
        display = pd.DataFrame({"condition": list(dict.fromkeys(rows.condition))})
        display["removed"] = display.condition.map(t.label)
        for task, task_rows in rows.groupby("task", sort=False):
            by = task_rows.set_index("condition")
            name = TASK_NAMES.get(task, task)
            display[name] = display.condition.map(lambda c: number(by.score.get(c, np.nan)))
            display[f"{name} Δ [95% CI]"] = display.condition.map(
                lambda c: ABSENT if c not in by.index or c == "baseline" else
                f"{number(by.delta[c])} {interval(by.ci_low[c], by.ci_high[c])}")
            _add_paper_columns(display, t, display.condition, published.SCORES,
                               {name: lambda entry, task=task: (entry or {}).get(task)})
        return display

    def _ppl_display(self, t: StudyTables, rows: pd.DataFrame, paper_table: dict) -> pd.DataFrame:
        display = pd.DataFrame({
            "condition": rows.condition, "removed": rows.condition.map(t.label), "loss": rows.loss.map(number),
            "perplexity": rows.ppl.map(number), "x baseline": rows.ratio.map(number),
            "95% CI of x baseline": [interval(a, b) for a, b in zip(rows.ratio_ci_low, rows.ratio_ci_high)]})
        return _add_paper_columns(display, t, rows.condition, paper_table, {
            what: lambda entry, i=i: (entry or (None,) * 3)[i] for i, what in enumerate(("loss", "PPL", "x baseline"))})

    def _random_display(self, t: StudyTables, table: pd.DataFrame, paper_table: dict,
                        ratios: pd.DataFrame | None = None) -> pd.DataFrame:
        """Table 3 or 4; `ratios` (the perplexity table by condition) adds the targeted ablation's
        multiple of baseline with its CI."""
        display = pd.DataFrame({
            "condition": table.condition, "removed": table.condition.map(t.label), "layers": table.layers.map(number),
            "targeted": table.targeted.map(number), "random mean": table.random_mean.map(number),
            "random std": table.random_std.map(number),
            "random range (min to max)": [f"{number(a)} to {number(b)}" for a, b in zip(table.random_min, table.random_max)],
            "trials": table.trials.map(number), "random / targeted": table.ratio.map(number)})
        if ratios is not None:
            display.insert(4, "targeted x baseline [95% CI]", [
                f"{number(ratios.ratio[c])} {interval(ratios.ratio_ci_low[c], ratios.ratio_ci_high[c])}"
                for c in table.condition])
        return _add_paper_columns(display, t, table.condition, paper_table,
                                  {"targeted vs random mean ± std": lambda entry: entry})


COMPONENT_NAMES = {"block": "block", "ablated": "the zeroed path", "mixer": "the layer's mixer",
                   "resid_post": "residual after the block"}
_METHODS = {"skip": "sequential skip (whole layer)", "zero": "parallel zeroing (one path)",
            "mixer_off": "mixer-only zeroing (MLP kept)"}


def _paper_cell(value, paper: str | None) -> str:
    """A published value (or a (targeted, mean, std) triple), formatted."""
    if value is None or paper is None:
        return ABSENT
    if isinstance(value, tuple):
        return f"{number(value[0])} vs {number(value[1])} ± {number(value[2])}"
    return number(value)


def _add_paper_columns(display: pd.DataFrame, t: StudyTables, conditions: pd.Series, paper_table: dict,
                       columns: dict) -> pd.DataFrame:
    """`display` with one column of published values per `columns` item (header -> the value picked
    from the paper's entry of a condition), if `paper_table` has the paper's analogue of `t.model`."""
    paper, same = published.paper_model(t.model)
    if paper in paper_table:
        for what, pick in columns.items():
            display[_paper_header(what, paper, same)] = conditions.map(
                lambda c, pick=pick: _paper_cell(pick(paper_table[paper].get(c)), paper))
    return display


def _paper_header(what: str, paper: str, same: bool) -> str:
    """Column header of published values: the paper's model, marked when ours is a bundled analogue."""
    return f"paper {what} ({paper.split('/')[-1]}{'' if same else ', full-size analogue'})"


# -- rendering -------------------------------------------------------------------------------------
def markdown(sections: list[Section], figures: dict[str, str] | None) -> str:
    """The report as Markdown; `figures`: figure id -> PNG path relative to the report (None: PNGs
    were not written, which the report says in one line). A `Fragment` becomes a link to its file.

    Examples:
        >>> table = pd.DataFrame({"condition": ["baseline"], "x baseline": ["1"]})
        >>> print(markdown([Section("t2", "Table 2", "How to read.", [("m", "Measured on: 8 windows", table, None)])], {}))
        # Component-ablation study
        <BLANKLINE>
        Contents: [Table 2](#t2)
        <BLANKLINE>
        ## Table 2
        <BLANKLINE>
        *How to read this:* How to read.
        <BLANKLINE>
        ### m
        <BLANKLINE>
        Measured on: 8 windows
        <BLANKLINE>
        | condition   |   x baseline |
        |:------------|-------------:|
        | baseline    |            1 |
        <BLANKLINE>
    """
    out = ["# Component-ablation study", "",
           "Contents: " + " · ".join(f"[{markdown_text(s.title)}](#{s.key})" for s in sections), ""]
    if figures is None:
        out += ["PNG copies of the figures were not written (`--no-png`); every figure is in report.html.", ""]
    figures = figures or {}
    for section in sections:
        out += [f"## {markdown_text(section.title)}", "", f"*How to read this:* {markdown_text(section.read)}", ""]
        for i, (heading, setting, table, figure) in enumerate(section.parts):
            out += [f"### {markdown_text(heading)}", ""]
            if setting:
                out += [markdown_text(setting), ""]
            if table is not None:
                cells = table.map(markdown_text).rename(columns=markdown_text)
                out += [cells.to_markdown(index=False), ""]
            if isinstance(figure, Fragment):
                out += [f"An HTML view, inlined in report.html: [{markdown_text(figure.path)}]({figure.path})", ""]
            elif figure is not None and _figure_id(section, i) in figures:
                out += [f"![{markdown_text(heading)}]({figures[_figure_id(section, i)]})", ""]
    return "\n".join(out)


def markdown_text(text) -> str:
    """`text` (a heading, setting or table cell, often from data: condition and model names,
    labels) as literal Markdown: one line; `&`, `<`, `>` as HTML entities; Markdown's own
    characters backslash-escaped (an underscore inside a word is literal already).

    Examples:
        >>> print(markdown_text("<script>x</script> [a](javascript:b) **c** | attn_off_early"))
        &lt;script&gt;x&lt;/script&gt; \\[a\\](javascript:b) \\*\\*c\\*\\* \\| attn_off_early
    """
    text = re.sub(r"\s*[\r\n]+\s*", " ", str(text))
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"([\\`*\[\]|#~])", r"\\\1", text)
    return re.sub(r"(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])", r"\\_", text)


STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
h2 { border-bottom: 2px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
.read { background: #f4f7fb; border-left: 4px solid #4a78b0; padding: .4em .8em; }
.setting { color: #555; font-size: .9em; }
.wide { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: .85em; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
nav { line-height: 1.8; }
nav a { margin-right: 1em; white-space: nowrap; }
"""


def html_page(sections: list[Section]) -> str:
    """The report as one self-contained HTML page (plotly's JS inlined once; no network needed). Tables
    and `Fragment`s sit in boxes that scroll sideways when wider than the page, so the page never does.

    Examples:
        >>> table = pd.DataFrame({"condition": ["baseline"], "x baseline": ["1"]})
        >>> page = html_page([Section("t2", "Table 2", "How to read.", [("m", "Measured on: 8 windows", table, None)])])
        >>> "<h2 id='t2'>Table 2</h2>" in page and "cdn.plot.ly" not in page
        True
    """
    body = ["<h1>hybrid-lens component-ablation study</h1>",
            "<nav>" + " ".join(f"<a href='#{s.key}'>{html.escape(s.title)}</a>" for s in sections) + "</nav>"]
    first_figure = True
    for section in sections:
        body += [f"<h2 id='{section.key}'>{html.escape(section.title)}</h2>",
                 f"<p class='read'><b>How to read this:</b> {html.escape(section.read)}</p>"]
        for i, (heading, setting, table, figure) in enumerate(section.parts):
            body.append(f"<h3>{html.escape(heading)}</h3>")
            if setting:
                body.append(f"<p class='setting'>{html.escape(setting)}</p>")
            if table is not None:
                body.append(f"<div class='wide'>{table.to_html(index=False, escape=True, border=0)}</div>")
            if isinstance(figure, Fragment):
                body.append(f"<div class='wide'>{figure.html}</div>")
            elif figure is not None:
                body.append(pio.to_html(figure, full_html=False, include_plotlyjs="inline" if first_figure else False,
                                        div_id=_figure_id(section, i), config={"responsive": True}))
                first_figure = False
    return ("<!doctype html><html><head><meta charset='utf-8'><title>hybrid-lens study</title>"
            f"<style>{STYLE}</style></head><body>" + "\n".join(body) + "</body></html>")


def _figure_id(section: Section, index: int) -> str:
    """A readable, file-safe id of the figure of `section.parts[index]` (its HTML div id and PNG name)."""
    return f"{section.key}_" + re.sub(r"[^A-Za-z0-9.-]+", "_", section.parts[index][0]).strip("_")


def contributions_section(folders: dict[str, Path], tables: dict[str, StudyTables], out: Path) -> Section:
    """The per-token contribution views of the models whose study folder has one (`folders`: model ->
    its study folder), as `Fragment`s rendered from the stored data (`diagnostics.contributions_view`),
    each linked to its `contributions.html` relative to the report folder `out`.

    Examples:
        >>> stores = load_studies("hybrid-lens-study")
        >>> section = contributions_section({m: s.path.parent for m, s in stores.items()},
        ...                                 {m: StudyTables(s, 10) for m, s in stores.items()}, Path("hybrid-lens-study"))
        >>> [(heading, figure.path) for heading, _, _, figure in section.parts]
        [('hybrid-lens/tiny-qwen2.5', 'hybrid-lens_tiny-qwen2.5/contributions.html')]
    """
    section = _section("contributions")
    for model, folder in folders.items():
        view = contributions_view(folder, out)
        if view:
            what = measured(f"the clean model on the first {CONTRIBUTION_TOKENS} tokens of the "
                            f"{tables[model].settings.get('ppl_text', 'perplexity')} text")
            path = Path(os.path.relpath(folder / CONTRIBUTIONS_FILE, out)).as_posix()
            section.parts.append((model, what, None, Fragment(path, view)))
    return section


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
    figures = {_figure_id(s, i): fig for s in sections for i, (_, _, _, fig) in enumerate(s.parts)
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
