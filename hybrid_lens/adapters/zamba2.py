"""Zamba2: Mamba-2 layers; "hybrid" layers first run a shared transformer that writes into the Mamba input.

Layer kinds come from `config.layers_block_type` (`linear_attention`: a Mamba-2 layer, `ssm`;
`hybrid`: the shared transformer, then a Mamba-2 layer, `attn+ssm`). The shared transformer reads
`input_layernorm(concat(resid_pre, embeddings))`; its attention output goes through
`pre_ff_layernorm` into the MLP (no residual inside), and a per-depth `linear` maps the MLP output
to `hook_shared_out`, which is added to the Mamba input, not to the residual:

    resid_post = resid_mid + hook_ssm_out,  ssm input = input_layernorm(resid_mid + hook_shared_out)

`hook_attn_out` / `hook_mlp_out` are the shared attention and MLP outputs at that depth, so
`hook_ssm_out` is the only residual term (`Block.feeds_mixer`); `hook_resid_mid` equals
`hook_resid_pre` (the shared block adds nothing to the stream) and is what the Mamba layer reads.
The shared weights are tied parameters of one module per depth (`transformers` >= 5), so every
depth's hook points are its own. The embeddings the shared blocks read are the model's own copy
(`original_hidden_states`): an edit at `hook_embed` reaches the residual stream, not that copy.
`hook_q/k/v` are the `q/k/v_proj` outputs; with `use_shared_attention_adapter` the depth's LoRA
adapters add `hook_q_lora` / `hook_k_lora` / `hook_v_lora` to them (`q = hook_q + hook_q_lora`).
The Mamba-2 mixers have the inner points of `hybrid_lens.mixers.mamba2`.
"""

import torch

from ..hook_points import HookPoint
from ..mixers import mamba2
from ..mixers.taps import add_projection_point
from .base import resid_in
from .spec import RECURRENT_ARGS, Block, Family, Mixer, Mlp, attention, first


class SharedBlockFamily(Family):
    """A `Family` whose `hybrid` layers run Zamba2's shared transformer before the layer's Mamba decoder."""

    def block_forward(self, block, layer, entry, wrapping):
        if block.layer.block_key != "hybrid":
            return super().block_forward(block, layer, entry, wrapping)
        block.add_module("hook_shared_out", HookPoint())
        shared, decoder = layer.shared_transformer, layer.mamba_decoder

        def mamba_forward(hidden_states, transformer_hidden_states, attention_mask=None, cache=None, use_cache=False,
                          **kwargs):  # the Mamba decoder stays a module call (output_hidden_states records it)
            resid = block.hook_resid_mid(hidden_states)
            normed = decoder.input_layernorm(resid + transformer_hidden_states)
            out = decoder.mamba(hidden_states=normed, cache=cache, attention_mask=attention_mask, **kwargs)
            return block.hook_resid_post(resid + block.hook_ssm_out(out))

        wrapping.replace_forward(decoder, mamba_forward)

        def forward(hidden_states, original_hidden_states, layer_idx, attention_mask=None, causal_mask=None,
                    cache=None, use_cache=False, position_embeddings=None, position_ids=None, **kwargs):
            resid = resid_in(block, entry, hidden_states)
            normed = shared.input_layernorm(torch.concatenate([resid, original_hidden_states], dim=-1))
            attn = first(shared.self_attn(hidden_states=normed, layer_idx=layer_idx, attention_mask=causal_mask,
                                          cache=cache, position_embeddings=position_embeddings,
                                          position_ids=position_ids, **kwargs))
            mlp = block.hook_mlp_out(shared.feed_forward(shared.pre_ff_layernorm(block.hook_attn_out(attn)), layer_idx))
            return decoder(resid, transformer_hidden_states=block.hook_shared_out(layer.linear(mlp)),
                           attention_mask=attention_mask, cache=cache, use_cache=use_cache,
                           position_embeddings=position_embeddings, **kwargs)

        return forward

    def add_inner_points(self, block, layer, pattern_mode):
        taps = super().add_inner_points(block, layer, pattern_mode)
        attn = layer.shared_transformer.self_attn if block.layer.block_key == "hybrid" else None
        if attn is not None and attn.config.use_shared_attention_adapter:
            index = attn.layer_dic[block.index]  # the adapters of this depth
            for name, proj in (("q", attn.q_proj), ("k", attn.k_proj), ("v", attn.v_proj)):
                adapter = getattr(attn, f"linear_{name}_adapter_list")[index]
                taps.append(add_projection_point(block.attn, adapter, f"hook_{name}_lora",
                                                 proj.out_features // attn.head_dim, f"linear_{name}_adapter output"))
        return taps


ZAMBA2 = SharedBlockFamily(
    family="zamba2",
    architectures=("Zamba2ForCausalLM",),
    model_types=("zamba2",),
    blocks={
        "linear_attention": Block((Mixer("ssm", "mamba", mamba2.add_points, RECURRENT_ARGS),), mlp=None),
        "hybrid": Block((attention("shared_transformer.self_attn", norm="shared_transformer.input_layernorm"),
                         Mixer("ssm", "mamba_decoder.mamba", mamba2.add_points, norm="mamba_decoder.input_layernorm")),
                        Mlp(("shared_transformer.feed_forward",), norm="shared_transformer.pre_ff_layernorm"),
                        feeds_mixer=("attn", "mlp")),
    },
    block_keys=lambda config: config.layers_block_type[: config.num_hidden_layers],
    final_norm_attr="final_layernorm",
    tiny=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4, n_mamba_heads=4,
              mamba_d_state=16, chunk_size=8, num_mem_blocks=1, use_shared_attention_adapter=True, adapter_rank=8,
              use_mem_rope=True, layers_block_type=["linear_attention", "hybrid", "linear_attention", "hybrid"]),
    blocks_read_embeddings=True,
)
