"""Core properties of HookedHybrid on tiny random-init models of all three families."""

from __future__ import annotations

import pytest
import torch

from hybrid_lens import HookedHybrid

from .fixtures import assert_cache_matches_hidden_states, build


def block_input_norm(reference, layer: int, family: str):
    layer_module = reference.model.layers[layer]
    return layer_module.pre_ff_layernorm if family == "falcon_h1" else layer_module.post_attention_layernorm


@torch.no_grad()
def test_no_hooks_reproduces_transformers_logits_exactly(pair, tokens):
    reference, model = pair
    assert torch.equal(model(tokens), reference(tokens).logits)


def test_cache_residuals_equal_output_hidden_states(pair, tokens):
    reference, model = pair
    assert_cache_matches_hidden_states(model, reference, tokens)


@torch.no_grad()
def test_decomposition_is_exact(pair, tokens):
    _, model = pair
    _, cache = model.run_with_cache(tokens)
    for layer, mixers in enumerate(model.layer_mixers):
        pre = cache["resid_pre", layer]
        mid = pre + sum(cache[f"blocks.{layer}.hook_{kind}_out"] for kind in mixers)
        torch.testing.assert_close(cache["resid_mid", layer], mid, atol=1e-5, rtol=0)
        torch.testing.assert_close(cache["resid_post", layer], mid + cache["mlp_out", layer], atol=1e-5, rtol=0)
    parts, labels = cache.decompose_resid(return_labels=True)
    torch.testing.assert_close(parts.sum(0), cache[f"blocks.{model.n_layers - 1}.hook_resid_post"], atol=1e-5, rtol=0)
    assert labels[0] == "embed" and len(labels) == 1 + sum(len(m) + 1 for m in model.layer_mixers)
    stacked, labels = cache.accumulated_resid(return_labels=True)
    assert stacked.shape[0] == model.n_layers + 1 and labels[-1] == "final_post"


