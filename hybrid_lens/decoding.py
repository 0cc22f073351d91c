"""Decoding under hooks: the one generation loop of hybrid-lens (`HookedHybrid.generate`, the nnsight
view's `.generate()`, `evals.greedy_until`).

The loop is `transformers`' own `generate` on the wrapped model, so every family decodes with its own
cache (attention keys and values, the convolution and recurrent states of Gated DeltaNet, Mamba-2 and
every linear mixer) and its own position ids for left padding, and with no hooks gives the very tokens
of `hf_model.generate`. For the call, the model's forward runs each pass in a `ForwardState` that
counts real tokens per row across the cache and knows each row's prompt length, and its logits pass
through `hook_logits`: every hook acts in the prompt pass and in every decoding step.

A pass that continues a cache computes only the new token. That is exact for hooks that act on each
token alone (a plain hook function, or a `Condition` whose intervention is `cache_safe`); when some
hook is not, or an inner point fed by an eager mixer forward is hooked (such as `hook_state`), every
step recomputes the whole sequence instead (`cache_blocker` says why). Selectors resolve positions
the same way in both (`Selector.position_mask`), so the two give the same tokens.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteriaList

from .forward_state import begin, current_state
from .hook_points import cache_safe
from .mixers.taps import forward_of, replace_forward
from .tokens import real_positions

EMBEDS_LEVEL = -271_828  # the TransformerLens hook level of the prompt-embeddings hook (removed by level)


@dataclass(frozen=True)
class Sampling:
    """How the next token is chosen from the logits, as TransformerLens's `sample_logits` chooses it:
    the logits divided by `temperature`, minus `freq_penalty` times each token's count so far (real
    tokens), cut to the `top_k` best or else to the smallest set of probability `top_p`, then sampled.
    Greedy (the argmax of the logits) without `do_sample` or at temperature 0.

    Examples:
        >>> Sampling(do_sample=True, temperature=0.0).greedy
        True
        >>> Sampling(do_sample=True, top_p=1.5)
        Traceback (most recent call last):
        ...
        ValueError: top_p must be in (0, 1], not 1.5.
    """

    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    freq_penalty: float = 0.0

    def __post_init__(self):
        if not _finite(self.temperature) or self.temperature < 0:
            raise ValueError(f"temperature must be a finite number >= 0, not {self.temperature!r}.")
        if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                       or self.top_k < 1):
            raise ValueError(f"top_k must be a positive int or None, not {self.top_k!r}.")
        if self.top_p is not None and not (_finite(self.top_p) and 0 < self.top_p <= 1):
            raise ValueError(f"top_p must be in (0, 1], not {self.top_p!r}.")
        if not _finite(self.freq_penalty):
            raise ValueError(f"freq_penalty must be a finite number, not {self.freq_penalty!r}.")

    @property
    def greedy(self) -> bool:
        """Whether the argmax is taken (no sampling, or temperature 0)."""
        return not self.do_sample or self.temperature == 0

    def filter(self, logits: Float[Tensor, "batch vocab"], counts: Float[Tensor, "batch vocab"]
               ) -> Float[Tensor, "batch vocab"]:
        """The logits sampled from (softmax, then a draw): temperature, frequency penalty, then top-k
        or (without top-k) top-p, whose removed tokens get -inf.

        Args:
            logits: The next-token logits.
            counts: How often each token occurs in each row so far.

        Examples:
            >>> Sampling(True, top_k=2).filter(torch.tensor([[1.0, 3.0, 2.0]]), torch.zeros(1, 3))
            tensor([[-inf, 3., 2.]])
        """
        logits = logits / self.temperature - self.freq_penalty * counts
        if self.top_k is not None:
            kth = logits.topk(min(self.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            return logits.masked_fill(logits < kth, -math.inf)
        if self.top_p is not None:
            ordered, order = logits.sort(dim=-1, descending=True)
            beyond = ordered.softmax(-1).cumsum(-1) > self.top_p
            beyond[..., 1:] = beyond[..., :-1].clone()  # keep the token that crosses top_p
            beyond[..., 0] = False
            return logits.masked_fill(beyond.scatter(-1, order, beyond), -math.inf)
        return logits


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class _Choose(LogitsProcessor):
    """`Sampling.filter` for `transformers`' loop, which then samples from the softmax (greedy decoding
    needs no processor: the loop takes the argmax of the logits)."""

    def __init__(self, sampling: Sampling, prompt_mask: Tensor):
        self.sampling, self.prompt_mask = sampling, prompt_mask

    def __call__(self, input_ids: Tensor, scores: Tensor) -> Tensor:
        real = torch.cat([self.prompt_mask, self.prompt_mask.new_ones(len(input_ids), input_ids.shape[1]
                                                                      - self.prompt_mask.shape[1])], 1)
        counts = torch.zeros_like(scores).scatter_add_(1, input_ids, real.to(scores.dtype))
        return self.sampling.filter(scores, counts)


@dataclass
class Decoded:
    """What `decode` returns.

    Attributes:
        sequences: `Int[Tensor, "batch pos+new"]`, the (left-packed) prompts and their continuations;
            a finished row is continued with the padding token.
        logits: Per step, the next-token logits `Float[Tensor, "batch vocab"]` (with `output_logits`).
        cached: Whether the steps continued a cache (False: each recomputed the whole sequence).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> decoded = decode(model, model.to_tokens("In the beginning"), max_new_tokens=2, output_logits=True)
        >>> decoded.sequences.shape, len(decoded.logits), decoded.cached
        (torch.Size([1, 5]), 2, True)
    """

    sequences: Int[Tensor, "batch pos"]
    logits: tuple[Tensor, ...] | None
    cached: bool


def cache_blocker(model) -> str | None:
    """Why a pass of `model` that continues a KV/state cache would not compute what recomputing the
    whole sequence computes with the hooks attached now (None: it would, so `generate` uses the cache).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> cache_blocker(model) is None
        True
        >>> with model.hooks(fwd_hooks=[("blocks.0.linear_attn.hook_state", lambda state, hook: None)]):
        ...     cache_blocker(model)
        'eager Gated DeltaNet forward (feeding hooked inner points) runs on whole sequences only'
        >>> with noise("attn", 0.1).apply(model):
        ...     cache_blocker(model)
        "blocks.3.hook_attn_out has a hook that is not cache-safe (a Condition's intervention that depends on the whole sequence)"
    """
    for tap in model._wrapping.taps:
        if tap.active and not tap.with_cache:
            return f"{tap.description} (feeding hooked inner points) runs on whole sequences only"
    for name, point in model.hook_dict.items():
        if not cache_safe(point):
            return (f"{name} has a hook that is not cache-safe (a Condition's intervention that depends on the "
                    "whole sequence)")
    return None


def batches_pad(model) -> bool:
    """Whether a left-padded batch of prompts decodes in one call for `model`'s family (else `decode`
    runs the prompts of each length apart).

    Examples:
        >>> batches_pad(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"))
        True
    """
    return model.adapter.left_padding and model.adapter.left_padded_cache


class _Passes:
    """The wrapped model's forward during one generation: each pass runs in a `ForwardState` (real-token
    positions counted across the cache, each row's prompt length), its logits pass `hook_logits`, and it
    ticks `progress` (one pass per new token)."""

    def __init__(self, model, mask: Int[Tensor, "batch pos"], cached: bool, embeds: Tensor | None, progress):
        self.model, self.mask, self.cached, self.embeds, self.progress = model, mask, cached, embeds, progress
        self.prompt_lengths = mask.sum(1)
        self.columns = 0  # columns of the sequence computed so far (in the cache)

    def state(self, ids: Tensor):
        """The state of a pass over `ids` (the whole sequence so far, or the columns after the cache)."""
        new = ids.shape[1]
        total = self.columns + new if self.cached else new
        self.columns = total
        if total == new:  # the whole sequence: its padding is the prompt's
            mask = torch.cat([self.mask, self.mask.new_ones(len(self.mask), total - self.mask.shape[1])], 1)
            positions = real_positions(mask, *mask.shape)[:, -new:]
        else:  # new tokens after the cache (all real): counted on from the real tokens before them
            before = self.prompt_lengths + (total - new - self.mask.shape[1])
            positions = before[:, None] if new == 1 else before[:, None] + torch.arange(new, device=before.device)
        return begin(self.model, ids, None, None, positions=positions, prompt_lengths=self.prompt_lengths)

    @contextmanager
    def installed(self) -> Iterator[None]:
        model = self.model
        previous = forward_of(model.hf_model)

        @functools.wraps(previous)
        def forward(*args, **kwargs):
            state = current_state()
            if state is not None and state.running and state.model is model:  # model(...) called inside a hook
                return previous(*args, **kwargs)
            with self.state(kwargs["input_ids"] if "input_ids" in kwargs else args[0]).active():
                output = previous(*args, **kwargs)
            output.logits = model.hook_logits(output.logits)
            self.progress.update(1)
            return output

        restore = replace_forward(model.hf_model, forward)
        if self.embeds is not None:
            model.hook_embed.add_hook(self._prompt_embeds, prepend=True, level=EMBEDS_LEVEL)
        try:
            yield
        finally:
            restore()
            model.hook_embed.remove_hooks(level=EMBEDS_LEVEL)

    def _prompt_embeds(self, value: Tensor, hook) -> Tensor:
        """In a pass that computes the prompt, the given embeddings enter block 0 at its columns."""
        state = current_state()
        if state is None or state.positions is None or int(state.positions[0, 0]) != 0:
            return value
        value = value.clone()
        value[:, : self.embeds.shape[1]] = self.embeds.to(value.dtype)
        return value


@contextmanager
def _generation_config(hf_model, config: GenerationConfig) -> Iterator[None]:
    """`hf_model` with `config` as its generation config (no default of the checkpoint leaks in)."""
    saved = hf_model.generation_config
    hf_model.generation_config = config
    try:
        yield
    finally:
        hf_model.generation_config = saved


def left_packed(tokens: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """Each row's real tokens moved to the right end (left padding, what decoding needs), keeping
    their order; the padding keeps its ids.

    Examples:
        >>> left_packed(torch.tensor([[5, 6, 0], [7, 8, 9]]), torch.tensor([[1, 1, 0], [1, 1, 1]]))
        (tensor([[0, 5, 6],
                [7, 8, 9]]), tensor([[0, 1, 1],
                [1, 1, 1]]))
    """
    if mask is None:
        return tokens, None
    order = torch.argsort(mask, dim=1, stable=True)  # padding first, real tokens in order after it
    return tokens.gather(1, order), mask.gather(1, order)


@torch.no_grad()
def decode(
    model,
    tokens: Int[Tensor, "batch pos"],
    mask: Int[Tensor, "batch pos"] | None = None,
    *,
    max_new_tokens: int,
    sampling: Sampling = Sampling(),
    eos_token_ids: Sequence[int] = (),
    pad_token_id: int = 0,
    use_cache: bool = True,
    output_logits: bool = False,
    verbose: bool = False,
    embeds: Float[Tensor, "batch pos d_model"] | None = None,
    processors: Sequence[LogitsProcessor] = (),
    stopping: Sequence = (),
) -> Decoded:
    """Continue each prompt by up to `max_new_tokens` tokens, with every hook attached now acting in the
    prompt pass and in every step (see the module docstring for the cache and what hooks see).

    Args:
        tokens: The prompts (padded anywhere: rows are left-packed first).
        mask: `Int[Tensor, "batch pos"]`, 1 on real tokens (None: all real).
        max_new_tokens: Steps at most; all rows stop once each has produced one of `eos_token_ids`.
        sampling: How tokens are chosen (default greedy).
        eos_token_ids: Tokens that finish a row (then continued with `pad_token_id`).
        pad_token_id: What a finished row continues with.
        use_cache: Decode with the `transformers` cache when it is exact for the hooks attached
            (`cache_blocker`); False: recompute the whole sequence at every step.
        output_logits: Keep each step's logits.
        verbose: Show a progress bar.
        embeds: The prompt as embeddings entering block 0 (`HookedHybrid.embed`), `tokens` then only
            give its shape.
        processors: More `transformers` logits processors (after the sampling filter).
        stopping: `transformers` stopping criteria (they may finish rows).

    Returns:
        A `Decoded`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> tokens = model.to_tokens("In the beginning God")
        >>> decode(model, tokens, max_new_tokens=3).sequences.shape
        torch.Size([1, 7])
    """
    if model._wrapping is None:
        raise RuntimeError("This HookedHybrid was unwrapped; wrap its model again with HookedHybrid.from_hf.")
    tokens, mask = left_packed(tokens, mask)
    if mask is not None and not bool(mask.all()) and not batches_pad(model):
        if processors or stopping:
            raise ValueError(f"{model.adapter.family} decodes each prompt length apart; give decode equal lengths.")
        return _by_length(model, tokens, mask, max_new_tokens=max_new_tokens, sampling=sampling,
                          eos_token_ids=eos_token_ids, pad_token_id=pad_token_id, use_cache=use_cache,
                          output_logits=output_logits, verbose=verbose)
    mask = torch.ones_like(tokens) if mask is None else mask
    cached = use_cache and cache_blocker(model) is None
    config = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=not sampling.greedy, num_beams=1,
                              use_cache=cached, eos_token_id=list(eos_token_ids) or None, pad_token_id=pad_token_id,
                              return_dict_in_generate=True, output_logits=output_logits,
                              **({} if sampling.greedy else dict(temperature=1.0, top_k=0, top_p=1.0)))
    progress = tqdm(total=max_new_tokens, desc="generate", disable=not verbose)
    try:
        choose = [] if sampling.greedy else [_Choose(sampling, mask)]  # a processor costs every step
        with _generation_config(model.hf_model, config), _Passes(model, mask, cached, embeds, progress).installed():
            output = model.hf_model.generate(
                input_ids=tokens, attention_mask=mask, logits_processor=LogitsProcessorList([*choose, *processors]),
                stopping_criteria=StoppingCriteriaList(stopping))
    finally:
        progress.close()
    return Decoded(output.sequences, tuple(output.logits) if output_logits else None, cached)


def _by_length(model, tokens: Tensor, mask: Tensor, **options) -> Decoded:
    """`decode` of a left-padded batch, each prompt length apart, reassembled (left-padded, finished
    rows and shorter runs continued with the padding token; missing steps' logits are NaN)."""
    lengths = mask.sum(1)
    parts = {length: (lengths == length).nonzero().flatten().tolist() for length in lengths.unique().tolist()}
    runs = {length: decode(model, tokens[rows, -length:], **options) for length, rows in parts.items()}
    steps = max(run.sequences.shape[1] - length for length, run in runs.items())
    sequences = torch.full((len(tokens), tokens.shape[1] + steps), options["pad_token_id"], dtype=tokens.dtype,
                           device=tokens.device)
    sequences[:, : tokens.shape[1]] = tokens
    logits = None
    if options["output_logits"]:
        first = next(iter(runs.values())).logits[0]
        logits = tuple(torch.full((len(tokens), first.shape[-1]), math.nan, dtype=first.dtype, device=first.device)
                       for _ in range(steps))
    for length, rows in parts.items():
        new = runs[length].sequences[:, length:]
        sequences[rows, tokens.shape[1]: tokens.shape[1] + new.shape[1]] = new
        for step, step_logits in enumerate(runs[length].logits or ()):
            logits[step][rows] = step_logits
    return Decoded(sequences, logits, all(run.cached for run in runs.values()))
