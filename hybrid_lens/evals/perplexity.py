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

from ..interventions import Condition, Sweep
from .scoring import active_condition, last_logprobs


@dataclass
class PerplexityResult:
    """Totals and per-window values of a `perplexity` run.

    Attributes:
        nll_sum: summed negative log-likelihood (nats) of every scored token.
        tokens: how many tokens were scored.
        n_bytes: UTF-8 bytes of the scored text (for `bits_per_byte`).
        n_words: whitespace-separated words of the scored text (for `word_ppl`).
        windows: one row per window: `example` (window index), `tokens`, `nll_sum`.

    Examples:
        >>> from hybrid_lens import zoo
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> result = perplexity(model, zoo.load_validation_text(), context_length=128, max_windows=4,
        ...                     progress=False)
        >>> result.tokens, len(result.windows)
        (319, 4)
        >>> result.ppl > 1 and result.log_ppl == result.mean_nll
        True
    """

    nll_sum: float
    tokens: int
    n_bytes: int
    n_words: int
    windows: pd.DataFrame

    @property
    def mean_nll(self) -> float:
        """Mean NLL per scored token (nats)."""
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
        """Summed NLL in bits per UTF-8 byte of the text (comparable across tokenizers)."""
        return self.nll_sum / (self.n_bytes * math.log(2))

    @property
    def word_ppl(self) -> float:
        """Perplexity per whitespace-separated word; `inf` beyond float range."""
        log = self.nll_sum / self.n_words
        return math.exp(log) if log < 709 else math.inf

    @property
    def log10_ppl(self) -> float:
        """Base-10 log of the perplexity: 6.23 for 1.7 million, readable where `ppl` overflows."""
        return self.mean_nll / math.log(10)

    def summary(self) -> dict[str, float]:
        """Every aggregate as one flat dict (a row for a results table).

        Examples:
            >>> from hybrid_lens import zoo
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> result = perplexity(model, zoo.load_validation_text(), context_length=128, max_windows=2,
            ...                     progress=False)
            >>> list(result.summary())
            ['mean_nll', 'log_ppl', 'log10_ppl', 'ppl', 'tokens', 'bits_per_byte', 'word_ppl', 'windows']
        """
        return dict(mean_nll=self.mean_nll, log_ppl=self.log_ppl, log10_ppl=self.log10_ppl, ppl=self.ppl,
                    tokens=self.tokens, bits_per_byte=self.bits_per_byte, word_ppl=self.word_ppl,
                    windows=len(self.windows))


