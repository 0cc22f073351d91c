"""Inner points of the delta-rule families (Qwen3-Next and OLMo-Hybrid Gated DeltaNet, Kimi-Linear
KDA and MLA) against independent computations on the plain `transformers` model with the same
weights: forward hooks on its submodules, the inputs and outputs of its own scan kernel, its
generation cache (states) and its eager attention weights (patterns).
"""

from __future__ import annotations

import contextlib
import copy
import sys

import pytest
import torch
from transformers.models.kimi_linear import modeling_kimi_linear as kimi

from hybrid_lens.mixers import cache_states, kimi_delta, state_positions

from .fixtures import build, random_tokens, visible_init

MIXER = {"qwen3_next": "linear_attn", "olmo_hybrid": "linear_attn", "kimi_linear": "self_attn"}
SCAN = {"qwen3_next": "torch_chunk_gated_delta_rule", "olmo_hybrid": "torch_chunk_gated_delta_rule",
        "kimi_linear": "chunk_kimi_delta_attention"}
RECURRENT = {"qwen3_next": "torch_recurrent_gated_delta_rule", "olmo_hybrid": "torch_recurrent_gated_delta_rule",
             "kimi_linear": "recurrent_kimi_delta_attention"}
SCAN_INPUTS = ["hook_q", "hook_k", "hook_v", "hook_log_decay", "hook_beta"]


@pytest.fixture(scope="module", params=sorted(MIXER))
def built(request):
    """(family, plain reference, HookedHybrid, tokens): same weights, every component visible."""
    reference, model = build(request.param, visible=True)
    for hf in (reference, model.hf_model):
        visible_experts_and_states(hf, seed=0)
    tokens = random_tokens(2, 12)  # 12 < d_v = 16
    return request.param, reference, model, tokens


@torch.no_grad()
def visible_experts_and_states(hf_model, seed: int) -> None:
    """Routed experts' stacked weights `[expert, out, in]` N(0, 1/in), as `visible_init` does for
    linears, and slow state decays (`A = exp(A_log) = e^-2`), so that experts and carried states matter."""
    generator = torch.Generator().manual_seed(seed)
    for name, weight in hf_model.named_parameters():
        if name.endswith(("experts.gate_up_proj", "experts.down_proj")):
            weight.copy_(torch.randn(weight.shape, generator=generator) / weight.shape[-1] ** 0.5)
        elif name.endswith("A_log"):
            weight.fill_(-2.0)


def linear_layers(model):
    return model.layout.layers_with("linear_attn")


def close(actual, expected, tol=1e-5):
    scale = float(expected.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=0)


@contextlib.contextmanager
def recording(reference, function: str):
    """Record every call of the reference model's own scan kernel `function`: (args, kwargs, output)."""
    module = sys.modules[type(reference).__module__]
    original, calls = getattr(module, function), []

    def record(*args, **kwargs):
        output = original(*args, **kwargs)
        calls.append((args, kwargs, output))
        return output

    setattr(module, function, record)
    try:
        yield calls
    finally:
        setattr(module, function, original)


@contextlib.contextmanager
def module_calls(modules, pre: bool = False):
    """Record the outputs (or the positional inputs, `pre`) of `modules` in one forward pass."""
    seen = {}
    handles = [m.register_forward_pre_hook(lambda m, args, key=key: seen.__setitem__(key, args)) if pre else
               m.register_forward_hook(lambda m, args, out, key=key: seen.__setitem__(key, out))
               for key, m in modules.items()]
    try:
        yield seen
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def test_tiny_configs_cover_every_layer_and_mlp_type(built):
    family, reference, model, _ = built
    kinds = {tuple(mixers) for mixers in model.layer_mixers}
    assert kinds == {("linear_attn",), ("attn",)}
    mlps = {type(layer.mlp).__name__ for layer in reference.model.layers}
    assert len(mlps) == (1 if family == "olmo_hybrid" else 2), mlps  # MoE and dense MLP


@torch.no_grad()
def test_scan_points_are_the_transformers_kernel_inputs_and_output(built):
    """hook_q/k/v (after conv), hook_log_decay, hook_beta and hook_recurrence_out are exactly what the
    plain model passes to and gets from its own chunked scan."""
    family, reference, model, tokens = built
    layers = linear_layers(model)
    with recording(reference, SCAN[family]) as calls:
        reference(tokens)
    assert len(calls) == len(layers)
    names = [f"blocks.{i}.linear_attn.{n}" for i in layers for n in [*SCAN_INPUTS, "hook_recurrence_out"]]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for layer, (args, kwargs, output) in zip(layers, calls):
        expected = dict(zip(SCAN_INPUTS, [*args[:3], kwargs["g"], kwargs["beta"]]), hook_recurrence_out=output[0])
        for name, value in expected.items():
            assert torch.equal(cache[f"blocks.{layer}.linear_attn.{name}"], value), name


