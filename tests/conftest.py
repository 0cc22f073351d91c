"""Shared fixtures: tiny random-init models of the three families, built from the shrunken real configs."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import tiny_config

FAMILIES = ("qwen3_5", "falcon_h1", "qwen2")

# Tiny models gain nothing from intra-op threads, and threads oversubscribe a busy 2-core machine.
torch.set_num_threads(1)


def build(family: str, seed: int = 0, **config_overrides):
    """A fresh (plain reference, HookedHybrid) pair with identical weights, float32."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(family, **config_overrides)).eval()
    reference = copy.deepcopy(hf)
    return reference, HookedHybrid.from_hf(hf, tokenizer=char_tokenizer())


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
