"""Study statistics: paired bootstrap CIs of score drops, perplexity ratios, redundancy ratios and
multiples of baseline, all from the per-example results of a `StudyStore`."""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from ..evals import exp_or_inf

PPL_TASK = "ppl"


def paired_bootstrap(condition: np.ndarray, baseline: np.ndarray, statistic, n_resamples: int = 1000,
                     seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Point estimate and percentile CI of `statistic(condition, baseline)` over examples resampled in pairs.

    Args:
        condition: per-example values `[n]` under the condition.
        baseline: per-example values `[n]` of the baseline, paired with `condition` by position.
        statistic: `statistic(condition, baseline, axis=-1)`, vectorised over resamples.

    Returns:
        `(point, ci_low, ci_high)`; a degenerate CI (all three equal) for fewer than two
        examples or constant values.

    Examples:
        >>> baseline = np.array([1, 1, 0, 1, 1, 0, 1, 1, 1, 0.])
        >>> ablated = np.array([0, 1, 0, 0, 1, 0, 1, 0, 1, 0.])
        >>> drop = lambda c, b, axis=-1: c.mean(axis=axis) - b.mean(axis=axis)
        >>> point, low, high = paired_bootstrap(ablated, baseline, drop, n_resamples=200)
        >>> round(point, 2), low <= point <= high < 0
        (-0.3, True)
    """
    point = float(statistic(condition, baseline, axis=-1))
    if len(condition) < 2 or np.all(condition == condition[0]) and np.all(baseline == baseline[0]):
        return point, point, point
    result = stats.bootstrap((condition, baseline), statistic, paired=True, vectorized=True,
                             n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                             rng=np.random.default_rng(seed))
    return point, float(result.confidence_interval.low), float(result.confidence_interval.high)


def check_finite(results: pd.DataFrame) -> None:
    """Raise `ValueError` naming the (condition, task, example, metric) rows whose value is inf or
    NaN: no statistic is computed from them.

    Examples:
        >>> rows = pd.DataFrame(dict(condition="ssm_off", task="arc", example=[0, 1], metric="acc", value=[1.0, np.nan]))
        >>> check_finite(rows)
        Traceback (most recent call last):
        ...
        ValueError: Non-finite study values, no statistic computed: [{'condition': 'ssm_off', 'task': 'arc', 'example': 1, 'metric': 'acc'}]
    """
    bad = results[~np.isfinite(results.value.to_numpy(dtype=np.float64))]
    if len(bad):
        rows = bad[["condition", "task", "example", "metric"]].head(5).to_dict("records")
        raise ValueError(f"Non-finite study values, no statistic computed: {rows}{' ...' if len(bad) > 5 else ''}")


def _mean_drop(condition, baseline, axis=-1):
    return np.mean(condition, axis=axis) - np.mean(baseline, axis=axis)


def score_drops(results: pd.DataFrame, metrics: dict[str, str], n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Score of every condition on every task with a paired bootstrap CI of its drop vs baseline.

    Args:
        results: long table (condition, task, example, metric, value).
        metrics: task -> the metric reported for it (e.g. {"mmlu": "acc", "gsm8k": "exact_match_flexible"}).

    Returns:
        condition, task, metric, n, baseline, score, delta, ci_low, ci_high, significant
        (the CI of `score - baseline` excludes 0).

    Examples:
        >>> per_example = {"baseline": [1, 1, 0, 1, 1, 0, 1, 1, 1, 0], "ssm_off": [0, 1, 0, 0, 1, 0, 1, 0, 1, 0]}
        >>> results = pd.DataFrame([dict(condition=c, task="arc", example=i, metric="acc_norm", value=v)
        ...                         for c, values in per_example.items() for i, v in enumerate(values)])
        >>> drops = score_drops(results, {"arc": "acc_norm"}, n_resamples=200)
        >>> drops[["condition", "n", "baseline", "score", "significant"]]
          condition   n  baseline  score  significant
        0  baseline  10       0.7    0.7        False
        1   ssm_off  10       0.7    0.4         True
    """
    rows = []
    for task, metric in metrics.items():
        table = results[(results.task == task) & (results.metric == metric)]
        check_finite(table)
        wide = table.pivot(index="example", columns="condition", values="value")
        if "baseline" not in wide:
            continue
        for condition in wide.columns:
            pair = wide[[condition, "baseline"]].dropna().to_numpy()
            delta, low, high = paired_bootstrap(pair[:, 0], pair[:, 1], _mean_drop, n_resamples, seed)
            rows.append(dict(condition=condition, task=task, metric=metric, n=len(pair),
                             baseline=pair[:, 1].mean(), score=pair[:, 0].mean(), delta=delta,
                             ci_low=low, ci_high=high, significant=bool(low > 0 or high < 0)))
    return pd.DataFrame(rows)


def perplexity_table(results: pd.DataFrame, n_resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Loss, perplexity and multiple of baseline per condition, with a bootstrap CI of the ratio over
    windows (per-window `nll_sum` and `tokens` rows of task `ppl`). Log values stay finite where the
    perplexity itself overflows.

    Returns:
        condition, loss, ppl, log_ratio, ratio, ratio_ci_low, ratio_ci_high (empty without `ppl` rows).

    Examples:
        >>> nll = {"baseline": [300.0, 310.0, 290.0], "ssm_off": [600.0, 650.0, 620.0]}
        >>> results = pd.DataFrame([dict(condition=c, task="ppl", example=i, metric=metric, value=value)
        ...                         for c, sums in nll.items() for i, s in enumerate(sums)
        ...                         for metric, value in (("nll_sum", s), ("tokens", 100.0))])
        >>> table = perplexity_table(results, n_resamples=200)
        >>> table[["condition", "loss", "ppl", "ratio"]].round(2)
          condition  loss     ppl  ratio
        0  baseline  3.00   20.09   1.00
        1   ssm_off  6.23  509.45  25.36
    """
    check_finite(results[results.task == PPL_TASK])
    table = results[results.task == PPL_TASK].pivot_table(index=["condition", "example"], columns="metric",
                                                          values="value").reset_index()
    if table.empty:
        return pd.DataFrame()
    base = table[table.condition == "baseline"].set_index("example")
    rows = []
    for condition, group in table.groupby("condition", sort=False):
        group = group.set_index("example").loc[base.index]
        loss = group.nll_sum.sum() / group.tokens.sum()
        base_loss = base.nll_sum.sum() / base.tokens.sum()

        def log_ratio(c, b, axis=-1, tokens_c=group.tokens.to_numpy(), tokens_b=base.tokens.to_numpy()):
            return np.sum(c, axis=axis) / tokens_c.sum() - np.sum(b, axis=axis) / tokens_b.sum()

        point, low, high = paired_bootstrap(group.nll_sum.to_numpy(), base.nll_sum.to_numpy(), log_ratio, n_resamples, seed)
        rows.append(dict(condition=condition, loss=loss, ppl=exp_or_inf(loss), log_ratio=point,
                         ratio=exp_or_inf(loss - base_loss), ratio_ci_low=exp_or_inf(low), ratio_ci_high=exp_or_inf(high)))
    return pd.DataFrame(rows)


def targeted_vs_random(values: pd.Series, conditions: list[dict]) -> pd.DataFrame:
    """Targeted condition vs its matched random controls: mean, std over trials, and ratio.

    Args:
        values: one number per condition name (e.g. perplexity or mean accuracy).
        conditions: condition specs from the store (with `group` and `matches`).

    Returns:
        condition, layers, targeted, random_mean, random_std, random_min, random_max, trials, ratio
        (`random_mean / targeted`).

    Examples:
        >>> values = pd.Series({"attn_off": 40.0, "random_attn_off_t0": 20.0, "random_attn_off_t1": 30.0})
        >>> specs = [dict(name="attn_off", group="group", layers=[3, 7], matches=None),
        ...          dict(name="random_attn_off_t0", group="random", layers=[4, 5], matches="attn_off"),
        ...          dict(name="random_attn_off_t1", group="random", layers=[2, 3], matches="attn_off")]
        >>> targeted_vs_random(values, specs)[["condition", "targeted", "random_mean", "trials", "ratio"]]
          condition  targeted  random_mean  trials  ratio
        0  attn_off      40.0         25.0       2  0.625
    """
    rows = []
    for spec in conditions:
        controls = [c["name"] for c in conditions if c.get("matches") == spec["name"] and c["name"] in values]
        if not controls or spec["name"] not in values:
            continue
        random = values[controls].to_numpy(dtype=float)
        rows.append(dict(condition=spec["name"], layers=len(spec["layers"]), targeted=float(values[spec["name"]]),
                         random_mean=float(random.mean()), random_std=float(random.std(ddof=1)) if len(random) > 1 else 0.0,
                         random_min=float(random.min()), random_max=float(random.max()), trials=len(random),
                         ratio=float(random.mean() / values[spec["name"]]) if values[spec["name"]] else float("nan")))
    return pd.DataFrame(rows)


def leave_one_out(x, y, alpha: float = 0.05) -> dict:
    """How much one point carries a Pearson correlation: r recomputed without each point in turn
    (scipy.stats.pearsonr), and the point whose removal changes the conclusion, if any.

    A correlation is driven by one point when it is significant at `alpha` with every point and,
    without that point, loses its significance or changes sign.

    Args:
        x: values `[n]`, n >= 4 (three points left after removing one).
        y: the values paired with `x`, `[n]`.

    Returns:
        `loo_low`, `loo_high` (the range of r over the n leave-one-out subsets), `driver` (the index of
        the point whose removal moves p the most, with `driver_r`, `driver_p` without it) and `driven`.
        NaNs and no driver for fewer than 4 points.

    Examples:
        >>> x = [0.2, 0.93, 0.95, 0.92, 0.95, 0.93, 0.94, 0.97]     # one outlying layer (index 0)
        >>> y = [4.2, 0.09, 0.09, 0.07, 0.1, 0.15, 0.11, 0.09]
        >>> loo = leave_one_out(x, y)
        >>> loo["driven"], loo["driver"], round(loo["loo_low"], 3), loo["driver_p"] > 0.05
        (True, 0, -0.999, True)
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 4:
        return dict(loo_low=np.nan, loo_high=np.nan, driver=None, driver_r=np.nan, driver_p=np.nan, driven=False)
    full = stats.pearsonr(x, y)
    keep = ~np.eye(len(x), dtype=bool)
    without = [stats.pearsonr(x[k], y[k]) if np.ptp(x[k]) > 0 and np.ptp(y[k]) > 0 else None for k in keep]
    r = np.array([np.nan if w is None else w.statistic for w in without])
    p = np.array([1.0 if w is None else w.pvalue for w in without])
    flips = np.sign(np.nan_to_num(r)) != np.sign(full.statistic)
    driver = int(np.argmax(p + flips))  # a sign flip first, then the largest p
    driven = bool(full.pvalue < alpha and (p[driver] >= alpha or flips[driver]))
    return dict(loo_low=float(np.nanmin(r)), loo_high=float(np.nanmax(r)), driver=driver, driver_r=float(r[driver]),
                driver_p=float(p[driver]), driven=driven)
