"""Shared fixtures: tiny random-init models of the three families, built from the shrunken real configs."""

from __future__ import annotations

import copy

import pandas as pd
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import tiny_config
from hybrid_lens.study import runner
from hybrid_lens.study.runner import StudySpec
from hybrid_lens.study.store import StudyStore

FAMILIES = ("qwen3_5", "falcon_h1", "qwen2")

# Tiny models gain nothing from intra-op threads, and threads oversubscribe a busy 2-core machine.
torch.set_num_threads(1)


def build(family: str, seed: int = 0, **config_overrides):
    """A fresh (plain reference, HookedHybrid) pair with identical weights, float32."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(family, **config_overrides)).eval()
    reference = copy.deepcopy(hf)
    return reference, HookedHybrid.from_hf(hf, tokenizer=char_tokenizer())


@torch.no_grad()
def assert_cache_matches_hidden_states(model: HookedHybrid, reference, tokens: torch.Tensor) -> None:
    """Cached residuals equal the plain model's `output_hidden_states` exactly: `hook_resid_pre` of
    every block, `hook_embed`, and the final-norm output (transformers' last hidden state)."""
    hidden = reference(tokens, output_hidden_states=True).hidden_states
    _, cache = model.run_with_cache(tokens)
    assert len(hidden) == model.n_layers + 1
    for layer in range(model.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer])
    assert torch.equal(cache["hook_embed"], hidden[0])
    assert torch.equal(cache["ln_final.hook_normalized"], hidden[-1])


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-ish character-level tokenizer over 256 ids (0 = pad, 1 = bos, 2 = eos)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for code in range(32, 32 + 253):
        vocab[chr(code)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def pair(family):
    return build(family)


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(3, 256, (2, 24), generator=torch.Generator().manual_seed(1))


# --- a tiny saved checkpoint for study-runner tests -------------------------------------------
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-falcon")
    reference, model = build("falcon_h1", num_hidden_layers=3)
    reference.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    text = folder / "text.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 12)
    return folder, text


def spec_for(checkpoint, **kwargs):
    folder, text = checkpoint
    options = dict(model=str(folder), tasks=("ppl",), groups=("baseline", "group", "layer", "positional", "random"),
                   n=3, trials=2, ppl_source=str(text), ppl_context=64)
    return StudySpec(**{**options, **kwargs})


def stored(out, spec) -> pd.DataFrame:
    store = StudyStore(runner.model_folder(out, spec.model) / "results.sqlite")
    table = store.results().sort_values(["condition", "task", "example", "metric"]).reset_index(drop=True)
    store.close()
    return table
