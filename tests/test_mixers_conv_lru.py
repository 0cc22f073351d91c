"""Inner points of LFM2's short convolution and RecurrentGemma's RG-LRU block, and RecurrentGemma's
soft-capped logits, checked against independent computations: torch forward hooks on the
`transformers` submodules of an identical plain model, the module's own Conv1d, the gates
recomputed with einsum, and the recurrent state the plain model keeps with `use_cache=True`.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from transformers import DynamicCache

from hybrid_lens.analysis import logit_attribution
from hybrid_lens.interventions import knockout
from hybrid_lens.mixers.state import state_positions

from .fixtures import build, random_tokens


def pair(family: str, **overrides):
    return build(family, visible=True, **overrides)


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 12)


@torch.no_grad()
def recorded(reference, tokens, modules: dict, **kwargs) -> dict:
    """`{name: (inputs, output)}` of plain-model submodules during one forward."""
    seen = {}
    handles = [module.register_forward_hook(lambda _m, args, out, name=name: seen.__setitem__(name, (args, out)))
               for name, module in modules.items()]
    try:
        reference(tokens, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.fixture(scope="module")
def lfm2():
    return pair("lfm2")


@pytest.fixture(scope="module")
def gemma():
    return pair("recurrent_gemma")


@torch.no_grad()
def test_short_conv_points_match_the_transformers_submodules(lfm2, tokens):
    reference, model = lfm2
    conv = reference.model.layers[0].conv
    seen = recorded(reference, tokens, {"in_proj": conv.in_proj, "out_proj": conv.out_proj}, use_cache=False)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0.conv."))
    assert torch.equal(logits, reference(tokens, use_cache=False).logits)  # the eager path is bit-identical
    B, C, x = seen["in_proj"][1].chunk(3, dim=-1)
    assert torch.equal(cache["blocks.0.conv.hook_B"], B)
    assert torch.equal(cache["blocks.0.conv.hook_C"], C)
    assert torch.equal(cache["blocks.0.conv.hook_x"], x)
    by_module = conv.conv((B * x).transpose(1, 2))[..., : tokens.shape[1]].transpose(1, 2)  # the Conv1d itself
    assert torch.equal(cache["blocks.0.conv.hook_conv"], by_module)
    assert torch.equal(cache["blocks.0.conv.hook_y"], seen["out_proj"][0][0])
    torch.testing.assert_close(cache["blocks.0.conv.hook_y"], C * by_module)


@torch.no_grad()
def test_short_conv_writes_reach_the_output(lfm2, tokens):
    _, model = lfm2
    for point in ("hook_conv", "hook_B", "hook_C"):
        with model.hooks(fwd_hooks=[(f"blocks.0.conv.{point}", lambda value, hook: torch.zeros_like(value))]):
            _, cache = model.run_with_cache(tokens, names_filter="blocks.0.hook_conv_out")
        assert not cache["blocks.0.hook_conv_out"].any(), point  # no conv bias: the mixer output vanishes


@torch.no_grad()
def test_lfm2_attention_points_with_out_proj(lfm2, tokens):
    reference, model = lfm2
    attention = reference.model.layers[1].self_attn
    seen = recorded(reference, tokens, {"q": attention.q_proj, "out": attention.out_proj}, use_cache=False)
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_z"])
    assert torch.equal(cache["blocks.1.attn.hook_q"].flatten(-2), seen["q"][1])
    assert torch.equal(cache["blocks.1.attn.hook_z"].flatten(-2), seen["out"][0][0])


@torch.no_grad()
def test_rg_lru_points_match_the_transformers_submodules(gemma, tokens):
    reference, model = gemma
    block = reference.model.layers[0].temporal_block
    modules = {"x": block.linear_x, "y": block.linear_y, "conv": block.conv_1d, "lru": block.rg_lru}
    seen = recorded(reference, tokens, modules, use_cache=False)
    logits, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0.ssm."))
    assert torch.equal(logits, reference(tokens, use_cache=False).logits)  # the eager path is bit-identical
    point = "blocks.0.ssm.hook_{}".format
    assert torch.equal(cache[point("x")], seen["x"][1])
    assert torch.equal(cache[point("y")], seen["y"][1])
    assert torch.equal(cache[point("conv")], seen["conv"][1][..., : tokens.shape[1]].transpose(1, 2))
    assert torch.equal(cache[point("recurrence_out")], seen["lru"][1])
    lru, heads = block.rg_lru, block.rg_lru.num_attention_heads
    per_head = cache[point("conv")].unflatten(-1, (heads, -1))
    for name, weight, bias in (("input_gate", lru.input_gate_weight, lru.input_gate_bias),
                               ("recurrent_gate", lru.recurrent_gate_weight, lru.recurrent_gate_bias)):
        expected = torch.sigmoid(torch.einsum("bthi,hij->bthj", per_head, weight) + bias).flatten(-2)
        torch.testing.assert_close(cache[point(name)], expected)
    torch.testing.assert_close(cache[point("log_decay")],
                               -8.0 * cache[point("recurrent_gate")] * F.softplus(lru.recurrent_param))


@torch.no_grad()
def test_rg_lru_state_equals_the_transformers_recurrent_state(gemma, tokens):
    """`hook_state` after token t is the state transformers keeps after a `use_cache=True` run on tokens 0..t."""
    reference, model = gemma
    lru = reference.model.layers[0].temporal_block.rg_lru
    seen = []
    with state_positions(model, [4, -1]):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.ssm.hook_state", lambda state, hook: seen.append(state))])
    assert len(seen) == 2
    for state, end in zip(seen, (5, tokens.shape[1])):
        reference(tokens[:, :end], use_cache=True)
        assert torch.equal(state, lru.recurrent_states)


@torch.no_grad()
def test_rg_lru_state_write_changes_only_later_positions(gemma, tokens):
    _, model = gemma
    names = "blocks.0.ssm.hook_recurrence_out"
    _, clean = model.run_with_cache(tokens, names_filter=names)
    zero = [("blocks.0.ssm.hook_state", lambda state, hook: torch.zeros_like(state))]
    with state_positions(model, 5), model.hooks(fwd_hooks=zero):
        _, patched = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(patched[names][:, :6], clean[names][:, :6])
    assert (patched[names][:, 6:] - clean[names][:, 6:]).abs().min() > 0


@torch.no_grad()
def test_recurrent_gemma_attention_pattern_is_the_eager_softmax(tokens):
    reference, model = pair("recurrent_gemma", attn_implementation="eager")
    attentions = reference(tokens, use_cache=False, output_attentions=True).attentions
    _, cache = model.run_with_cache(tokens, names_filter="blocks.2.attn.hook_pattern")
    torch.testing.assert_close(cache["blocks.2.attn.hook_pattern"], attentions[-1])
    assert not cache["blocks.2.attn.hook_pattern"][..., -1, :3].any()  # the local window (8) hides early tokens


@torch.no_grad()
def test_soft_capped_unembed_reproduces_the_logits(gemma, tokens):
    reference, model = gemma
    logits, cache = model.run_with_cache(tokens)
    final = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    assert torch.equal(model.unembed(model.apply_final_norm(final)), logits)
    uncapped = reference.lm_head(cache["ln_final.hook_normalized"])
    assert uncapped.abs().max() > logits.abs().max()  # the cap is doing something on this model
    with pytest.raises(NotImplementedError, match="soft-caps"):
        model.W_U
    with pytest.raises(NotImplementedError, match="soft-caps"):
        logit_attribution(model, cache, 5)


def test_rg_lru_inner_points_refuse_the_stateful_cache(gemma, tokens):
    _, model = gemma
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        model.run_with_hooks(tokens, use_cache=True, fwd_hooks=[("blocks.0.ssm.hook_conv", lambda x, hook: x)])


@torch.no_grad()
def test_recurrent_gemma_stateful_decoding_continues_the_prefill(gemma, tokens):
    """With `use_cache=True` the recurrent blocks keep their conv and RG-LRU states on the modules:
    a one-token step after a prefill gives the logits of the whole sequence."""
    reference, model = gemma
    cache = DynamicCache(config=reference.config)
    prefill = model(tokens[:, :8], cache=cache, use_cache=True)
    step = model(tokens[:, 8:9], cache=cache, use_cache=True, position_ids=torch.full((2, 1), 8))
    whole = reference(tokens[:, :9], use_cache=False).logits
    assert torch.equal(prefill, whole[:, :8])
    torch.testing.assert_close(step[:, 0], whole[:, 8])


@torch.no_grad()
def test_rg_lru_pattern_reproduces_the_recurrence(gemma, tokens):
    """`hook_pattern` applied to the normalized input (rebuilt from the gates) gives the RG-LRU output
    transformers computes, and a knockout through it cuts one route only."""
    reference, model = gemma
    lru = reference.model.layers[0].temporal_block.rg_lru
    seen = recorded(reference, tokens, {"lru": lru}, use_cache=False)
    point = "blocks.0.ssm.hook_{}".format
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0.ssm."))
    reset = torch.arange(tokens.shape[1])[:, None] == 0
    scale = torch.where(reset, 1.0, torch.sqrt(1 - torch.exp(2 * cache[point("log_decay")])))
    normalized = cache[point("conv")] * cache[point("input_gate")] * scale
    by_pattern = torch.einsum("bcts,bsc->btc", cache[point("pattern")], normalized)
    torch.testing.assert_close(by_pattern, seen["lru"][1], rtol=1e-4, atol=1e-5)
    clean = model(tokens)
    with knockout("ssm", keys=[0], queries=[-1], layers=[0]).apply(model):
        cut = model(tokens)
    torch.testing.assert_close(cut[:, :-1], clean[:, :-1], rtol=1e-4, atol=1e-4)  # the matrix form, to rounding
    assert (cut[:, -1] - clean[:, -1]).abs().max() > 1e-2


@torch.no_grad()
def test_short_conv_pattern_reproduces_the_mixer_and_knocks_out_one_route(tokens):
    """`hook_pattern` applied to x (plus C times the conv bias) gives the transformers `out_proj`
    input; cutting the route from token 10 to token 11 removes exactly that term."""
    reference, model = pair("lfm2", conv_bias=True)
    conv = reference.model.layers[0].conv
    seen = recorded(reference, tokens, {"out_proj": conv.out_proj}, use_cache=False)
    point = "blocks.0.conv.hook_{}".format
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith("blocks.0.conv."))
    bias_term = cache[point("C")] * conv.conv.bias
    by_pattern = torch.einsum("bcts,bsc->btc", cache[point("pattern")], cache[point("x")]) + bias_term
    torch.testing.assert_close(by_pattern, seen["out_proj"][0][0], rtol=1e-4, atol=1e-5)
    with knockout("conv", keys=[10], queries=[11], layers=[0]).apply(model):
        _, cut = model.run_with_cache(tokens, names_filter=point("y"))
    B, C, x = (cache[point(name)] for name in "BCx")
    route = C[:, 11] * conv.conv.weight[:, 0, -2] * B[:, 10] * x[:, 10]  # lag 1: the kernel's second-last tap
    expected = cache[point("y")].clone()
    expected[:, 11] -= route
    torch.testing.assert_close(cut[point("y")], expected, rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_lfm2_moe_router_points_are_the_router_outputs(tokens):
    """`hook_router_*` of an LFM2-MoE layer are its sigmoid router's outputs (with expert bias), and
    zeroing the routing weights silences the MoE; the dense first layer has no router points."""
    reference, model = pair("lfm2_moe")
    seen = recorded(reference, tokens, {"gate": reference.model.layers[1].feed_forward.gate}, use_cache=False)
    names = [f"blocks.1.mlp.hook_router_{part}" for part in ("logits", "weights", "indices")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for name, value in zip(names, seen["gate"][1]):
        assert torch.equal(cache[name], value.reshape(*tokens.shape, -1)), name
    assert not any(name.startswith("blocks.0.mlp.hook_router") for name in model.hook_dict)
    with model.hooks(fwd_hooks=[(names[1], lambda weights, hook: torch.zeros_like(weights))]):
        _, cut = model.run_with_cache(tokens, names_filter="blocks.1.hook_mlp_out")
    assert not cut["blocks.1.hook_mlp_out"].any()
