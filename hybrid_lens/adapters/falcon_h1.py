"""Falcon-H1: a parallel hybrid; every block runs a Mamba-2 SSM and attention side by side.

Both read one normed input (attention's scaled by `attention_in_multiplier`); block-level
`hook_ssm_out` / `hook_attn_out` are the contributions added to the residual, i.e. after
`ssm_out_multiplier` / `attn_out_multiplier`. The Mamba-2 mixer receives the 2-D
`mamba_attention_mask`; the logits are scaled by `lm_head_multiplier`.
"""

from ..mixers import mamba2
from .spec import Block, Family, Mixer, Mlp, attention

FALCON_H1 = Family(
    family="falcon_h1",
    architectures=("FalconH1ForCausalLM",),
    model_types=("falcon_h1",),
    blocks={"block": Block(
        (Mixer("ssm", "mamba", mamba2.add_points, ("cache", "attention_mask=mamba_attention_mask"),
               out_scale="ssm_out_multiplier"),
         attention(in_scale="attention_in_multiplier", out_scale="attn_out_multiplier")),
        Mlp(("feed_forward",), norm="pre_ff_layernorm"),
        parallel=True,
    )},
    final_norm_attr="final_layernorm",
    wrap_output=lambda hidden: (hidden,),
    logit_scale=lambda hf_model: hf_model.model.lm_head_multiplier,
    embed_scale=lambda hf_model: hf_model.model.embedding_multiplier,
)
