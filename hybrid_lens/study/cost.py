"""The study's cost model: seconds per forward token per (model, task, condition group), fitted from
a study's own timing records (`runner.time_by_group`), and projections of larger runs from it.

A *forward token* is one token through the model under one condition: a perplexity window's tokens,
a multiple-choice example's context once plus each choice's continuation (shared-context scoring),
a generation task's prompt plus its generation budget. A projection assumes cost linear in forward
tokens at the measured rate (same machine, threads and load; attention's quadratic term in contexts
longer than the measured ones is not modelled). Pure functions of pandas tables: no torch here.
"""

from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from .spec import GROUPS

# The published protocol (Borobia et al., arXiv 2603.22473, as `study.published` cites it): examples per
# benchmark, GSM8K's smaller n for the positional thirds, one perplexity window of up to 8192 tokens,
# and 5 random-control trials for perplexity (3 for the benchmarks).
PAPER_N = {"mmlu": 2000, "gsm8k": 100, "arc": 299, "hellaswag": 2000, "truthfulqa": 790, "ppl": 1}
PAPER_N_BY_GROUP = {("gsm8k", "positional"): 50}
PAPER_PPL_TOKENS = 8192
PAPER_TRIALS = {"ppl": 5}
PAPER_DIAGNOSTIC_TOKENS = 512
HIDDEN = "hidden"  # = `diagnostics.HIDDEN_TASK` (which imports torch): the diagnostics, once per model
KEY = ["model", "task", "group"]


def fit_rates(timings: pd.DataFrame, workload: pd.DataFrame) -> pd.DataFrame:
    """Seconds per forward token of each measured (model, task, group).

    Args:
        timings: `runner.time_by_group` rows: model, task, group, conditions (pairs), seconds (their sum).
        workload: per (model, task): `examples` (n actually run) and `tokens` (forward tokens of one
            condition over those examples).

    Returns:
        The timings with `examples`, `tokens`, `seconds_per_condition` and `us_per_token`
        (microseconds per forward token under one condition).

    Examples:
        >>> timings = pd.DataFrame(dict(model="m", task=["arc", "arc"], group=["baseline", "layer"],
        ...                             conditions=[1, 8], seconds=[2.0, 8.0]))
        >>> workload = pd.DataFrame(dict(model=["m"], task=["arc"], examples=[2], tokens=[1000]))
        >>> fit_rates(timings, workload)[["group", "seconds_per_condition", "us_per_token"]]
              group  seconds_per_condition  us_per_token
        0  baseline                    2.0        2000.0
        1     layer                    1.0        1000.0
    """
    rates = timings.merge(workload, on=["model", "task"], how="left", validate="many_to_one")
    missing = rates[rates.tokens.isna()]
    if len(missing):
        raise ValueError(f"No workload for {sorted(set(zip(missing.model, missing.task)))}; "
                         "give examples and tokens for every (model, task) timed.")
    rates["seconds_per_condition"] = rates.seconds / rates.conditions
    rates["us_per_token"] = 1e6 * rates.seconds_per_condition / rates.tokens
    return rates


def group_factors(rates: pd.DataFrame, reference_task: str = "ppl") -> pd.DataFrame:
    """Each group's cost per condition relative to the baseline's, per model, on `reference_task`
    (a Sweep's prefix reuse makes a condition acting late cheaper than a clean forward).

    Returns:
        Columns model, group, factor (the baseline's is 1.0).

    Examples:
        >>> rates = pd.DataFrame(dict(model="m", task="ppl", group=["baseline", "layer"], us_per_token=[10.0, 6.0]))
        >>> group_factors(rates)
          model     group  factor
        0     m  baseline     1.0
        1     m     layer     0.6
    """
    reference = rates[rates.task == reference_task]
    base = reference[reference.group == "baseline"].set_index("model").us_per_token
    factor = [rate / base[model] if model in base.index else float("nan")
              for model, rate in zip(reference.model, reference.us_per_token)]
    return pd.DataFrame(dict(model=reference.model.tolist(), group=reference.group.tolist(), factor=factor),
                        columns=["model", "group", "factor"])