def window_spans(n_tokens: int, context_length: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored position) of every window.

    No token is scored twice; with `stride < context_length` every token from position 1 on is
    scored, while disjoint windows (`stride == context_length`) leave each window's first token
    unscored, as the plain `transformers` strided evaluation does.

    Examples:
        >>> window_spans(10, context_length=4, stride=2)
        [(0, 4, 1), (2, 6, 4), (4, 8, 6), (6, 10, 8)]
        >>> window_spans(10, context_length=4, stride=4)      # disjoint windows
        [(0, 4, 1), (4, 8, 5), (8, 10, 9)]
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
    condition: Condition | Sweep | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = True,
) -> PerplexityResult | list[PerplexityResult]:
    """Perplexity of `model` on `text` (a string, or token ids `[n]`), optionally under a condition.

    Args:
        context_length: tokens per window. stride: tokens between window starts (default: half
            the context, so every scored token has at least `context_length - stride` of context).
        condition: an `interventions.Condition` active for the whole evaluation, or a `Sweep`
            (then one result per condition, from batched forward passes with prefix reuse).
        max_windows: score only the first windows (for quick studies).

    Returns:
        A `PerplexityResult`; for a `Sweep`, one per condition in the sweep's order.

    Examples:
        >>> from hybrid_lens import zoo
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> text = zoo.load_validation_text()
        >>> clean = perplexity(model, text, context_length=128, max_windows=4, progress=False)
        >>> clean.tokens, len(clean.windows), clean.ppl > 1
        (319, 4, True)
        >>> ablated = perplexity(model, text, context_length=128, max_windows=4, progress=False,
        ...                      condition=Sweep([zero("ssm"), zero("attn")]))
        >>> [type(result).__name__ for result in ablated]
        ['PerplexityResult', 'PerplexityResult']
        >>> ablated[0].tokens == clean.tokens
        True
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
    sweep = condition if isinstance(condition, Sweep) else None
    rows: list[list[dict]] = [[] for _ in range(len(sweep) if sweep else 1)]
    with active_condition(condition, model):
        batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
        for batch in tqdm(batches, desc="perplexity", disable=not progress):
            for condition_rows, scored in zip(rows, _score(model, ids, batch, len(rows[0]), sweep)):
                condition_rows += scored
    conditions = sweep.conditions if sweep else [condition]
    results = [_result(pd.DataFrame(r), n_bytes, n_words, c) for r, c in zip(rows, conditions)]
    return results if sweep else results[0]


def _result(windows: pd.DataFrame, n_bytes: int, n_words: int, condition) -> PerplexityResult:
    bad = windows.index[~np.isfinite(windows.nll_sum)].tolist()
    if bad:
        raise FloatingPointError(f"Non-finite NLL in windows {bad[:10]}: the model produced inf/NaN logits"
                                 f"{f' under condition {condition.name!r}' if condition is not None else ''}.")
    return PerplexityResult(float(windows.nll_sum.sum()), int(windows.tokens.sum()), n_bytes, n_words, windows)


def _score(model, ids: Tensor, spans: list[tuple[int, int, int]], first_index: int,
           sweep: Sweep | None) -> list[list[dict]]:
    """NLL sums of windows of possibly different lengths, run as one right-padded batch (exact for
    every mixer); only the scored positions are projected onto the vocabulary. One list of rows
    per condition of `sweep` (one list without a sweep)."""
    counts = [end - scored_from for _, end, scored_from in spans]
    inputs = [ids[begin : end - 1].tolist() for begin, end, _ in spans]  # the last token is only a target
    logprobs = last_logprobs(model, inputs, counts, sweep)
    rows = []
    for condition_logprobs in logprobs if sweep else [logprobs]:
        rows.append([dict(example=first_index + row, tokens=end - scored_from,
                          nll_sum=float(-lp.gather(-1, ids[scored_from:end].to(lp.device)[:, None]).sum()))
                     for row, ((_, end, scored_from), lp) in enumerate(zip(spans, condition_logprobs))])
    return rows


@dataclass
class PaperPerplexity:
    """The single-pass measurement of the ablation paper's notebook (see `paper_perplexity`).

    Attributes:
        raw_loss: mean token cross-entropy before the clamp.
        tokens: how many tokens were scored.
        clamp: the loss ceiling (the paper: 20).

    Examples:
        >>> PaperPerplexity(raw_loss=25.3, tokens=1023, clamp=20.0).loss
        20.0
        >>> PaperPerplexity(raw_loss=25.3, tokens=1023, clamp=20.0).clamped
        True
    """

    raw_loss: float
    tokens: int
    clamp: float

    @property
    def loss(self) -> float:
        """Mean token cross-entropy, clamped at `clamp` as the paper did."""
        return min(self.raw_loss, self.clamp)

    @property
    def ppl(self) -> float:
        """`exp(loss)`, at most `exp(clamp)`."""
        return math.exp(self.loss) if self.loss < 709 else math.inf

    @property
    def clamped(self) -> bool:
        """Whether the clamp changed the loss."""
        return self.raw_loss > self.clamp


@torch.no_grad()
def paper_perplexity(model, text: str, max_chars: int = 50_000, max_tokens: int = 8192, clamp: float = 20.0,
                     condition=None) -> PaperPerplexity:
    """Perplexity as the ablation paper's notebook measured it: one forward pass over the first
    `max_chars` characters (they used WikiText-2 validation), cut to `max_tokens` tokens (they used
    1024 for Falcon-H1 without kernels), mean cross-entropy clamped at `clamp` (so ppl <= e^20).

    Use `perplexity` for comparable numbers; this mode exists to reproduce the published ratios,
    which depend on the window and the clamp (report both).

    Examples:
        >>> from hybrid_lens import zoo
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> text = zoo.load_validation_text()
        >>> result = paper_perplexity(model, text, max_chars=2000, max_tokens=256)
        >>> result.tokens, result.clamped
        (255, False)
        >>> removed = paper_perplexity(model, text, max_chars=2000, max_tokens=256, condition=skip_layer([2, 5]))
    """
    tokens = model.tokenizer(text[:max_chars], return_tensors="pt")["input_ids"][:, :max_tokens].to(model.device)
    with condition.apply(model) if condition is not None else nullcontext():
        logits = model(tokens)
    loss = float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]))
    if not math.isfinite(loss):
        raise FloatingPointError("Non-finite loss: the model produced inf/NaN logits"
                                 f"{' under this condition' if condition is not None else ''}.")
    return PaperPerplexity(loss, tokens.shape[1] - 1, clamp)
