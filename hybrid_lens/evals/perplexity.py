"""Perplexity over long text with strided sliding windows, scored through the hooked model.

The text is tokenized once. Windows of `context_length` tokens start every `stride` tokens; each
window scores only the tokens that no earlier window scored, with the preceding tokens of the
window as context (the standard strided evaluation; `stride == context_length` gives disjoint
windows). Per-window NLL sums are kept for bootstrap statistics.
"""

from __future__ import annotations

import math
import re
from contextlib import nullcontext
from dataclasses import dataclass

import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm


@dataclass
class PerplexityResult:
    """Totals and per-window values (`windows`: example, nll_sum, tokens)."""

    nll_sum: float
    tokens: int
    n_bytes: int
    n_words: int
    windows: pd.DataFrame

    @property
    def mean_nll(self) -> float:
        return self.nll_sum / self.tokens

    @property
    def log_ppl(self) -> float:
        """Natural log of the perplexity (finite even where the perplexity overflows)."""
        return self.mean_nll

    @property
    def ppl(self) -> float:
        """Token perplexity; `inf` beyond float range (see `log_ppl`)."""
        return math.exp(self.mean_nll) if self.mean_nll < 709 else math.inf

    @property
    def bits_per_byte(self) -> float:
        return self.nll_sum / (self.n_bytes * math.log(2))

    @property
    def word_ppl(self) -> float:
        log = self.nll_sum / self.n_words
        return math.exp(log) if log < 709 else math.inf

    def summary(self) -> dict[str, float]:
        return dict(mean_nll=self.mean_nll, log_ppl=self.log_ppl, ppl=self.ppl, tokens=self.tokens,
                    bits_per_byte=self.bits_per_byte, word_ppl=self.word_ppl, windows=len(self.windows))


def window_spans(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of every window.

    No token is scored twice; with `stride < context_length` every token from position 1 on is
    scored, while disjoint windows (`stride == context_length`) leave each window's first token
    unscored, as the plain `transformers` strided evaluation does.
    """
    if not 0 < stride <= context_length:
        raise ValueError(f"Need 0 < stride <= context_length, got stride={stride}, context_length={context_length}.")
    spans, scored_until = [], 1
    for begin in range(0, n_tokens - 1, stride):
        end = min(begin + context_length, n_tokens)
        spans.append((begin, end, max(scored_until, begin + 1)))
        scored_until = end
        if end == n_tokens:
            break
    return spans


@torch.no_grad()
def perplexity(
    model,
    text: str | Int[Tensor, " n"],
    context_length: int = 1024,
    stride: int | None = None,
    condition=None,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = True,
) -> PerplexityResult:
    """Perplexity of `model` on `text` (a string, or token ids `[n]`), optionally under a condition.

    Args:
        context_length: tokens per window. stride: tokens between window starts (default: half
            the context, so every scored token has at least `context_length - stride` of context).
        condition: an `interventions.Condition` active for the whole evaluation.
        max_windows: score only the first windows (for quick studies).
    """
    stride = stride or max(1, context_length // 2)
    if isinstance(text, str):
        ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"][0]
        n_bytes, n_words = len(text.encode("utf-8")), len(re.split(r"\s+", text.strip()))
    else:
        ids, n_bytes, n_words = text, text.numel(), text.numel()
    spans = window_spans(ids.numel(), context_length, stride)[:max_windows]
    if max_windows is not None:  # count bytes and words of the scored prefix only
        fraction = (spans[-1][1] - 1) / (ids.numel() - 1)
        n_bytes, n_words = max(1, round(n_bytes * fraction)), max(1, round(n_words * fraction))
    rows = []
    with condition.apply(model) if condition is not None else nullcontext():
        batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
        for batch in tqdm(batches, desc="perplexity", disable=not progress):
            rows += _score(model, ids, batch, len(rows))
    windows = pd.DataFrame(rows)
    return PerplexityResult(float(windows.nll_sum.sum()), int(windows.tokens.sum()), n_bytes, n_words, windows)


def _score(model, ids: Tensor, spans: list[tuple[int, int, int]], first_index: int) -> list[dict]:
    """Score windows of possibly different lengths as one right-padded batch (exact for causal models)."""
    length = max(end - begin for begin, end, _ in spans)
    tokens = torch.zeros(len(spans), length, dtype=torch.long)
    mask = torch.zeros(len(spans), length, dtype=torch.long)
    for row, (begin, end, _) in enumerate(spans):
        tokens[row, : end - begin] = ids[begin:end]
        mask[row, : end - begin] = 1
    logits = model(tokens.to(model.device), attention_mask=None if bool(mask.all()) else mask.to(model.device))
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2).float(), tokens[:, 1:].to(logits.device),
                                            reduction="none").cpu()
    rows = []
    for row, (begin, end, scored_from) in enumerate(spans):
        scored = nll[row, scored_from - begin - 1 : end - begin - 1]
        rows.append(dict(example=first_index + row, nll_sum=float(scored.sum()), tokens=scored.numel()))
    return rows
