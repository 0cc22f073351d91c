"""Loading: local folders, Qwen3.5 vision-language checkpoints as text models, seeded configs."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, Qwen3_5ForConditionalGeneration

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config, tiny_config

from .conftest import build


@torch.no_grad()
def test_from_pretrained_local_folder_round_trip(tmp_path, tokens):
    reference, model = build("falcon_h1")
    reference.save_pretrained(tmp_path)
    model.tokenizer.save_pretrained(tmp_path)
    loaded = HookedHybrid.from_pretrained(str(tmp_path), dtype=torch.float32)
    assert torch.equal(loaded(tokens), reference(tokens).logits)
    assert loaded.to_tokens("abc").shape == (1, 3)


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
