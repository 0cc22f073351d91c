"""The statistics of one model's study, as tidy tables (numbers only; `study.report` formats them).

Everything is computed from a `StudyStore`, so a finished study re-renders without recomputing.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from . import diagnostics, stats
from .store import StudyStore
from .tasks import REPORTED_METRIC, ppl_text_label


class StudyTables:
    """The statistics of one model's study.

    Args:
        store: the model's `StudyStore`.
        n_resamples: bootstrap resamples of every CI.
        seed: the bootstrap seed.

    Attributes:
        model: the model name.
        meta: the study's stored settings (`n`, `seed`, `trials`, `settings`: text, windows, ...).
        specs: the condition specs, in study order (with `label`: what is removed and how).
        drops: `stats.score_drops` of every benchmark, with its reported metric.
        ppl: `stats.perplexity_table` (empty without the `ppl` task).
        hidden: the clean model's per-layer hidden-state metrics (layer, metric, component, value).

    The examples of this module read the store of a finished study: `hybrid-lens study --model
    hybrid-lens/tiny-qwen2.5 --tasks ppl --conditions group,layer,transformer --n 2 --out hybrid-lens-study`.

    Examples:
        >>> store = StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite")
        >>> tables = StudyTables(store, n_resamples=200)
        >>> tables.ppl.condition.tolist()[:3]
        ['baseline', 'attn_mixer_off', 'L0_attn_off']
        >>> tables.settings["ppl_context"], tables.ppl_windows, tables.ppl_tokens
        (256, 2, 510)
    """

    def __init__(self, store: StudyStore, n_resamples: int = 1000, seed: int = 0):
        self.meta = store.meta
        self.model = self.meta["model"]
        self.settings = self.meta.get("settings") or {
            "ppl_text": ppl_text_label(self.model, self.meta.get("ppl_source", "auto")),
            "ppl_context": self.meta.get("ppl_context"), "ppl_stride": None, "diagnostic_tokens": None}
        self.specs = store.conditions()
        self.by_name = {s["name"]: s for s in self.specs}
        order = {s["name"]: i for i, s in enumerate(self.specs)}
        results = store.results()
        self.timings = store.timings()
        metrics = {t: m for t, m in REPORTED_METRIC.items() if t in set(results.task)}
        self.drops = _in_order(stats.score_drops(results, metrics, n_resamples, seed), order)
        self.ppl = _in_order(stats.perplexity_table(results, n_resamples, seed), order)
        ppl_rows = results[(results.task == stats.PPL_TASK) & (results.condition == "baseline")]
        self.ppl_tokens = int(ppl_rows[ppl_rows.metric == "tokens"].value.sum())
        self.ppl_windows = int((ppl_rows.metric == "tokens").sum())
        self.hidden = diagnostics.from_store(results)

    def group_of(self, condition: str) -> str:
        """The condition group of a condition name (`baseline`, `group`, `layer`, ...).

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.group_of("attn_mixer_off"), tables.group_of("L3_attn_off")
            ('group', 'layer')
        """
        return self.by_name[condition]["group"]

    def label(self, condition: str) -> str:
        """What a condition removes and by which method (stored with the condition).

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.label("L0_attn_off")
            'sequential skip: whole layer 0 removed (attention and MLP)'
        """
        return self.by_name[condition].get("label", condition)

    def in_groups(self, table: pd.DataFrame, *groups: str) -> pd.DataFrame:
        """The rows of `table` (with a `condition` column) whose condition belongs to one of `groups`.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.in_groups(tables.ppl, "baseline", "group").condition.tolist()
            ['baseline', 'attn_mixer_off']
        """
        if table.empty:
            return table
        return table[table.condition.map(self.group_of).isin(groups)]

    def targeted_vs_random(self, value: str) -> pd.DataFrame:
        """Table 3 (`"score"`: mean benchmark score) or Table 4 (`"perplexity"`): targeted vs matched
        random; `stats.targeted_vs_random` columns, empty without random controls.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.targeted_vs_random("perplexity").empty     # a pure transformer has no targeted groups
            True
        """
        if value == "perplexity":
            values = self.ppl.set_index("condition").ppl if not self.ppl.empty else None
        else:
            values = self.drops.groupby("condition").score.mean() if not self.drops.empty else None
        return pd.DataFrame() if values is None else stats.targeted_vs_random(values, self.specs)

    def removal_multiples(self) -> pd.DataFrame:
        """Table 5: perplexity under random layer removal as a multiple of baseline, over trials.

        Returns:
            removed (how many layers), mean, std, min, max, count; empty without such conditions.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.removal_multiples()[["removed", "count"]].to_numpy().tolist()
            [[2, 3], [6, 3]]
        """
        rows = self.in_groups(self.ppl, "transformer", "random")
        if rows.empty:
            return pd.DataFrame()
        removed = rows.condition.map(lambda c: len(self.by_name[c]["layers"]))
        skip = rows.condition.map(lambda c: self.by_name[c].get("method", "skip") == "skip")
        rows = rows[skip.to_numpy()]
        if rows.empty:
            return pd.DataFrame()
        return rows.assign(removed=removed[skip]).groupby("removed").ratio.agg(
            ["mean", "std", "min", "max", "count"]).reset_index()

    def layer_sweep(self, task: str) -> pd.DataFrame:
        """kind, layer, delta, method of the single-component conditions, in layer order; for `ppl`
        delta is the log-perplexity ratio to baseline.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> sweep = tables.layer_sweep("ppl")
            >>> sweep.layer.tolist(), sweep.method.unique().tolist()
            ([0, 1, 2, 3, 4, 5, 6, 7], ['skip'])
        """
        if task == stats.PPL_TASK:
            rows, column = self.in_groups(self.ppl, "layer"), "log_ratio"
        else:
            rows, column = self.in_groups(self.drops, "layer"), "delta"
            rows = rows[rows.task == task] if not rows.empty else rows
        if rows.empty:
            return pd.DataFrame(columns=["kind", "layer", "delta", "method"])
        spec = rows.condition.map(self.by_name)
        table = pd.DataFrame(dict(kind=spec.map(lambda s: s["kind"]).to_numpy(),
                                  layer=spec.map(lambda s: s["layers"][0]).to_numpy(),
                                  delta=rows[column].to_numpy(),
                                  method=spec.map(lambda s: s.get("method") or "").to_numpy()))
        return table.sort_values(["layer", "kind"], kind="stable").reset_index(drop=True)

    def layer_grid(self, task: str) -> pd.DataFrame:
        """The layer sweep of `task` as layer x kind: the perplexity multiple of baseline for `ppl`,
        the score change (ablated - baseline) otherwise; NaN where a layer has no such component.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.layer_grid("ppl").columns.tolist()
            ['attn']
        """
        sweep = self.layer_sweep(task)
        grid = sweep.assign(value=np.exp(sweep.delta) if task == stats.PPL_TASK else sweep.delta)
        return grid.pivot_table(index="layer", columns="kind", values="value").sort_index()

    def condition_counts(self) -> pd.Series:
        """How many conditions each group has, groups in study order.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.condition_counts().to_dict()
            {'baseline': 1, 'group': 1, 'layer': 8, 'transformer': 6}
        """
        return pd.Series([s["group"] for s in self.specs]).value_counts(sort=False)

    def benchmark_sizes(self) -> pd.Series:
        """Examples scored per benchmark (the most over its conditions), benchmarks in study order;
        empty without benchmarks.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.benchmark_sizes().empty                   # a perplexity-only study
            True
        """
        if self.drops.empty:
            return pd.Series(dtype=int)
        return self.drops.groupby("task", sort=False).n.max()

    def hidden_wide(self) -> pd.DataFrame:
        """Per-layer hidden-state metrics of the clean model: layer x (metric, component), layers in
        order; NaN where a layer has no such component (shown as absent by the report).

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> tables.hidden_wide().index.tolist()
            [0, 1, 2, 3, 4, 5, 6, 7]
        """
        if self.hidden.empty:
            return self.hidden
        return self.hidden.pivot_table(index="layer", columns=["metric", "component"], values="value").sort_index()

    def impact_correlations(self) -> tuple[pd.DataFrame, dict[str, pd.DataFrame]]:
        """Correlation of each hidden-state metric with each task's layer-sweep impact (Figure 6), over
        one point per distinct (layer, removed unit), and the points per `key` for scatter plots; both
        empty without a layer sweep of at least three conditions.

        A point pairs what was removed with the metric of the same thing: a whole-layer skip with the
        block's metric (or, for a metric per component such as the output ratio, the layer's own mixer),
        a zeroed path with that component's metric. A metric with one value per layer (cosine, norm
        change, logit-lens KL) is never paired with several impacts of the same layer: on a parallel
        hybrid it gets one correlation per zeroed kind.

        Returns:
            `(table, points)`. The table: key, task, metric, component (the metric's: `block`,
            `resid_post`, `ablated` (the zeroed path's own) or `mixer` (a skipped layer's mixer)), removed (`block` for whole-layer
            skips, else the kind zeroed, `all` when pooled over kinds), method, n (points), Pearson and
            Spearman (`analysis.correlation`), and `stats.leave_one_out` (with `driver_label`).
            `points[key]`: layer, kind, value (metric), impact, label.

        Examples:
            >>> tables = StudyTables(StudyStore("hybrid-lens-study/hybrid-lens_tiny-qwen2.5/results.sqlite"))
            >>> correlations, points = tables.impact_correlations()
            >>> sorted(correlations.metric)[:2], len(points["ppl:norm_change:block"])
            (['ablation_kl', 'cosine'], 8)
        """
        from ..analysis import correlation

        rows, points = [], {}
        tasks = ([stats.PPL_TASK] if not self.ppl.empty else []) + sorted(self.drops.task.unique() if not self.drops.empty else [])
        for task in tasks:
            impact = self.layer_sweep(task).rename(columns={"delta": "impact"})
            if len(impact) < 3 or self.hidden.empty:
                continue
            impact["unit"] = np.where(impact.method == "skip", "block", impact.kind)
            for metric, metric_rows in self.hidden.groupby("metric"):
                for group, joined, component in _paired(impact, metric_rows[["layer", "component", "value"]]):
                    if len(joined) < 3 or joined.value.nunique() < 2 or joined.impact.nunique() < 2:
                        continue
                    labels = [f"L{layer}" if unit == "block" else f"L{layer} {kind}"  # a skip removes the layer
                              for layer, kind, unit in zip(joined.layer, joined.kind, joined.unit)]
                    loo = stats.leave_one_out(joined.value, joined.impact)
                    key = f"{task}:{metric}:{group}"
                    rows.append(dict(key=key, task=task, metric=metric, component=component, removed=group,
                                     method="/".join(sorted(set(joined.method))),
                                     **correlation(joined.value, joined.impact), **loo,
                                     driver_label=labels[loo["driver"]] if loo["driver"] is not None else None))
                    points[key] = joined[["layer", "kind", "value", "impact"]].assign(label=labels)
        return pd.DataFrame(rows), points


def _paired(impact: pd.DataFrame, metric_rows: pd.DataFrame):
    """`(removed, joined, component)` groups of one metric's points: impact rows (layer, kind, method,
    impact, unit) joined to the metric value of the unit removed, else of the layer's mixer, else
    (a metric with one value per layer) of the layer, one group per kind where a layer has several."""
    for key, component in (("unit", None), ("kind", "mixer")):
        joined = impact.merge(metric_rows, left_on=["layer", key], right_on=["layer", "component"])
        if len(joined) == len(impact):
            blocks = set(joined.unit) == {"block"}
            yield ("block" if blocks else "all"), joined, component or ("block" if blocks else "ablated")
            return
    if metric_rows.layer.is_unique and len(impact.merge(metric_rows, on="layer")) == len(impact):
        component = metric_rows.component.iloc[0]
        if impact.layer.is_unique:
            yield ("block" if set(impact.unit) == {"block"} else "all"), impact.merge(metric_rows.drop(columns="component"), on="layer"), component
            return
        for kind, rows in impact.groupby("kind", sort=False):
            yield kind, rows.merge(metric_rows.drop(columns="component"), on="layer"), component


def _in_order(table: pd.DataFrame, order: dict[str, int]) -> pd.DataFrame:
    """`table` sorted by its conditions' study order (baseline first), stable within a condition."""
    if table.empty:
        return table
    return table.sort_values("condition", key=lambda c: c.map(order), kind="stable").reset_index(drop=True)
