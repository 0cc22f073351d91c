"""`HookedHybrid.generate` against independent computations: `hf_model.generate` of the plain model (every
registered family), loops of full forwards without a cache under the same hooks, and per-prompt runs.

The models are re-initialised so that every component moves the logits (`visible_init`): their greedy
continuations depend on the prompt and on any intervention, so a generation that ignored a hook, a
cache that hid one, or a batch that mixed rows could not pass.
"""

from __future__ import annotations

import threading
import warnings

import pytest
import torch

from hybrid_lens.adapters import FAMILIES
from hybrid_lens.decoding import Sampling, cache_blocker, decode, left_packed
from hybrid_lens.forward_state import current_state
from hybrid_lens.generation import STREAM_THREAD, GenerateArgumentError
from hybrid_lens.interventions import Add, Condition, Intervention, Selector, Sweep, add, noise, patch_state, zero
from hybrid_lens.mixers import cache_states

from .fixtures import build, random_tokens

STEPS = 8
GREEDY = dict(do_sample=False, verbose=False, stop_at_eos=False)


def full_forward_loop(model, tokens: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """Greedy decoding by hand: one full forward of the whole sequence per step, no cache."""
    for _ in range(steps):
        with torch.no_grad():
            logits = model(tokens)
        tokens = torch.cat([tokens, logits[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens


def ragged_prompts(seed: int = 3) -> list[torch.Tensor]:
    """Three prompts of 9, 4 and 6 random tokens."""
    ids = random_tokens(3, 9, seed=seed)
    return [ids[0], ids[1, :4], ids[2, :6]]


def left_padded_batch(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    tokens, mask = torch.zeros(len(prompts), width, dtype=torch.long), torch.zeros(len(prompts), width, dtype=torch.long)
    for row, prompt in enumerate(prompts):
        tokens[row, width - len(prompt):], mask[row, width - len(prompt):] = prompt, 1
    return tokens, mask


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def registered(request):
    reference, model = build(request.param, visible=True)
    return request.param, reference, model


# --- exactness against transformers ----------------------------------------------------------------------
@torch.no_grad()
def test_greedy_generate_equals_hf_generate(registered):
    """With no hooks, the tokens are `hf_model.generate`'s, with the cache and without (the same EOS rule:
    a finished row continues with the EOS token, as TransformerLens pads it)."""
    family, reference, model = registered
    tokens = random_tokens(2, 7, seed=11)
    eos = int(tokens[0, 3])  # a token the continuation may well produce, so stopping is exercised too
    expected = reference.generate(tokens, max_new_tokens=STEPS, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    for use_cache in (True, False):
        ours = model.generate(tokens, max_new_tokens=STEPS, do_sample=False, verbose=False, eos_token_id=eos,
                              use_past_kv_cache=use_cache)
        assert torch.equal(ours, expected), (family, use_cache)
    free = reference.generate(tokens, max_new_tokens=STEPS, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(model.generate(tokens, max_new_tokens=STEPS, **GREEDY), free)
    assert len(set(free[:, 7:].flatten().tolist())) > 2, "the continuation repeats one token: the test cannot fail"


@torch.no_grad()
def test_a_ragged_batch_gives_each_prompt_its_own_continuation(registered):
    """Prompts of unequal length, left-padded together, continue as each does alone in `transformers`
    (RecurrentGemma, which refuses left padding, and MiniMax, whose cache leaks it, decode each length apart)."""
    family, reference, model = registered
    prompts = ragged_prompts()
    tokens, mask = left_padded_batch(prompts)
    batched = model.generate(tokens, attention_mask=mask, max_new_tokens=STEPS, **GREEDY)
    assert batched.shape == (3, 9 + STEPS)
    for row, prompt in enumerate(prompts):
        alone = reference.generate(prompt[None], max_new_tokens=STEPS, do_sample=False, eos_token_id=None,
                                   pad_token_id=0)
        assert torch.equal(batched[row, 9 - len(prompt):], alone[0]), (family, row)
    right = torch.stack([torch.cat([p, p.new_zeros(9 - len(p))]) for p in prompts])
    assert torch.equal(model.generate(right, attention_mask=right.ne(0) | (torch.arange(9) < 4), max_new_tokens=STEPS,
                                      **GREEDY), batched), "a right-padded batch is moved to left padding"


def test_left_packed_keeps_each_rows_order():
    tokens, mask = left_packed(torch.tensor([[5, 6, 0, 0], [0, 7, 8, 9]]), torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]]))
    assert tokens.tolist() == [[0, 0, 5, 6], [0, 7, 8, 9]] and mask.tolist() == [[0, 0, 1, 1], [0, 1, 1, 1]]


# --- hooks and conditions in every step -------------------------------------------------------------------
@pytest.fixture(scope="module", params=["qwen3_5", "falcon_h1", "qwen2"])
def hybrid(request):
    return build(request.param, visible=True)[1]


def steering(model, layer: int = 1) -> Condition:
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(5))
    return add("resid_pre", direction, coeff=3.0, layers=layer)


@torch.no_grad()
@pytest.mark.parametrize("make", [
    lambda model: zero("mixer", layers=[0, 1]),
    steering,
    lambda model: steering(model) + zero("mlp", layers=-1),
], ids=["zero", "add", "add+zero"])
def test_a_cache_safe_condition_decodes_with_the_cache_as_the_full_forward_loop(hybrid, make):
    """A cache-safe condition keeps the cache (`cache_blocker` None), and the tokens equal a loop of full
    forwards of the whole sequence under the same condition; it changes them."""
    condition, tokens = make(hybrid), random_tokens(2, 7, seed=12)
    with condition.apply(hybrid):
        assert cache_blocker(hybrid) is None
        cached = hybrid.generate(tokens, max_new_tokens=STEPS, **GREEDY)
        recomputed = hybrid.generate(tokens, max_new_tokens=STEPS, use_past_kv_cache=False, **GREEDY)
        expected = full_forward_loop(hybrid, tokens)
    assert torch.equal(cached, expected) and torch.equal(recomputed, expected)
    assert not torch.equal(cached, hybrid.generate(tokens, max_new_tokens=STEPS, **GREEDY))


@torch.no_grad()
def test_a_condition_that_is_not_cache_safe_recomputes_and_equals_the_full_forward_loop(hybrid):
    condition = noise("resid_pre", 0.5, seed=2, layers=1)
    tokens = random_tokens(2, 7, seed=12)
    with condition.apply(hybrid):
        assert "not cache-safe" in cache_blocker(hybrid)
        generated = hybrid.generate(tokens, max_new_tokens=STEPS, **GREEDY)
        expected = full_forward_loop(hybrid, tokens)
    assert torch.equal(generated, expected)
    assert not torch.equal(generated, hybrid.generate(tokens, max_new_tokens=STEPS, **GREEDY))


@torch.no_grad()
@pytest.mark.parametrize("positions, acts_on", [
    (-1, lambda prompt: slice(prompt - 1, None)),        # the prompt's last token, then every new one
    (5, lambda prompt: slice(5, 6)),                    # once: the token at 5 (here a generated one)
    (slice(1, 3), lambda prompt: slice(1, 3)),          # in the prompt only
    (slice(-2, None), lambda prompt: slice(prompt - 2, None)),
])
def test_positions_count_real_tokens_across_steps(hybrid, positions, acts_on):
    """Per row (prompts of 4 and 6 tokens, left-padded together), a positional steering condition acts
    on the tokens the docstring says: a loop of full forwards whose hand-written hook adds the direction
    at those tokens' absolute positions gives the same continuation, cached or recomputed."""
    direction = torch.randn(hybrid.cfg.d_model, generator=torch.Generator().manual_seed(5))
    prompts = ragged_prompts()[1:]
    tokens, mask = left_padded_batch(prompts)
    with add("resid_pre", direction, coeff=3.0, layers=0, positions=positions).apply(hybrid):
        cached = hybrid.generate(tokens, attention_mask=mask, max_new_tokens=STEPS, **GREEDY)
        recomputed = hybrid.generate(tokens, attention_mask=mask, max_new_tokens=STEPS, use_past_kv_cache=False,
                                     **GREEDY)
    assert torch.equal(cached, recomputed)
    for row, prompt in enumerate(prompts):
        def steer(value, hook, columns=acts_on(len(prompt))):
            value = value.clone()
            value[:, columns] += 3.0 * direction
            return value

        with hybrid.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", steer)]):
            expected = full_forward_loop(hybrid, prompt[None])
        assert torch.equal(cached[row, tokens.shape[1] - len(prompt):], expected[0]), row
    plain = hybrid.generate(tokens, attention_mask=mask, max_new_tokens=STEPS, **GREEDY)
    assert not torch.equal(cached, plain)


@torch.no_grad()
def test_plain_hooks_see_each_pass_and_its_real_positions():
    """A hook function runs in the prompt pass and once per step on the new token only, and
    `real_positions` says where that token is in its row."""
    model = build("falcon_h1")[1]
    tokens, mask = left_padded_batch(ragged_prompts()[1:])
    seen = []

    def record(value, hook):
        seen.append((tuple(value.shape), model.real_positions.tolist()))

    with model.hooks(fwd_hooks=[("blocks.1.hook_ssm_out", record)]):
        model.generate(tokens, attention_mask=mask, max_new_tokens=3, **GREEDY)
    assert seen[0] == ((2, 6, 64), [[-1, -1, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5]])
    assert seen[1:] == [((2, 1, 64), [[4], [6]]), ((2, 1, 64), [[5], [7]])]


@torch.no_grad()
def test_hook_state_is_read_in_every_step_with_the_state_of_the_newest_token():
    """A hook on `hook_state` (fed by the eager mixer forward) makes every step recompute the sequence; at
    each step it reads the recurrent state after the newest token, as `cache_states` reads it from the
    whole sequence, and reading it leaves the tokens unchanged."""
    model = build("qwen3_5", visible=True)[1]
    name, tokens = "blocks.0.linear_attn.hook_state", random_tokens(1, 6, seed=4)
    states = []
    with model.hooks(fwd_hooks=[(name, lambda state, hook: states.append(state.clone()))]):
        assert "eager Gated DeltaNet forward" in cache_blocker(model)
        generated = model.generate(tokens, max_new_tokens=4, **GREEDY)
    assert torch.equal(generated, model.generate(tokens, max_new_tokens=4, **GREEDY))
    assert len(states) == 4
    for step, state in enumerate(states):
        expected = cache_states(model, generated[:, : 6 + step], -1, [name])[name][:, 0]
        torch.testing.assert_close(state, expected)


@torch.no_grad()
def test_state_patching_in_generation_equals_the_full_forward_loop():
    model = build("qwen3_5", visible=True)[1]
    tokens = random_tokens(1, 6, seed=4)
    condition = patch_state(random_tokens(1, 6, seed=9), "linear_attn", position=3, layers=[0, 1])
    with condition.apply(model):
        generated = model.generate(tokens, max_new_tokens=STEPS, **GREEDY)
        assert torch.equal(generated, full_forward_loop(model, tokens))
    assert not torch.equal(generated, model.generate(tokens, max_new_tokens=STEPS, **GREEDY))


@torch.no_grad()
def test_an_sae_acts_in_every_step():
    model = build("qwen3_5", visible=True)[1]
    tokens = random_tokens(2, 6, seed=4)
    sae = torch.nn.Linear(model.cfg.d_model, model.cfg.d_model)
    torch.nn.init.orthogonal_(sae.weight, generator=torch.Generator().manual_seed(0))
    with model.saes(sae, hook_names="blocks.2.hook_resid_post"):
        assert cache_blocker(model) is None
        generated = model.generate(tokens, max_new_tokens=STEPS, **GREEDY)
        assert torch.equal(generated, full_forward_loop(model, tokens))
    assert not torch.equal(generated, model.generate(tokens, max_new_tokens=STEPS, **GREEDY))


# --- TransformerLens's signature ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def bundled():
    from hybrid_lens import HookedHybrid

    return HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")


@torch.no_grad()
def test_return_types_and_inputs(bundled):
    model, prompt = bundled, "In the beginning God"
    text = model.generate(prompt, max_new_tokens=5, **GREEDY)
    tokens = model.generate(model.to_tokens(prompt), max_new_tokens=5, **GREEDY)
    assert isinstance(text, str) and text == model.to_string(tokens[0])
    assert model.generate([prompt], max_new_tokens=5, **GREEDY) == text  # a batch of one gives a string, as TL
    embeds = model.generate(prompt, max_new_tokens=5, return_type="embeds", **GREEDY)
    assert torch.equal(embeds, model.embed(tokens))
    from_embeds = model.generate(model.embed(model.to_tokens(prompt)), max_new_tokens=5, return_type="tokens", **GREEDY)
    assert torch.equal(from_embeds, tokens[:, -5:])  # embeddings in: only the new tokens come back
    texts = model.generate([prompt, "And"], max_new_tokens=5, **GREEDY)
    assert texts[0] == text and isinstance(texts[1], str)


@torch.no_grad()
def test_embeddings_input_includes_an_embedding_multiplier():
    """Falcon-H1 scales its embeddings only on the token path of `transformers`; `embed` includes the
    scale, so generating from `embed(tokens)` continues as generating from the tokens."""
    model = build("falcon_h1", visible=True, embedding_multiplier=3.0)[1]
    tokens = random_tokens(2, 6, seed=4)
    from_tokens = model.generate(tokens, max_new_tokens=STEPS, **GREEDY)
    for use_cache in (True, False):
        new = model.generate(model.embed(tokens), max_new_tokens=STEPS, use_past_kv_cache=use_cache,
                             return_type="tokens", **GREEDY)
        assert torch.equal(new, from_tokens[:, 6:]), use_cache


@torch.no_grad()
def test_stopping_at_eos_pads_finished_rows_with_eos(bundled):
    model = bundled
    tokens = model.to_tokens(["In the beginning God", "And God said unto"], padding_side="left")
    free = model.generate(["In the beginning God", "And God said unto"], max_new_tokens=6, return_type="tokens",
                          **GREEDY)
    stop = int(free[0, -5])  # the first row's second new token
    out = model.generate(["In the beginning God", "And God said unto"], max_new_tokens=6, return_type="tokens",
                         do_sample=False, verbose=False, eos_token_id=[stop, 10**6 % model.cfg.d_vocab])
    width = tokens.shape[1]
    first = out[0, width:].tolist()
    assert first[: first.index(stop) + 1] == free[0, width: width + first.index(stop) + 1].tolist()
    assert set(first[first.index(stop) + 1:]) <= {model.tokenizer.eos_token_id}


@torch.no_grad()
def test_sampling(bundled):
    model, prompt = bundled, "In the beginning God"
    greedy = model.generate(prompt, max_new_tokens=6, **GREEDY)
    assert model.generate(prompt, max_new_tokens=6, do_sample=True, top_k=1, verbose=False, stop_at_eos=False) == greedy
    assert model.generate(prompt, max_new_tokens=6, do_sample=True, temperature=0.0, verbose=False,
                          stop_at_eos=False) == greedy
    draws = []
    for seed in (0, 0, 1):
        torch.manual_seed(seed)
        draws.append(model.generate(prompt, max_new_tokens=12, temperature=2.0, verbose=False, stop_at_eos=False))
    assert draws[0] == draws[1] != draws[2]
    counts = torch.zeros(1, 5)
    filtered = Sampling(True, temperature=2.0, freq_penalty=1.0).filter(torch.tensor([[2.0, 4.0, 0, 0, 0]]),
                                                                        counts + torch.tensor([[0, 3.0, 0, 0, 0]]))
    assert filtered.tolist() == [[1.0, -1.0, 0.0, 0.0, 0.0]]
    top_p = Sampling(True, top_p=0.6).filter(torch.tensor([[3.0, 2.9, 0.0]]), torch.zeros(1, 3))
    assert torch.isfinite(top_p).tolist() == [[True, True, False]]  # the token crossing top_p is kept


@torch.no_grad()
def test_output_logits_and_generation_kwargs(bundled):
    model = bundled
    out = model.generate("In the beginning", max_new_tokens=3, output_logits=True, return_dict_in_generate=True,
                         **GREEDY)
    assert out.sequences.shape == (1, 6) and len(out.logits) == 3
    assert [int(step.argmax()) for step in out.logits] == out.sequences[0, 3:].tolist()
    with pytest.warns(UserWarning, match="unsupported generation kwargs; ignoring: \\['output_scores'\\]"):
        model.generate("In the beginning", max_new_tokens=2, output_scores=True, **GREEDY)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model.generate("In the beginning", max_new_tokens=2, return_dict_in_generate=True, **GREEDY)


def test_bad_arguments_are_named():
    model = build("qwen2")[1]
    tokens = random_tokens(1, 4)
    model.tokenizer = None
    with pytest.raises(GenerateArgumentError, match="needs a tokenizer"):
        model.generate("hello", verbose=False)
    with pytest.raises(AssertionError, match="eos_token_id"):  # what TransformerLens raises, and a ValueError
        model.generate(tokens, verbose=False)
    assert model.generate(tokens, max_new_tokens=3, verbose=False, stop_at_eos=False).shape == (1, 7)
    for bad in (dict(return_type="text"), dict(max_new_tokens=0), dict(top_p=0.0), dict(temperature=-1.0)):
        with pytest.raises(ValueError):
            model.generate(tokens, verbose=False, stop_at_eos=False, **bad)
    with pytest.raises(ValueError, match="d_model=64"):
        model.generate(torch.zeros(1, 3, 8), verbose=False, stop_at_eos=False)


def test_the_progress_bar(bundled, capsys):
    bundled.generate("In the beginning", max_new_tokens=3, do_sample=False)
    assert "generate" in capsys.readouterr().err
    bundled.generate("In the beginning", max_new_tokens=4, do_sample=False, stop_at_eos=False)
    assert "4/4" in capsys.readouterr().err  # one tick per new token (greedy decoding has no logits processor)
    with bundled.hooks(fwd_hooks=[("blocks.0.linear_attn.hook_state", lambda state, hook: None)]):
        bundled.generate("In the beginning", max_new_tokens=2, do_sample=True, stop_at_eos=False)
    assert "2/2" in capsys.readouterr().err  # recomputed steps, sampled


@torch.no_grad()
def test_a_hook_that_runs_the_model_inside_generation():
    """A hook may run the model itself (a nested forward): its pass gets its own state and logits once."""
    model = build("qwen2", visible=True)[1]
    tokens, inner = random_tokens(1, 5, seed=2), []

    def probe(value, hook):
        if current_state().prompt_lengths is not None and not inner:
            inner.append(model(random_tokens(1, 3, seed=5)).shape)

    with model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", probe)]):
        generated = model.generate(tokens, max_new_tokens=4, **GREEDY)
    assert inner == [torch.Size([1, 3, 256])]
    assert torch.equal(generated, model.generate(tokens, max_new_tokens=4, **GREEDY))


# --- steering ----------------------------------------------------------------------------------------------
def test_add_serialises_batches_and_refuses_what_does_not_fit():
    model = build("qwen2", visible=True)[1]
    condition = add("attn", torch.arange(64.0) / 64, coeff=2.0, layers=(0, 1))
    assert Condition.from_json(condition.to_json()) == condition
    assert Intervention.from_dict({"type": "add", "direction": [[1.0, 2.0]], "coeff": 1}).direction == ((1.0, 2.0),)
    tokens = random_tokens(2, 6)
    batched = Sweep([condition, Condition()], batch=2).logits(model, tokens)
    with condition.apply(model):
        torch.testing.assert_close(batched[0], model(tokens), atol=5e-5, rtol=0)
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        with add("attn", [1.0, 2.0, 3.0]).apply(model):
            model(tokens)
    with pytest.raises(ValueError, match="not a whole block"):
        add("block", [1.0]).fwd_hooks(model)
    for bad in ([], 1.0, [float("nan")], "up"):
        with pytest.raises(ValueError):
            Add(bad)


def streaming_workers() -> int:
    return sum(thread.name == STREAM_THREAD and thread.is_alive() for thread in threading.enumerate())


@torch.no_grad()
def test_generate_stream_yields_generate_in_transformer_lens_chunks_and_stops_when_left(bundled):
    """Chunks as TransformerLens yields them (the prompt and the first new ids, then `max_tokens_per_yield` ids,
    then the rest), concatenated equal to `generate` under the same hooks; leaving the loop stops the worker."""
    model = bundled
    tokens = model.to_tokens("And God said")
    with zero("attn", layers="late").apply(model):
        whole = model.generate(tokens, max_new_tokens=9, return_type="tokens", **GREEDY)
        chunks = list(model.generate_stream(tokens, max_new_tokens=9, max_tokens_per_yield=4, **GREEDY))
    assert [chunk.shape[1] for chunk in chunks] == [tokens.shape[1] + 1, 4, 4]
    assert torch.equal(torch.cat(chunks, 1), whole)
    stream = model.generate_stream(tokens, max_new_tokens=500, max_tokens_per_yield=1, **GREEDY)
    next(stream), next(stream)
    assert streaming_workers() == 1
    stream.close()  # the worker stops at its next step and is joined
    assert streaming_workers() == 0
    with pytest.raises(GenerateArgumentError, match="max_tokens_per_yield must be a positive int"):
        next(model.generate_stream(tokens, max_tokens_per_yield=0))


def test_generate_stream_raises_what_a_hook_raises_in_the_caller():
    _, model = build("qwen3_5")

    def broken(value, hook):
        if value.shape[1] == 1:  # the first cached step
            raise RuntimeError("a hook that fails in step 2")

    with model.hooks(fwd_hooks=[("blocks.3.hook_attn_out", broken)]):
        with pytest.raises(RuntimeError, match="a hook that fails in step 2"):
            list(model.generate_stream(random_tokens(1, 5), max_new_tokens=4, **GREEDY))
    assert streaming_workers() == 0 and not model.hook_dict["blocks.3.hook_attn_out"].fwd_hooks
