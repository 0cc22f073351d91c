"""Qwen3-Next: a sequential hybrid like Qwen3.5 (Gated DeltaNet or gated attention per block, 3:1,
from `config.layer_types`), with a mixture-of-experts MLP.

The MLP of a layer is a `Qwen3NextSparseMoeBlock` (top-k routed experts plus a shared expert scaled
by a sigmoid gate) unless the layer is in `mlp_only_layers` or off the `decoder_sparse_step` grid,
where it is a dense MLP; either sits at attribute `mlp` and its output is `hook_mlp_out`. The Gated
DeltaNet projections are fused per key head (`in_proj_qkvz`, `in_proj_ba`); its inner points are
Qwen3.5's (`mixers.gated_deltanet`), and the attention output gate is `hook_gate`. MoE layers have
router points `blocks.{i}.mlp.hook_router_*` (`mixers.router`).
"""

from ..mixers import gated_deltanet
from .spec import RECURRENT_ARGS, Block, Family, Mixer, attention, routed

MOE = routed()  # an MoE in most layers, a dense MLP in `mlp_only_layers`

QWEN3_NEXT = Family(
    family="qwen3_next",
    architectures=("Qwen3NextForCausalLM",),
    model_types=("qwen3_next",),
    blocks={
        "linear_attention": Block((Mixer("linear_attn", "linear_attn", gated_deltanet.add_points, RECURRENT_ARGS),),
                                  MOE),
        "full_attention": Block((attention(),), MOE),
    },
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, linear_num_key_heads=2, linear_num_value_heads=4,
              linear_key_head_dim=16, linear_value_head_dim=16, num_experts=4, num_experts_per_tok=2,
              moe_intermediate_size=32, shared_expert_intermediate_size=32, mlp_only_layers=[1]),
    prepend_bos=False,
)
