"""OLMo-Hybrid: a sequential hybrid of Gated DeltaNet and attention blocks (3:1, `config.layer_types`)
whose two block types are normed differently.

Linear-attention blocks are pre-norm (`input_layernorm`, then `post_attention_layernorm` before the
MLP). Attention blocks have no pre-norm at all: the raw residual enters attention and the MLP, and
their outputs are normed before they join the residual (`post_attention_layernorm`,
`post_feedforward_layernorm`), so `hook_attn_out` / `hook_mlp_out` are the post-normed outputs.
The Gated DeltaNet has separate q/k/v/a/b/g projections and doubles beta
(`linear_allow_neg_eigval`); its inner points are Qwen3.5's (`mixers.gated_deltanet`). Attention
q/k norms span all heads; `hook_q` / `hook_k` are before them. The published checkpoints use no RoPE.
"""

from ..mixers import gated_deltanet
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention

OLMO_HYBRID = Family(
    family="olmo_hybrid",
    architectures=("OlmoHybridForCausalLM",),
    model_types=("olmo_hybrid",),
    blocks={
        "linear_attention": Block((Mixer("linear_attn", "linear_attn", gated_deltanet.add_points, RECURRENT_ARGS),)),
        "full_attention": Block((attention(norm=None, post_norm="post_attention_layernorm"),),
                                Mlp(norm=None, post_norm="post_feedforward_layernorm")),
    },
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
              num_key_value_heads=2, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
              linear_value_head_dim=16),
)
