"""Evaluation through the hooked model, with any intervention active: perplexity and the five
benchmarks scored as lm-evaluation-harness scores them."""

from .data import TaskDataError, wikitext2
from .greedy import greedy_until
from .perplexity import PaperPerplexity, PerplexityResult, exp_or_inf, paper_perplexity, perplexity, window_spans
from .scoring import choice_metrics, encode_pair, loglikelihoods
from .tasks import (
    TASKS,
    Task,
    TaskResult,
    arc_challenge,
    evaluate,
    get_task,
    gsm8k_cot,
    hellaswag,
    mmlu,
    truthfulqa_mc,
)

__all__ = [
    "TASKS", "PaperPerplexity", "PerplexityResult", "Task", "TaskDataError", "TaskResult", "arc_challenge",
    "choice_metrics", "encode_pair", "evaluate", "exp_or_inf", "get_task", "greedy_until", "gsm8k_cot",
    "hellaswag", "loglikelihoods", "mmlu", "paper_perplexity", "perplexity", "truthfulqa_mc", "wikitext2",
    "window_spans",
]
