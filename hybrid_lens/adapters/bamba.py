"""Bamba (IBM): a sequential hybrid; each block holds one mixer, Mamba-2 or attention, then an MLP.

Layer kinds come from `config.layers_block_type` (`linear_attention` / `full_attention`, attention
at `config.attn_layer_indices`). The Mamba-2 mixer has the gated RMSNorm of Mamba-2 and no
multipliers; its attention applies rotary embeddings to half of each head. Layers return
`(hidden, attention weights)`.
"""

from ..mixers import mamba2
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention

BAMBA_MLP = Mlp(("feed_forward",), norm="pre_ff_layernorm")

BAMBA = Family(
    family="bamba",
    architectures=("BambaForCausalLM",),
    model_types=("bamba",),
    final_norm_attr="final_layernorm",
    wrap_output=lambda hidden: (hidden, None),
    blocks={
        "linear_attention": Block((Mixer("ssm", "mamba", mamba2.add_points, RECURRENT_ARGS),), BAMBA_MLP),
        "full_attention": Block((attention(),), BAMBA_MLP),
    },
    block_keys=lambda config: config.layers_block_type,
    tiny=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
              num_hidden_layers=3, attn_layer_indices=[1], mamba_n_heads=8, mamba_d_head=16, mamba_n_groups=2,
              mamba_d_state=16, mamba_chunk_size=8),
)
