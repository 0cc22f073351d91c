"""Qwen3.5: a sequential hybrid, each block holds one mixer (Gated DeltaNet or gated attention).

Layer kinds come from `config.layer_types` (`linear_attention` / `full_attention`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers.models.qwen3_5 import modeling_qwen3_5 as hf

from ..hook_points import Tap
from ..mixers import gated_deltanet
from ..mixers.state import split_scan
from ..vocabulary import point_name
from .base import Adapter, HookedBlock, MixerHooks, resid_in
from .taps import (add_attention_points, add_projection_point, mixer_output, output_tap,
                   recurrent_eager_tap, refuse_cache)

KIND_OF_LAYER_TYPE = {"linear_attention": "linear_attn", "full_attention": "attn"}


class Qwen3_5Adapter(Adapter):
    """`Qwen3_5ForCausalLM` (also the text model of `Qwen3_5ForConditionalGeneration` checkpoints)."""

    family = "qwen3_5"
    architectures = ("Qwen3_5ForCausalLM",)
    model_types = ("qwen3_5_text", "qwen3_5")

    def layer_mixers(self, config):
        try:
            return [(KIND_OF_LAYER_TYPE[t],) for t in config.layer_types[: config.num_hidden_layers]]
        except KeyError as err:
            raise ValueError(f"Unknown Qwen3.5 layer type {err}; known: {sorted(KIND_OF_LAYER_TYPE)}") from None

    def block_forward(self, block: HookedBlock, layer, entry):
        kind = block.mixers[0]
        mixer_out = point_name(kind)  # looked up at call time: a replaced hook-point module takes effect

        def forward(hidden_states, position_embeddings=None, attention_mask=None, position_ids=None,
                    cache=None, **kwargs):
            residual = resid_in(block, entry, hidden_states)
            normed = layer.input_layernorm(residual)
            if kind == "linear_attn":
                out = layer.linear_attn(
                    hidden_states=normed, cache=cache, attention_mask=attention_mask, **kwargs
                )
            else:
                out, _ = layer.self_attn(
                    hidden_states=normed,
                    attention_mask=attention_mask,
                    position_ids=position_ids,
                    cache=cache,
                    position_embeddings=position_embeddings,
                    **kwargs,
                )
            resid_mid = block.hook_resid_mid(residual + getattr(block, mixer_out)(out))
            mlp_out = block.hook_mlp_out(layer.mlp(layer.post_attention_layernorm(resid_mid)))
            return block.hook_resid_post(resid_mid + mlp_out)

        return forward

    def add_inner_points(self, block: HookedBlock, layer, pattern_mode: Tap) -> list[Tap]:
        if block.mixers[0] == "attn":
            return add_attention_points(block.attn, layer.self_attn, pattern_mode, gated=True)
        return add_gated_deltanet_points(block.linear_attn, layer.linear_attn, pattern_mode)


def add_gated_deltanet_points(hooks: MixerHooks, gdn, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Gated DeltaNet mixer (TransformerLens `GatedDeltaNetBridge` names).

    From projections (cheap): `hook_q_pre_conv`, `hook_k_pre_conv` `[batch, pos, k_head, d_k]`,
    `hook_v_pre_conv`, `hook_gate_input` `[batch, pos, v_head, d_v]`, `hook_beta_logit`
    `[batch, pos, v_head]`. From an eager forward that runs only while one of them is hooked:
    `hook_q`, `hook_k`, `hook_v` (after the causal conv), `hook_beta` (sigmoid), `hook_log_decay`
    (g, `[batch, pos, v_head]`, float32), `hook_recurrence_out` `[batch, pos, v_head, d_v]`
    (delta-rule output before the gated norm), `hook_pattern` `[batch, v_head, query_pos, key_pos]`
    (implicit attention, `recurrence_out = pattern @ v` per head; computed only while hooked, and a
    replaced pattern is applied to the values instead of the recurrence), and `hook_state`
    `[batch, v_head, d_k, d_v]` (the recurrent state after chosen positions, see `StateHookPoint`).
    """
    sizes = [gdn.key_dim, gdn.key_dim, gdn.value_dim]
    heads = {"hook_q_pre_conv": gdn.num_k_heads, "hook_k_pre_conv": gdn.num_k_heads, "hook_v_pre_conv": gdn.num_v_heads}

    def split(x):
        return {name: part.unflatten(-1, (heads[name], -1)) for name, part in zip(heads, x.split(sizes, dim=-1))}

    def join(parts, x):
        return torch.cat([parts[name].flatten(-2) for name in heads], dim=-1)

    taps = [
        output_tap(hooks, gdn.in_proj_qkv, split, join, list(heads), "in_proj_qkv output"),
        add_projection_point(hooks, gdn.in_proj_z, "hook_gate_input", gdn.num_v_heads, "in_proj_z output"),
        add_projection_point(hooks, gdn.in_proj_b, "hook_beta_logit", None, "in_proj_b output"),
    ]
    names = ["hook_q", "hook_k", "hook_v", "hook_beta", "hook_log_decay", "hook_recurrence_out", "hook_pattern"]
    forward = _eager_gated_deltanet(gdn, hooks, pattern_mode)
    return [*taps, recurrent_eager_tap(hooks, gdn, forward, names, "eager Gated DeltaNet forward")]


def _eager_gated_deltanet(gdn, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` Gated DeltaNet forward (no-cache path) with hook points on its intermediates."""

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Gated DeltaNet (hook_q/k/v, hook_beta, hook_log_decay, hook_recurrence_out, hook_state)")
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        batch, seq, _ = hidden_states.shape
        mixed_qkv = gdn.in_proj_qkv(hidden_states).transpose(1, 2)
        z = gdn.in_proj_z(hidden_states).reshape(batch, seq, -1, gdn.head_v_dim)
        b = gdn.in_proj_b(hidden_states)
        a = gdn.in_proj_a(hidden_states)
        mixed_qkv = hf.causal_conv1d_fn(
            mixed_qkv, gdn.conv1d.weight.squeeze(1), gdn.conv1d.bias, activation=gdn.activation, **kwargs
        ).transpose(1, 2)
        query, key, value = torch.split(mixed_qkv, [gdn.key_dim, gdn.key_dim, gdn.value_dim], dim=-1)
        query = hooks.hook_q(query.reshape(batch, seq, -1, gdn.head_k_dim))
        key = hooks.hook_k(key.reshape(batch, seq, -1, gdn.head_k_dim))
        value = hooks.hook_v(value.reshape(batch, seq, -1, gdn.head_v_dim))
        beta = hooks.hook_beta(b.sigmoid())
        g = hooks.hook_log_decay(-gdn.A_log.float().exp() * F.softplus(a.float() + gdn.dt_bias))
        cu_seqlens = kwargs.pop("cu_seq_lens_q", None)

        def scan(parts, initial_state, final):
            return hf.torch_chunk_gated_delta_rule(
                *parts[:3], g=parts[3], beta=parts[4], initial_state=initial_state, output_final_state=final,
                use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens, **kwargs,
            )

        core = mixer_output(hooks, lambda: split_scan(hooks.hook_state, scan, [query, key, value, g, beta]),
                            lambda: gated_deltanet.implicit_attention(query, key, g, beta),
                            lambda edited: gated_deltanet.apply_pattern(edited, value).to(query.dtype), pattern_mode)
        core = hooks.hook_recurrence_out(core)
        core = gdn.norm(core.reshape(-1, gdn.head_v_dim), z.reshape(-1, gdn.head_v_dim))
        return gdn.out_proj(core.reshape(batch, seq, -1))

    return forward
