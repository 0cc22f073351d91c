"""Kimi-Linear: a sequential hybrid of Kimi Delta Attention (KDA) and multi-head latent attention
(MLA) blocks, with a mixture-of-experts or dense MLP per block.

Both mixers sit at attribute `self_attn`; `config.layer_types` says which (`linear_attention` /
`full_attention`), `config.mlp_layer_types` whether `mlp` is a `KimiLinearMoE` (`sparse`: routed
experts plus shared experts) or a dense MLP; either output is `hook_mlp_out`. KDA is the gated delta
rule with a per-channel decay (`mixers.kimi_delta`); MLA uses no rotary embedding, and its keys and
values are expanded from a compressed latent (`mixers.attention.add_mla_points`). MoE layers have
router points `blocks.{i}.mlp.hook_router_*` (`mixers.router`).
"""

from ..mixers import attention as softmax
from ..mixers import kimi_delta
from .spec import RECURRENT_ARGS, Block, Family, Mixer, attention, routed

KIMI_LINEAR = Family(
    family="kimi_linear",
    architectures=("KimiLinearForCausalLM",),
    model_types=("kimi_linear",),
    blocks={
        "linear_attention": Block((Mixer("linear_attn", "self_attn", kimi_delta.add_points, RECURRENT_ARGS),), routed()),
        "full_attention": Block((attention(points=softmax.add_mla_points),), routed()),
    },
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=4, kv_lora_rank=32, q_lora_rank=None, qk_rope_head_dim=8, qk_nope_head_dim=16,
              v_head_dim=16, linear_num_heads=4, linear_head_dim=16, num_local_experts=4, num_experts_per_tok=2,
              moe_intermediate_size=32, layer_types=["linear_attention", "full_attention", "linear_attention"],
              mlp_layer_types=["dense", "sparse", "sparse"]),
)
