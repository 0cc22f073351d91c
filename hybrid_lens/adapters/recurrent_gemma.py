"""RecurrentGemma (Griffin): a sequential hybrid of RG-LRU recurrent blocks and local attention (2:1).

Each layer's `temporal_block` is chosen by `config.layers_block_type`: `linear_attention` layers
run the recurrent block (conv + RG-LRU, kind `ssm`), `sliding_attention` layers run local
multi-query attention (window `attention_window_size`, partial rotary). Both read
`temporal_pre_norm`; the MLP `mlp_block` reads `channel_pre_norm`. The layer forward names its
input `activations` and receives every argument positionally. The decoder multiplies the
embeddings by sqrt(hidden_size) (rounded to bfloat16) before block 0, so `hook_embed` holds the
scaled embeddings. The logits are soft-capped, `tanh(logits / c) * c` with `c = logits_soft_cap`:
`unembed` applies the cap; `W_U` refuses, since the logits are not linear in the residual.
The recurrent block keeps its conv and RG-LRU states on the module when `use_cache=True`. Its
convolution ignores the attention mask, so the positions before a left-padded row's first token
leak into it: left padding is refused (`left_padding=False`); right padding is exact.
"""

import torch

from ..mixers import rg_lru
from .spec import Block, Family, Mixer, Mlp, attention


def soft_cap(hf_model, logits):
    """RecurrentGemma's logit soft cap, as `RecurrentGemmaForCausalLM.forward` applies it."""
    cap = hf_model.config.logits_soft_cap
    return torch.tanh(logits / cap) * cap


CHANNEL = Mlp(("mlp_block",), norm="channel_pre_norm")
RECURRENT = Mixer("ssm", "temporal_block", rg_lru.add_points, norm="temporal_pre_norm")
RECURRENT_GEMMA = Family(
    family="recurrent_gemma",
    architectures=("RecurrentGemmaForCausalLM",),
    model_types=("recurrent_gemma",),
    blocks={
        "linear_attention": Block((RECURRENT,), CHANNEL),
        "sliding_attention": Block((attention("temporal_block", norm="temporal_pre_norm"),), CHANNEL),
    },
    block_keys=lambda config: config.layers_block_type[: config.num_hidden_layers],
    tiny=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=1,
              num_hidden_layers=3, attention_window_size=8),
    final_norm_attr="final_norm",
    logit_transform=soft_cap,
    left_padding=False,
    prepend_bos=False,
    embed_scale=lambda hf_model: hf_model.model.normalizer.to(hf_model.model.embed_tokens.weight.dtype),
)
