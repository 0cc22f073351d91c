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

Conditions of a `Sweep` that first act at block `l` (`first_layer`) leave everything before block `l`
clean, in the context pass and in the continuation pass alike. So one clean pass over the contexts
and one over the continuation rows run up to the deepest such block (`clean_prefix`), keeping the
residual stream entering each condition's first block, and each condition runs both of its passes
from there (`context_logprobs(..., prefix, start)`), its cache holding its own state from block `l`
on; a condition that acts nowhere runs only the final norm. Each condition's result equals it
scored alone bit for bit (the same batches compute the same blocks), and `reuses_prefix` probes
each model once before a sweep relies on it.
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
        contexts, tokens, mask, owners, fed, new, new_mask = _probe_input(model)
        try:
            with forward_settings(model, hooks=False):
                first, rest = context_logprobs(model, tokens, mask, owners, new, new_mask)
                full = [model(torch.tensor([contexts[o] + ids], device=model.device))[0].float().log_softmax(-1)
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


def _probe_input(model):
    """The probes' input: two contexts (the second left-padded), three continuation rows after them
    (more rows than contexts), as `(contexts, tokens, mask, owners, fed, new, new_mask)`."""
    vocab, device = model.cfg.vocab_size, model.device
    contexts = [[(7 * i + 3) % vocab for i in range(6)], [(5 * i + 11) % vocab for i in range(4)]]
    fed = [[2 % vocab, 5 % vocab], [7 % vocab], [9 % vocab, 4 % vocab]]  # continuations but their last token
    tokens = torch.tensor([contexts[0], [0, 0, *contexts[1]]], device=device)
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1]], device=device)
    new = torch.tensor([ids + [0] * (2 - len(ids)) for ids in fed], device=device)
    new_mask = torch.tensor([[1] * len(ids) + [0] * (2 - len(ids)) for ids in fed], device=device)
    return contexts, tokens, mask, [0, 1, 1], fed, new, new_mask


