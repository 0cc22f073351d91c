"""Qwen2 / Qwen2.5 and Llama: plain pre-norm transformer blocks (attention, then MLP)."""

from __future__ import annotations

from ..hook_points import Tap
from .base import Adapter, HookedBlock, resid_in
from .taps import add_attention_points


class Qwen2Adapter(Adapter):
    """`Qwen2ForCausalLM` (pure-transformer control); also serves `LlamaForCausalLM`."""

    family = "qwen2"
    architectures = ("Qwen2ForCausalLM", "LlamaForCausalLM")
    model_types = ("qwen2", "llama")

    def layer_mixers(self, config):
        return [("attn",)] * config.num_hidden_layers

    def block_forward(self, block: HookedBlock, layer, entry):
        def forward(hidden_states, attention_mask=None, position_ids=None, cache=None,
                    use_cache=False, position_embeddings=None, **kwargs):
            residual = resid_in(block, entry, hidden_states)
            attn_out, _ = layer.self_attn(
                hidden_states=layer.input_layernorm(residual),
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            resid_mid = block.hook_resid_mid(residual + block.hook_attn_out(attn_out))
            mlp_out = block.hook_mlp_out(layer.mlp(layer.post_attention_layernorm(resid_mid)))
            return block.hook_resid_post(resid_mid + mlp_out)

        return forward

    def add_inner_points(self, block: HookedBlock, layer, pattern_mode: Tap) -> list[Tap]:
        return add_attention_points(block.attn, layer.self_attn, pattern_mode)
