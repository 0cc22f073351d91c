"""`run_with_cache` and `ActivationCache` on the hybrids (TransformerLens's interface; `test_tl_conformance.py`
compares it with `HookedTransformer` itself on a Llama): a default cache of every point, `pos_slice`,
`incl_bwd`, keys and their errors, the batch axis, norms applied to stacks (RMSNorm, Qwen3.5's `1 + w`,
LayerNorm), logit attributions, the accumulated and decomposed residual stream with hybrid components.

Independent references: the plain `transformers` model (its `output_hidden_states`, its norm modules, plain torch
hooks and autograd for gradients) and slicing by hand."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM

from hybrid_lens import ActivationCache, HookedHybrid
from hybrid_lens.cache import BatchSizeError
from hybrid_lens.configs import tiny_config
from hybrid_lens.readout import next_token_loss

from .fixtures import build, char_tokenizer, random_tokens, visible_init

NORMS = {"falcon_h1": ("input_layernorm", "pre_ff_layernorm")}  # (ln1, ln2) of the plain model's layers
DEFAULT_NORMS = ("input_layernorm", "post_attention_layernorm")


def no_hooks_left(model) -> bool:
    return all(not point.fwd_hooks and not point.bwd_hooks for point in model.hook_dict.values())


@torch.no_grad()
def test_default_cache_holds_every_point_and_matches_the_plain_model(pair, tokens):
    """Every hook point, inner ones included, within float rounding of `output_hidden_states` (the inner points run
    the mixers' eager paths); the block-level filter stays bit-exact."""
    reference, model = pair
    logits, cache = model.run_with_cache(tokens)
    assert set(cache) == set(model.hook_names()) - {"hook_tokens"} and len(cache) > len(model.hook_names(inner=False))
    plain = reference(tokens, output_hidden_states=True)
    for layer in range(model.n_layers):
        torch.testing.assert_close(cache["resid_pre", layer], plain.hidden_states[layer], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(logits, plain.logits, rtol=1e-4, atol=1e-4)
    block_logits, block_cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    assert torch.equal(block_logits, plain.logits) and set(block_cache) == set(model.hook_names(inner=False))


@torch.no_grad()
def test_a_run_with_a_transformers_cache_caches_the_block_points(pair, tokens):
    _, model = pair
    logits, cache = model.run_with_cache(tokens, use_cache=True)
    assert set(cache) == set(model.hook_names(inner=False))
    assert no_hooks_left(model)


def sliced_by_hand(name: str, value: torch.Tensor, index) -> torch.Tensor:
    if name.endswith("hook_state"):
        return value
    return value[:, :, index] if name.endswith(("hook_pattern", "hook_attn_scores")) else value[:, index]


@torch.no_grad()
@pytest.mark.parametrize("pos_slice,index", [(-1, [-1]), ((2, 5), slice(2, 5)), ([0, 3], [0, 3])])
def test_pos_slice_slices_each_value_on_its_position_axis(family, pos_slice, index):
    _, model = build(family)
    tokens = random_tokens(2, 9)
    _, full = model.run_with_cache(tokens)
    _, cache = model.run_with_cache(tokens, pos_slice=pos_slice)
    assert set(cache) == set(full)
    for name, value in full.items():
        assert torch.equal(cache[name], sliced_by_hand(name, value, index)), name
    _, row = model.run_with_cache(tokens[:1], pos_slice=pos_slice, remove_batch_dim=True)
    assert torch.equal(row["blocks.1.hook_resid_post"], full["blocks.1.hook_resid_post"][0, index])


def test_incl_bwd_gradients_equal_autograd_on_the_plain_model(pair, tokens):
    reference, model = pair
    outputs = []
    def keep(_module, _args, output):
        outputs.append(output[0] if isinstance(output, tuple) else output)

    handles = [layer.register_forward_hook(keep) for layer in reference.model.layers]
    try:
        logits = reference(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    for output in outputs:
        output.retain_grad()
    next_token_loss(logits, tokens).backward()
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
    loss, cache = model.run_with_cache(tokens, names_filter=names, incl_bwd=True, return_type="loss")
    assert set(cache) == set(names) | {f"{name}_grad" for name in names}
    for name, output in zip(names, outputs):
        torch.testing.assert_close(cache[f"{name}_grad"], output.grad, rtol=1e-4, atol=1e-7)
    assert no_hooks_left(model)


def test_incl_bwd_refuses_without_autograd_or_a_scalar(tokens):
    _, model = build("qwen3_5")
    with torch.no_grad(), pytest.raises(ValueError, match="needs autograd"):
        model.run_with_cache(tokens, incl_bwd=True, return_type="loss")
    with pytest.raises(ValueError, match="must be a scalar: pass return_type='loss'"):
        model.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", incl_bwd=True)
    assert no_hooks_left(model)


@torch.no_grad()
def test_keys_and_their_errors(tokens):
    _, model = build("qwen3_5")
    _, cache = model.run_with_cache(tokens)
    assert torch.equal(cache["k3a"], cache["blocks.3.attn.hook_k"])
    assert torch.equal(cache["pattern", -1], cache["blocks.7.attn.hook_pattern"])
    assert torch.equal(cache["q", 0, "linear_attn"], cache["blocks.0.linear_attn.hook_q"])
    assert torch.equal(cache["embed"], cache[("embed",)]) and "embed" in cache
    assert torch.equal(cache["linear_attn_out", -8], cache["blocks.0.hook_linear_attn_out"])
    with pytest.raises(KeyError, match=r"block 0 is a linear_attn block, without attn \(attn blocks: \[3, 7\]\); its "
                                       r"own point is blocks\.0\.linear_attn\.hook_pattern "
                                       r"\(key \('pattern', 0, 'linear_attn'\)\)"):
        cache["pattern", 0]
    with pytest.raises(KeyError, match="Layer 8 of key .* is not a block of this model"):
        cache["resid_pre", 8]
    _, partial = model.run_with_cache(tokens, names_filter="hook_embed")
    with pytest.raises(KeyError, match="a hook point of this model that was not cached: run run_with_cache with "
                                       "names_filter including it"):
        partial["blocks.0.linear_attn.hook_beta"]
    with pytest.raises(KeyError, match="incl_bwd=True"):
        partial["hook_embed_grad"]
    with pytest.raises(KeyError, match="Closest valid names: blocks.0.linear_attn.hook_beta"):
        partial["blocks.0.linear_attn.hook_betta"]


@torch.no_grad()
def test_the_batch_axis(tokens):
    _, model = build("falcon_h1")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: "resid" in name)
    with pytest.raises(BatchSizeError, match="2 rows"):
        cache.remove_batch_dim()
    assert cache.has_batch_dim and cache["resid_pre", 0].shape == (2, 24, 64)
    row = cache.apply_slice_to_batch_dim(1)
    assert not row.has_batch_dim and torch.equal(row["resid_post", 3], cache["resid_post", 3][1])
    kept = cache.apply_slice_to_batch_dim([1])
    assert kept.remove_batch_dim() is kept and torch.equal(kept["resid_post", 3], row["resid_post", 3])
    cache.cache_dict["blocks.0.hook_resid_pre"] = torch.zeros(1)  # the cache's own dict, as in TransformerLens
    assert torch.equal(cache["resid_pre", 0], torch.zeros(1))
    with pytest.raises(ValueError, match="batch of 1"):
        model.run_with_cache(tokens, remove_batch_dim=True)
    assert no_hooks_left(model)


def norm_of(reference, family: str, layer: int, mlp_input: bool) -> nn.Module:
    return getattr(reference.model.layers[layer], NORMS.get(family, DEFAULT_NORMS)[mlp_input])


@torch.no_grad()
def test_apply_ln_to_stack_sums_to_each_norm_output(pair, tokens, family):
    """Applied to the parts of a block's input, the norm (gain included, Qwen3.5's `1 + w` too) sums to the plain
    model's norm of that input; the final norm's parts to `ln_final.hook_normalized`."""
    reference, model = pair
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    for layer in range(model.n_layers):
        for mlp_input, resid in ((False, "resid_pre"), (True, "resid_mid")):
            parts = cache.decompose_resid(layer, mlp_input=mlp_input)
            normed = cache.apply_ln_to_stack(parts, layer, mlp_input=mlp_input)
            expected = norm_of(reference, family, layer, mlp_input)(cache[resid, layer])
            torch.testing.assert_close(normed.sum(0), expected, rtol=1e-4, atol=1e-5)
    final = cache.apply_ln_to_stack(cache.decompose_resid(pos_slice=-1), pos_slice=-1)
    torch.testing.assert_close(final.sum(0), cache["ln_final.hook_normalized"][:, -1], rtol=1e-4, atol=1e-5)


@torch.no_grad()
def test_apply_ln_to_stack_reads_a_cached_scale(tokens):
    _, model = build("qwen3_5")
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    parts = cache.decompose_resid(2)
    computed = cache.apply_ln_to_stack(parts, 2)
    resid = cache["resid_pre", 2]
    cache.cache_dict["blocks.2.ln1.hook_scale"] = 2 * (resid.pow(2).mean(-1, keepdim=True) + 1e-6).sqrt()
    torch.testing.assert_close(cache.apply_ln_to_stack(parts, 2), computed / 2, rtol=1e-4, atol=1e-6)


def layer_norm_llama() -> HookedHybrid:
    """A tiny Llama whose RMSNorms are LayerNorms with random gains and biases."""
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    visible_init(hf, seed=0)

    def layer_norm():
        norm = nn.LayerNorm(hf.config.hidden_size)
        nn.init.uniform_(norm.weight, 0.5, 1.5)
        nn.init.normal_(norm.bias, std=0.5)
        return norm

    for layer in hf.model.layers:
        layer.input_layernorm, layer.post_attention_layernorm = layer_norm(), layer_norm()
    hf.model.norm = layer_norm()
    return HookedHybrid.from_hf(hf, tokenizer=char_tokenizer())


@torch.no_grad()
def test_apply_ln_to_stack_on_layer_norms(tokens):
    """LayerNorm: each part centred, scaled by the residual's std and the gain; parts sum to the norm minus its bias."""
    model = layer_norm_llama()
    logits, cache = model.run_with_cache(tokens)
    for layer, mlp_input, resid in ((1, False, "resid_pre"), (2, True, "resid_mid")):
        norm = model.block_norm(layer, mlp_input)
        normed = cache.apply_ln_to_stack(cache.decompose_resid(layer, mlp_input=mlp_input), layer, mlp_input=mlp_input)
        torch.testing.assert_close(normed.sum(0) + norm.bias, norm(cache[resid, layer]), rtol=1e-4, atol=1e-5)
    bias_logits = model.unembed(model.block_norm(model.n_layers).bias)
    attrs = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), 7, pos_slice=-1)
    torch.testing.assert_close(attrs.sum(0) + bias_logits[7], logits[:, -1, 7], rtol=1e-4, atol=1e-4)