def complete_rates(rates: pd.DataFrame, needed: pd.DataFrame, sweepable: frozenset[str],
                   reference_task: str = "ppl", analogues: dict[str, str] | None = None) -> pd.DataFrame:
    """A rate for every (model, task, group) of `needed`: the measured one where there is one;
    otherwise the task's baseline rate times the group's factor on `reference_task`
    (`group_factors`) for a sweepable task, and the baseline rate itself for a task whose
    conditions each run on their own (generation). A task with no baseline rate of the model takes
    its `analogues` model's rate (a smaller model of the family, every cell measured) scaled by the
    two models' baseline rates on `reference_task` (a size ratio: rough where the task's cost is
    not compute-bound like the reference task's, e.g. token-by-token generation).

    Returns:
        Columns model, task, group, us_per_token, source (`measured`, `baseline x <task> factor`,
        `baseline`, `<analogue> x <task> size ratio`).

    Examples:
        >>> rates = pd.DataFrame(dict(model="m", task=["ppl", "ppl", "arc", "gsm8k"],
        ...                           group=["baseline", "layer", "baseline", "baseline"],
        ...                           us_per_token=[10.0, 6.0, 20.0, 50.0]))
        >>> needed = pd.DataFrame(dict(model="m", task=["arc", "arc", "gsm8k"], group=["baseline", "layer", "layer"]))
        >>> complete_rates(rates, needed, sweepable=frozenset({"ppl", "arc"}))
          model   task     group  us_per_token                  source
        0     m    arc  baseline          20.0                measured
        1     m    arc     layer          12.0  baseline x ppl factor
        2     m  gsm8k     layer          50.0                baseline
        >>> big = pd.concat([rates, pd.DataFrame(dict(model="M", task=["ppl"], group=["baseline"], us_per_token=[40.0]))])
        >>> complete_rates(big, needed.assign(model="M"), frozenset({"ppl", "arc"}), analogues={"M": "m"})
          model   task     group  us_per_token              source
        0     M    arc  baseline          80.0  m x ppl size ratio
        1     M    arc     layer          48.0  m x ppl size ratio
        2     M  gsm8k     layer         200.0  m x ppl size ratio
    """
    known = rates.set_index(KEY).us_per_token
    factors = group_factors(rates, reference_task).set_index(["model", "group"]).factor
    found = []
    for model, task, group in needed[KEY].itertuples(index=False):
        analogue = (analogues or {}).get(model)
        if (model, task, "baseline") not in known.index and analogue is not None:
            pair = [(name, reference_task, "baseline") for name in (model, analogue)]
            if not all(key in known.index for key in pair):
                raise ValueError(f"Scaling {analogue} to {model} needs both models' {reference_task} baseline rates.")
            size = known[pair[0]] / known[pair[1]]
            small = complete_rates(rates, pd.DataFrame(dict(model=[analogue], task=[task], group=[group])), sweepable,
                                   reference_task)
            found.append(dict(model=model, task=task, group=group, us_per_token=float(small.us_per_token[0] * size),
                              source=f"{analogue} x {reference_task} size ratio"))
            continue
        if (model, task, group) in known.index:
            rate, source = known[(model, task, group)], "measured"
        elif (model, task, "baseline") not in known.index:
            raise ValueError(f"No baseline rate of {model} on {task}: measure it to project its groups.")
        elif task not in sweepable or task == HIDDEN:
            rate, source = known[(model, task, "baseline")], "baseline"
        elif (model, group) in factors.index and pd.notna(factors[(model, group)]):
            rate = known[(model, task, "baseline")] * factors[(model, group)]
            source = f"baseline x {reference_task} factor"
        else:
            raise ValueError(f"No {reference_task} rate of group {group!r} for {model}: measure it there.")
        found.append(dict(model=model, task=task, group=group, us_per_token=float(rate), source=source))
    return pd.DataFrame(found, columns=[*KEY, "us_per_token", "source"])


