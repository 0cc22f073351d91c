"""Perplexity over long text with strided sliding windows, scored through the hooked model.

The text is tokenized once. Windows of `context_length` tokens start every `stride` tokens; each
window scores only the tokens that no earlier window scored, with the preceding tokens of the
window as context (the standard strided evaluation; `stride == context_length` gives disjoint
windows). Per-window NLL sums are kept for bootstrap statistics.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from jaxtyping import Int
from torch import Tensor
from tqdm.auto import tqdm

from ..interventions import Condition, Sweep, as_sweep
from .scoring import NonFiniteError, check_positive, condition_name, last_logprobs


def exp_or_inf(log: float) -> float:
    """`exp(log)`, or `inf` beyond float range (for perplexities and ratios whose log is kept beside).

    Examples:
        >>> exp_or_inf(0.0), exp_or_inf(1000.0)
        (1.0, inf)
    """
    return math.exp(log) if log < 709 else math.inf


@dataclass
class PerplexityResult:
    """Totals and per-window values of a `perplexity` run.

    Attributes:
        nll_sum: summed negative log-likelihood (nats) of every scored token.
        tokens: how many tokens were scored.
        n_bytes: UTF-8 bytes of exactly the scored tokens' text (for `bits_per_byte`).
        n_words: words of the scored tokens' text, counted as lm-eval's wikitext task counts them,
            `len(re.split(r"\\s+", text))` without stripping (for `word_ppl`).
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
        return exp_or_inf(self.mean_nll)

    @property
    def bits_per_byte(self) -> float:
        """Summed NLL in bits per UTF-8 byte of the text (comparable across tokenizers)."""
        return self.nll_sum / (self.n_bytes * math.log(2))

    @property
    def word_ppl(self) -> float:
        """Perplexity per whitespace-separated word; `inf` beyond float range."""
        return exp_or_inf(self.nll_sum / self.n_words)

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
    *,
    condition: Condition | Sweep | None = None,
    batch_size: int = 8,
    max_windows: int | None = None,
    progress: bool = True,
) -> PerplexityResult | list[PerplexityResult]:
    """Perplexity of `model` on `text` (a string, or token ids `[n]`), optionally under a condition.

    Args:
        context_length: tokens per window (at least 2). stride: tokens between window starts
            (default: half the context, so every scored token has at least `context_length - stride`
            of context).
        condition: an `interventions.Condition` active for the whole evaluation, or a `Sweep`
            (then one result per condition, from batched forward passes with prefix reuse).
        max_windows: score only the first windows (for quick studies).

    The first token has no context and is not scored; bytes and words are those of the scored
    tokens' text (for token ids, both count tokens).

    Returns:
        A `PerplexityResult`; for a `Sweep`, one per condition in the sweep's order.

    Raises:
        ValueError: a text under two tokens, or a non-positive length, stride, batch or window count.
        NonFiniteError: the model produced inf/NaN log-probabilities (naming windows and condition).

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
    check_positive(context_length=context_length, stride=stride, batch_size=batch_size, max_windows=max_windows)
    stride = stride or max(1, context_length // 2)
    if isinstance(text, str):
        encoding = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=model.tokenizer.is_fast)
        ids = torch.tensor(encoding["input_ids"], dtype=torch.long)
    else:
        ids = text
    if context_length < 2 or ids.ndim != 1 or ids.numel() < 2:
        raise ValueError(f"perplexity needs context_length >= 2 (got {context_length}) and a text of at least 2 tokens "
                         f"(got {tuple(ids.shape)} token ids): the first token is only context.")
    spans = window_spans(ids.numel(), context_length, stride)[:max_windows]
    if isinstance(text, str):
        n_bytes, n_words = scored_text_counts(model.tokenizer, text, encoding, spans[0][2], spans[-1][1])
    else:
        n_bytes = n_words = spans[-1][1] - spans[0][2]
    sweep = as_sweep(condition)
    rows: list[list[dict]] = [[] for _ in sweep.conditions]
    batches = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    for batch in tqdm(batches, desc="perplexity", disable=not progress):
        for condition_rows, scored in zip(rows, _score(model, ids, batch, len(rows[0]), sweep)):
            condition_rows += scored
    return sweep.unwrap([_result(pd.DataFrame(r), n_bytes, n_words, c) for r, c in zip(rows, sweep.conditions)])


def scored_text_counts(tokenizer, text: str, encoding, first: int, end: int) -> tuple[int, int]:
    """(UTF-8 bytes, words) of the text of tokens `first..end-1` of `text`: from the end of token
    `first - 1` to the end of token `end - 1` (the text's end for its last token), so whitespace
    belongs to the token after it. Words are counted as lm-eval's wikitext task counts them.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> text = "In the beginning God created"
        >>> encoding = model.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        >>> len(encoding["input_ids"]), scored_text_counts(model.tokenizer, text, encoding, 1, 5)   # " the beginning God created"
        (5, (26, 5))
    """
    if "offset_mapping" in encoding:
        offsets = encoding["offset_mapping"]
        scored = text[offsets[first - 1][1] : len(text) if end == len(offsets) else offsets[end - 1][1]]
    else:
        scored = tokenizer.decode(encoding["input_ids"][first:end])
    return len(scored.encode("utf-8")), len(re.split(r"\s+", scored))


def _result(windows: pd.DataFrame, n_bytes: int, n_words: int, condition) -> PerplexityResult:
    bad = windows.example[~np.isfinite(windows.nll_sum)].tolist()
    if bad:
        raise NonFiniteError(f"perplexity: non-finite NLL in windows {bad[:10]} under condition "
                             f"{condition_name(condition)!r}: the model produced inf/NaN logits; no score is computed.",
                             bad, condition_name(condition))
    return PerplexityResult(float(windows.nll_sum.sum()), int(windows.tokens.sum()), n_bytes, n_words, windows)


def _score(model, ids: Tensor, spans: list[tuple[int, int, int]], first_index: int, sweep: Sweep) -> list[list[dict]]:
    """NLL sums of windows of possibly different lengths, run as one right-padded batch (exact for
    every mixer); only the scored positions are projected onto the vocabulary. One list of rows
    per condition of `sweep`."""
    counts = [end - scored_from for _, end, scored_from in spans]
    inputs = [ids[begin : end - 1].tolist() for begin, end, _ in spans]  # the last token is only a target
    rows = []
    for condition_logprobs in last_logprobs(model, inputs, counts, sweep):
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
        return exp_or_inf(self.loss)

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
    with as_sweep(condition).lone("paper_perplexity").apply(model):
        logits = model(tokens)
    loss = float(torch.nn.functional.cross_entropy(logits[0, :-1].float(), tokens[0, 1:]))
    if not math.isfinite(loss):
        raise NonFiniteError(f"paper_perplexity: non-finite loss under condition {condition_name(condition)!r}: the "
                             "model produced inf/NaN logits.", [0], condition_name(condition))
    return PaperPerplexity(loss, tokens.shape[1] - 1, clamp)
