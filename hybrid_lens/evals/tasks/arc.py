"""ARC-Challenge (lm-eval `arc_challenge`): 25-shot, "Question: ...\\nAnswer:", answer texts scored."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from ..data import Record, hub_records, local_source, read_records
from ...interventions import as_sweep
from .base import (Doc, TaskResult, multiple_choice_result, run_settings, sampled_prompts,
                   score_choices)

HUB = ("allenai/ai2_arc", "ARC-Challenge")
BUNDLED = "arc_challenge/test.jsonl"
SHOTS = 25


def arc_doc(record: Record, index: int) -> Doc:
    """A row in the hub layout (`choices: {text, label}`, `answerKey`) or the flat one
    (`options: [{label, text}]`, `answer`).

    Examples:
        >>> from hybrid_lens.evals.data import Record
        >>> row = {"question": "Which is a gas at room temperature?", "answerKey": "B",
        ...        "choices": {"text": ["iron", "oxygen", "salt"], "label": ["A", "B", "C"]}}
        >>> doc = arc_doc(Record(row, "arc.jsonl", 1), index=0)
        >>> doc.text, doc.choices[doc.gold]
        ('Question: Which is a gas at room temperature?\\nAnswer:', 'oxygen')
    """
    if "choices" in record.data:
        texts, labels, key = record.strings("choices.text"), record.strings("choices.label"), record.get("answerKey")
    else:
        options = record.get("options", list)
        if not all(isinstance(o, dict) and isinstance(o.get("text"), str) and "label" in o for o in options):
            raise record.error("options", "should be a list of {label, text} objects")
        texts, labels, key = [o["text"] for o in options], [str(o["label"]) for o in options], record.get("answer")
    if key not in labels:
        raise record.error("answerKey" if "choices" in record.data else "answer", f"{key!r} is not one of {labels}")
    question = record.get("question")
    gold = labels.index(key)
    return Doc(f"Question: {question}\nAnswer:", texts[gold], tuple(texts), gold, index=index)


def load_arc(source: str | Path | None = None, split: str = "test") -> list[Doc]:
    """ARC-Challenge examples from the hub (None, or another hub path), `"bundled"` (first 100 test
    rows), or a local `.jsonl`/`.json` file.

    Examples:
        >>> docs = load_arc("bundled")
        >>> len(docs), docs[0].choices[docs[0].gold]
        (100, 'Planetary days will become shorter.')
        >>> hub = load_arc()                         # allenai/ai2_arc, needs network  # doctest: +SKIP
    """
    path = local_source(source, BUNDLED)
    records = read_records(path) if path else hub_records(source or HUB[0], HUB[1], split)
    return [arc_doc(record, i) for i, record in enumerate(records)]


def arc_prompts(n: int | None = None, shots: int = SHOTS, seed: int = 1234, source: str | Path | None = None,
                fewshot_source: str | Path | None = None, rows: Sequence[int] | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs; see `base.sampled_prompts` for where shots come from.

    Examples:
        >>> prompts = arc_prompts(n=2, shots=1, source="bundled")
        >>> doc, prompt = prompts[0]
        >>> print(prompt)
        Question: A polished metal ball looks very shiny and bright on a sunny day. What makes the ball look shiny?
        Answer: The ball reflects light.
        <BLANKLINE>
        Question: An astronomer observes that a planet rotates faster after a meteorite impact. Which is the
        most likely effect of this increase in rotation?
        Answer:
    """
    return sampled_prompts("arc_challenge", load_arc, BUNDLED, n, shots, seed, source, fewshot_source, rows)


def arc_challenge(model, n: int | None = None, shots: int = SHOTS, seed: int = 1234, *, condition=None,
                  rows: Sequence[int] | None = None, source: str | Path | None = None,
                  fewshot_source: str | Path | None = None, batch_size: int | None = None, max_length: int | None = None,
                  progress: bool = True) -> TaskResult:
    """ARC-Challenge accuracy: `acc` (highest loglikelihood) and `acc_norm` (per character).

    Args:
        n: the first `n` examples (None: all). shots: few-shot examples (lm-eval: 25).
        rows: row indices to score instead (a list or range; exclusive with `n`).
        seed: few-shot sampling seed (lm-eval's default 1234). condition: an intervention active
            throughout, or a `Sweep` (then a list of results, one per condition).
        source: None (hub `allenai/ai2_arc`), `"bundled"`, a local file, or another hub path.
        fewshot_source: where shots come from (default: the hub's train split; for a local file,
            the same file without the example itself).

    Returns:
        A `TaskResult` with metrics `acc` and `acc_norm`; for a `Sweep`, one per condition.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = arc_challenge(model, n=4, shots=1, source="bundled", progress=False)
        >>> sorted(result.metrics), len(result.examples)
        (['acc', 'acc_norm'], 4)
        >>> swept = arc_challenge(model, n=4, shots=1, source="bundled", progress=False,
        ...                       condition=Sweep([skip_layer(0), zero("attn", layers="late")]))
        >>> [r.settings["condition"] for r in swept]
        ['skip_layer', 'attn_zero']
        >>> full = arc_challenge(model, source="bundled")    # 25-shot, all 100 rows  # doctest: +SKIP
    """
    prompts = arc_prompts(n, shots, seed, source, fewshot_source, rows)
    lls = score_choices("arc_challenge", model, prompts, condition, batch_size, max_length, progress)
    return as_sweep(condition).map(lambda c, ll: multiple_choice_result(
        "arc_challenge", prompts, ll, ("acc", "acc_norm"), run_settings(len(prompts), shots, seed, source, c)), lls)
