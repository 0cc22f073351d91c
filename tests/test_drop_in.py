"""The HookedTransformer calling conventions, and the padding traps, against independent computations.

Peers: the tokenizer itself, plain `transformers` forwards with torch hooks on the HF modules,
`output_hidden_states`, and per-prompt runs for padded batches.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hybrid_lens.interventions import mean, patch_from, resample, zero

from .fixtures import MODULE_OF_KIND, build, hf_run, on_output

PROMPTS = ["In the beginning God created", "And God said", "Let there be light, and"]
KIND = {"qwen3_5": "linear_attn", "falcon_h1": "attn", "qwen2": "attn"}  # a mixer at layer 0 of each family


# --- tokens --------------------------------------------------------------------------------------
def test_to_tokens_follows_transformer_lens_arguments():
    _, model = build("qwen2")
    tokenizer = model.tokenizer
    plain = torch.tensor([tokenizer("And God said")["input_ids"]])
    assert torch.equal(model.to_tokens("And God said"), plain)            # default: as the tokenizer does
    with_bos = model.to_tokens("And God said", prepend_bos=True)
    assert with_bos[0, 0] == tokenizer.bos_token_id and torch.equal(with_bos[:, 1:], plain)
    left = model.to_tokens(["And God said", "In the"], padding_side="left")
    assert torch.equal(left[1, -6:], torch.tensor(tokenizer("In the")["input_ids"]))
    assert (left[1, :6] == tokenizer.pad_token_id).all()
    long_text = "a" * (model.cfg.n_ctx + 10)
    assert model.to_tokens(long_text).shape[1] == model.cfg.n_ctx
    assert model.to_tokens(long_text, truncate=False).shape[1] == model.cfg.n_ctx + 10
    assert model.to_tokens("In", move_to_device=False).device.type == "cpu"


def test_str_tokens_single_tokens_and_positions():
    _, model = build("qwen2")
    assert model.to_str_tokens("God") == ["G", "o", "d"]              # the char-level test tokenizer
    assert model.to_str_tokens(["ab", "c"]) == [["a", "b"], ["c"]]
    assert model.to_str_tokens(model.to_tokens("ab")) == ["a", "b"]
    assert model.to_single_token("G") == model.tokenizer.convert_tokens_to_ids("G")
    with pytest.raises(ValueError, match="not one"):
        model.to_single_token("Go")
    assert model.get_token_position("o", "God so loved") == 1
    assert model.get_token_position("o", "God so loved", mode="last") == 8
    with pytest.raises(ValueError, match="does not occur"):
        model.get_token_position("z", "God")


def test_cfg_has_transformer_lens_names_and_falls_through():
    _, model = build("falcon_h1")
    cfg = model.cfg
    assert (cfg.d_model, cfg.n_layers, cfg.d_vocab) == (cfg.hidden_size, model.n_layers, 256)
    assert cfg.n_heads * cfg.d_head == model.hf_model.model.layers[0].self_attn.o_proj.in_features
    assert cfg.device == model.device and cfg.dtype == torch.float32
    assert cfg.layers_block_type == model.hf_model.config.layers_block_type


# --- forward -------------------------------------------------------------------------------------
@torch.no_grad()
def test_stop_at_layer_returns_the_residual_and_runs_nothing_after(family, tokens):
    reference, model = build(family)
    hidden = reference(tokens, output_hidden_states=True).hidden_states
    for stop in (0, 2, -1):
        fired, later = [], [n for n in model.hook_names(inner=False)
                            if n.startswith(f"blocks.{stop % model.n_layers}.") or n == "hook_logits"]
        with model.hooks(fwd_hooks=[(name, lambda value, hook: fired.append(hook.name)) for name in later]):
            resid = model(tokens, stop_at_layer=stop)
        assert torch.equal(resid, hidden[stop % model.n_layers]), stop
        assert fired == [], f"stop_at_layer={stop} still ran {fired}"
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))  # no eager mixer paths
    assert torch.equal(model(tokens, stop_at_layer=model.n_layers), cache[f"blocks.{model.n_layers - 1}.hook_resid_post"])
    _, partial = model.run_with_cache(tokens, stop_at_layer=2)
    assert "blocks.1.hook_resid_post" in partial and "blocks.2.hook_resid_pre" not in partial
    with pytest.raises(ValueError, match="stop_at_layer"):
        model(tokens, stop_at_layer=model.n_layers + 1)


@torch.no_grad()
def test_loss_per_token_equals_cross_entropy(tokens):
    reference, model = build("qwen3_5")
    logits = reference(tokens).logits
    expected = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none").view(2, -1)
    ours = model(tokens, return_type="loss", loss_per_token=True)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(tokens, return_type="loss"), expected.mean(), atol=1e-5, rtol=1e-5)


def test_unknown_arguments_are_errors_not_dropped(tokens):
    _, model = build("falcon_h1")
    with pytest.raises(TypeError, match="stop_at_layr.*closest: stop_at_layer"):
        model(tokens, stop_at_layr=1)
    with pytest.raises(ValueError, match="return_type"):
        model(tokens, return_type="probs")
    # prepend_bos / padding_side apply to text only: ids are taken as they are, as TransformerLens does (#26)
    assert torch.equal(model(tokens, prepend_bos=True, padding_side="left"), model(tokens))
    assert model(tokens, output_hidden_states=True).shape == (*tokens.shape, 256)  # a transformers kwarg passes


class Doubler(nn.Module):
    def forward(self, x):
        return 2 * x


@torch.no_grad()
def test_a_replaced_hook_point_module_takes_effect(family, tokens):
    """What SAE-Lens's add_sae does: put a module where the hook point was (set_deep_attr)."""
    reference, model = build(family)
    kind = KIND[family]
    expected = hf_run(reference, tokens, [(getattr(reference.model.layers[0], MODULE_OF_KIND[kind]),
                                           on_output(lambda v: 2 * v))])
    original = getattr(model.blocks[0], f"hook_{kind}_out")
    setattr(model.blocks[0], f"hook_{kind}_out", Doubler())
    try:
        torch.testing.assert_close(model(tokens), expected, atol=1e-5, rtol=1e-5)
        assert not torch.allclose(expected, reference(tokens).logits, atol=1e-3)
    finally:
        setattr(model.blocks[0], f"hook_{kind}_out", original)
    setattr(model, "hook_embed", Doubler())
    assert not torch.allclose(model(tokens), reference(tokens).logits, atol=1e-3)


