"""The five benchmarks, formatted and scored as lm-evaluation-harness does, under any condition."""

from __future__ import annotations

from .arc import SHOTS as ARC_SHOTS, arc_challenge, arc_prompts, load_arc
from .base import Doc, Task, TaskResult, fewshot_context
from .gsm8k import SHOTS as GSM8K_SHOTS, extract_flexible, extract_strict, gsm8k_cot, gsm8k_prompts, load_gsm8k
from .hellaswag import SHOTS as HELLASWAG_SHOTS, hellaswag, hellaswag_prompts, load_hellaswag
from .mmlu import SHOTS as MMLU_SHOTS, load_mmlu, mmlu, mmlu_prompts
from .truthfulqa import load_truthfulqa, mc2_score, truthfulqa_mc, truthfulqa_prompts

TASKS: dict[str, Task] = {task.name: task for task in (
    Task("mmlu", mmlu, "mmlu", ("acc",), "acc", MMLU_SHOTS),
    Task("arc_challenge", arc_challenge, "arc", ("acc", "acc_norm"), "acc_norm", ARC_SHOTS),
    Task("hellaswag", hellaswag, "hellaswag", ("acc", "acc_norm"), "acc_norm", HELLASWAG_SHOTS),
    Task("truthfulqa_mc", truthfulqa_mc, "truthfulqa", ("mc1", "mc2"), "mc1", 0, seeded=False),
    Task("gsm8k_cot", gsm8k_cot, "gsm8k", ("exact_match_strict", "exact_match_flexible"), "exact_match_flexible",
         GSM8K_SHOTS, seeded=False, sweepable=False),
)}


def get_task(name: str) -> Task:
    """The task named `name`: its lm-eval name (a key of `TASKS`) or its short `alias`.

    Examples:
        >>> get_task("arc").name, get_task("arc_challenge").alias
        ('arc_challenge', 'arc')
        >>> get_task("winogrande")
        Traceback (most recent call last):
        ...
        ValueError: Unknown task 'winogrande'; choose one of ['arc_challenge', ...] (or an alias: arc, gsm8k, ...).
    """
    by_alias = {task.alias: task for task in TASKS.values()}
    if name not in TASKS and name not in by_alias:
        raise ValueError(f"Unknown task {name!r}; choose one of {sorted(TASKS)} (or an alias: "
                         f"{', '.join(sorted(by_alias))}).")
    return TASKS.get(name) or by_alias[name]


def evaluate(model, task: str, **options) -> TaskResult | list[TaskResult]:
    """Run one task by name (`mmlu`, `arc_challenge`, `hellaswag`, `truthfulqa_mc`, `gsm8k_cot`, or
    an alias such as `arc`); `options` go to that task's function (n, shots, seed, condition,
    source, batch_size, ...).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = evaluate(model, "arc_challenge", n=2, shots=0, source="bundled", progress=False)
        >>> result.task, sorted(result.metrics)
        ('arc_challenge', ['acc', 'acc_norm'])
        >>> sorted(TASKS)
        ['arc_challenge', 'gsm8k_cot', 'hellaswag', 'mmlu', 'truthfulqa_mc']
    """
    return get_task(task)(model, **options)


__all__ = [
    "TASKS", "Doc", "Task", "TaskResult", "arc_challenge", "arc_prompts", "evaluate", "extract_flexible",
    "extract_strict", "fewshot_context", "get_task", "gsm8k_cot", "gsm8k_prompts", "hellaswag", "hellaswag_prompts",
    "load_arc", "load_gsm8k", "load_hellaswag", "load_mmlu", "load_truthfulqa", "mc2_score", "mmlu", "mmlu_prompts",
    "truthfulqa_mc", "truthfulqa_prompts",
]
