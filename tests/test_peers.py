"""Peers: nnsight traces and TransformerLens's bridge see the same values as our hooks."""

from __future__ import annotations

import copy

import pytest
import torch

from .fixtures import build

try:  # TransformerLens >= 3.4 (3.9 and 4.x in CI)
    from transformer_lens.model_bridge.sources import build_bridge_from_module
except ImportError:
    build_bridge_from_module = None


@torch.no_grad()
def test_nnsight_trace_values_equal_run_with_cache_for_every_canonical_name(pair, tokens):
    _, model = pair
    logits, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))  # the canonical names
    view = model.nnsight()
    saved = {}
    with view.trace(tokens):
        saved["hook_embed"] = view.hook_embed.output.save()
        for i, mixers in enumerate(model.layer_mixers):
            block = view.blocks[i]
            saved[f"blocks.{i}.hook_resid_pre"] = block.hook_resid_pre.output.save()
            for kind in mixers:
                saved[f"blocks.{i}.hook_{kind}_out"] = getattr(block, f"hook_{kind}_out").output.save()
            for name in ("hook_resid_mid", "hook_mlp_out", "hook_resid_post"):
                saved[f"blocks.{i}.{name}"] = getattr(block, name).output.save()
        saved["ln_final.hook_normalized"] = view.ln_final.hook_normalized.output.save()
        saved["hook_logits"] = view.hook_logits.output.save()
    assert set(saved) == set(cache)
    for name, value in saved.items():
        assert torch.equal(value, cache[name]), name
    assert torch.equal(saved["hook_logits"], logits)


@torch.no_grad()
def test_zero_written_in_a_trace_equals_a_zero_hook(pair, tokens):
    _, model = pair
    kind = model.layer_mixers[1][0]
    name = f"hook_{kind}_out"
    view = model.nnsight()
    with view.trace(tokens):
        point = getattr(view.blocks[1], name)
        point.output = torch.zeros_like(point.output)
        traced = view.output.save()
    hooked = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.1.{name}", lambda v, hook: torch.zeros_like(v))])
    assert torch.equal(traced, hooked)
    assert not torch.allclose(traced, model(tokens))


@torch.no_grad()
def test_nnsight_inner_points_on_request(tokens):
    _, model = build("falcon_h1")
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.2.ssm.hook_x", "blocks.2.attn.hook_q"])
    view = model.nnsight(inner_points=True)
    try:
        with view.trace(tokens):
            x = view.blocks[2].ssm.hook_x.output.save()
            q = view.blocks[2].attn.hook_q.output.save()
    finally:
        model.nnsight(inner_points=False)
    assert torch.equal(x, cache["blocks.2.ssm.hook_x"]) and torch.equal(q, cache["blocks.2.attn.hook_q"])
    assert not any(tap.active for tap in model._wrapping.taps)


@pytest.mark.skipif(
    build_bridge_from_module is None,
    reason="needs TransformerLens's TransformerBridge (transformer_lens.model_bridge.sources."
    "build_bridge_from_module, TransformerLens >= 3.4)",
)
@torch.no_grad()
def test_qwen2_hook_values_equal_transformer_lens_bridge(tokens):
    reference, model = build("qwen2")
    bridge = build_bridge_from_module(copy.deepcopy(reference), "Qwen2ForCausalLM", hf_config=reference.config)
    bridge_logits, bridge_cache = bridge.run_with_cache(tokens)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: True)
    torch.testing.assert_close(logits, bridge_logits, atol=1e-6, rtol=1e-5)
    shared = [name for name in cache if name in bridge_cache]
    expected = {"hook_embed", "ln_final.hook_normalized"} | {
        f"blocks.{i}.{p}" for i in range(model.n_layers)
        for p in ("hook_resid_pre", "hook_attn_out", "hook_resid_mid", "hook_mlp_out", "hook_resid_post",
                  "attn.hook_q", "attn.hook_k", "attn.hook_v", "attn.hook_z", "attn.hook_pattern")
    }
    assert expected <= set(shared)
    for name in shared:
        ours, theirs = cache[name], bridge_cache[name]
        if name.endswith("hook_attn_scores"):  # masked scores: -inf as HookedTransformer; the bridge writes finfo.min
            masked = torch.isneginf(ours)
            assert torch.equal(masked, theirs <= torch.finfo(theirs.dtype).min / 2), name
            ours, theirs = ours[~masked], theirs[~masked]
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5, msg=name)
