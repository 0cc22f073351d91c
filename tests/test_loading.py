"""Loading: local folders, Qwen3.5 vision-language checkpoints as text models, seeded configs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, Qwen3_5ForConditionalGeneration

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config, tiny_config

from .fixtures import build


@torch.no_grad()
def test_from_pretrained_local_folder_round_trip(tmp_path, tokens):
    reference, model = build("falcon_h1")
    reference.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = HookedHybrid.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert torch.equal(loaded(tokens), reference(tokens).logits)
    assert loaded.to_tokens("abc", prepend_bos=False).shape == (1, 3)


def offload_map(model) -> dict[str, str]:
    """Layer 0 and the ends on the CPU, every other layer offloaded to disk (accelerate hooks load
    their weights at each forward), as `device_map="auto"` does when a model exceeds memory."""
    layers = {f"model.layers.{i}": "cpu" if i == 0 else "disk" for i in range(model.n_layers)}
    ends = {name: "cpu" for name, _ in model.hf_model.model.named_children() if name != "layers"}
    return {**{f"model.{name}": device for name, device in ends.items()}, **layers, "lm_head": "cpu"}


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
@pytest.mark.parametrize("device_map", ["auto", "offload"])
def test_device_map_loading_keeps_hooks_caches_and_sweeps_exact(family, device_map, tmp_path, tokens):
    """Under accelerate's dispatch hooks (here: disk offload) the block forwards, inner eager taps
    and the sweep's prefix reuse all stay exact."""
    from hybrid_lens.interventions import Sweep, skip_layer

    reference, model = build(family)
    reference.save_pretrained(tmp_path)
    options = dict(device_map="auto") if device_map == "auto" else dict(
        device_map=offload_map(model), offload_folder=str(tmp_path / "offload"))
    loaded = HookedHybrid.from_pretrained(str(tmp_path), dtype=torch.float32, **options)
    if device_map == "offload":
        assert all(hasattr(layer, "_hf_hook") for layer in loaded.adapter.layers(loaded.hf_model))
    assert torch.equal(loaded(tokens), reference(tokens).logits)
    inner = "blocks.0.linear_attn.hook_beta" if family == "qwen3_5" else "blocks.1.ssm.hook_dt"
    _, cache = loaded.run_with_cache(tokens, names_filter=["blocks.1.hook_resid_pre", inner])
    assert torch.equal(cache["blocks.1.hook_resid_pre"], reference(tokens, output_hidden_states=True).hidden_states[1])
    assert torch.equal(loaded(tokens), reference(tokens).logits)  # the eager tap is gone again
    conditions = [skip_layer(i) for i in range(loaded.n_layers)]
    naive = []
    for condition in conditions:
        with condition.apply(loaded):
            naive.append(loaded(tokens))
    assert all(torch.equal(a, b) for a, b in zip(Sweep(conditions, batch=1).logits(loaded, tokens), naive))


@torch.no_grad()
def test_qwen3_5_conditional_generation_checkpoint_loads_as_text_model(tmp_path, tokens):
    text = tiny_config("qwen3_5").to_dict()
    config = AutoConfig.for_model(
        "qwen3_5",
        text_config=text,
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64),
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    full = Qwen3_5ForConditionalGeneration(config).eval()
    full.save_pretrained(tmp_path)
    model = HookedHybrid.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert type(model.hf_model).__name__ == "Qwen3_5ForCausalLM"
    assert torch.equal(model(tokens), full(input_ids=tokens).logits)


