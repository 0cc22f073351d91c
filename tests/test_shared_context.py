"""Shared-context scoring: each distinct context runs once and its continuations are scored from its
cache; the loglikelihoods equal full-sequence scoring by the plain `transformers` model (per family,
under conditions, in ragged batches), and scoring falls back to full sequences where a cache would
change the result."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import DynamicCache

from hybrid_lens.evals import loglikelihoods
from hybrid_lens.evals import shared_context
from hybrid_lens.evals.scoring import encode_pair
from hybrid_lens.forward_state import current_state
from hybrid_lens.evals.shared_context import continues_exactly, reuses_prefix, shared_context_blocker, split_request
from hybrid_lens.interventions import Condition, Sweep, noise, scale, skip_layer, zero

from .fixtures import build
from .test_eval_batching import unbatched
from .test_evals import ABLATION, hand_zero

# contexts of unequal length, each with several continuations of one or more tokens
REQUESTS = [
    ("Question: Why is the sky blue?\nAnswer:", " Rayleigh scattering"),
    ("Question: Why is the sky blue?\nAnswer:", " Because"),
    ("Question: Why is the sky blue?\nAnswer:", " B"),
    ("Q: 2+2?\nA:", " 4"),
    ("Q: 2+2?\nA:", " four, of course"),
    ("A much longer context that runs on and on, so that this row needs padding in any batch:", " yes"),
    ("A much longer context that runs on and on, so that this row needs padding in any batch:", " no way"),
    ("Short:", " a continuation that is longer than its context"),
]


# weights at which every mixer matters: visible init, and for Falcon-H1 logits that are not scaled
# down 25x (`lm_head_multiplier`) and an SSM output that is not scaled down 4x, so that its state
# carries the context measurably (with attention zeroed, two contexts move a continuation's
# loglikelihood by ~0.2, over 100x the tolerance of these tests)
VISIBLE = {"qwen2": {}, "qwen3_5": {}, "falcon_h1": dict(lm_head_multiplier=1.0, ssm_out_multiplier=10.0)}
LINEAR_KIND = {"qwen3_5": "linear_attn", "falcon_h1": "ssm"}
TOLERANCE = dict(rtol=1e-5, atol=1e-5)


def visible(family: str):
    return build(family, visible=True, **VISIBLE[family])


@torch.no_grad()
def full_sequence(model, requests, condition=None) -> list[float]:
    """One unpadded forward of the hooked model per request over its whole sequence (the condition
    applied for that forward), the continuation's log-probabilities summed."""
    out = []
    for context, continuation in requests:
        context_ids, continuation_ids = encode_pair(model.tokenizer, context, continuation)
        whole = context_ids + continuation_ids
        with (condition.apply(model) if condition is not None else torch.no_grad()):
            logits = model(torch.tensor([whole[:-1]]))[0, -len(continuation_ids):]
        targets = torch.tensor(continuation_ids)[:, None]
        out.append(float(logits.float().log_softmax(-1).gather(-1, targets).sum()))
    return out