@torch.no_grad()
def test_resid_mid_write_changes_the_residual_stream(pair, tokens, family):
    """Adding d at resid_mid must equal: MLP input + d, and the block output + d (plain HF hooks)."""
    reference, model = pair
    layer = 1
    delta = torch.randn(model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
    ours = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_resid_mid", lambda v, hook: v + delta)])

    def add_to_input(_module, args):
        return (args[0] + delta,)

    def add_to_output(_module, _args, output):
        return (output[0] + delta,) if isinstance(output, tuple) else output + delta

    handles = [
        block_input_norm(reference, layer, family).register_forward_pre_hook(add_to_input),
        reference.model.layers[layer].register_forward_hook(add_to_output),
    ]
    try:
        expected = reference(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(ours, reference(tokens).logits, atol=1e-3)


def mixer_module(reference, layer: int, kind: str):
    block = reference.model.layers[layer]
    return {"attn": getattr(block, "self_attn", None), "linear_attn": getattr(block, "linear_attn", None),
            "ssm": getattr(block, "mamba", None), "mlp": getattr(block, "mlp", None) or getattr(block, "feed_forward", None)}[kind]


@torch.no_grad()
def test_every_component_output_write_matches_scaling_the_hf_module(pair, tokens):
    """Scaling a block-level contribution by 0.5 equals scaling the HF module's output (multipliers are linear)."""
    reference, model = pair
    for layer, mixers in enumerate(model.layer_mixers):
        for kind in (*mixers, "mlp"):
            ours = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.hook_{kind}_out", lambda v, hook: 0.5 * v)])

            def halve(_module, _args, output):
                return (0.5 * output[0], *output[1:]) if isinstance(output, tuple) else 0.5 * output

            handle = mixer_module(reference, layer, kind).register_forward_hook(halve)
            try:
                expected = reference(tokens).logits
            finally:
                handle.remove()
            torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5, msg=f"layer {layer} {kind}")


def first_layer_with(model, kind):
    return model.layout.layers_with(kind)[0]


@torch.no_grad()
def test_attention_inner_point_writes_match_hf_projection_hooks(pair, tokens):
    reference, model = pair
    layer = first_layer_with(model, "attn")
    attn = reference.model.layers[layer].self_attn
    gated = attn.q_proj.out_features == 2 * attn.o_proj.in_features

    def double_query(_module, _args, out):
        if not gated:
            return 2 * out
        heads = out.unflatten(-1, (attn.o_proj.in_features // attn.head_dim, -1)).clone()
        heads[..., : attn.head_dim] *= 2
        return heads.flatten(-2)

    cases = [
        ("hook_q", attn.q_proj.register_forward_hook, double_query, lambda v, hook: 2 * v),
        ("hook_v", attn.v_proj.register_forward_hook, lambda m, a, out: torch.zeros_like(out), lambda v, hook: torch.zeros_like(v)),
        ("hook_z", attn.o_proj.register_forward_pre_hook, lambda m, args: (3 * args[0],), lambda v, hook: 3 * v),
        # a zero pattern makes the attention output zero, as a zero o_proj input does
        ("hook_pattern", attn.o_proj.register_forward_pre_hook, lambda m, args: (torch.zeros_like(args[0]),),
         lambda v, hook: torch.zeros_like(v)),
    ]
    for name, register, hf_hook, our_hook in cases:
        ours = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.{name}", our_hook)])
        handle = register(hf_hook)
        try:
            expected = reference(tokens).logits
        finally:
            handle.remove()
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5, msg=name)


@torch.no_grad()
def test_recurrent_inner_points(family, tokens):
    """Eager mixer paths equal transformers' exactly; zero x (Mamba-2) or beta (Gated DeltaNet) zeroes the mixer."""
    if family == "qwen2":
        pytest.skip("no recurrent mixer")
    reference, model = build(family)
    kind, point, hf_name = ("ssm", "hook_x", "mamba") if family == "falcon_h1" else ("linear_attn", "hook_beta", "linear_attn")
    layer = first_layer_with(model, kind)
    inner = [n for n in model.hook_names() if f".{kind}." in n]
    logits, cache = model.run_with_cache(tokens, names_filter=inner)
    assert torch.equal(logits, reference(tokens).logits)
    assert {n.split(".")[-1] for n in cache} >= {point, "hook_q" if kind == "linear_attn" else "hook_B"}

    ours = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.{kind}.{point}", lambda v, hook: torch.zeros_like(v))])
    module = getattr(reference.model.layers[layer], hf_name)
    handle = module.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    try:
        expected = reference(tokens).logits
    finally:
        handle.remove()
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert not any(tap.active for tap in model._wrapping.taps)


@torch.no_grad()
def test_hooks_removed_and_weights_untouched_also_after_an_exception(pair, tokens):
    _, model = pair
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []
    model.run_with_hooks(tokens, fwd_hooks=[(lambda n: True, lambda v, hook: calls.append(hook.name))])
    assert len(calls) == len(model.hook_names())

    def explode(value, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_mid", explode), ("blocks.0.attn.hook_pattern" if
                                                  "attn" in model.layer_mixers[0] else "blocks.0.hook_mlp_out", explode)])
    assert all(not p.fwd_hooks and not p._forward_hooks for p in model.hook_dict.values())
    assert not any(tap.active for tap in model._wrapping.taps) and not model._pattern_mode.active
    assert model.cfg._attn_implementation != "hybrid_lens_eager"
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@torch.no_grad()
def test_hooks_context_manager_and_reset(pair, tokens):
    _, model = pair
    with model.hooks(fwd_hooks=[("hook_embed", lambda v, hook: torch.zeros_like(v))]):
        zeroed = model(tokens)
    assert not torch.allclose(zeroed, model(tokens))
    model.add_hook("blocks.0.hook_mlp_out", lambda v, hook: 2 * v)
    assert model.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks
    model.reset_hooks()
    assert not model.hook_dict["blocks.0.hook_mlp_out"].fwd_hooks


@torch.no_grad()
def test_text_input_padding_is_exact_per_sequence(pair):
    """Right-padded batches give each sequence the values of its unbatched run (left padding too)."""
    _, model = pair
    texts = ["In the beginning God created", "And the earth was without form, and void"]
    for side in ("right", "left"):
        tokens, mask = model.to_tokens_and_mask(texts, padding_side=side)
        logits, cache = model.run_with_cache(tokens, attention_mask=mask)
        for row, text in enumerate(texts):
            solo_logits, solo = model.run_with_cache(text)
            real = mask[row].bool()
            torch.testing.assert_close(logits[row, real], solo_logits[0], atol=2e-5, rtol=1e-4, msg=side)
            for name in ("blocks.1.hook_resid_post", f"blocks.0.hook_{model.layer_mixers[0][0]}_out"):
                torch.testing.assert_close(cache[name][row, real], solo[name][0], atol=2e-5, rtol=1e-4, msg=side)
    # a list of strings goes through the same right-padded path
    batched = model(texts)
    assert batched.shape[0] == 2


