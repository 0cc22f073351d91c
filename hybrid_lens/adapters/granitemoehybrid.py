"""Granite-4.0-H (`GraniteMoeHybrid`): a sequential hybrid of Mamba-2 and attention blocks, each with
an MoE and a shared MLP.

Layer kinds come from `config.layer_types` (`linear_attention` / `full_attention`). muP-style
multipliers: embeddings are scaled by `embedding_multiplier` before block 0 (so `hook_embed` and
`blocks.0.hook_resid_pre` include it); the mixer and MLP outputs are scaled by
`residual_multiplier` before they join the residual (the block-level points are after it); the
logits are divided by `logits_scaling`; attention scores use `attention_multiplier` as their scale.
The MLP is `block_sparse_moe` + `shared_mlp`, summed into one `hook_mlp_out`; checkpoints with
`num_local_experts=0` have no MoE (`block_sparse_moe` is None) and run the shared MLP alone.
"""

from ..mixers import mamba2
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention

GRANITE_MLP = Mlp(("block_sparse_moe", "shared_mlp"), out_scale="residual_multiplier")

GRANITE_MOE_HYBRID = Family(
    family="granitemoehybrid",
    architectures=("GraniteMoeHybridForCausalLM",),
    model_types=("granitemoehybrid",),
    blocks={
        "linear_attention": Block((Mixer("ssm", "mamba", mamba2.add_points, RECURRENT_ARGS,
                                         out_scale="residual_multiplier"),), GRANITE_MLP),
        "full_attention": Block((attention(out_scale="residual_multiplier"),), GRANITE_MLP),
    },
    block_keys=lambda config: config.layer_types,
    tiny=dict(hidden_size=64, intermediate_size=32, shared_intermediate_size=128, num_local_experts=4,
              num_experts_per_tok=2, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3,
              layer_types=["linear_attention", "full_attention", "linear_attention"], mamba_n_heads=8,
              mamba_d_head=16, mamba_n_groups=2, mamba_d_state=16, mamba_chunk_size=8, embedding_multiplier=12.0,
              residual_multiplier=0.22, logits_scaling=6.0, attention_multiplier=0.0625),
    logit_divisor=lambda hf_model: hf_model.config.logits_scaling,
    prepend_bos=False,
    embed_scale=lambda hf_model: hf_model.model.embedding_multiplier,
)
