"""The tasks a study can run, each turned into per-example rows (example, metric, value)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import pandas as pd

from .. import zoo
from ..evals import perplexity, wikitext2
from ..evals.tasks import TASKS as BENCHMARK_FUNCTIONS

Evaluator = Callable[..., pd.DataFrame]


def ppl_text(model_name: str, source: str) -> str:
    """The perplexity text: `auto` is the held-out split for bundled models, WikiText-2 otherwise."""
    if source == "auto":
        source = "kjv-validation" if zoo.is_zoo_name(model_name) else "wikitext2"
    if source == "kjv-validation":
        return zoo.load_validation_text()
    return wikitext2(None if source == "wikitext2" else source)


def evaluate_ppl(model, condition, n: int, seed: int, model_name: str = "", ppl_source: str = "auto",
                 ppl_context: int = 512) -> pd.DataFrame:
    """Per-window NLL sums and token counts of the first `n` windows (stride = half the context)."""
    result = perplexity(model, ppl_text(model_name, ppl_source), context_length=ppl_context,
                        stride=ppl_context // 2, condition=condition, max_windows=n, progress=False)
    return result.windows.melt(id_vars="example", value_vars=["nll_sum", "tokens"], var_name="metric")


# study task name -> (evals task, the metric the report shows)
BENCHMARKS = {
    "mmlu": ("mmlu", "acc"),
    "arc": ("arc_challenge", "acc_norm"),
    "hellaswag": ("hellaswag", "acc_norm"),
    "truthfulqa": ("truthfulqa_mc", "mc1"),
    "gsm8k": ("gsm8k_cot", "exact_match_flexible"),
}


def benchmark(task: str) -> Evaluator:
    """The study evaluator of a benchmark: its per-example metrics as long rows."""
    function = BENCHMARK_FUNCTIONS[BENCHMARKS[task][0]]
    takes_seed = "seed" in inspect.signature(function).parameters

    def evaluate_benchmark(model, condition, n: int, seed: int, data: str = "bundled", **_) -> pd.DataFrame:
        """`data`: `bundled` (offline subsets shipped with hybrid-lens), `hub` (the usual hub datasets),
        or a local file in the task's format."""
        options = dict(n=n, condition=condition, progress=False, source=None if data == "hub" else data)
        if takes_seed:
            options["seed"] = seed
        return function(model, **options).long()

    return evaluate_benchmark


TASKS: dict[str, Evaluator] = {"ppl": evaluate_ppl, **{task: benchmark(task) for task in BENCHMARKS}}
REPORTED_METRIC: dict[str, str] = {task: metric for task, (_, metric) in BENCHMARKS.items()}


def check_tasks(tasks: Sequence[str]) -> None:
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}.")


def evaluate(task: str, model, condition, n: int, seed: int, **options) -> pd.DataFrame:
    """Rows (example, metric, value) of `task` under `condition`."""
    check_tasks([task])
    return TASKS[task](model, condition, n, seed, **options)