class PassWidths:
    """Records (rows, columns) of every forward pass of the plain model inside a `HookedHybrid`."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.hf_model.register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.shapes.append(tuple(ids.shape))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.mark.parametrize("batch_size", [None, 1, 3])
def test_shared_contexts_equal_full_sequences_of_the_plain_model(family, batch_size):
    reference, model = visible(family)
    expected = unbatched(reference, model.tokenizer, REQUESTS)
    got = loglikelihoods(model, REQUESTS, batch_size=batch_size, progress=False)
    np.testing.assert_allclose(got, expected, **TOLERANCE)


def test_each_context_runs_once_and_its_continuations_share_one_pass(family):
    _, model = build(family)
    assert continues_exactly(model)  # probed once per model, before the passes counted here
    with PassWidths(model) as passes:
        loglikelihoods(model, REQUESTS, batch_size=1, progress=False)
    pairs = [split_request(*encode_pair(model.tokenizer, c, x), None) for c, x in REQUESTS]
    contexts = {}
    for context, continuation in pairs:
        contexts.setdefault(context, []).append(continuation)
    expected = []
    for context, continuations in contexts.items():
        expected.append((1, len(context)))  # the context pass
        fed = {tuple(x[:-1]) for x in continuations if len(x) > 1}
        if fed:  # its continuations but their last tokens, one row each, in one pass
            expected.append((len(fed), max(len(x) for x in fed)))
    assert sorted(passes.shapes) == sorted(expected)
    full_tokens = sum(len(c) + len(x) - 1 for c, x in pairs)
    assert sum(rows * columns for rows, columns in passes.shapes) < full_tokens


@torch.no_grad()
def test_shared_contexts_under_an_ablation_equal_hand_hooks(family):
    reference, model = visible(family)
    kind, layers = ABLATION[family]
    ours = np.array(loglikelihoods(model, REQUESTS, condition=zero(kind, layers), batch_size=4, progress=False))
    with hand_zero(reference, kind, layers):
        expected = np.array(unbatched(reference, model.tokenizer, REQUESTS))
    np.testing.assert_allclose(ours, expected, **TOLERANCE)
    plain = np.array(loglikelihoods(model, REQUESTS, progress=False))
    assert np.abs(plain - ours).max() > 0.1  # the ablation matters
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


@pytest.mark.parametrize("family", list(LINEAR_KIND))
def test_a_context_reaches_its_continuations_through_the_linear_mixers_states(family):
    """With attention zeroed, only the recurrent and convolution states carry the context into the
    continuation pass: shared scoring still equals full sequences, and the context matters."""
    reference, model = visible(family)
    requests = [(context, " Rayleigh scattering") for context in ("Question: Why is the sky blue?\nAnswer:", "Q: 2+2?\nA:")]
    attn_off = zero("attn")
    ours = loglikelihoods(model, requests, condition=attn_off, batch_size=2, progress=False)
    np.testing.assert_allclose(ours, full_sequence(model, requests, attn_off), **TOLERANCE)
    assert abs(ours[0] - ours[1]) > 100 * TOLERANCE["rtol"] * abs(ours[0])


@pytest.mark.parametrize("positions", [[1, 3], [2, 30], slice(0, 5), slice(2, None, 2), [-1], slice(-3, None)])
def test_positions_count_real_tokens_per_row_in_ragged_batches(positions):
    """A positional condition in batches of unequal rows equals the condition on each request alone:
    positions from the start act in the context pass where they fall in the context and in the
    continuation pass where they fall in the continuation; negative ones (counted from each row's
    last token) score full sequences."""
    _, model = visible("falcon_h1")
    condition = zero("attn", positions=positions) + scale("ssm", 0.5, layers=[1], positions=positions)
    requests = [(c, x) for c, x in REQUESTS if len(c) + len(x) > 32]
    assert shared_context.shares_contexts(condition) == shared_context.counts_from_start(positions)
    expected = full_sequence(model, requests, condition)
    for batch_size in (None, 3, 1):  # 1: each context alone, unpadded
        got = loglikelihoods(model, requests, condition=condition, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(got, expected, **TOLERANCE)
    assert np.abs(np.array(expected) - full_sequence(model, requests)).max() > 1e-2  # the positions matter


def test_a_sweep_mixes_shared_and_full_sequence_conditions_exactly(family):
    _, model = visible(family)
    kind, layers = ABLATION[family]
    conditions = [zero(kind, layers), skip_layer(1), zero("attn", positions=-1), scale(kind, 0.5, layers=layers)]
    swept = loglikelihoods(model, REQUESTS, Sweep(conditions, batch=2), batch_size=3, progress=False)
    for condition, scores in zip(conditions, swept, strict=True):
        np.testing.assert_allclose(scores, full_sequence(model, REQUESTS, condition), **TOLERANCE)


def test_conditions_that_a_cache_would_change_score_full_sequences():
    _, model = visible("qwen3_5")
    assert not shared_context.shares_contexts(noise("linear_attn", 0.1))
    assert continues_exactly(model)
    with PassWidths(model) as passes:
        loglikelihoods(model, REQUESTS, condition=zero("attn", positions=-1), batch_size=1, progress=False)
    inputs = {tuple((c + x)[:-1]) for c, x in
              (split_request(*encode_pair(model.tokenizer, c, x), None) for c, x in REQUESTS)}
    assert sorted(passes.shapes) == sorted((1, len(ids)) for ids in inputs)  # one full sequence per input


def test_positions_out_of_range_raise_as_for_full_sequences():
    _, model = visible("qwen2")
    for condition in (zero("attn", positions=[40]), zero("attn", positions=[-40])):
        with pytest.raises(ValueError, match="out of range for"):
            loglikelihoods(model, REQUESTS, condition=condition, progress=False)
    assert not any(point.fwd_hooks for point in model.hook_dict.values())


def test_an_eager_inner_point_switches_to_full_sequences_with_the_same_result():
    _, model = visible("qwen3_5")
    plain = loglikelihoods(model, REQUESTS, progress=False)
    seen = []
    with model.hooks(fwd_hooks=[("blocks.0.linear_attn.hook_state", lambda state, hook: seen.append(1))]):
        assert "eager" in shared_context_blocker(model)
        hooked = loglikelihoods(model, REQUESTS, progress=False)
    assert seen
    np.testing.assert_allclose(hooked, plain, **TOLERANCE)


def test_a_cache_that_cannot_continue_is_found_by_the_probe_and_scored_in_full(monkeypatch):
    reference, model = visible("falcon_h1")
    assert continues_exactly(model)

    def broken(self, beam_idx):  # a family whose cache cannot be copied per continuation
        raise NotImplementedError("no reorder_cache")

    monkeypatch.setattr(DynamicCache, "reorder_cache", broken)
    _, other = visible("falcon_h1")
    assert not continues_exactly(other)
    assert "does not continue" in shared_context_blocker(other)
    np.testing.assert_allclose(loglikelihoods(other, REQUESTS, progress=False),
                               unbatched(reference, other.tokenizer, REQUESTS), **TOLERANCE)


@torch.no_grad()
def test_a_continuation_that_fills_the_window_is_scored_from_its_own_tokens():
    reference, model = visible("qwen2")
    context, continuation = "ab", " a continuation of many tokens"
    score = loglikelihoods(model, [(context, continuation), ("Q: 2+2?\nA:", " 4")], max_length=12, progress=False)[0]
    ids = model.tokenizer(context + continuation)["input_ids"][-13:]
    logprobs = reference(torch.tensor([ids[:-1]])).logits[0].log_softmax(-1)
    expected = sum(float(logprobs[p - 1, ids[p]]) for p in range(1, len(ids)))
    assert score == pytest.approx(expected, rel=1e-5)


def test_contexts_near_the_window_are_batched_so_that_every_pass_fits_it():
    """A long context with a short continuation and a short context with a long one: padded together,
    the contexts' and continuations' columns would exceed the model's positions."""
    reference, model = build("qwen2", visible=True, max_position_embeddings=96)
    n_ctx = model.cfg.n_ctx
    assert n_ctx == 96
    requests = [("a" * (n_ctx - 2), " b"), ("a" * (n_ctx - 40), " long continuation of many tokens")]
    got = loglikelihoods(model, requests, batch_size=2, progress=False)
    np.testing.assert_allclose(got, unbatched(reference, model.tokenizer, requests), **TOLERANCE)


