"""The five benchmarks, formatted and scored as lm-evaluation-harness does, under any condition."""

from __future__ import annotations

from collections.abc import Callable

from .arc import arc_challenge, arc_prompts, load_arc
from .base import Doc, TaskResult, fewshot_context
from .gsm8k import extract_flexible, extract_strict, gsm8k_cot, gsm8k_prompts, load_gsm8k
from .hellaswag import hellaswag, hellaswag_prompts, load_hellaswag
from .mmlu import load_mmlu, mmlu, mmlu_prompts
from .truthfulqa import load_truthfulqa, mc2_score, truthfulqa_mc, truthfulqa_prompts

TASKS: dict[str, Callable[..., TaskResult]] = {
    "mmlu": mmlu, "arc_challenge": arc_challenge, "hellaswag": hellaswag, "truthfulqa_mc": truthfulqa_mc,
    "gsm8k_cot": gsm8k_cot,
}


def evaluate(model, task: str, **options) -> TaskResult:
    """Run one task by name (`mmlu`, `arc_challenge`, `hellaswag`, `truthfulqa_mc`, `gsm8k_cot`);
    `options` go to that task's function (n, shots, seed, condition, source, batch_size, ...).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = evaluate(model, "arc_challenge", n=2, shots=0, source="bundled", progress=False)
        >>> result.task, sorted(result.metrics)
        ('arc_challenge', ['acc', 'acc_norm'])
        >>> sorted(TASKS)
        ['arc_challenge', 'gsm8k_cot', 'hellaswag', 'mmlu', 'truthfulqa_mc']
    """
    if task not in TASKS:
        raise ValueError(f"Unknown task {task!r}; choose one of {sorted(TASKS)}.")
    return TASKS[task](model, **options)


__all__ = [
    "TASKS", "Doc", "TaskResult", "arc_challenge", "arc_prompts", "evaluate", "extract_flexible", "extract_strict",
    "fewshot_context", "gsm8k_cot", "gsm8k_prompts", "hellaswag", "hellaswag_prompts", "load_arc", "load_gsm8k",
    "load_hellaswag", "load_mmlu", "load_truthfulqa", "mc2_score", "mmlu", "mmlu_prompts", "truthfulqa_mc",
    "truthfulqa_prompts",
]
