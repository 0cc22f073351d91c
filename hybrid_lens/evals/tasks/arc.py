"""ARC-Challenge (lm-eval `arc_challenge`): 25-shot, "Question: ...\\nAnswer:", answer texts scored."""

from __future__ import annotations

from pathlib import Path

from ..data import Record, hub_records, local_source, read_records
from .base import Doc, TaskResult, multiple_choice_result, run_settings, sampled_prompts, score_choices

HUB = ("allenai/ai2_arc", "ARC-Challenge")
BUNDLED = "arc_challenge/test.jsonl"
SHOTS = 25


def arc_doc(record: Record, index: int) -> Doc:
    """A row in the hub layout (`choices: {text, label}`, `answerKey`) or the flat one
    (`options: [{label, text}]`, `answer`)."""
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
    rows), or a local `.jsonl`/`.json` file."""
    path = local_source(source, BUNDLED)
    records = read_records(path) if path else hub_records(source or HUB[0], HUB[1], split)
    return [arc_doc(record, i) for i, record in enumerate(records)]


def arc_prompts(n: int | None = None, shots: int = SHOTS, seed: int = 1234, source: str | Path | None = None,
                fewshot_source: str | Path | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs; see `base.sampled_prompts` for where shots come from."""
    return sampled_prompts("arc_challenge", load_arc, BUNDLED, n, shots, seed, source, fewshot_source)


def arc_challenge(model, n: int | None = None, shots: int = SHOTS, seed: int = 1234, condition=None,
                  source: str | Path | None = None, fewshot_source: str | Path | None = None, batch_size: int = 16,
                  max_length: int | None = None, progress: bool = True) -> TaskResult:
    """ARC-Challenge accuracy: `acc` (highest loglikelihood) and `acc_norm` (per character).

    Args:
        n: the first `n` examples (None: all). shots: few-shot examples (lm-eval: 25).
        seed: few-shot sampling seed (lm-eval's default 1234). condition: an intervention active
            throughout.
        source: None (hub `allenai/ai2_arc`), `"bundled"`, a local file, or another hub path.
        fewshot_source: where shots come from (default: the hub's train split; for a local file,
            the same file without the example itself).
    """
    prompts = arc_prompts(n, shots, seed, source, fewshot_source)
    lls = score_choices(model, prompts, condition, batch_size, max_length, progress)
    settings = run_settings(len(prompts), shots, seed, source, condition)
    return multiple_choice_result("arc_challenge", prompts, lls, ("acc", "acc_norm"), settings)