class Doubling(nn.Module):
    """Not a norm: `2 * weight * x`."""

    def __init__(self, width: int):
        super().__init__()
        self.weight, self.eps = nn.Parameter(torch.ones(width)), 1e-6

    def forward(self, x):
        return 2 * self.weight * x


@torch.no_grad()
def test_a_norm_of_another_form_is_refused(tokens):
    reference, model = build("qwen2")
    model.hf_model.model.norm = Doubling(64)
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    with pytest.raises(ValueError, match=r"The norm of the final norm \(Doubling\) is neither gain \* x / rms\(x\)"):
        cache.apply_ln_to_stack(cache.decompose_resid())
    _, zamba = build("zamba2")
    _, zamba_cache = zamba.run_with_cache(tokens, names_filter=zamba.hook_names(inner=False))
    with pytest.raises(ValueError, match="No norm of block 1 reads the residual stream alone"):
        zamba_cache.accumulated_resid(1, apply_ln=True)
    layout_only = ActivationCache(dict(cache), model.layout)
    with pytest.raises(ValueError, match="apply_ln_to_stack needs the model"):
        layout_only.apply_ln_to_stack(cache.decompose_resid())


@torch.no_grad()
def test_logit_attrs_sum_to_the_logits(pair, tokens):
    _, model = pair
    logits, cache = model.run_with_cache(tokens)
    last = cache.logit_attrs(cache.decompose_resid(pos_slice=-1), 7, incorrect_tokens=9, pos_slice=-1)
    torch.testing.assert_close(last.sum(0), logits[:, -1, 7] - logits[:, -1, 9], rtol=1e-4, atol=1e-4)
    every = cache.logit_attrs(cache.decompose_resid(), tokens)
    torch.testing.assert_close(every.sum(0), logits.gather(-1, tokens[..., None])[..., 0], rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_accumulated_resid_as_transformer_lens_on_hybrids(tokens):
    _, model = build("qwen3_5")
    _, cache = model.run_with_cache(tokens)
    stack, labels = cache.accumulated_resid(3, incl_mid=True, mlp_input=True, return_labels=True)
    assert labels == ["0_pre", "0_mid", "1_pre", "1_mid", "2_pre", "2_mid", "3_pre", "3_mid"]
    assert torch.equal(stack[-1], cache["resid_mid", 3]) and torch.equal(stack[-2], cache["resid_pre", 3])
    lens = cache.accumulated_resid(apply_ln=True, pos_slice=-1)
    torch.testing.assert_close(lens[-1], cache["ln_final.hook_normalized"][:, -1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lens[2], model.apply_final_norm(cache["resid_pre", 2][:, -1]), rtol=1e-5, atol=1e-6)
    _, mamba = build("mamba2")
    _, mamba_cache = mamba.run_with_cache(tokens)
    with pytest.raises(ValueError, match="has no MLP"):
        mamba_cache.accumulated_resid(1, mlp_input=True)
    assert mamba_cache.accumulated_resid(2, incl_mid=True, return_labels=True)[1] == ["0_pre", "1_pre", "2_pre"]


@torch.no_grad()
def test_decompose_resid_modes_with_hybrid_components(tokens):
    _, model = build("falcon_h1")
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    labelled = {mode: cache.decompose_resid(2, mode=mode, incl_embeds=False, return_labels=True)[1]
                for mode in ("ssm", "attn", "mixer", "mlp")}
    assert labelled == {"ssm": ["0_ssm_out", "1_ssm_out"], "attn": ["0_attn_out", "1_attn_out"],
                        "mixer": ["0_ssm_out", "0_attn_out", "1_ssm_out", "1_attn_out"],
                        "mlp": ["0_mlp_out", "1_mlp_out"]}
    parts, labels = cache.decompose_resid(2, mlp_input=True, return_labels=True)
    assert labels[-2:] == ["2_ssm_out", "2_attn_out"] and (labels[-1].layer, labels[-1].kind) == (2, "attn")
    torch.testing.assert_close(parts.sum(0), cache["resid_mid", 2], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="mode must be"):
        cache.decompose_resid(mode="linear")


@torch.no_grad()
def test_stack_activation_names_the_blocks_that_have_the_point(tokens):
    _, model = build("qwen3_5")
    _, cache = model.run_with_cache(tokens)
    assert cache.stack_activation("resid_post", 3).shape == (3, 2, 24, 64)
    with pytest.raises(KeyError, match=r"attn blocks: \[3, 7\]"):
        cache.stack_activation("pattern")
