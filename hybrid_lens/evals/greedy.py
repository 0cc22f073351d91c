"""Greedy generation for generation tasks (lm-eval's `generate_until`): left-padded batches decoded by
`HookedHybrid.generate`'s loop (`decoding.decode`; checked against step-by-step recomputation in the
tests), cut at the first stop string, with an optional condition active in every step.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm
from transformers import LogitsProcessor, StoppingCriteria

from ..decoding import batches_pad, decode
from ..interventions import Condition, as_sweep
from .scoring import NonFiniteError, check_positive, condition_name, max_length_of, padded


@torch.no_grad()
def greedy_until(
    model,
    prompts: Sequence[str],
    until: Sequence[str] = (),
    max_new_tokens: int = 256,
    condition: Condition | None = None,
    batch_size: int = 8,
    use_cache: bool | None = None,
    max_length: int | None = None,
    progress: bool = True,
) -> list[str]:
    """Greedy continuations of `prompts`, cut at the first stop string (lm-eval's `generate_until`).

    The condition is active at every generated step. A row stops at an EOS token, once its text
    contains a stop string, or after `max_new_tokens`; the EOS text is a stop string too. Decoding is
    `HookedHybrid.generate`'s (`decoding.decode`): left-padded batches, the `transformers` cache where
    it is exact for the condition, positions resolved as `generate` resolves them.

    Args:
        use_cache: decode with a KV/state cache where it is exact (fast), or recompute the full
            sequence at each step. None: cache when `cache_safe`; True with a condition that is not
            `cache_safe` is refused.
        max_length: prompts keep their last `max_length - max_new_tokens` tokens (default: the
            config's `max_position_embeddings`).

    Returns:
        One generated string per prompt, in the order of `prompts`, without the stop string.

    Raises:
        NonFiniteError: a step's logits hold inf or NaN (naming the prompts and the condition).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> prompts = ["In the beginning God created the", "And God said"]
        >>> texts = greedy_until(model, prompts, until=[","], max_new_tokens=8, progress=False)
        >>> len(texts), all(isinstance(text, str) and "," not in text for text in texts)
        (2, True)
        >>> ablated = greedy_until(model, prompts, max_new_tokens=8, condition=skip_layer(3), progress=False)
    """
    condition = as_sweep(condition).lone("Generation (each condition changes the generated text)")
    check_positive(max_new_tokens=max_new_tokens, batch_size=batch_size, max_length=max_length)
    if use_cache is None:
        use_cache = condition.cache_safe
    elif use_cache and not condition.cache_safe:
        raise ValueError(f"Condition {condition.name!r} depends on positions or sequence shape; use use_cache=False.")
    tokenizer = model.tokenizer
    eos_text = tokenizer.decode([tokenizer.eos_token_id]) if tokenizer.eos_token_id is not None else ""
    until = list(until) + ([eos_text] if eos_text and eos_text not in until else [])
    max_length = max_length_of(model, max_length)
    encoded = [tokenizer(prompt)["input_ids"] for prompt in prompts]
    if max_length is not None:
        if max_new_tokens >= max_length:
            raise ValueError(f"max_new_tokens ({max_new_tokens}) must be below the maximum length ({max_length}).")
        encoded = [ids[-(max_length - max_new_tokens) :] for ids in encoded]
    order = sorted(range(len(prompts)), key=lambda i: -len(encoded[i]))
    groups = [order] if batches_pad(model) else [[i for i in order if len(encoded[i]) == n]
                                                 for n in sorted({len(ids) for ids in encoded}, reverse=True)]
    batches = [group[i : i + batch_size] for group in groups for i in range(0, len(group), batch_size)]
    texts: list[str] = [""] * len(prompts)
    with condition.apply(model):
        for batch in tqdm(batches, desc="generate", disable=not progress):
            stopper = _Stopper(tokenizer, until, _eos_ids(model), len(batch))
            tokens, mask = padded(model, [encoded[i] for i in batch], side="left")
            try:
                decode(model, tokens, mask, max_new_tokens=max_new_tokens, use_cache=use_cache,
                       pad_token_id=tokenizer.pad_token_id or 0, processors=[_FiniteCheck(stopper)], stopping=[stopper])
            except NonFiniteError as err:
                prompts_hit = sorted(batch[row] for row in err.indices)
                raise NonFiniteError(f"Non-finite logits while generating for prompts {prompts_hit} under condition "
                                     f"{condition_name(condition)!r}: the model produced inf/NaN logits.",
                                     prompts_hit, condition_name(condition)) from None
            for i, text in zip(batch, stopper.texts()):
                texts[i] = text
    return texts


def _eos_ids(model) -> set[int]:
    ids = {model.tokenizer.eos_token_id}
    config_eos = getattr(model.hf_model.generation_config, "eos_token_id", None)
    ids |= set(config_eos) if isinstance(config_eos, (list, tuple)) else {config_eos}
    return ids - {None}


class _Stopper(StoppingCriteria):
    """Collects generated tokens per row and decides when each row is finished (a `transformers`
    stopping criterion: a finished row is padded from then on)."""

    def __init__(self, tokenizer, until: list[str], eos_ids: set[int], rows: int):
        self.tokenizer, self.until, self.eos_ids = tokenizer, until, eos_ids
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.done = [False] * rows

    def __call__(self, input_ids: Tensor, scores: Tensor, **kwargs) -> Tensor:
        active = self.active()
        for row, token in zip(active, input_ids[active, -1].tolist()):
            if token in self.eos_ids:
                self.done[row] = True
                continue
            self.tokens[row].append(token)
            text = self.tokenizer.decode(self.tokens[row], skip_special_tokens=True)
            self.done[row] = any(stop in text for stop in self.until)
        return torch.tensor(self.done, device=input_ids.device)

    def active(self) -> list[int]:
        return [row for row, done in enumerate(self.done) if not done]

    def texts(self) -> list[str]:
        texts = []
        for tokens in self.tokens:
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            for stop in self.until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts


class _FiniteCheck(LogitsProcessor):
    """`NonFiniteError` naming the unfinished rows whose next-token logits hold inf/NaN (their argmax
    would be arbitrary); the logits pass unchanged."""

    def __init__(self, stopper: _Stopper):
        self.stopper = stopper

    def __call__(self, input_ids: Tensor, scores: Float[Tensor, "batch vocab"]) -> Tensor:
        finite = torch.isfinite(scores).all(-1).tolist()
        bad = [row for row in self.stopper.active() if not finite[row]]
        if bad:
            raise NonFiniteError("non-finite logits", bad)
        return scores