# --- padding -------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_positions_count_real_tokens_in_padded_batches(family, side):
    """zero / patch at -1 (and 0) on prompts of unequal length equal per-prompt runs."""
    _, model = build(family)
    kind = KIND[family]
    tokens, mask = model.to_tokens_and_mask(PROMPTS, padding_side=side)
    source = "Behold, the man is become as one of us"   # longer than every prompt
    for condition, solo_condition in (
        (zero(kind, positions=-1),) * 2,
        (zero("mlp", layers=[0, 1], positions=[0, -2]),) * 2,
        (patch_from([source] * 3, "resid_mid", layers=1, positions=-1), patch_from(source, "resid_mid", layers=1,
                                                                                   positions=-1)),
    ):
        with condition.apply(model):
            batched = model(tokens, attention_mask=mask)
        for row, prompt in enumerate(PROMPTS):
            with solo_condition.apply(model):
                solo = model(prompt)
            real = mask[row].bool()
            torch.testing.assert_close(batched[row, real], solo[0], atol=1e-5, rtol=1e-4)
            clean = model(prompt)
            assert not torch.allclose(solo, clean, atol=1e-4), f"{condition.name} changes nothing"


@torch.no_grad()
def test_mean_ablation_is_an_independent_masked_mean(family, tokens):
    reference, model = build(family)
    kind = KIND[family]
    ref_tokens, ref_mask = model.to_tokens_and_mask(PROMPTS)
    module = getattr(reference.model.layers[0], MODULE_OF_KIND[kind])
    captured = []
    handle = module.register_forward_hook(on_output(lambda v: captured.append(v) or v))
    reference(ref_tokens, attention_mask=ref_mask)
    handle.remove()
    out = captured[0]
    real = ref_mask.bool()
    masked_mean = out[real].mean(0)                     # over the real tokens of every reference
    per_position = torch.stack([out[real[:, p], p].mean(0) for p in range(tokens.shape[1])])

    for condition, value in ((mean(kind, PROMPTS, layers=0), masked_mean),
                             (mean(kind, PROMPTS, layers=0, per_position=True), per_position)):
        with condition.apply(model):
            ours = model(tokens)
        expected = hf_run(reference, tokens, [(module, on_output(lambda v: value.expand_as(v).clone()))])
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    padded_mean = out.mean((0, 1))                      # what averaging the padding would give
    wrong = hf_run(reference, tokens, [(module, on_output(lambda v: padded_mean.expand_as(v).clone()))])
    assert not torch.allclose(wrong, expected, atol=1e-4), "the fixture cannot tell masked from padded means"


@torch.no_grad()
def test_resample_draws_references_long_enough_and_skips_padding():
    _, model = build("qwen2")
    long_prompt, short_prompt = "In the beginning God created the heaven", "And God"
    condition = resample("attn", [short_prompt, long_prompt], seed=0, layers=0)
    with condition.apply(model):
        ours = model("Let there be light")             # only the long reference is long enough
    with patch_from(model.to_tokens(long_prompt[:18]), "attn", layers=0).apply(model):
        expected = model("Let there be light")
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="longest reference"), condition.apply(model):
        model("x" * 60)
