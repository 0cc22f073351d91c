"""MiniMax (MiniMax-Text-01): lightning (linear) attention or softmax attention per layer, then a MoE.

Layer kinds come from `config.layer_types` (`linear_attention` -> `linear_attn`, `full_attention`
-> `attn`). The blocks are DeepNorm-style: the residual stream is renormalised inside every block,
so the skip path of each sub-layer is not the stream but its normed input times `alpha`:

    resid_mid  = attn_alpha * input_layernorm(resid_pre) + hook_{kind}_out
    resid_post = mlp_alpha * post_attention_layernorm(resid_mid) + hook_mlp_out

`hook_resid_pre` is the layer input (= `output_hidden_states`), `hook_{kind}_out` / `hook_mlp_out`
are the contributions actually added (mixer and MoE outputs times `beta`). So `resid_post` is not
`resid_pre` plus the block's outputs (`Family.skip_path` gives each skip path), and a sum of
contributions over layers (`decompose_resid`) does not reconstruct the stream.

A left-padded forward is exact, but decoding on from the `transformers` cache of a left-padded prompt
is not (the lightning attention's cached state carries the padding): `left_padded_cache=False`, so
`generate` decodes each prompt length apart.
"""

from ..mixers import lightning
from .spec import Block, Family, Mixer, Mlp, attention

SCALES = dict(normed_skip="attn_alpha_factor", out_scale="attn_beta_factor")
MOE = Mlp(normed_skip="mlp_alpha_factor", out_scale="mlp_beta_factor")

MINIMAX = Family(
    family="minimax",
    architectures=("MiniMaxForCausalLM",),
    model_types=("minimax",),
    blocks={
        "linear_attention": Block((Mixer("linear_attn", "self_attn", lightning.add_points, **SCALES),), MOE),
        "full_attention": Block((attention(**SCALES),), MOE),
    },
    block_keys=lambda config: config.layer_types[: config.num_hidden_layers],
    left_padded_cache=False,
    tiny=dict(hidden_size=64, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, num_local_experts=4, num_experts_per_tok=2, block_size=5,
              layer_types=["linear_attention", "linear_attention", "full_attention"],
              full_attn_alpha_factor=1.5, full_attn_beta_factor=0.8, linear_attn_alpha_factor=1.25,
              linear_attn_beta_factor=0.9, mlp_alpha_factor=1.5, mlp_beta_factor=0.7),
)
