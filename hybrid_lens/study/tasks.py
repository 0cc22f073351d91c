"""The tasks a study can run, each turned into per-example rows (example, metric, value)."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from .. import zoo
from ..evals import perplexity, wikitext2
from ..interventions import as_sweep
from ..evals.tasks import TASKS as BENCHMARKS, Task, get_task
from .spec import check_tasks

Evaluator = Callable[..., pd.DataFrame]


def ppl_text(model_name: str, source: str) -> str:
    """The perplexity text: `auto` is the held-out split for bundled models, WikiText-2 otherwise.

    `source`: `auto`, `kjv-validation` (the bundled models' held-out text), `wikitext2` (the
    bundled WikiText-2 test split), or a `.txt`/`.txt.gz` path.

    Examples:
        >>> ppl_text("hybrid-lens/tiny-qwen2.5", "auto")[:28]      # held-out text of the bundled models
        'In the beginning God created'
        >>> ppl_text("Qwen/Qwen3.5-0.8B", "auto")[:20]             # WikiText-2 test
        ' = Robert Boulter = '
    """
    source = ppl_source(model_name, source)
    if source == "kjv-validation":
        return zoo.load_validation_text()
    return wikitext2(None if source == "wikitext2" else source)


def ppl_text_label(model_name: str, source: str) -> str:
    """How reports name the perplexity text of `ppl_text(model_name, source)`.

    Examples:
        >>> ppl_text_label("hybrid-lens/tiny-qwen3.5", "auto"), ppl_text_label("Qwen/Qwen2.5-0.5B", "auto")
        ('held-out KJV', 'WikiText-2')
    """
    source = ppl_source(model_name, source)
    return {"kjv-validation": "held-out KJV", "wikitext2": "WikiText-2"}.get(source, str(source))


def ppl_source(model_name: str, source: str) -> str:
    """`source` with `auto` resolved: `kjv-validation` for bundled models, `wikitext2` otherwise.

    Examples:
        >>> ppl_source("hybrid-lens/tiny-falcon-h1", "auto"), ppl_source("tiiuae/Falcon-H1-0.5B-Base", "auto")
        ('kjv-validation', 'wikitext2')
    """
    if source == "auto":
        return "kjv-validation" if zoo.is_zoo_name(model_name) else "wikitext2"
    return source


def evaluate_ppl(model, condition, n: int, seed: int, model_name: str = "", ppl_source: str = "auto",
                 ppl_context: int = 512, ppl_stride: int | None = None) -> pd.DataFrame | list[pd.DataFrame]:
    """Per-window NLL sums and token counts of the first `n` windows of `ppl_context` tokens starting
    every `ppl_stride` tokens (default: half the context).

    `seed` is unused (the windows are fixed); it keeps the signature of every study task.

    Returns:
        Rows (example, metric, value) with metrics `nll_sum` and `tokens`, one example per
        window; for a `Sweep`, one such table per condition.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> rows = evaluate_ppl(model, None, n=2, seed=0, model_name="hybrid-lens/tiny-qwen2.5", ppl_context=128)
        >>> rows[["example", "metric"]]
           example   metric
        0        0  nll_sum
        1        1  nll_sum
        2        0   tokens
        3        1   tokens
        >>> swept = evaluate_ppl(model, Sweep([skip_layer(3), zero("attn", layers=0)]), n=2, seed=0,
        ...                      model_name="hybrid-lens/tiny-qwen2.5", ppl_context=128)
        >>> len(swept)
        2
    """
    result = perplexity(model, ppl_text(model_name, ppl_source), context_length=ppl_context,
                        stride=ppl_stride or ppl_context // 2, condition=condition, max_windows=n, progress=False)
    return as_sweep(condition).map(lambda _, r: long_windows(r), result)


def long_windows(result) -> pd.DataFrame:
    """A `PerplexityResult`'s windows as rows (example, metric, value) with metrics `nll_sum`, `tokens`.

    Examples:
        >>> from hybrid_lens.evals import PerplexityResult
        >>> windows = pd.DataFrame(dict(example=[0, 1], tokens=[127, 64], nll_sum=[511.5, 283.1]))
        >>> long_windows(PerplexityResult(794.6, 191, 800, 150, windows))
           example   metric  value
        0        0  nll_sum  511.5
        1        1  nll_sum  283.1
        2        0   tokens  127.0
        3        1   tokens   64.0
    """
    return result.windows.melt(id_vars="example", value_vars=["nll_sum", "tokens"], var_name="metric")


def benchmark(task: Task) -> Evaluator:
    """The study evaluator of a benchmark of `hybrid_lens.evals.TASKS`: its per-example metrics as
    long rows. The evaluator takes `(model, condition, n, seed, data="bundled")`; `data`: `bundled`
    (offline subsets shipped with hybrid-lens), `hub` (the usual hub datasets), or a local file.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> arc = benchmark(get_task("arc"))
        >>> rows = arc(model, None, n=2, seed=0)       # bundled data, 25 shots
        >>> rows.metric.unique().tolist(), len(rows)
        (['acc', 'acc_norm'], 4)
    """
    return lambda model, condition, n, seed, data="bundled", **_: task.long(
        model, seed, n=n, condition=condition, progress=False, source=None if data == "hub" else data)


TASKS: dict[str, Evaluator] = {"ppl": evaluate_ppl, **{t.alias: benchmark(t) for t in BENCHMARKS.values()}}  # = spec.TASKS
SWEEPABLE = frozenset({"ppl"} | {t.alias for t in BENCHMARKS.values() if t.sweepable})
REPORTED_METRIC: dict[str, str] = {t.alias: t.reported for t in BENCHMARKS.values()}


def evaluate(task: str, model, condition, n: int, seed: int, **options) -> pd.DataFrame | list[pd.DataFrame]:
    """Rows (example, metric, value) of `task` under `condition` (a list of them, one per
    condition, for a `Sweep`; generation tasks take single conditions only).

    `options` go to the task's evaluator (`data=` for benchmarks; `model_name=`, `ppl_source=`,
    `ppl_context=`, `ppl_stride=` for `ppl`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> rows = evaluate("mmlu", model, skip_layer(3), n=2, seed=0)
        >>> list(rows.columns), rows.metric.unique().tolist()
        (['example', 'metric', 'value'], ['acc'])
        >>> sorted(SWEEPABLE)                          # tasks that take a Sweep
        ['arc', 'hellaswag', 'mmlu', 'ppl', 'truthfulqa']
    """
    check_tasks([task])
    return TASKS[task](model, condition, n, seed, **options)
