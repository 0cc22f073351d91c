"""The report's sections, built from each model's `StudyTables`: the summary, the analogues of the
paper's Tables 1-6, the layer-wise, hidden-state, correlation and score-drop sections, and the per-token
contribution views (numbers formatted by `wording`, published values by `paper`)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from ... import viz
from ...vocabulary import KIND_NAMES
from .. import published
from ..diagnostics import CONTRIBUTION_TOKENS, CONTRIBUTIONS_FILE, contributions_view
from ..tables import StudyTables
from .paper import add_paper_columns, paper_cell, paper_header, paper_source
from .wording import (ABSENT, COMPONENT_NAMES, METHOD_NAMES, METRIC_NAMES, TASK_NAMES, Fragment, Section,
                      empty_section, interval, measured, number, removal)

N_RESAMPLES = 1000


class ReportBuilder:
    """The sections of the report of several models' studies (see `sections`).

    The examples of this module read the folder of a finished study: `hybrid-lens study --model
    hybrid-lens/tiny-qwen2.5 --tasks ppl --conditions group,layer,transformer --n 2 --out hybrid-lens-study`.

    Examples:
        >>> from hybrid_lens.study.report import load_studies
        >>> builder = ReportBuilder({m: StudyTables(s) for m, s in load_studies("hybrid-lens-study").items()})
        >>> [section.title for section in builder.sections()][:2]
        ['Summary', 'Table 2 analogue: perplexity under group ablation']
    """

    def __init__(self, tables: dict[str, StudyTables]):
        self.tables = tables

    def sections(self) -> list[Section]:
        """Every section that has data, summary first.

        Examples:
            >>> from hybrid_lens.study.report import load_studies
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
        section = empty_section(key)
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
        section = empty_section("summary")
        runs, rows = [], []
        for model, t in self.tables.items():
            tasks = (["ppl"] if not t.ppl.empty else []) + sorted(set(t.drops.task) if not t.drops.empty else set())
            paper, same = published.paper_model(model)
            where = f" ({paper_source(paper, same)})" if paper else ""
            for r in t.in_groups(t.ppl, "group").itertuples():
                value = published.PERPLEXITY.get(paper, {}).get(r.condition)
                rows.append({"model": model, "condition": r.condition, "removed": t.label(r.condition),
                             "measure": f"perplexity x baseline ({t.settings['ppl_text']})",
                             "ours [95% CI]": f"{number(r.ratio)} {interval(r.ratio_ci_low, r.ratio_ci_high)}",
                             "paper": paper_cell(value[2], paper) + where if value else ABSENT})
            for r in t.in_groups(t.drops, "group").itertuples():
                value = published.score_change(paper, r.condition, r.task)
                rows.append({"model": model, "condition": r.condition, "removed": t.label(r.condition),
                             "measure": f"{TASK_NAMES.get(r.task, r.task)} score change (ablated - baseline)",
                             "ours [95% CI]": f"{number(r.delta)} {interval(r.ci_low, r.ci_high)}",
                             "paper": paper_cell(value, paper) + where if value is not None else ABSENT})
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
                paper_header("x baseline, 6 or 18 of 24 layers", paper, same) if paper else "paper": [
                    paper_cell(published.removal_multiple(paper, int(k), n_layers), paper) for k in table.removed]})
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
        section = empty_section("layers")
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
                    f"; method: {', '.join(METHOD_NAMES.get(m, m) for m in sorted(set(sweep.method)))}; values: " + \
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
            add_paper_columns(display, t.model, display.condition, published.SCORES,
                              {name: lambda entry, task=task: (entry or {}).get(task)})
        return display

    def _ppl_display(self, t: StudyTables, rows: pd.DataFrame, paper_table: dict) -> pd.DataFrame:
        display = pd.DataFrame({
            "condition": rows.condition, "removed": rows.condition.map(t.label), "loss": rows.loss.map(number),
            "perplexity": rows.ppl.map(number), "x baseline": rows.ratio.map(number),
            "95% CI of x baseline": [interval(a, b) for a, b in zip(rows.ratio_ci_low, rows.ratio_ci_high)]})
        return add_paper_columns(display, t.model, rows.condition, paper_table, {
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
        return add_paper_columns(display, t.model, table.condition, paper_table,
                                 {"targeted vs random mean ± std": lambda entry: entry})


def contributions_section(folders: dict[str, Path], tables: dict[str, StudyTables], out: Path) -> Section:
    """The per-token contribution views of the models whose study folder has one (`folders`: model ->
    its study folder), as `Fragment`s rendered from the stored data (`diagnostics.contributions_view`),
    each linked to its `contributions.html` relative to the report folder `out`.

    Examples:
        >>> from hybrid_lens.study.report import load_studies
        >>> stores = load_studies("hybrid-lens-study")
        >>> section = contributions_section({m: s.path.parent for m, s in stores.items()},
        ...                                 {m: StudyTables(s, 10) for m, s in stores.items()}, Path("hybrid-lens-study"))
        >>> [(heading, figure.path) for heading, _, _, figure in section.parts]
        [('hybrid-lens/tiny-qwen2.5', 'hybrid-lens_tiny-qwen2.5/contributions.html')]
    """
    section = empty_section("contributions")
    for model, folder in folders.items():
        view = contributions_view(folder, out)
        if view:
            what = measured(f"the clean model on the first {CONTRIBUTION_TOKENS} tokens of the "
                            f"{tables[model].settings.get('ppl_text', 'perplexity')} text")
            path = Path(os.path.relpath(folder / CONTRIBUTIONS_FILE, out)).as_posix()
            section.parts.append((model, what, None, Fragment(path, view)))
    return section