def test_from_config_is_seeded_and_keeps_global_rng():
    state = torch.random.get_rng_state()
    a = HookedHybrid.from_config(tiny_config("qwen2"), seed=3)
    b = HookedHybrid.from_config(tiny_config("qwen2"), seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1", "qwen2"])
def test_reference_configs_keep_the_published_structure(family):
    config = reference_config(family)
    tiny = tiny_config(family)
    assert config.num_hidden_layers in (24, 36)
    if family == "qwen3_5":
        assert config.layer_types.count("full_attention") == 6 and tiny.layer_types[3] == "full_attention"
    if family == "falcon_h1":
        assert tiny.ssm_out_multiplier == config.ssm_out_multiplier == pytest.approx(0.2357, abs=1e-4)


def test_wrapping_twice_is_refused():
    reference, model = build("qwen2")
    with pytest.raises(ValueError, match="already wrapped"):
        HookedHybrid.from_hf(model.hf_model)


def test_transformer_lens_loading_keywords(tmp_path):
    """`from_pretrained` takes TransformerLens's keywords: device, dtype (its strings too) or torch_dtype,
    the tokenization defaults, `hf_model`, and the processing flags as False; `from_hf` / `from_config`
    take the ones that apply to a model already built."""
    model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1", device="cpu", dtype="bfloat16", n_devices=1,
                                         move_to_device=True, fold_ln=False, center_writing_weights=False,
                                         center_unembed=False, fold_value_biases=False,
                                         refactor_factored_attn_matrices=False, default_prepend_bos=False,
                                         default_padding_side="left")
    assert model.cfg.dtype == torch.bfloat16 and model.cfg.device == torch.device("cpu")
    assert not model.cfg.default_prepend_bos and model.tokenizer.padding_side == "left"
    assert model.to_tokens("abc")[0, 0] != model.tokenizer.bos_token_id
    assert HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5", torch_dtype=torch.float16).cfg.dtype == torch.float16
    no_processing = HookedHybrid.from_pretrained_no_processing("hybrid-lens/tiny-qwen2.5", default_prepend_bos=True)
    assert no_processing.to_tokens("abc")[0, 0] == no_processing.tokenizer.bos_token_id
    reference, built = build("qwen2")
    wrapped = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5", hf_model=reference)
    assert wrapped.hf_model is reference
    reference, _ = build("falcon_h1")
    hf = HookedHybrid.from_hf(reference, built.tokenizer, default_prepend_bos=True, default_padding_side="right",
                              device="cpu")
    assert hf.cfg.default_prepend_bos and hf.cfg.default_padding_side == "right"
    seeded = HookedHybrid.from_config(tiny_config("qwen3_5"), dtype="bfloat16", default_prepend_bos=True)
    assert seeded.cfg.dtype == torch.bfloat16 and seeded.cfg.default_prepend_bos
    assert seeded.cfg.default_padding_side == "right"  # no tokenizer: the default side, kept on the config


BAD_LOADS = {
    "fold_ln": (dict(fold_ln=True), ValueError, "unprocessed.*fold_ln=False.*gain"),
    "center_writing_weights": (dict(center_writing_weights=True), ValueError, "RMSNorm"),
    "center_unembed": (dict(center_unembed=True), ValueError, "logits.mean"),
    "fold_value_biases": (dict(fold_value_biases=True), ValueError, "b_V @ W_O"),
    "refactor": (dict(refactor_factored_attn_matrices=True), ValueError, "FactoredMatrix"),
    "n_devices": (dict(n_devices=2), ValueError, "device_map='auto'"),
    "checkpoint_index": (dict(checkpoint_index=3), ValueError, "revision="),
    "first_n_layers": (dict(first_n_layers=2), ValueError, "stop_at_layer"),
    "dtype string": (dict(dtype="float8"), ValueError, "not one of"),
    "padding side": (dict(default_padding_side="middle"), ValueError, "padding_side must be"),
    "prepend_bos": (dict(default_prepend_bos="yes"), ValueError, "True, False or None"),
}


@pytest.mark.parametrize("case", list(BAD_LOADS))
def test_transformer_lens_keywords_that_cannot_apply_are_refused(case):
    kwargs, error, message = BAD_LOADS[case]
    with pytest.raises(error, match=message):
        HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5", **kwargs)


def test_from_hf_and_from_config_refuse_other_keywords():
    reference, _ = build("qwen2")
    with pytest.raises(TypeError, match=r"from_hf\(\) got unexpected keyword arguments \['revision'\]"):
        HookedHybrid.from_hf(reference, revision="main")
    with pytest.raises(ValueError, match="fold_ln"):
        HookedHybrid.from_config(tiny_config("qwen2"), fold_ln=True)
