"""Nemotron-H (NVIDIA): one component per block, Mamba-2, attention, MLP or MoE, by `config.layers_block_type`.

Every block is `residual + mixer(norm(residual))` with its single component in `mixer`, so a
Mamba-2 or attention block has no MLP (no `hook_resid_mid` / `hook_mlp_out`) and an MLP or MoE
block has no mixer (just `hook_mlp_out`). The norm's input is cast to the norm's dtype first. The
attention has no positional encoding; the MLP is non-gated (relu²); the MoE (sigmoid router with
grouped top-k, non-gated experts, optional latent projection) includes its shared expert.
"""

from ..mixers import mamba2
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention

NEMOTRON_MLP = Block((), Mlp(("mixer",), norm="norm"))

NEMOTRON_H = Family(
    family="nemotron_h",
    architectures=("NemotronHForCausalLM",),
    model_types=("nemotron_h",),
    blocks={
        "linear_attention": Block((Mixer("ssm", "mixer", mamba2.add_points, RECURRENT_ARGS, norm="norm"),), None),
        "full_attention": Block((attention("mixer", norm="norm"),), None),
        "mlp": NEMOTRON_MLP,
        "moe": NEMOTRON_MLP,
    },
    block_keys=lambda config: config.layers_block_type,
    tiny=dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              layers_block_type=["linear_attention", "moe", "full_attention", "mlp"], mamba_num_heads=8,
              mamba_head_dim=16, n_groups=2, ssm_state_size=16, chunk_size=8, n_routed_experts=4,
              num_experts_per_tok=2, moe_intermediate_size=32, moe_shared_expert_intermediate_size=64),
    final_norm_attr="norm_f",
    norm_cast=True,
)
