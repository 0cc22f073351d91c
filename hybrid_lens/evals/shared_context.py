"""Shared-context scoring: each distinct context runs once, and every continuation of it is scored
from the context's `transformers` cache.

A multiple-choice example asks for `log p(choice | context)` of 4-5 choices after one context of
often hundreds of tokens (ARC, HellaSwag, TruthfulQA with few-shot prompts). Scoring the full
sequences computes the context once per choice; here a batch of distinct contexts runs once with
`use_cache=True` (left-padded with an attention mask when their lengths differ, so a row's padding
comes before its tokens and leaves every mixer's state untouched). Its last position predicts each
continuation's first token. The cache (attention keys and values, and every linear mixer's
recurrent and convolution states: Gated DeltaNet, Mamba-2, ...) is then copied once per
continuation (`Cache.reorder_cache`) and the continuations, right-padded, run from it in one pass.
Positions count real tokens of the whole sequence in both passes (`ForwardState` offsets a pass
that continues a cache by the real tokens in it), so the result is the full-sequence loglikelihood
up to float rounding, for every family whose cache continues exactly (`continues_exactly`, probed
once per model).

The passes run with whatever hooks are attached, so a condition acts in both: on context positions
in the context pass, on continuation positions in the continuation pass, each pass knowing its
rows' context lengths (`ForwardState.prompt_lengths`), so a selector's positions resolve as in the
whole sequence. That is exact where a pass over part of the sequence computes what the full
sequence computes at those tokens: `shares_contexts` and `shared_context_blocker` say when not (an
intervention that is not cache-safe, a position counted from the end, a hook a cache would change,
an inner point fed by an eager mixer forward), and `loglikelihoods` then scores full sequences.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformers import DynamicCache

from ..decoding import cache_blocker
from ..forward_state import ForwardState, current_state, forward_settings, hooks_enabled
from ..interventions import Condition
from ..tokens import real_positions

PROBE_TOLERANCE = 1e-4  # largest |logit difference| (relative to the logits' scale) the probe accepts
_PROBED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> continues_exactly(model)
_REUSES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> reuses_prefix(model)


def split_request(context_ids: Sequence[int], continuation_ids: Sequence[int], max_length: int | None
                  ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (context, continuation) ids that are scored after lm-eval's left truncation: the whole
    sequence keeps its last `max_length + 1` tokens, so a long context loses its first tokens.

    Returns:
        `(context, continuation)`; the context is empty when the continuation alone fills the
        window (its first tokens are then cut too, as lm-eval cuts them).

    Examples:
        >>> split_request([1, 2, 3, 4], [5, 6], max_length=4)
        ((2, 3, 4), (5, 6))
        >>> split_request([1, 2], [3, 4, 5, 6, 7], max_length=3)
        ((), (4, 5, 6, 7))
    """
    whole = [*context_ids, *continuation_ids]
    if max_length is not None:
        whole = whole[-(max_length + 1):]
    cut = max(len(whole) - len(continuation_ids), 0)
    return tuple(whole[:cut]), tuple(whole[cut:])


def shares_contexts(condition: Condition) -> bool:
    """Whether `condition` acts in a pass over the context and one over its continuations as it acts
    in a pass over the whole sequence: each intervention acts on each token alone (`cache_safe`),
    and its positions count from the first token (a position counted from the end names another
    token in each pass).

    Examples:
        >>> shares_contexts(zero("ssm")), shares_contexts(zero("attn", positions=[0, 5]))
        (True, True)
        >>> shares_contexts(noise("ssm", 0.1)), shares_contexts(zero("attn", positions=-1))
        (False, False)
    """
    return all(intervention.cache_safe and counts_from_start(selector.positions)
               for selector, intervention in condition.items)


def counts_from_start(positions) -> bool:
    """Whether a selector's `positions` pick the same tokens of a sequence however long it is: None,
    indices >= 0, or a slice with bounds >= 0 and a positive step.

    Examples:
        >>> counts_from_start(None), counts_from_start([0, 3]), counts_from_start(slice(2, None, 2))
        (True, True, True)
        >>> counts_from_start(-1), counts_from_start(slice(-3, None)), counts_from_start(slice(None, None, -1))
        (False, False, False)
    """
    if positions is None:
        return True
    if isinstance(positions, slice):
        return all(bound is None or bound >= 0 for bound in (positions.start, positions.stop)) \
            and (positions.step is None or positions.step > 0)
    return all(p >= 0 for p in ([positions] if isinstance(positions, int) else positions))


def check_positions(condition: Condition, lengths: Sequence[int]) -> None:
    """Raise the `ValueError` a full-sequence pass would raise where a selector's positions are out of
    range for an input of one of `lengths` tokens, or select none of its tokens (a pass over part of
    the sequence cannot tell).

    Examples:
        >>> check_positions(zero("attn", positions=[0, 5]), [8, 6])
        >>> check_positions(zero("attn", positions=[0, 5]), [8, 4])
        Traceback (most recent call last):
        ...
        ValueError: Positions [0, 5] out of range for 4 tokens.
    """
    for selector, _ in condition.items:
        if selector.positions is not None:
            for length in sorted(set(lengths)):
                selector.position_mask(torch.arange(length)[None])