def plan(condition_counts: Mapping[str, Mapping[str, int]], tokens_per_example: pd.DataFrame,
         n: Mapping[str, int] | int, n_by_group: Mapping[tuple[str, str], int] | None = None,
         tokens_override: Mapping[str, float] | None = None,
         extra_conditions: Mapping[tuple[str, str], int] | None = None) -> pd.DataFrame:
    """The work of a run: conditions, examples and forward tokens per example of each (model, task, group).

    Args:
        condition_counts: model -> group -> conditions (`Counter(c.group for c in study_conditions(...))`).
        tokens_per_example: columns model, task, tokens_per_example (measured, `fit_rates`' tokens / examples);
            its tasks are the plan's tasks. The hidden-state diagnostics (task `hidden`) run once per model.
        n: examples per task (an int: the same for every task).
        n_by_group: (task, group) -> examples where a group runs fewer (the paper's GSM8K thirds).
        tokens_override: task -> forward tokens per example instead of the measured ones (the
            paper's one 8192-token perplexity window; its 512-token diagnostic text).
        extra_conditions: (task, group) -> conditions added for that task (the paper's 5 perplexity
            random trials where the benchmarks have 3).

    Examples:
        >>> tokens = pd.DataFrame(dict(model="m", task=["arc", "hidden"], tokens_per_example=[900.0, 256.0]))
        >>> plan({"m": {"baseline": 1, "layer": 8}}, tokens, n={"arc": 299}, tokens_override={"hidden": 512})
          model    task     group  conditions  examples  tokens_per_example
        0     m     arc  baseline           1       299             900.0
        1     m     arc     layer           8       299             900.0
        2     m  hidden  baseline           1         1             512.0
    """
    rows = []
    for model, task, per_example in tokens_per_example[["model", "task", "tokens_per_example"]].itertuples(index=False):
        per_example = (tokens_override or {}).get(task, per_example)
        if task == HIDDEN:
            rows.append(dict(model=model, task=task, group="baseline", conditions=1, examples=1,
                             tokens_per_example=per_example))
            continue
        for group in GROUPS:
            count = condition_counts[model].get(group, 0) + (extra_conditions or {}).get((task, group), 0)
            if count:
                examples = (n_by_group or {}).get((task, group), n if isinstance(n, int) else n[task])
                rows.append(dict(model=model, task=task, group=group, conditions=count, examples=examples,
                                 tokens_per_example=per_example))
    return pd.DataFrame(rows)


def project(work: pd.DataFrame, rates: pd.DataFrame) -> pd.DataFrame:
    """Projected seconds of each row of `work` (`plan`) at the `rates` (`complete_rates`):
    conditions x examples x tokens per example x seconds per token.

    Examples:
        >>> work = pd.DataFrame(dict(model="m", task=["arc"], group=["layer"], conditions=[8], examples=[299],
        ...                          tokens_per_example=[900.0]))
        >>> rates = pd.DataFrame(dict(model="m", task=["arc"], group=["layer"], us_per_token=[12.0], source="x"))
        >>> project(work, rates)[["tokens", "seconds"]]
              tokens    seconds
        0  2152800.0  25.8336
    """
    found = work.merge(rates, on=KEY, how="left", validate="one_to_one")
    if found.us_per_token.isna().any():
        raise ValueError(f"No rate for {found[found.us_per_token.isna()][KEY].to_dict('records')}.")
    found["tokens"] = found.conditions * found.examples * found.tokens_per_example
    found["seconds"] = found.tokens * found.us_per_token * 1e-6
    return found


def totals(projected: pd.DataFrame, by: str | list[str] = "model") -> pd.DataFrame:
    """`project`'s seconds summed `by` model (or any columns), with hours and days.

    Examples:
        >>> totals(pd.DataFrame(dict(model=["m", "m"], tokens=[1e6, 2e6], seconds=[3600.0, 82800.0])))
          model     tokens  seconds  hours  days
        0     m  3000000.0  86400.0   24.0   1.0
    """
    summed = projected.groupby(by, as_index=False)[["tokens", "seconds"]].sum()
    return summed.assign(hours=summed.seconds / 3600, days=summed.seconds / 86400)