@torch.no_grad()
def test_projection_points_are_the_transformers_projections(built):
    """The cheap points equal forward hooks on the plain model's projections, split as its own
    forward splits them (Qwen3-Next: `fix_query_key_value_ordering`), and the gate entering its
    gated norm."""
    family, reference, model, tokens = built
    layer = linear_layers(model)[0]
    mixer = getattr(reference.model.layers[layer], MIXER[family])
    norm = mixer.o_norm if hasattr(mixer, "o_norm") else mixer.norm
    fused = family == "qwen3_next"
    projections = {"qkvz": mixer.in_proj_qkvz, "ba": mixer.in_proj_ba} if fused else \
        {"q": mixer.q_proj, "k": mixer.k_proj, "v": mixer.v_proj, "b": mixer.b_proj}
    with module_calls(projections) as out, module_calls({"norm": norm}, pre=True) as into:
        reference(tokens)
    if fused:
        q, k, v, z, b, _ = mixer.fix_query_key_value_ordering(out["qkvz"], out["ba"])
    else:
        q, k, v, b = (out[n] for n in "qkvb")
    names = ["hook_q_pre_conv", "hook_k_pre_conv", "hook_v_pre_conv", "hook_beta_logit", "hook_gate_input"]
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.linear_attn.{n}" for n in names])
    got = [cache[f"blocks.{layer}.linear_attn.{n}"] for n in names]
    gate = into["norm"][1]
    for ours, theirs in zip(got, [q, k, v, b, gate]):
        assert torch.equal(ours.reshape(theirs.shape), theirs)
    assert got[0].shape[-2:] == got[1].shape[-2:] and got[2].shape == got[4].shape and got[3].ndim == 3


@torch.no_grad()
def test_states_are_the_generation_cache_after_each_position(built):
    family, reference, model, tokens = built
    names = {i: f"blocks.{i}.linear_attn.hook_state" for i in linear_layers(model)}
    states = cache_states(model, tokens, [3, -1], names=list(names.values()))
    for end in (4, tokens.shape[1]):
        cache = reference(tokens[:, :end], use_cache=True).past_key_values
        for layer, name in names.items():
            close(states[name][:, 0 if end == 4 else 1], cache.get_recurrent_state(layer))


@torch.no_grad()
def test_state_patching_continues_the_transformers_recurrence(built):
    """Replacing the state after token t by another prompt's cached state makes the later recurrence
    outputs those of the plain model's step-by-step kernel started from that state."""
    family, reference, model, tokens = built
    layer, t = linear_layers(model)[-1], 4
    source = tokens.flip(0)
    state = reference(source[:, : t + 1], use_cache=True).past_key_values.get_recurrent_state(layer)
    prefix = f"blocks.{layer}.linear_attn."

    def patch(value, hook):
        return state.to(value.dtype)

    _, clean = model.run_with_cache(tokens, names_filter=[prefix + n for n in [*SCAN_INPUTS, "hook_recurrence_out"]])
    with state_positions(model, t), model.hooks(fwd_hooks=[(prefix + "hook_state", patch)]):
        _, patched = model.run_with_cache(tokens, names_filter=prefix + "hook_recurrence_out")
    later = [clean[prefix + n][:, t + 1 :] for n in SCAN_INPUTS]
    kernel = getattr(sys.modules[type(reference).__module__], RECURRENT[family])
    expected, _ = kernel(*later[:3], g=later[3], beta=later[4], initial_state=state, output_final_state=False,
                         use_qk_l2norm_in_kernel=True)
    ours, before = patched[prefix + "hook_recurrence_out"], clean[prefix + "hook_recurrence_out"]
    close(ours[:, t + 1 :], expected, tol=1e-4)
    close(ours[:, : t + 1], before[:, : t + 1])
    assert (ours[:, t + 1 :] - before[:, t + 1 :]).abs().max() > 0.1 * expected.abs().max()  # the patch matters


