"""HellaSwag (lm-eval `hellaswag`): 10-shot, lm-eval's text preprocessing, endings scored."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ..data import Record, hub_records, local_source, read_records
from ...interventions import as_sweep
from .base import (Doc, TaskResult, multiple_choice_result, run_settings, sampled_prompts,
                   score_choices)

HUB = "Rowan/hellaswag"
BUNDLED = "hellaswag/val_subset.jsonl"
SHOTS = 10


def preprocess(text: str) -> str:
    """lm-eval's cleanup of WikiHow artifacts: " [title]" becomes ". ", other brackets go.

    Examples:
        >>> preprocess("Removing ice from car: [header] How to remove ice [title] Use a scraper.")
        'Removing ice from car: How to remove ice. Use a scraper.'
    """
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(record: Record, index: int) -> Doc:
    """A row with `activity_label`, `ctx_a`, `ctx_b`, `endings` and `label` (hub layout).

    Examples:
        >>> from hybrid_lens.evals.data import Record
        >>> row = {"activity_label": "Baking", "ctx_a": "A man cracks eggs into a bowl.", "ctx_b": "he",
        ...        "endings": ["whisks them.", "paints the wall."], "label": "0"}
        >>> doc = hellaswag_doc(Record(row, "hellaswag.jsonl", 1), index=0)
        >>> doc.text, doc.target
        ('Baking: A man cracks eggs into a bowl. He', 'whisks them.')
    """
    context = record.get("ctx_a") + " " + record.get("ctx_b").capitalize()
    endings = [preprocess(ending) for ending in record.strings("endings")]
    gold = record.get("label", int)
    if not 0 <= gold < len(endings):
        raise record.error("label", f"{gold} is not an index of the {len(endings)} endings")
    return Doc(preprocess(record.get("activity_label") + ": " + context), endings[gold], tuple(endings), gold,
               index=index)


def load_hellaswag(source: str | Path | None = None, split: str = "validation") -> list[Doc]:
    """HellaSwag examples from the hub (None, or another hub path), `"bundled"` (first 100 rows of
    a validation subset), or a local `.jsonl`/`.json` file.

    Examples:
        >>> docs = load_hellaswag("bundled")
        >>> len(docs), len(docs[0].choices), docs[0].gold
        (100, 4, 3)
    """
    path = local_source(source, BUNDLED)
    records = read_records(path) if path else hub_records(source or HUB, None, split)
    return [hellaswag_doc(record, i) for i, record in enumerate(records)]


def hellaswag_prompts(n: int | None = None, shots: int = SHOTS, seed: int = 1234, source: str | Path | None = None,
                      fewshot_source: str | Path | None = None,
                      rows: Sequence[int] | None = None) -> list[tuple[Doc, str]]:
    """(example, prompt) pairs; see `base.sampled_prompts` for where shots come from.

    Examples:
        >>> doc, prompt = hellaswag_prompts(n=1, shots=0, source="bundled")[0]
        >>> prompt
        'Pole vault: Pole vault is a sport where you run with a pole and stop and swing your body. A few women'
    """
    return sampled_prompts("hellaswag", load_hellaswag, BUNDLED, n, shots, seed, source, fewshot_source, rows)


def hellaswag(model, n: int | None = None, shots: int = SHOTS, seed: int = 1234, *, condition=None,
              rows: Sequence[int] | None = None, source: str | Path | None = None,
              fewshot_source: str | Path | None = None, batch_size: int | None = None, max_length: int | None = None,
              progress: bool = True) -> TaskResult:
    """HellaSwag accuracy, `acc` and `acc_norm` (lm-eval: 10 shots, validation split); arguments as
    in `arc_challenge` (`source` None is the hub's `Rowan/hellaswag`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = hellaswag(model, n=4, shots=1, source="bundled", progress=False)
        >>> sorted(result.metrics), result.settings["shots"]
        (['acc', 'acc_norm'], 1)
        >>> swept = hellaswag(model, n=4, shots=1, source="bundled", progress=False,
        ...                   condition=Sweep([skip_layer(0), zero("attn", layers="late")]))
        >>> [r.settings["condition"] for r in swept]
        ['skip_layer', 'attn_zero']
    """
    prompts = hellaswag_prompts(n, shots, seed, source, fewshot_source, rows)
    lls = score_choices("hellaswag", model, prompts, condition, batch_size, max_length, progress)
    return as_sweep(condition).map(lambda c, ll: multiple_choice_result(
        "hellaswag", prompts, ll, ("acc", "acc_norm"), run_settings(len(prompts), shots, seed, source, c)), lls)
