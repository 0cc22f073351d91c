"""Does a per-layer metric predict what ablating the layer costs? (the paper's Figure 6)"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def correlation(x: Sequence[float], y: Sequence[float]) -> dict[str, float]:
    """Pearson r and p, Spearman rho and p (scipy.stats) of two paired series, and their length n.

    Examples:
        >>> stats = correlation([0.1, 0.4, 0.2, 0.9], [1.0, 3.5, 2.0, 7.5])
        >>> stats["spearman_rho"], stats["n"]
        (1.0, 4)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    pearson = stats.pearsonr(x, y)
    spearman = stats.spearmanr(x, y)
    return dict(pearson_r=float(pearson.statistic), pearson_p=float(pearson.pvalue),
                spearman_rho=float(spearman.statistic), spearman_p=float(spearman.pvalue), n=len(x))


def metric_impact_correlation(
    metrics: pd.DataFrame,
    impact: pd.DataFrame,
    metric: str,
    on: Sequence[str] = ("layer", "component"),
    impact_column: str = "value",
    by: str | None = None,
) -> pd.DataFrame:
    """Correlate one per-layer metric with the impact of ablating each layer (or component).

    Args:
        metrics: a mean-reduced table of `layer_metrics` / `hidden_state_metrics`; its rows with
            `metric == metric` are used and must be unique on `on`.
        impact: one row per ablation, with the `on` columns and the impact in `impact_column`
            (an accuracy drop from the study, or the `ablation_kl` rows of `layer_metrics`).
        on: the join keys. Use `("layer",)` to pair a block metric (`norm_change`, `cosine`, whose
            component is `block`) with the impact of every component of that layer, as the paper did.
        by: a column of the joined table (e.g. `component`, or `layer_kind`, taken from `metrics`)
            to correlate within each of its groups separately; None pools all rows.

    Returns:
        One row (per group) with `pearson_r, pearson_p, spearman_rho, spearman_p, n`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> text = "In the beginning God created the heaven and the earth"
        >>> table = layer_metrics(model, text, components=["ssm", "attn"])
        >>> impact = table[table.metric == "ablation_kl"]
        >>> result = metric_impact_correlation(table, impact, "output_ratio", by="component")
        >>> result[["component", "n"]].values.tolist()
        [['ssm', 12], ['attn', 12]]
    """
    on = list(on)
    keep = [*on, *(["layer_kind"] if "layer_kind" in metrics and "layer_kind" not in on else []), "value"]
    chosen = metrics.loc[metrics.metric == metric, keep].rename(columns={"value": "metric_value"})
    if chosen.empty:
        raise ValueError(f"No rows of metric {metric!r}; metrics present: {sorted(metrics.metric.unique())}.")
    joined = chosen.merge(impact, on=on, validate="one_to_many", suffixes=("", "_impact"))
    if joined.empty:
        raise ValueError(f"No ablation in `impact` matches a {metric!r} row on {on}.")
    if by is None:
        return pd.DataFrame([correlation(joined.metric_value, joined[impact_column])])
    return pd.DataFrame([{by: group, **correlation(rows.metric_value, rows[impact_column])}
                         for group, rows in joined.groupby(by, sort=False)])
