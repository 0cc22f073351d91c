"""LFM2 and LFM2-MoE (Liquid AI): a sequential hybrid of gated short convolutions and attention.

Each block holds one mixer, chosen by `config.layer_types`: `conv` layers run `Lfm2ShortConv`
(`y = C * conv(B * x)`, kind `conv`), `full_attention` layers run grouped-query attention with
per-head q/k RMSNorms (`q_layernorm` / `k_layernorm`, after `hook_q` / `hook_k`) and an output
projection named `out_proj`. Both read `operator_norm`; the MLP is `feed_forward` after `ffn_norm`.
The final norm is named `embedding_norm` although it closes the decoder. In LFM2-MoE the first
`num_dense_layers` blocks have a dense MLP and the others a sparse MoE (its output is
`hook_mlp_out`; sigmoid router with expert bias, points `blocks.{i}.mlp.hook_router_*`).
"""

from dataclasses import replace

from ..mixers import short_conv
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention, routed

FFN = Mlp(("feed_forward",), norm="ffn_norm")


def blocks(ffn: Mlp) -> dict[str, Block]:
    return {"conv": Block((Mixer("conv", "conv", short_conv.add_points, RECURRENT_ARGS, norm="operator_norm"),), ffn),
            "full_attention": Block((attention(norm="operator_norm"),), ffn)}


TINY = dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
            num_hidden_layers=3, layer_types=["conv", "full_attention", "conv"])

LFM2 = Family(
    family="lfm2",
    architectures=("Lfm2ForCausalLM",),
    model_types=("lfm2",),
    blocks=blocks(FFN),
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    tiny=dict(TINY, block_auto_adjust_ff_dim=False),
    final_norm_attr="embedding_norm",
)
LFM2_MOE = replace(
    LFM2,
    family="lfm2_moe",
    architectures=("Lfm2MoeForCausalLM",),
    model_types=("lfm2_moe",),
    blocks=blocks(routed(FFN.modules, norm=FFN.norm)),  # the MoE layers get router points
    tiny=dict(TINY, num_dense_layers=1, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32),
)
