"""`copy.deepcopy` and `pickle` of a `HookedHybrid`: an independent model whose hooks work (issue #24).

A wrapped model's decoder layers run forwards that close over its own hook points, so a plain copy of
the module tree ran the original's points: `run_with_cache` on the copy returned 1 entry and running
the copy fired the original's hooks. Each test below fails on that behaviour."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import skip_layer, zero
from hybrid_lens.mixers import cache_states
from hybrid_lens.sae import attached_saes

from .fixtures import FAMILIES, build, no_hooks_left, random_tokens

TOKENS = random_tokens(2, 12)


def counter(log: list, label: str):
    return lambda value, hook: log.append((label, hook.name))


@pytest.fixture(scope="module", params=FAMILIES)
def original(request):
    return build(request.param, visible=True)[1]


@torch.no_grad()
def test_a_deep_copy_runs_its_own_hook_points_and_equals_the_original(original):
    twin = copy.deepcopy(original)
    assert twin.hf_model is not original.hf_model
    assert [m.training for m in twin.hf_model.modules()] == [m.training for m in original.hf_model.modules()]
    assert not set(map(id, twin.parameters())) & set(map(id, original.parameters()))
    names = lambda name: True  # every point, inner ones too  # noqa: E731
    logits, cache = original.run_with_cache(TOKENS, names_filter=names)
    twin_logits, twin_cache = twin.run_with_cache(TOKENS, names_filter=names)
    assert torch.equal(twin_logits, logits) and torch.equal(twin(TOKENS), original(TOKENS))
    assert len(cache) > 40 and list(twin_cache) == list(cache)
    assert all(torch.equal(twin_cache[name], cache[name]) for name in cache)
    assert no_hooks_left(twin) and no_hooks_left(original)


@torch.no_grad()
def test_hooks_on_either_model_fire_on_that_model_only(original):
    twin, log = copy.deepcopy(original), []
    point = "blocks.1.hook_resid_pre"
    with original.hooks(fwd_hooks=[(point, counter(log, "original"))]):
        twin(TOKENS)
        assert log == []
        original(TOKENS)
    assert log == [("original", point)]
    with twin.hooks(fwd_hooks=[(point, counter(log, "twin"))]):
        original(TOKENS)
        assert log == [("original", point)]
        twin(TOKENS)
    assert log == [("original", point), ("twin", point)]
    clean = original(TOKENS)
    with zero("mlp", layers=0).apply(twin):
        zeroed = twin(TOKENS)
        assert torch.equal(original(TOKENS), clean)  # the copy's condition does not act on the original
    with zero("mlp", layers=0).apply(original):
        assert torch.equal(original(TOKENS), zeroed)
    assert not torch.equal(zeroed, original(TOKENS))  # the condition matters
    assert no_hooks_left(twin) and no_hooks_left(original)


@torch.no_grad()
def test_hooks_attached_when_copying_are_copied_and_then_independent():
    _, model = build("qwen3_5", visible=True)
    log = []
    model.add_hook("blocks.0.hook_mlp_out", counter(log, "permanent"), is_permanent=True)
    model.add_hook("blocks.2.linear_attn.hook_v", counter(log, "inner"))  # an inner point: its tap must follow
    twin = copy.deepcopy(model)
    twin(TOKENS)
    assert log == [("permanent", "blocks.0.hook_mlp_out"), ("inner", "blocks.2.linear_attn.hook_v")]
    model.reset_hooks(including_permanent=True)
    assert no_hooks_left(model)
    log.clear()
    twin(TOKENS)
    assert len(log) == 2  # removing them from the original left the copy's
    twin.reset_hooks()
    twin(TOKENS)
    assert len(log) == 3  # reset_hooks keeps permanent hooks, as TransformerLens's does
    assert twin.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks[0].is_permanent


@torch.no_grad()
def test_a_copy_keeps_spliced_saes_nnsight_taps_and_attributes_as_its_own():
    _, model = build("falcon_h1", visible=True)
    sae = torch.nn.Linear(model.cfg.d_model, model.cfg.d_model)
    model.add_sae(sae, hook_name="blocks.1.hook_attn_out")
    model.nnsight(inner_points=True)
    model.notes = {"probe": [1, 2]}
    try:
        twin = copy.deepcopy(model)
        assert list(twin.acts_to_saes) == ["blocks.1.hook_attn_out"]
        assert twin.acts_to_saes["blocks.1.hook_attn_out"] is not sae
        assert torch.equal(twin(TOKENS), model(TOKENS))
        assert all(tap.active for tap in twin._wrapping.taps)
        _, cache = model.run_with_cache(TOKENS, names_filter=["blocks.0.ssm.hook_B", "blocks.2.hook_resid_pre"])
        for traced in (twin, model):  # the copy's own view, and the original's still working
            view = traced.nnsight(inner_points=True)
            with view.trace(TOKENS):
                b = view.blocks[0].ssm.hook_B.output.save()
                resid = view.blocks[2].hook_resid_pre.output.save()
            assert torch.equal(b, cache["blocks.0.ssm.hook_B"]) and torch.equal(resid, cache["blocks.2.hook_resid_pre"])
        assert twin.nnsight() is not model.nnsight(inner_points=True)
        assert twin.notes == model.notes and twin.notes is not model.notes
        twin.reset_saes()
        assert list(model.acts_to_saes) == ["blocks.1.hook_attn_out"]
        with torch.no_grad():
            twin.hf_model.model.embed_tokens.weight.mul_(2)
        assert not torch.equal(twin(TOKENS), model(TOKENS))
    finally:
        model.nnsight(inner_points=False)
        model.reset_saes()
    twin.unwrap()
    assert model(TOKENS).shape[:2] == TOKENS.shape  # unwrapping the copy left the original wrapped


@torch.no_grad()
def test_recurrent_states_and_sweeps_run_on_a_copy():
    _, model = build("qwen3_5", visible=True)
    twin = copy.deepcopy(model)
    name = "blocks.0.linear_attn.hook_state"
    ours, theirs = cache_states(model, TOKENS, [3, -1], [name]), cache_states(twin, TOKENS, [3, -1], [name])
    assert torch.equal(ours[name], theirs[name])
    with skip_layer(2).apply(twin):
        skipped = twin(TOKENS)
    with skip_layer(2).apply(model):
        assert torch.equal(model(TOKENS), skipped)


@torch.no_grad()
def test_a_deep_copy_of_the_wrapped_transformers_model_is_the_plain_model():
    reference, model = build("qwen2", visible=True)
    log = []
    model.add_hook("blocks.0.hook_resid_pre", counter(log, "original"))
    plain = copy.deepcopy(model.hf_model)
    assert torch.equal(plain(TOKENS).logits, reference(TOKENS).logits) and log == []
    restored = pickle.loads(pickle.dumps(model.hf_model))
    assert torch.equal(restored(TOKENS).logits, reference(TOKENS).logits) and log == []
    model.reset_hooks()
    assert torch.equal(HookedHybrid.from_hf(plain)(TOKENS), model(TOKENS))  # and it can be wrapped anew


@torch.no_grad()
def test_pickle_round_trips_a_model_without_hooks_and_refuses_one_with_hooks(original):
    restored = pickle.loads(pickle.dumps(original))
    assert torch.equal(restored(TOKENS), original(TOKENS))
    assert len(restored.run_with_cache(TOKENS)[1]) == len(original.run_with_cache(TOKENS)[1])
    buffer = io.BytesIO()
    torch.save(original, buffer)
    buffer.seek(0)
    assert torch.equal(torch.load(buffer, weights_only=False)(TOKENS), original(TOKENS))
    log = []
    with restored.hooks(fwd_hooks=[("blocks.0.hook_resid_post", counter(log, "restored"))]):
        original(TOKENS)
    assert log == []
    original.add_hook("blocks.0.hook_resid_post", counter(log, "x"))
    try:
        with pytest.raises(TypeError, match="Cannot pickle a HookedHybrid with hooks attached"):
            pickle.dumps(original)
    finally:
        original.reset_hooks()
    assert no_hooks_left(original) and torch.equal(original(TOKENS), restored(TOKENS))


def test_shallow_copies_and_copies_of_an_unwrapped_model_are_refused():
    _, model = build("qwen2")
    with pytest.raises(TypeError, match="cannot be copied shallowly"):
        copy.copy(model)
    model.unwrap()
    with pytest.raises(RuntimeError, match="was unwrapped; copy its transformers model"):
        copy.deepcopy(model)


@torch.no_grad()
def test_an_sae_lens_sae_and_its_hooks_are_copied():
    """SAE-Lens's own test helpers deep-copy the model they splice SAEs into."""
    sae_lens = pytest.importorskip("sae_lens")
    from sae_lens.saes.standard_sae import StandardSAE, StandardSAEConfig

    _, model = build("qwen3_5", visible=True)
    sae = StandardSAE(StandardSAEConfig(d_in=model.cfg.d_model, d_sae=64, dtype="float32", device="cpu"))
    sae.cfg.metadata.hook_name = "blocks.1.hook_mlp_out"
    torch.nn.init.normal_(sae.W_enc)
    model.add_sae(sae)
    log = []
    model.add_hook("blocks.1.hook_mlp_out.hook_sae_acts_post", counter(log, "sae"))
    twin = copy.deepcopy(model)
    assert torch.equal(twin(TOKENS), model(TOKENS)) and len(log) == 2
    model.reset_hooks()
    twin(TOKENS)
    assert len(log) == 3  # the copy's own hook, on the copy's own SAE
    assert isinstance(twin.acts_to_saes["blocks.1.hook_mlp_out"], sae_lens.SAE)
    assert twin.acts_to_saes["blocks.1.hook_mlp_out"] is not sae


@torch.no_grad()
def test_a_copy_keeps_a_transcoder_and_its_special_token_exclusion():
    """A transcoder (reads one point, stands at another) and `exclude_special_tokens` survive the copy: the
    copy's output equals the original's and differs from the plain model's."""
    _, model = build("qwen3_5", visible=True)
    tokens = torch.cat([torch.full((2, 1), model.tokenizer.bos_token_id or 0), TOKENS], 1)
    plain = model(tokens)
    transcoder = torch.nn.Linear(model.cfg.d_model, model.cfg.d_model)
    model.add_sae(transcoder, False, True, hook_name="blocks.1.hook_resid_mid", hook_name_out="blocks.1.hook_mlp_out")
    try:
        twin = copy.deepcopy(model)
        (splice,) = attached_saes(twin).values()
        assert (splice.hook_name, splice.hook_point.name) == ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")
        assert splice.exclude_special_tokens is True and splice.sae is not transcoder
        assert torch.equal(twin(tokens), model(tokens)) and not torch.equal(twin(tokens), plain)
    finally:
        model.reset_saes()
    twin.unwrap()
