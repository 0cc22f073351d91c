"""What the benchmarks share: examples in lm-eval's terms, few-shot prompts, scoring, results."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ...checks import is_int
from ..data import local_source
from ...interventions import as_sweep
from ..scoring import NonFiniteError, check_positive, choice_metrics, loglikelihoods

TARGET_DELIMITER = " "
FEWSHOT_DELIMITER = "\n\n"


@dataclass(frozen=True)
class Doc:
    """One example in lm-eval's terms.

    Attributes:
        text: the prompt of this example (lm-eval's `doc_to_text`).
        target: its answer as written after the prompt in a few-shot example (`doc_to_target`).
        choices: the continuations scored for a multiple-choice example (without the delimiter).
        gold: index of the correct choice.
        labels: per choice, 1 if it is true (TruthfulQA MC2).
        group: the MMLU subject (selects the header and the few-shot pool).
        index: the example's row in its source, 0-based (not part of equality, as in lm-eval).

    Examples:
        >>> doc = Doc("Question: What do plants need to make food?\\nAnswer:", "sunlight",
        ...           choices=("sand", "sunlight", "salt"), gold=1)
        >>> doc.choices[doc.gold]
        'sunlight'
        >>> from hybrid_lens.evals.tasks import load_arc
        >>> load_arc("bundled")[0].gold                  # a bundled ARC-Challenge example
        2
    """

    text: str
    target: str
    choices: tuple[str, ...] = ()
    gold: int = 0
    labels: tuple[int, ...] = ()
    group: str = ""
    index: int = field(default=0, compare=False)


@dataclass
class TaskResult:
    """Scores of one task: per-example rows (kept for bootstrap) and their means.

    `examples` has one row per example: `example` (its `Doc.index`), the metric columns named in
    `metric_names`, and task details (predictions, loglikelihoods, generations).

    Attributes:
        task: the lm-eval task name, e.g. `arc_challenge`.
        examples: the per-example table described above.
        metric_names: the metric columns of `examples`, e.g. `("acc", "acc_norm")`.
        settings: what the result was computed with (n, shots, seed, source, condition, ...).
        requests: exactly what was scored, one row per request: `example`, `context` and
            `continuation` (loglikelihood tasks; the continuation starts with its delimiter) or
            `until` (the stop strings of a generation task).

    Examples:
        >>> from hybrid_lens.evals import arc_challenge
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = arc_challenge(model, n=4, shots=1, source="bundled", progress=False)
        >>> result.task, result.metric_names, len(result.examples)
        ('arc_challenge', ('acc', 'acc_norm'), 4)
        >>> result.settings
        {'n': 4, 'shots': 1, 'seed': 1234, 'source': 'bundled', 'condition': ''}
        >>> result.requests.columns.tolist(), len(result.requests)      # 4 examples x 4 choices
        (['example', 'context', 'continuation'], 16)
    """

    task: str
    examples: pd.DataFrame
    metric_names: tuple[str, ...]
    settings: dict[str, Any]
    requests: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def metrics(self) -> dict[str, float]:
        """Each metric of `metric_names` averaged over the examples, e.g. `{"acc": 0.31, "acc_norm": 0.34}`."""
        return {name: float(self.examples[name].mean()) for name in self.metric_names}

    def long(self) -> pd.DataFrame:
        """Rows `(example, metric, value)`, the layout the study store keeps.

        Examples:
            >>> from hybrid_lens.evals import arc_challenge
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> rows = arc_challenge(model, n=4, shots=1, source="bundled", progress=False).long()
            >>> list(rows.columns), len(rows)            # 4 examples x (acc, acc_norm)
            (['example', 'metric', 'value'], 8)
        """
        return self.examples.melt(id_vars="example", value_vars=list(self.metric_names), var_name="metric")


@dataclass(frozen=True)
class Task:
    """A benchmark of the registry (`TASKS`): its function and what callers need to know about it.

    Calling a `Task` calls its function (same signature), e.g. `TASKS["mmlu"](model, n=10)`.

    Attributes:
        name: the lm-eval task name, e.g. `arc_challenge`.
        run: the task function, `run(model, n, ..., condition=..., source=..., progress=...) -> TaskResult`.
        alias: the short name the study uses, e.g. `arc`.
        metrics: the metrics of its `TaskResult`.
        reported: the metric a report shows (lm-eval's headline metric for the task).
        shots: default few-shot examples (0 for a fixed prompt).
        seeded: it takes a `seed` (few-shot sampling).
        sweepable: it takes a `Sweep` (scored by loglikelihood, so conditions can share forward
            passes); generation tasks take one condition at a time.

    Examples:
        >>> from hybrid_lens.evals.tasks import TASKS
        >>> arc = TASKS["arc_challenge"]
        >>> arc.alias, arc.reported, arc.shots, arc.seeded, arc.sweepable
        ('arc', 'acc_norm', 25, True, True)
        >>> TASKS["gsm8k_cot"].sweepable, TASKS["truthfulqa_mc"].seeded
        (False, False)
    """

    name: str
    run: Callable[..., TaskResult]
    alias: str
    metrics: tuple[str, ...]
    reported: str
    shots: int
    seeded: bool = True
    sweepable: bool = True

    def __call__(self, model, *args, **options) -> TaskResult | list[TaskResult]:
        return self.run(model, *args, **options)

    @property
    def __signature__(self) -> inspect.Signature:
        """The task function's signature (so `inspect.signature(task)` shows its options)."""
        return inspect.signature(self.run)

    def long(self, model, seed: int | None = None, **options) -> pd.DataFrame | list[pd.DataFrame]:
        """Rows `(example, metric, value)` of `self(model, **options)` (`TaskResult.long`; one table
        per condition for a `Sweep`); `seed` goes only to a `seeded` task.

        Examples:
            >>> from hybrid_lens.evals.tasks import TASKS
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> rows = TASKS["truthfulqa_mc"].long(model, seed=0, n=2, source="bundled", progress=False)
            >>> rows.metric.unique().tolist(), len(rows)
            (['mc1', 'mc2'], 4)
        """
        if self.seeded and seed is not None:
            options["seed"] = seed
        return as_sweep(options.get("condition")).map(lambda _, result: result.long(), self(model, **options))


def fewshot_context(doc: Doc, shots: Sequence[Doc], description: str = "") -> str:
    """lm-eval's plain-text prompt: description, then each shot as `text + " " + target + "\\n\\n"`,
    then the example's text (its answer is the scored or generated continuation).

    Examples:
        >>> shot = Doc("Q: 2 + 2?\\nA:", "4")
        >>> fewshot_context(Doc("Q: 3 + 3?\\nA:", "6"), [shot], description="Arithmetic.\\n\\n")
        'Arithmetic.\\n\\nQ: 2 + 2?\\nA: 4\\n\\nQ: 3 + 3?\\nA:'
    """
    examples = "".join(shot.text + TARGET_DELIMITER + shot.target + FEWSHOT_DELIMITER for shot in shots)
    return description + examples + doc.text


def random_shots(docs: Sequence[Doc], pool: Sequence[Doc], k: int, seed: int,
                 pool_is_eval_split: bool) -> list[list[Doc]]:
    """lm-eval's default sampler: one `random.Random(seed)` drawing `k` shots per example in order.

    When the pool is the evaluated split itself, `k + 1` are drawn and the example is removed from
    them, as lm-eval does, so no example is its own shot.

    Returns:
        One list of `k` shots per example of `docs`.

    Examples:
        >>> from hybrid_lens.evals.tasks import load_arc
        >>> docs = load_arc("bundled")
        >>> shots = random_shots(docs[:3], docs, k=2, seed=1234, pool_is_eval_split=True)
        >>> [len(drawn) for drawn in shots], any(docs[0] in drawn for drawn in shots[:1])
        ([2, 2, 2], False)
    """
    rnd = random.Random(seed)
    shots = []
    for doc in docs:
        if k == 0:
            shots.append([])
        elif pool_is_eval_split:
            drawn = [d for d in rnd.sample(list(pool), k + 1) if d != doc][:k]
            shots.append(drawn if len(drawn) == k else rnd.sample([d for d in pool if d != doc], k))
        else:
            shots.append(rnd.sample(list(pool), k))
    return shots


def select_rows(docs: list, n: int | None = None, rows: Sequence[int] | None = None,
                index: Callable[[Any], int] = lambda doc: doc.index) -> list:
    """The examples to score: the first `n` (all for None), as lm-eval's `--limit`, or those
    whose row `index(doc)` is in `rows` (a list or range of row indices, in that order).

    Examples:
        >>> docs = [Doc("a", "x", index=0), Doc("b", "y", index=1), Doc("c", "z", index=2)]
        >>> [d.text for d in select_rows(docs, 2)], [d.text for d in select_rows(docs, rows=range(1, 3))]
        (['a', 'b'], ['b', 'c'])
        >>> select_rows(docs, rows=[2, 7])
        Traceback (most recent call last):
        ...
        ValueError: rows [7] do not exist; valid rows: 0-2.
    """
    check_positive(n=n)
    if rows is None:
        return docs if n is None else docs[:n]
    if n is not None:
        raise ValueError(f"Pass n or rows, not both (got n={n} and rows).")
    rows = list(rows) if not isinstance(rows, str) else [rows]
    if not rows or not all(is_int(r) for r in rows):
        raise ValueError(f"rows must be a non-empty list or range of row indices, got {rows!r:.80}.")
    if len(set(rows)) < len(rows):
        raise ValueError(f"rows {sorted({r for r in rows if rows.count(r) > 1})} are repeated; each row is scored once.")
    by_row = {index(doc): doc for doc in docs}
    missing = [r for r in rows if r not in by_row]
    if missing:
        raise ValueError(f"rows {missing[:10]} do not exist; valid rows: {min(by_row)}-{max(by_row)}.")
    return [by_row[r] for r in rows]


def check_shots(shots: int, available: int, task: str) -> None:
    """Raise `ValueError` unless `0 <= shots <= available` (examples in the few-shot pool).

    Examples:
        >>> check_shots(5, 5, "mmlu")
        >>> check_shots(26, 25, "arc_challenge")
        Traceback (most recent call last):
        ...
        ValueError: arc_challenge: shots must be between 0 and 25, got 26.
    """
    if not 0 <= shots <= available:
        raise ValueError(f"{task}: shots must be between 0 and {available}, got {shots}.")


def sampled_prompts(task: str, load: Callable[..., list[Doc]], bundled: str, n: int | None, shots: int, seed: int,
                    source, fewshot_source, rows: Sequence[int] | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs with shots drawn as lm-eval draws them (seeded, in example order):
    from `fewshot_source` if given; on the hub from the train split; for a local file from the same
    file without the example itself (lm-eval's rule when the few-shot split is the evaluated one).

    Examples:
        >>> from hybrid_lens.evals.tasks.arc import BUNDLED, load_arc
        >>> prompts = sampled_prompts("arc_challenge", load_arc, BUNDLED, n=2, shots=1, seed=1234,
        ...                           source="bundled", fewshot_source=None)
        >>> doc, prompt = prompts[0]
        >>> prompt.count("Question:"), prompt.endswith(doc.text)
        (2, True)
    """
    everything = load(source)
    docs = select_rows(everything, n, rows)
    if fewshot_source is not None:
        pool, same = load(fewshot_source), False
    elif local_source(source, bundled) is None:
        pool, same = load(source, "train"), False
    else:
        pool, same = everything, True
    check_shots(shots, len(pool) - same, task)
    return [(doc, fewshot_context(doc, drawn)) for doc, drawn in zip(docs, random_shots(docs, pool, shots, seed, same))]


def choice_requests(prompts: Sequence[tuple[Doc, str]]) -> pd.DataFrame:
    """The loglikelihood requests of multiple-choice examples: `" " + choice` after each prompt.

    Returns:
        Columns `example` (the `Doc.index`), `context`, `continuation`; one row per choice.

    Examples:
        >>> choice_requests([(Doc("Q: 2 + 2? A:", "4", choices=("3", "4"), gold=1, index=7), "Q: 2 + 2? A:")])
           example       context continuation
        0        7  Q: 2 + 2? A:            3
        1        7  Q: 2 + 2? A:            4
    """
    return pd.DataFrame([dict(example=doc.index, context=context, continuation=TARGET_DELIMITER + choice)
                         for doc, context in prompts for choice in doc.choices],
                        columns=["example", "context", "continuation"])


def score_choices(task: str, model, prompts: Sequence[tuple[Doc, str]], condition, batch_size: int | None,
                  max_length: int | None, progress: bool) -> list[list[float]] | list[list[list[float]]]:
    """Loglikelihood of every choice of every example (`choice_requests`), in one batched pass
    (choices of one example and examples of a batch run together).

    Returns `[example][choice]`; for a `Sweep`, `[condition][example][choice]`.

    Raises:
        NonFiniteError: a loglikelihood is inf or NaN; the message names `task`, the condition
            and the examples (`Doc.index`).

    Examples:
        >>> from hybrid_lens.evals.tasks import arc_prompts
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> prompts = arc_prompts(n=2, shots=0, source="bundled")
        >>> lls = score_choices("arc_challenge", model, prompts, None, batch_size=8, max_length=None, progress=False)
        >>> [len(example) for example in lls]            # one loglikelihood per choice
        [4, 4]
        >>> sweep = Sweep([skip_layer(0), skip_layer(7)])
        >>> len(score_choices("arc_challenge", model, prompts, sweep, batch_size=8, max_length=None, progress=False))
        2
    """
    requests = choice_requests(prompts)
    try:
        flat = loglikelihoods(model, list(zip(requests.context, requests.continuation)), condition, batch_size,
                              max_length, progress)
    except NonFiniteError as err:
        examples = sorted(set(requests.example.iloc[err.indices]))
        raise NonFiniteError(f"{task}: non-finite loglikelihoods for examples (rows) {examples[:10]} under condition "
                             f"{err.condition!r}: the model produced inf/NaN logits; no score is computed.",
                             examples, err.condition) from None

    def per_example(values: list[float]) -> list[list[float]]:
        out, start = [], 0
        for doc, _ in prompts:
            out.append(values[start : start + len(doc.choices)])
            start += len(doc.choices)
        return out

    return as_sweep(condition).map(lambda _, values: per_example(values), flat)


def multiple_choice_result(task: str, prompts: Sequence[tuple[Doc, str]], lls: list[list[float]],
                           metric_names: tuple[str, ...], settings: dict[str, Any]) -> TaskResult:
    """Per-example acc / acc_norm rows (lm-eval's definitions) and the loglikelihoods behind them.

    Examples:
        >>> prompts = [(Doc("Q: 2 + 2?\\nA:", "4", choices=("3", "4"), gold=1), "Q: 2 + 2?\\nA:")]
        >>> result = multiple_choice_result("toy", prompts, [[-3.0, -1.0]], ("acc",), {})
        >>> result.metrics
        {'acc': 1.0}
    """
    rows = [dict(example=doc.index, gold=doc.gold, **choice_metrics(ll, doc.choices, doc.gold), loglikelihoods=ll)
            for (doc, _), ll in zip(prompts, lls)]
    return TaskResult(task, pd.DataFrame(rows), metric_names, settings, choice_requests(prompts))


def run_settings(n: int, shots: int, seed: int | None, source, condition, **extra) -> dict[str, Any]:
    """What a result was computed with, kept beside its scores.

    Examples:
        >>> run_settings(100, 25, 1234, "bundled", skip_layer(3), max_new_tokens=256)
        {'n': 100, 'shots': 25, 'seed': 1234, 'source': 'bundled', 'condition': 'skip_layer', 'max_new_tokens': 256}
    """
    return dict(n=n, shots=shots, seed=seed, source=str(source or "hub"),
                condition="" if condition is None else condition.name, **extra)