@torch.no_grad()
def test_implicit_attention_reconstructs_the_recurrence(built):
    """`pattern @ v` is the recurrence output; with fewer tokens than d_v the values have full row
    rank, so this pins the matrix down."""
    family, _, model, tokens = built
    for layer in linear_layers(model):
        prefix = f"blocks.{layer}.linear_attn."
        _, cache = model.run_with_cache(tokens, names_filter=[prefix + n for n in
                                                              ("hook_pattern", "hook_v", "hook_recurrence_out")])
        pattern, value = cache[prefix + "hook_pattern"], cache[prefix + "hook_v"]
        assert tokens.shape[1] < value.shape[-1] and bool(pattern.triu(1).eq(0).all())
        close(torch.einsum("bhts,bshd->bthd", pattern, value), cache[prefix + "hook_recurrence_out"], tol=1e-4)


@torch.no_grad()
def test_attention_points_are_the_transformers_values(built):
    """hook_q / hook_z equal forward hooks on the plain model's query projection and `o_proj` input;
    hook_pattern its eager attention weights; MLA's hook_k / hook_v the latent expanded per head."""
    family, reference, model, tokens = built
    layer = model.layout.layers_with("attn")[0]
    attention = reference.model.layers[layer].self_attn
    with module_calls({"q": attention.q_proj}) as out, module_calls({"o": attention.o_proj}, pre=True) as into:
        reference(tokens)
    eager = copy.deepcopy(reference)
    eager.config._attn_implementation = "eager"
    patterns = eager(tokens, output_attentions=True).attentions
    names = ["hook_q", "hook_z", *(["hook_gate"] if family == "qwen3_next" else [])]
    _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.attn.{n}" for n in names])
    get = {n: cache[f"blocks.{layer}.attn.{n}"] for n in names}  # hook_pattern would switch to eager attention
    query = torch.cat([get["hook_q"], get["hook_gate"]], -1) if "hook_gate" in get else get["hook_q"]
    assert torch.equal(query.flatten(-2), out["q"])
    assert torch.equal(get["hook_z"].flatten(-2), into["o"][0])
    assert len(patterns) == 1  # one attention layer in the tiny configs
    _, cache = model.run_with_cache(tokens, names_filter=f"blocks.{layer}.attn.hook_pattern")
    close(cache[f"blocks.{layer}.attn.hook_pattern"], patterns[0])
    if family == "kimi_linear":
        with module_calls({"kv": attention.kv_b_proj, "latent": attention.kv_a_proj_with_mqa}) as out:
            reference(tokens)
        _, cache = model.run_with_cache(tokens, names_filter=[f"blocks.{layer}.attn.hook_{n}" for n in "kv"])
        per_head = out["kv"][:, 0].unflatten(-1, (attention.num_heads, -1))
        k_nope, value = per_head.split([attention.qk_nope_head_dim, attention.v_head_dim], dim=-1)
        shared = out["latent"][..., None, attention.kv_lora_rank :].expand(-1, -1, attention.num_heads, -1)
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_k"], torch.cat([k_nope, shared], dim=-1))
        assert torch.equal(cache[f"blocks.{layer}.attn.hook_v"], value)


@torch.no_grad()
def test_kda_implicit_attention_is_the_kernel_applied_to_one_hot_values():
    """With values `v[s] = e_s` the plain recurrent KDA kernel outputs the matrix itself, over more
    positions than one block of `decayed_products` and one chunk of the chunked kernel."""
    length, heads, d_k = 80, 2, 8
    generator = torch.Generator().manual_seed(0)
    query, key = (torch.randn(1, length, heads, d_k, generator=generator) for _ in range(2))
    log_decay = -0.1 * torch.rand(1, length, heads, d_k, generator=generator)
    beta = torch.rand(1, length, heads, generator=generator)
    values = torch.eye(length).expand(1, heads, length, length).transpose(1, 2)
    for name in ("recurrent_kimi_delta_attention", "chunk_kimi_delta_attention"):
        out, _ = getattr(kimi, name)(query, key, values, g=log_decay, beta=beta, initial_state=None,
                                     output_final_state=False, use_qk_l2norm_in_kernel=True)
        close(kimi_delta.implicit_attention(query, key, log_decay, beta), out.transpose(1, 2), tol=1e-4)