def shared_context_blocker(model) -> str | None:
    """Why shared-context scoring would not equal full-sequence scoring for `model` with the hooks
    attached now (None: it would): a hook a cache would change, an inner point fed by an eager
    mixer forward (`decoding.cache_blocker`), or a family whose cache does not continue several
    tokens exactly (`continues_exactly`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> shared_context_blocker(model) is None
        True
        >>> with noise("attn", 0.1).apply(model):
        ...     shared_context_blocker(model)
        "blocks.3.hook_attn_out has a hook that is not cache-safe (a Condition's intervention that depends on the whole sequence)"
    """
    blocker = cache_blocker(model)
    if blocker is None and not continues_exactly(model):
        return f"{type(model.hf_model).__name__}'s cache does not continue several tokens exactly"
    return blocker


@torch.no_grad()
def continues_exactly(model) -> bool:
    """Whether `model`'s family scores continuations from a cache as the full sequence scores them:
    probed once per model (hooks off) on a short input, a batch of two contexts (one left-padded) and
    three continuations, against full-sequence logits.

    Examples:
        >>> continues_exactly(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"))
        True
    """
    if model not in _PROBED:
        vocab = model.cfg.vocab_size
        contexts = [[(7 * i + 3) % vocab for i in range(6)], [(5 * i + 11) % vocab for i in range(4)]]
        fed = [[2, 5], [7], [9, 4]]  # continuations minus their last token, after contexts `owners`
        owners = [0, 1, 1]
        tokens = torch.tensor([contexts[0], [0, 0, *contexts[1]]], device=model.device)
        mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]], device=model.device)
        new = torch.tensor([[2, 5], [7, 0], [9, 4]], device=model.device) % vocab
        try:
            with forward_settings(model, hooks=False):
                first, rest = context_logprobs(model, tokens, mask, owners, new, torch.tensor([[1, 1], [1, 0], [1, 1]]))
                full = [model(torch.tensor([contexts[o] + ids], device=model.device) % vocab)[0].float().log_softmax(-1)
                        for o, ids in zip(owners, fed)]
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AttributeError, IndexError):
            _PROBED[model] = False  # a family whose cache cannot continue: full-sequence scoring
        else:
            worst = 0.0
            for row, (owner, ids) in enumerate(zip(owners, fed)):
                scored = torch.cat([first[owner : owner + 1], rest[row, : len(ids)]])
                full_row = full[row][len(contexts[owner]) - 1:]
                worst = max(worst, float((scored - full_row).abs().max() / full_row.abs().max()))
            _PROBED[model] = worst <= PROBE_TOLERANCE
    return _PROBED[model]


@torch.no_grad()
def reuses_prefix(model) -> bool:
    """Whether a context pass of `model` may start at a later block from the clean residual stream,
    with the earlier cache layers copied from the clean pass (block `i` keeps its state in cache
    layer `i`): probed once per model (hooks off) against a pass from block 0.

    Examples:
        >>> reuses_prefix(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"))
        True
    """
    if model not in _REUSES:
        vocab, start = model.cfg.vocab_size, max(model.n_layers // 2, 1)
        tokens = torch.tensor([[(7 * i + 3) % vocab for i in range(6)], [0, 0, *[(5 * i + 11) % vocab for i in range(4)]]],
                              device=model.device)
        mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]], device=model.device)
        new, new_mask = torch.tensor([[2, 5], [7, 0]], device=model.device) % vocab, torch.tensor([[1, 1], [1, 0]])
        try:
            with forward_settings(model, hooks=False):
                whole = context_logprobs(model, tokens, mask, [0, 1], new, new_mask)
            with forward_settings(model, hooks=False):
                prefix = clean_prefix(model, tokens, mask, [start])
            with forward_settings(model, hooks=False):
                reused = context_logprobs(model, tokens, mask, [0, 1], new, new_mask, prefix, start)
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AttributeError, IndexError, KeyError):
            _REUSES[model] = False
        else:
            worst = max(float((a - b).abs().max() / b.abs().max()) for a, b in zip(reused, whole))
            _REUSES[model] = worst <= PROBE_TOLERANCE
    return _REUSES[model]


@dataclass(frozen=True)
class Prefix:
    """What the clean model computed over a batch of contexts, for conditions that start later
    (prefix reuse): its cache (the layers before the deepest entry filled) and the residual stream
    entering each entry block.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> prefix = clean_prefix(model, torch.tensor([[1136, 261, 2125]]), torch.tensor([[1, 1, 1]]), [3])
        >>> prefix.cache.get_seq_length(), prefix.kept[3].shape   # 3 tokens cached; [context, pos, d_model]
        (3, torch.Size([1, 3, 128]))
    """

    cache: DynamicCache
    kept: dict[int, Tensor]


