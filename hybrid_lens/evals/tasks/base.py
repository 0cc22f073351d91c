"""What the benchmarks share: examples in lm-eval's terms, few-shot prompts, scoring, results."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..data import local_source
from ..scoring import choice_metrics, loglikelihoods

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
    """

    task: str
    examples: pd.DataFrame
    metric_names: tuple[str, ...]
    settings: dict[str, Any]

    @property
    def metrics(self) -> dict[str, float]:
        return {name: float(self.examples[name].mean()) for name in self.metric_names}

    def long(self) -> pd.DataFrame:
        """Rows `(example, metric, value)`, the layout the study store keeps."""
        return self.examples.melt(id_vars="example", value_vars=list(self.metric_names), var_name="metric")


def fewshot_context(doc: Doc, shots: Sequence[Doc], description: str = "") -> str:
    """lm-eval's plain-text prompt: description, then each shot as `text + " " + target + "\\n\\n"`,
    then the example's text (its answer is the scored or generated continuation)."""
    examples = "".join(shot.text + TARGET_DELIMITER + shot.target + FEWSHOT_DELIMITER for shot in shots)
    return description + examples + doc.text


def random_shots(docs: Sequence[Doc], pool: Sequence[Doc], k: int, seed: int,
                 pool_is_eval_split: bool) -> list[list[Doc]]:
    """lm-eval's default sampler: one `random.Random(seed)` drawing `k` shots per example in order.

    When the pool is the evaluated split itself, `k + 1` are drawn and the example is removed from
    them, as lm-eval does, so no example is its own shot.
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


def first_n(docs: list, n: int | None) -> list:
    """The first `n` examples (all for None), as lm-eval's `--limit`."""
    if n is not None and n < 1:
        raise ValueError(f"n must be at least 1 (or None for all), got {n}.")
    return docs if n is None else docs[:n]


def check_shots(shots: int, available: int, task: str) -> None:
    if not 0 <= shots <= available:
        raise ValueError(f"{task}: shots must be between 0 and {available}, got {shots}.")


def sampled_prompts(task: str, load: Callable[..., list[Doc]], bundled: str, n: int | None, shots: int, seed: int,
                    source, fewshot_source) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs with shots drawn as lm-eval draws them (seeded, in example order):
    from `fewshot_source` if given; on the hub from the train split; for a local file from the same
    file without the example itself (lm-eval's rule when the few-shot split is the evaluated one)."""
    everything = load(source)
    docs = first_n(everything, n)
    if fewshot_source is not None:
        pool, same = load(fewshot_source), False
    elif local_source(source, bundled) is None:
        pool, same = load(source, "train"), False
    else:
        pool, same = everything, True
    check_shots(shots, len(pool) - same, task)
    return [(doc, fewshot_context(doc, drawn)) for doc, drawn in zip(docs, random_shots(docs, pool, shots, seed, same))]


def score_choices(model, prompts: Sequence[tuple[Doc, str]], condition, batch_size: int, max_length: int | None,
                  progress: bool) -> list[list[float]]:
    """Loglikelihood of every choice of every example, `" " + choice` after its prompt, in one
    batched pass (choices of one example and examples of a batch run together)."""
    requests = [(context, TARGET_DELIMITER + choice) for doc, context in prompts for choice in doc.choices]
    flat = loglikelihoods(model, requests, condition, batch_size, max_length, progress)
    out, start = [], 0
    for doc, _ in prompts:
        out.append(flat[start : start + len(doc.choices)])
        start += len(doc.choices)
    return out


def multiple_choice_result(task: str, prompts: Sequence[tuple[Doc, str]], lls: list[list[float]],
                           metric_names: tuple[str, ...], settings: dict[str, Any]) -> TaskResult:
    """Per-example acc / acc_norm rows (lm-eval's definitions) and the loglikelihoods behind them."""
    rows = [dict(example=doc.index, gold=doc.gold, **choice_metrics(ll, doc.choices, doc.gold), loglikelihoods=ll)
            for (doc, _), ll in zip(prompts, lls)]
    return TaskResult(task, pd.DataFrame(rows), metric_names, settings)


def run_settings(n: int, shots: int, seed: int | None, source, condition, **extra) -> dict[str, Any]:
    """What a result was computed with, kept beside its scores."""
    return dict(n=n, shots=shots, seed=seed, source=str(source or "hub"),
                condition="" if condition is None else condition.name, **extra)