def test_a_sweep_shares_the_clean_passes_up_to_each_conditions_first_block(family):
    """Prefix reuse: block 0 runs once over the contexts and once over the continuations (the clean
    passes) for a sweep of conditions that start later, and each condition's context and
    continuation passes start at its first block; the scores equal each condition alone, bit for bit."""
    _, model = visible(family)
    assert reuses_prefix(model) and continues_exactly(model)
    n = model.n_layers
    early, middle, late = n // 2 - 1, n // 2, n // 2 + 1
    conditions = [skip_layer(early), skip_layer(late), scale("mlp", 0.5, layers=[middle, n - 1])]
    requests = REQUESTS[:3]  # one context, three continuations
    calls = dict.fromkeys((0, early, late), 0)

    def count(value, hook):
        calls[int(hook.name.split(".")[1])] += 1

    with model.hooks(fwd_hooks=[(f"blocks.{i}.hook_mlp_out", count) for i in calls]):
        swept = loglikelihoods(model, requests, Sweep(conditions), progress=False)
    # block 0: the clean context pass and the clean continuation pass (both up to block `late`);
    # `early`: the clean passes, and the context and continuation passes of the condition that
    # starts there (skip_layer computes the block, then passes its input on); `late`: every
    # condition's context pass and continuation pass (from `early`, `late` and `middle`)
    assert calls == {0: 1 + 1, early: 1 + 1 + 1 + 1, late: 3 + 3}
    for condition, scores in zip(conditions, swept, strict=True):
        assert scores == loglikelihoods(model, requests, condition, progress=False)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_a_layer_wise_sweep_runs_each_block_once_per_condition_that_acts_at_or_before_it(batch_size):
    """Layer-steps of a Sweep that skips each block in turn, plus a condition that acts nowhere: the
    clean passes (contexts, then continuations) run every block once (the condition that acts
    nowhere needs the final norm's input), and each condition runs the blocks from its first one,
    over the contexts and the continuation rows alike: block `i` runs for `i + 2` passes over each
    row, `n + n (n + 1) / 2` block passes per row in all where scoring each condition alone runs
    `(n + 1) n`."""
    _, model = visible("qwen3_5")
    n = model.n_layers
    conditions = [skip_layer(i) for i in range(n)] + [Condition(name="baseline")]
    pairs = [split_request(*encode_pair(model.tokenizer, c, x), None) for c, x in REQUESTS]
    rows = len({c for c, _ in pairs}) + len({(c, x[:-1]) for c, x in pairs if len(x) > 1})  # contexts + fed rows
    seen = dict.fromkeys(range(n), 0)

    def count(value, hook):
        seen[int(hook.name.split(".")[1])] += value.shape[0]

    with model.hooks(fwd_hooks=[(f"blocks.{i}.hook_resid_pre", count) for i in range(n)]):
        swept = loglikelihoods(model, REQUESTS, Sweep(conditions), batch_size=batch_size, progress=False)
    assert seen == {i: (i + 2) * rows for i in range(n)}
    assert sum(seen.values()) == (n + n * (n + 1) // 2) * rows < (n + 1) * n * rows / 1.6  # 44 vs 72 per row
    for condition, scores in zip(conditions, swept, strict=True):
        assert scores == loglikelihoods(model, REQUESTS, condition, batch_size=batch_size, progress=False)


@pytest.mark.parametrize("batch_size", [None, 3])
def test_a_mixed_sweep_over_ragged_batches_equals_each_condition_alone_bit_for_bit(family, batch_size):
    """Conditions starting at different blocks (whole components, positions in the contexts and
    in the continuations, one that acts nowhere) beside full-sequence ones, over contexts of unequal
    length with continuations of unequal length: each condition's scores are those of the
    condition scored alone with the same batches, bit for bit, and match full sequences."""
    _, model = visible(family)
    n = model.n_layers
    kind, layers = ABLATION[family]
    conditions = [skip_layer(n - 2), zero(kind, layers), zero("mlp", layers=[n // 2], positions=slice(9, None)),
                  Condition(name="baseline"), zero("attn", positions=-1), scale("mlp", 0.5, layers=[n // 2 + 1],
                                                                                 positions=[1, 4, 10]),
                  noise("mlp", 0.1, layers=[1], seed=0)]
    swept = loglikelihoods(model, REQUESTS, Sweep(conditions, batch=2), batch_size=batch_size, progress=False)
    for condition, scores in zip(conditions, swept, strict=True):
        assert scores == loglikelihoods(model, REQUESTS, condition, batch_size=batch_size, progress=False)
    for condition, scores in zip(conditions[:-1], swept, strict=False):
        np.testing.assert_allclose(scores, full_sequence(model, REQUESTS, condition), **TOLERANCE)


@torch.no_grad()
def test_a_pass_continuing_a_cache_without_padding_counts_positions_after_the_cached_tokens():
    """A forward over new tokens from a cache with an all-ones mask (nothing padded, so no mask is
    kept) names the new tokens by their positions in the whole sequence, as a padded one does: a
    positional condition on the continued pass acts on the token it names in the whole sequence."""
    _, model = visible("qwen2")
    ids = model.tokenizer("In the beginning God created the heaven")["input_ids"]
    cut, seen = 4, []

    def record(value, hook):
        seen.append(current_state().positions.tolist())

    condition = zero("mlp", positions=[cut + 1])  # a token of the continued pass
    cache = DynamicCache(config=model.cfg)
    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", record)]):
        with condition.apply(model):
            whole = model(torch.tensor([ids]))
        model(torch.tensor([ids[:cut]]), cache=cache, use_cache=True)  # the condition acts on none of these
        with condition.apply(model):
            rest = model(torch.tensor([ids[cut:]]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         cache=cache, use_cache=True)
    assert seen == [[list(range(len(ids)))], [list(range(cut))], [list(range(cut, len(ids)))]]
    torch.testing.assert_close(rest[0], whole[0, cut:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(whole, model(torch.tensor([ids])), atol=1e-3)  # the condition matters
