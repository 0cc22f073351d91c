"""Jamba: a sequential hybrid of Mamba-1 and attention layers, each followed by a dense MLP or a MoE.

Layer kinds come from `config.layers_block_type` (`mamba` / `attention`, every `attn_layer_period`-th
layer at `attn_layer_offset` is attention); `feed_forward` is a top-k MoE in every
`expert_layer_period`-th layer (`config.layers_num_experts`), a gated MLP elsewhere; its output is
`hook_mlp_out` either way. The Mamba mixer normalises dt, B and C with RMS norms (`hook_B` / `hook_C`
are after them) and receives only the cache and the 2-D padding mask. Attention has no rotary embedding.
"""

from ..mixers import mamba1
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention

FEED_FORWARD = Mlp(("feed_forward",), norm="pre_ff_layernorm")

JAMBA = Family(
    family="jamba",
    architectures=("JambaForCausalLM",),
    model_types=("jamba",),
    blocks={
        "mamba": Block((Mixer("ssm", "mamba", mamba1.add_points, RECURRENT_ARGS, rest=False),), FEED_FORWARD),
        "attention": Block((attention(),), FEED_FORWARD),
    },
    block_keys=lambda config: config.layers_block_type,
    final_norm_attr="final_layernorm",
    # layers: mamba + MoE, attention + MLP, mamba + MLP, attention + MoE
    tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
              attn_layer_period=2, attn_layer_offset=1, expert_layer_period=3, expert_layer_offset=0, num_experts=4,
              num_experts_per_tok=2, mamba_d_state=16, mamba_expand=2),
)