@torch.no_grad()
def reuses_prefix(model) -> bool:
    """Whether both passes of `model` (contexts, continuations) may start at a later block from the
    clean residual stream, the earlier cache layers being the clean contexts' (block `i` keeps its
    state in cache layer `i`, and a block that does not run leaves its layer alone): probed once
    per model (hooks off) against passes from block 0, entering at a middle block and at the
    final norm.

    Examples:
        >>> reuses_prefix(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1"))
        True
    """
    if model not in _REUSES:
        _, tokens, mask, owners, _, new, new_mask = _probe_input(model)
        starts = sorted({max(model.n_layers // 2, 1), model.n_layers})
        try:
            with forward_settings(model, hooks=False):
                whole = context_logprobs(model, tokens, mask, owners, new, new_mask)
            with forward_settings(model, hooks=False):
                prefix = clean_prefix(model, tokens, mask, starts, owners, new, new_mask)
            reused = []
            for start in starts:
                with forward_settings(model, hooks=False):
                    reused.append(context_logprobs(model, tokens, mask, owners, new, new_mask, prefix, start))
        except (RuntimeError, ValueError, TypeError, NotImplementedError, AttributeError, IndexError, KeyError):
            _REUSES[model] = False
        else:
            worst = max(float((a - b).abs().max() / b.abs().max()) for each in reused for a, b in zip(each, whole))
            _REUSES[model] = worst <= PROBE_TOLERANCE
    return _REUSES[model]


@dataclass(frozen=True)
class Prefix:
    """What the clean model computed over a batch of contexts and their continuation rows, for
    conditions that start later (prefix reuse): the contexts' cache (the layers before the deepest
    entry filled) and the residual stream entering each entry block, over the contexts (`kept`) and
    over the continuation rows (`continued`: empty without continuations).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens, mask = torch.tensor([[1136, 261, 2125]]), torch.tensor([[1, 1, 1]])
        >>> prefix = clean_prefix(model, tokens, mask, [3], [0, 0], torch.tensor([[387], [261]]), torch.ones(2, 1))
        >>> prefix.cache.get_seq_length(), prefix.kept[3].shape   # 3 tokens cached; [context, pos, d_model]
        (3, torch.Size([1, 3, 128]))
        >>> prefix.continued[3].shape                             # [row, width, d_model]
        torch.Size([2, 1, 128])
    """

    cache: DynamicCache
    kept: dict[int, Tensor]
    continued: dict[int, Tensor]


def _context_kwargs(mask: Tensor) -> dict:
    """A left-padded batch runs with its mask and each row's real positions; an unpadded one without."""
    if bool(mask.all()):
        return {}
    return dict(attention_mask=mask, position_ids=real_positions(mask, *mask.shape).clamp(min=0))


@torch.no_grad()
def clean_prefix(model, tokens: Int[Tensor, "context pos"], mask: Int[Tensor, "context pos"], entries: Sequence[int],
                 owners: Sequence[int] = (), new: Int[Tensor, "row width"] | None = None,
                 new_mask: Int[Tensor, "row width"] | None = None) -> Prefix:
    """Two passes of the model (with the hooks attached now), each up to the deepest of `entries`
    (blocks > 0; `n_layers`: the final norm's input), keeping the residual stream entering each: one
    over left-padded contexts (keeping their cache too), one over the continuation rows `new` that
    follow contexts `owners` (as `context_logprobs` takes them; None: none) from a copy of that cache.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> prefix = clean_prefix(model, torch.tensor([[1136, 261, 2125]]), torch.tensor([[1, 1, 1]]), [2, 5])
        >>> sorted(prefix.kept), prefix.kept[5].shape, prefix.continued   # [context, pos, d_model]
        ([2, 5], torch.Size([1, 3, 128]), {})
    """
    cache = DynamicCache(config=model.cfg)
    entries = tuple(entries)
    with forward_settings(model, keep=entries, stop=max(entries), hooks=hooks_enabled()) as settings, \
            _context_lengths(model, mask.sum(1)):
        model(tokens, cache=cache, use_cache=True, **_context_kwargs(mask))
    continued = {}
    if new is not None:
        rows = copy.deepcopy(cache)  # the contexts' cache stays as it is for the conditions' passes
        rows.reorder_cache(torch.tensor(list(owners), device=tokens.device))
        with forward_settings(model, keep=entries, stop=max(entries), hooks=hooks_enabled()) as more:
            _continue(model, rows, mask, owners, new, new_mask)
        continued = dict(more.kept)
    return Prefix(cache, dict(settings.kept), continued)


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
        prefix: The clean passes (`clean_prefix`, over the same contexts and continuation rows) that
            passes with `start > 0` continue: their residual stream at block `start` and the
            contexts' cache of the earlier layers.
        start: With `start > 0`, both passes start at block `start` from `prefix` (`n_layers`: at the
            final norm): for hooks that act from block `start` on only (`Sweep` conditions,
            `first_layer`). The blocks before it are not computed, so their cache layers are the
            clean contexts' as they are (read for their length only).

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
        >>> prefix = clean_prefix(model, tokens, mask, [4], [0, 1], new, new_mask)
        >>> torch.allclose(context_logprobs(model, tokens, mask, [0, 1], new, new_mask, prefix, 4)[1], rest, atol=1e-5)
        True
    """
    cache = DynamicCache(config=model.cfg)
    with _entering(model, prefix.kept if start else {}, start), _context_lengths(model, mask.sum(1)):
        logits = model(tokens, cache=cache, use_cache=True, logits_to_keep=1, **_context_kwargs(mask))
    first = logits[:, -1].float().log_softmax(-1)
    if new is None:
        return first, None
    cache.reorder_cache(torch.tensor(list(owners), device=tokens.device))  # one copy per continuation row
    for layer in range(min(start, len(cache.layers))):  # run in neither pass: the clean contexts' layer, read
        cache.layers[layer] = prefix.cache.layers[layer]  # for its length only
    with _entering(model, prefix.continued if start else {}, start):
        logits = _continue(model, cache, mask, owners, new, new_mask)
    return first, logits.float().log_softmax(-1)


def _entering(model, kept: dict[int, Tensor], start: int):
    """Settings of the next pass of `model`: from block `start` with the residual stream `kept[start]`
    (nothing for `start` 0), hooks acting as they act now."""
    return forward_settings(model, start=start, resid=kept[start], hooks=hooks_enabled()) if start else nullcontext()


def _continue(model, cache: DynamicCache, mask: Int[Tensor, "context pos"], owners: Sequence[int],
              new: Int[Tensor, "row width"], new_mask: Int[Tensor, "row width"]) -> Tensor:
    """The pass of `model` over continuation rows `new` after contexts `owners` (mask `mask`), from
    `cache` (one row per continuation row), positions counting on from each row's context."""
    index = torch.tensor(list(owners), device=new.device)
    lengths = mask.sum(1)[index]
    positions = lengths[:, None] + torch.arange(new.shape[1], device=new.device)
    with _context_lengths(model, lengths):
        return model(new, attention_mask=torch.cat([mask[index], new_mask.to(mask)], 1), cache=cache,
                     use_cache=True, position_ids=positions)


def _context_lengths(model, lengths: Int[Tensor, " batch"]):
    """The next pass of `model` knows each row's context length (`ForwardState.prompt_lengths`), so a
    selector resolves each token against the tokens up to it (`Selector.position_mask`), keeping any
    settings waiting for the pass (`forward_settings`)."""
    waiting = current_state()
    base = waiting if waiting is not None and waiting.model is model and not waiting.running else ForwardState(model)
    return replace(base, prompt_lengths=lengths).active()
