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

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from .scoring import last_logprobs


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

    @property
    def log10_ppl(self) -> float:
        """Base-10 log of the perplexity: 6.23 for 1.7 million, readable where `ppl` overflows."""
        return self.mean_nll / math.log(10)

    def summary(self) -> dict[str, float]:
        return dict(mean_nll=self.mean_nll, log_ppl=self.log_ppl, log10_ppl=self.log10_ppl, ppl=self.ppl,
                    tokens=self.tokens, bits_per_byte=self.bits_per_byte, word_ppl=self.word_ppl,
                    windows=len(self.windows))


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
    bad = windows.index[~np.isfinite(windows.nll_sum)].tolist()
    if bad:
        raise FloatingPointError(f"Non-finite NLL in windows {bad[:10]}: the model produced inf/NaN logits"
                                 f"{' under this condition' if condition is not None else ''}.")
    return PerplexityResult(float(windows.nll_sum.sum()), int(windows.tokens.sum()), n_bytes, n_words, windows)


def _score(model, ids: Tensor, spans: list[tuple[int, int, int]], first_index: int) -> list[dict]:
    """NLL sums of windows of possibly different lengths, run as one right-padded batch (exact for
    every mixer); only the scored positions are projected onto the vocabulary."""
    counts = [end - scored_from for _, end, scored_from in spans]
    inputs = [ids[begin : end - 1].tolist() for begin, end, _ in spans]  # the last token is only a target
    rows = []
    for row, ((_, end, scored_from), logprobs) in enumerate(zip(spans, last_logprobs(model, inputs, counts))):
        targets = ids[scored_from:end].to(logprobs.device)[:, None]
        rows.append(dict(example=first_index + row, nll_sum=float(-logprobs.gather(-1, targets).sum()),
                         tokens=end - scored_from))
    return rows


@dataclass
class PaperPerplexity:
    """The single-pass measurement of the ablation paper's notebook (see `paper_perplexity`)."""

    raw_loss: float
    tokens: int
    clamp: float

    @property
    def loss(self) -> float:
        """Mean token cross-entropy, clamped at `clamp` as the paper did."""
        return min(self.raw_loss, self.clamp)

    @property
    def ppl(self) -> float:
        return math.exp(self.loss) if self.loss < 709 else math.inf

    @property
    def clamped(self) -> bool:
        return self.raw_loss > self.clamp


@torch.no_grad()
def paper_perplexity(model, text: str, max_chars: int = 50_000, max_tokens: int = 8192, clamp: float = 20.0,
                     condition=None) -> PaperPerplexity:
    """Perplexity as the ablation paper's notebook measured it: one forward pass over the first
    `max_chars` characters (they used WikiText-2 validation), cut to `max_tokens` tokens (they used
    1024 for Falcon-H1 without kernels), mean cross-entropy clamped at `clamp` (so ppl <= e^20).

    Use `perplexity` for comparable numbers; this mode exists to reproduce the published ratios,
    which depend on the window and the clamp (report both).
    """
    tokens = model.tokenizer(text[:max_chars], return_tensors="pt")["input_ids"][:, :max_tokens].to(model.device)
    with condition.apply(model) if condition is not None else nullcontext():
        logits = model(tokens)
    loss = float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]))
    if not math.isfinite(loss):
        raise FloatingPointError("Non-finite loss: the model produced inf/NaN logits"
                                 f"{' under this condition' if condition is not None else ''}.")
    return PaperPerplexity(loss, tokens.shape[1] - 1, clamp)