def test_tokens_round_trip(pair):
    _, model = pair
    tokens = model.to_tokens("Let there be light", prepend_bos=False)
    assert tokens.shape == (1, 18)
    assert model.to_string(tokens[0]) == "Let there be light"
    default = model.to_tokens("Let there be light")  # with BOS where TransformerLens prepends it (not for Qwen)
    assert torch.equal(default, torch.cat([torch.tensor([[1]]), tokens], 1) if model.adapter.prepend_bos else tokens)


def test_unknown_hook_name_lists_closest_valid_names(pair):
    _, model = pair
    with pytest.raises(KeyError, match="blocks.1.hook_resid_mid"):
        model.run_with_hooks(torch.tensor([[5, 6]]), fwd_hooks=[("blocks.1.hook_resid_middle", lambda v, hook: v)])
    with pytest.raises(ValueError, match="matched no hook point"):
        model.run_with_cache(torch.tensor([[5, 6]]), names_filter=lambda name: name.endswith("nonexistent"))
    assert all(not p.fwd_hooks for p in model.hook_dict.values())


def test_unknown_architecture_names_supported_families():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=32))
    with pytest.raises(NotImplementedError, match="Qwen3_5ForCausalLM.*FalconH1ForCausalLM.*Qwen2ForCausalLM"):
        HookedHybrid.from_hf(gpt2)


def test_components_and_layer_types_come_from_the_config():
    _, qwen35 = build("qwen3_5")
    assert qwen35.layer_types == ["linear_attn"] * 3 + ["attn"] + ["linear_attn"] * 3 + ["attn"]
    assert [c.layer for c in qwen35.components("attn")] == [3, 7]
    assert qwen35.components("linear_attn")[0].hook_name == "blocks.0.hook_linear_attn_out"
    _, falcon = build("falcon_h1")
    assert [c.layer for c in falcon.components("ssm")] == [c.layer for c in falcon.components("attn")] == [0, 1, 2, 3]
    _, custom = build("qwen3_5", layer_types=["full_attention", "linear_attention"] * 4)
    assert custom.layer_types[:2] == ["attn", "linear_attn"]
    with pytest.raises(ValueError, match="choose one of"):
        custom.components("mamba")


@torch.no_grad()
def test_final_norm_and_unembed_reproduce_the_logits(pair, tokens):
    _, model = pair
    logits, cache = model.run_with_cache(tokens)
    last = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(model.unembed(model.apply_final_norm(last)), logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(cache["ln_final.hook_normalized"] @ model.W_U, logits, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_hook_points_run_torch_module_hooks_on_them_and_global_ones(pair, tokens):
    """A hook point with no hook skips `nn.Module.__call__` (it runs in every pass); a torch hook on the
    point itself, or a global module hook, must still run, as `nn.Module.__call__` would run it."""
    from hybrid_lens.hook_points import HookPoint

    _, model = pair
    plain = model(tokens)
    point = model.blocks[1].hook_resid_post
    for register in (point.register_forward_hook, point.register_forward_pre_hook):
        hook = (lambda module, args, out: out * 0) if register == point.register_forward_hook else \
            (lambda module, args: (args[0] * 0,))
        handle = register(hook)
        try:
            zeroed = model(tokens)
        finally:
            handle.remove()
        assert torch.equal(zeroed, model.run_with_hooks(tokens, fwd_hooks=[("blocks.1.hook_resid_post",
                                                                            lambda value, hook: value * 0)]))
        assert not torch.equal(zeroed, plain)
    seen = []
    handle = torch.nn.modules.module.register_module_forward_hook(
        lambda module, args, out: seen.append(module) if isinstance(module, HookPoint) else None)
    try:
        model(tokens)
    finally:
        handle.remove()
    assert any(module is point for module in seen) and any(module is model.hook_embed for module in seen)
    assert torch.equal(model(tokens), plain)