@torch.no_grad()
def test_mla_points_with_a_low_rank_query_and_writes():
    """With `q_lora_rank`, hook_q is the `q_b_proj` output; writes to hook_v reach hook_z."""
    _, model = build("kimi_linear", q_lora_rank=16)
    visible_init(model.hf_model, seed=0)
    tokens = torch.randint(3, 256, (1, 8), generator=torch.Generator().manual_seed(1))
    attention = model.hf_model.model.layers[1].self_attn
    with module_calls({"q": attention.q_b_proj}) as out:
        _, cache = model.run_with_cache(tokens, names_filter=["blocks.1.attn.hook_q", "blocks.1.attn.hook_z"])
    assert torch.equal(cache["blocks.1.attn.hook_q"].flatten(-2), out["q"])
    assert cache["blocks.1.attn.hook_z"].abs().max() > 0.1
    with model.hooks(fwd_hooks=[("blocks.1.attn.hook_v", lambda v, hook: torch.zeros_like(v))]):
        _, cache = model.run_with_cache(tokens, names_filter="blocks.1.attn.hook_z")
    assert bool(cache["blocks.1.attn.hook_z"].eq(0).all())


@torch.no_grad()
def test_router_points_are_the_router_outputs_and_weights_are_writable(built):
    """The router points are the plain model's router outputs per token; zeroing the routed weights
    leaves exactly the shared experts' output in hook_mlp_out; the logits are read-only."""
    family, reference, model, tokens = built
    moe = [i for i, layer in enumerate(reference.model.layers) if hasattr(layer.mlp, "gate")]
    if family == "olmo_hybrid":
        assert not moe and not any(".mlp.hook_router" in name for name in model.hook_dict)
        return
    layer = moe[0]
    mlp = reference.model.layers[layer].mlp
    with module_calls({"router": mlp.gate}) as out, module_calls({"mlp": mlp}, pre=True) as into:
        reference(tokens)
    prefix, mlp_out = f"blocks.{layer}.mlp.", f"blocks.{layer}.hook_mlp_out"
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.startswith(prefix) or name == mlp_out)
    for name, value in zip(["hook_router_logits", "hook_router_weights", "hook_router_indices"], out["router"]):
        assert cache[prefix + name].shape[:2] == tokens.shape and torch.equal(cache[prefix + name].flatten(0, 1), value)
    normed = into["mlp"][0]
    shared = mlp.shared_experts(normed) if family == "kimi_linear" else \
        torch.sigmoid(mlp.shared_expert_gate(normed)) * mlp.shared_expert(normed)
    with model.hooks(fwd_hooks=[(prefix + "hook_router_weights", lambda w, hook: torch.zeros_like(w))]):
        _, cut = model.run_with_cache(tokens, names_filter=mlp_out)
    close(cut[mlp_out], shared)
    assert (cache[mlp_out] - shared).abs().max() > 0.1 * shared.abs().max()  # the routed experts matter
    with pytest.raises(ValueError, match="read-only"):
        model.run_with_hooks(tokens, fwd_hooks=[(prefix + "hook_router_logits", lambda x, hook: x + 1)])


@torch.no_grad()
def test_projection_writes_land_in_the_transformers_slots(built):
    """Zeroing hook_v_pre_conv and hook_beta_logit equals zeroing those slots of the plain model's
    projection outputs (Qwen3-Next: inside each key head's group of the fused projections)."""
    family, reference, model, tokens = built
    layer = linear_layers(model)[0]
    mixer = getattr(reference.model.layers[layer], MIXER[family])

    def zero_slots(start, stop, groups):
        def hook(_module, _args, output):
            output = output.clone()
            output.unflatten(-1, (groups, -1))[..., start:stop] = 0
            return output
        return hook

    if family == "qwen3_next":
        per_k, d_k = mixer.num_v_heads // mixer.num_k_heads, mixer.head_k_dim
        hooks = [(mixer.in_proj_qkvz, zero_slots(2 * d_k, 2 * d_k + per_k * mixer.head_v_dim, mixer.num_k_heads)),
                 (mixer.in_proj_ba, zero_slots(0, per_k, mixer.num_k_heads))]
    else:
        hooks = [(mixer.v_proj, zero_slots(0, None, 1)), (mixer.b_proj, zero_slots(0, None, 1))]
    handles = [module.register_forward_hook(hook) for module, hook in hooks]
    try:
        expected = reference(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    names = [f"blocks.{layer}.linear_attn.{n}" for n in ("hook_v_pre_conv", "hook_beta_logit")]
    ours = model.run_with_hooks(tokens, fwd_hooks=[(n, lambda x, hook: torch.zeros_like(x)) for n in names])
    assert torch.equal(ours, expected)
    assert (ours - reference(tokens).logits).abs().max() > 1e-2 * expected.abs().max()
