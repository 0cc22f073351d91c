"""The shared test fixtures: tiny plain/hooked model pairs with identical weights, their inputs, and
the study helpers. Test modules import these helpers from here; `conftest.py` wraps some as pytest
fixtures (`family`, `pair`, `tokens`, `checkpoint`)."""

from __future__ import annotations

import copy
import math

import pandas as pd
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor, nn
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import tiny_config
from hybrid_lens.study import runner
from hybrid_lens.study.runner import StudySpec
from hybrid_lens.study.store import StudyStore

FAMILIES = ("qwen3_5", "falcon_h1", "qwen2")  # the reference families
MODULE_OF_KIND = {"attn": "self_attn", "linear_attn": "linear_attn", "ssm": "mamba"}  # their mixers' attributes


def build(family: str, seed: int = 0, visible: bool = False, **config_overrides):
    """A fresh (plain reference, HookedHybrid) pair of a tiny `family` model with identical weights,
    float32, with the character tokenizer; `visible`: re-initialised with `visible_init(seed=0)`."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config(family, **config_overrides)).eval()
    if visible:
        visible_init(hf, seed=0)
    reference = copy.deepcopy(hf)
    return reference, HookedHybrid.from_hf(hf, tokenizer=char_tokenizer())


@torch.no_grad()
def visible_init(hf_model: nn.Module, seed: int) -> None:
    """Linear, convolution and stacked-expert weights N(0, 1/fan_in), embeddings N(0, 1): every
    component's output is of the order of the residual (at the default init a Mamba-2 output is ~1e-4
    of it, and routed experts add ~0.4% of a MoE's output)."""
    generator = torch.Generator().manual_seed(seed)

    def fill(weight: Tensor, fan_in: int) -> None:
        weight.copy_(torch.randn(weight.shape, generator=generator) / math.sqrt(fan_in))

    for module in hf_model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            fill(module.weight, module.weight[0].numel())
        elif isinstance(module, nn.Embedding):
            module.weight.copy_(torch.randn(module.weight.shape, generator=generator))
        else:  # experts stored as [expert, out, in] parameters (`gate_up_proj`, `down_proj`)
            for name, weight in module.named_parameters(recurse=False):
                if weight.ndim == 3 and name.endswith("_proj"):
                    fill(weight, weight.shape[-1])


def random_tokens(batch: int = 2, length: int = 24, seed: int = 1) -> Tensor:
    """Random ids `[batch, length]` of the character tokenizer's printable range (no pad/bos/eos)."""
    return torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(seed))


def char_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-ish character-level tokenizer over 256 ids (0 = pad, 1 = bos, 2 = eos)."""
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2}
    for code in range(32, 32 + 253):
        vocab[chr(code)] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@torch.no_grad()
def assert_cache_matches_hidden_states(model: HookedHybrid, reference, tokens: Tensor) -> None:
    """Cached residuals equal the plain model's `output_hidden_states` exactly: `hook_resid_pre` of
    every block, `hook_embed`, and the final-norm output (transformers' last hidden state), in a cache of
    the block-level points (a cache of every point switches the mixers to their eager paths, which round
    differently: `tests/test_core.py` checks that one within float rounding)."""
    hidden = reference(tokens, output_hidden_states=True).hidden_states
    _, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))
    assert len(hidden) == model.n_layers + 1
    for layer in range(model.n_layers):
        assert torch.equal(cache[f"blocks.{layer}.hook_resid_pre"], hidden[layer])
    assert torch.equal(cache["hook_embed"], hidden[0])
    assert torch.equal(cache["ln_final.hook_normalized"], hidden[-1])


def hf_run(reference, tokens: Tensor, hooks) -> Tensor:
    """Logits of the plain model with `(module, forward_hook)` pairs attached."""
    handles = [module.register_forward_hook(fn) for module, fn in hooks]
    try:
        return reference(tokens).logits
    finally:
        for handle in handles:
            handle.remove()


def on_output(fn):
    """A forward hook applying `fn` to a module's output tensor (first element of a tuple)."""
    def hook(_module, _args, output):
        return (fn(output[0]), *output[1:]) if isinstance(output, tuple) else fn(output)
    return hook


def no_hooks_left(model: HookedHybrid) -> bool:
    """Whether no hook point of `model` has a hook and no tap feeds an inner point."""
    return (all(not point.fwd_hooks and not point.bwd_hooks for point in model.hook_dict.values())
            and not any(tap.active for tap in model._wrapping.taps) and not model._pattern_mode.active)


# --- the study -----------------------------------------------------------------------------------
def save_checkpoint(folder) -> tuple:
    """A tiny 3-layer Falcon-H1 checkpoint (with the tokenizer) and a text in `folder`."""
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