def _context_kwargs(mask: Tensor) -> dict:
    """A left-padded batch runs with its mask and each row's real positions; an unpadded one without."""
    if bool(mask.all()):
        return {}
    return dict(attention_mask=mask, position_ids=real_positions(mask, *mask.shape).clamp(min=0))


@torch.no_grad()
def clean_prefix(model, tokens: Int[Tensor, "context pos"], mask: Int[Tensor, "context pos"],
                 entries: Sequence[int]) -> Prefix:
    """One pass of the model (with the hooks attached now) over left-padded contexts, up to the
    deepest of `entries` (blocks > 0), keeping the residual stream entering each and the cache.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> prefix = clean_prefix(model, torch.tensor([[1136, 261, 2125]]), torch.tensor([[1, 1, 1]]), [2, 5])
        >>> sorted(prefix.kept), prefix.kept[5].shape          # [context, pos, d_model]
        ([2, 5], torch.Size([1, 3, 128]))
    """
    cache = DynamicCache(config=model.cfg)
    with forward_settings(model, keep=tuple(entries), stop=max(entries), hooks=hooks_enabled()) as settings, \
            _context_lengths(model, mask.sum(1)):
        model(tokens, cache=cache, use_cache=True, **_context_kwargs(mask))
    return Prefix(cache, dict(settings.kept))


@torch.no_grad()
def context_logprobs(model, tokens: Int[Tensor, "context pos"], mask: Int[Tensor, "context pos"],
                     owners: Sequence[int], new: Int[Tensor, "row width"] | None, new_mask: Int[Tensor, "row width"] | None,
                     prefix: Prefix | None = None, start: int = 0,
                     ) -> tuple[Float[Tensor, "context vocab"], Float[Tensor, "row width vocab"] | None]:
    """Log-probabilities after each context and at each token of continuations that follow them,
    from one pass over the contexts (with a cache) and one over the continuations (from copies of it).

    Args:
        tokens: Distinct contexts, left-padded; `mask` is 1 on their real tokens.
        owners: For each continuation row, the index of its context.
        new: Tokens fed after their context (a scored continuation without its last token: those
            tokens' predictions are what is scored), right-padded; `new_mask` is 1 on real ones.
            None: no continuation has more than one token.
        prefix: The clean pass (`clean_prefix`) that a pass with `start > 0` continues: its residual
            stream at block `start` and its cache of the earlier layers.
        start: With `start > 0`, the context pass starts at block `start` from `prefix`: for hooks
            that act from block `start` on only (`Sweep` conditions, `first_layer`).

    Returns:
        `(first, rest)`: `first[c]`, the next-token log-probabilities after context `c`
        (float32); `rest[r, j]`, those after token `j` of continuation row `r` (None without `new`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> tokens, mask = torch.tensor([[1136, 261, 2125], [0, 0, 1136]]), torch.tensor([[1, 1, 1], [0, 0, 1]])
        >>> new, new_mask = torch.tensor([[387, 0], [261, 2125]]), torch.tensor([[1, 0], [1, 1]])
        >>> first, rest = context_logprobs(model, tokens, mask, [0, 1], new, new_mask)
        >>> first.shape, rest.shape                # [context, vocab], [row, width, vocab]
        (torch.Size([2, 4096]), torch.Size([2, 2, 4096]))
        >>> reused = context_logprobs(model, tokens, mask, [0, 1], new, new_mask, clean_prefix(model, tokens, mask, [4]), 4)
        >>> torch.allclose(reused[1], rest, atol=1e-5)
        True
    """
    cache = DynamicCache(config=model.cfg)
    lengths = mask.sum(1)
    entering = forward_settings(model, start=start, resid=prefix.kept[start], hooks=hooks_enabled()) if start \
        else nullcontext()
    with entering, _context_lengths(model, lengths):
        logits = model(tokens, cache=cache, use_cache=True, logits_to_keep=1, **_context_kwargs(mask))
    for layer in range(start):  # the blocks before `start` were not run: their cache is the clean pass's
        cache.layers[layer] = copy.deepcopy(prefix.cache.layers[layer])
    first = logits[:, -1].float().log_softmax(-1)
    if new is None:
        return first, None
    index = torch.tensor(list(owners), device=tokens.device)
    cache.reorder_cache(index)  # one copy of its context's cache per continuation row
    positions = lengths[index][:, None] + torch.arange(new.shape[1], device=tokens.device)
    with _context_lengths(model, lengths[index]):
        logits = model(new, attention_mask=torch.cat([mask[index], new_mask.to(mask)], 1), cache=cache,
                       use_cache=True, position_ids=positions)
    return first, logits.float().log_softmax(-1)


def _context_lengths(model, lengths: Int[Tensor, " batch"]):
    """The next pass of `model` knows each row's context length (`ForwardState.prompt_lengths`), so a
    selector resolves each token against the tokens up to it (`Selector.position_mask`), keeping any
    settings waiting for the pass (`forward_settings`)."""
    waiting = current_state()
    base = waiting if waiting is not None and waiting.model is model and not waiting.running else ForwardState(model)
    return replace(base, prompt_lengths=lengths).active()
