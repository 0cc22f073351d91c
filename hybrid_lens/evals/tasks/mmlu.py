"""MMLU (lm-eval `mmlu`): 5-shot from each subject's dev split, per-subject header, answer letters."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

from ..data import Record, hub_records, local_source, read_records
from ..scoring import check_positive
from ...interventions import as_sweep
from .base import (Doc, TaskResult, check_shots, fewshot_context, multiple_choice_result, run_settings,
                   score_choices, select_rows)

HUB = ("cais/mmlu", "all")
BUNDLED = "mmlu"
SHOTS = 5
LETTERS = ("A", "B", "C", "D")


def mmlu_doc(record: Record, subject: str, index: int) -> Doc:
    """A row with `question`, `answer` (0-3) and either `choices` (hub) or `choice0`..`choice3` (CSV).

    Examples:
        >>> from hybrid_lens.evals.data import Record
        >>> row = {"question": "2 + 2 = ?", "choices": ["3", "4", "5", "22"], "answer": 1}
        >>> doc = mmlu_doc(Record(row, "mmlu.jsonl", 1), "elementary_mathematics", index=0)
        >>> print(doc.text)
        2 + 2 = ?
        A. 3
        B. 4
        C. 5
        D. 22
        Answer:
        >>> doc.choices, doc.target
        (('A', 'B', 'C', 'D'), 'B')
    """
    if "choices" in record.data:
        choices = record.strings("choices")
    else:
        choices = [record.get(f"choice{i}") for i in range(4)]
    if len(choices) != 4:
        raise record.error("choices", f"should hold 4 answers, got {len(choices)}")
    answer = record.get("answer", int)
    if not 0 <= answer < 4:
        raise record.error("answer", f"should be 0-3, got {answer}")
    question = record.get("question").strip()
    text = question + "".join(f"\n{letter}. {choice}" for letter, choice in zip(LETTERS, choices)) + "\nAnswer:"
    return Doc(text, LETTERS[answer], LETTERS, answer, group=subject, index=index)


def description(subject: str) -> str:
    """lm-eval's header of an MMLU prompt for `subject`.

    Examples:
        >>> description("high_school_physics")
        'The following are multiple choice questions (with answers) about high school physics.\\n\\n'
    """
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def load_mmlu(source: str | Path | None = None, split: str = "test") -> list[Doc]:
    """MMLU examples of every subject, sorted by subject, from the hub (None, or another hub path
    with the `all` layout), `"bundled"` (all 285 dev rows, 2 test rows per subject), or a local
    folder holding `<split>/<subject>_<split>.csv` files with header `question,choice0..3,answer`.

    Examples:
        >>> docs = load_mmlu("bundled")                  # the test split: 2 rows per subject
        >>> len(docs), docs[0].group
        (114, 'abstract_algebra')
        >>> len(load_mmlu("bundled", "dev"))
        285
    """
    path = local_source(source, BUNDLED)
    if path is None:
        records = hub_records(source or HUB[0], HUB[1], split)
        docs = [mmlu_doc(record, record.get("subject"), i) for i, record in enumerate(records)]
        return sorted(docs, key=lambda doc: doc.group)
    files = sorted((path / split).glob(f"*_{split}.csv"))
    if not files:
        raise FileNotFoundError(f"No {path / split}/<subject>_{split}.csv files.")
    docs = []
    for file in files:
        subject = file.name[: -len(f"_{split}.csv")]
        docs += [mmlu_doc(record, subject, len(docs) + i) for i, record in enumerate(read_records(file))]
    return docs


def mmlu_prompts(n: int | None = None, shots: int = SHOTS, seed: int = 1234, source: str | Path | None = None,
                 subjects: Sequence[str] | None = None, rows: Sequence[int] | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs. Shots are the first `shots` dev rows of the example's subject.

    With `n` below the number of test rows, a seeded random sample of `n` rows (kept in source
    order) stands for the whole set, since the first rows would cover only the first subjects;
    `rows` picks test rows by their index (`Doc.index`) instead.

    Examples:
        >>> prompts = mmlu_prompts(n=3, shots=1, source="bundled", subjects=["astronomy", "virology"])
        >>> [doc.group for doc, _ in prompts]
        ['astronomy', 'virology', 'virology']
        >>> prompts[0][1].startswith("The following are multiple choice questions (with answers) about astronomy.")
        True
    """
    docs = load_mmlu(source, "test")
    if subjects is not None:
        unknown = set(subjects) - {doc.group for doc in docs}
        if unknown:
            raise ValueError(f"Unknown MMLU subjects {sorted(unknown)}.")
        docs = [doc for doc in docs if doc.group in set(subjects)]
    check_positive(n=n)
    if rows is not None:
        docs = select_rows(docs, n, rows)
    elif n is not None and n < len(docs):
        docs = [docs[i] for i in sorted(random.Random(seed).sample(range(len(docs)), n))]
    dev: dict[str, list[Doc]] = {}
    for doc in load_mmlu(source, "dev"):
        dev.setdefault(doc.group, []).append(doc)
    prompts = []
    for doc in docs:
        pool = dev.get(doc.group, [])
        check_shots(shots, len(pool), f"mmlu ({doc.group})")
        prompts.append((doc, fewshot_context(doc, pool[:shots], description(doc.group))))
    return prompts


def mmlu(model, n: int | None = None, shots: int = SHOTS, seed: int = 1234, *, condition=None,
         rows: Sequence[int] | None = None, source: str | Path | None = None, subjects: Sequence[str] | None = None,
         batch_size: int | None = None, max_length: int | None = None, progress: bool = True) -> TaskResult:
    """MMLU accuracy (`acc`, the mean over examples: lm-eval's size-weighted group average).

    Args:
        n: a seeded random sample of `n` test examples (None: all). shots: dev examples per prompt
            (lm-eval: 5). seed: the sampling seed. condition: an intervention active throughout, or a
            `Sweep` (then a list of results, one per condition).
        rows: test rows to score by index (`Doc.index`; exclusive with `n`).
        source: None (hub `cais/mmlu`), `"bundled"`, a local folder, or another hub path.
        subjects: restrict to these subjects (file-name spelling, e.g. `"high_school_physics"`).

    Returns:
        A `TaskResult` with metric `acc` (and a `subject` column); for a `Sweep`, one per condition.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = mmlu(model, n=4, shots=1, source="bundled", progress=False)
        >>> list(result.metrics), list(result.examples.columns[:3])
        (['acc'], ['example', 'subject', 'gold'])
        >>> baseline, ablated = mmlu(model, n=4, shots=1, source="bundled", progress=False,
        ...                          condition=Sweep([Condition(name="baseline"), zero("attn")]))
        >>> baseline.metrics == result.metrics
        True
    """
    prompts = mmlu_prompts(n, shots, seed, source, subjects, rows)
    lls = score_choices("mmlu", model, prompts, condition, batch_size, max_length, progress)

    def build(condition, lls) -> TaskResult:
        settings = run_settings(len(prompts), shots, seed, source, condition)
        result = multiple_choice_result("mmlu", prompts, lls, ("acc",), settings)
        result.examples.insert(1, "subject", [doc.group for doc, _ in prompts])
        return result

    return as_sweep(condition).map(build, lls)
