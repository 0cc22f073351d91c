"""Falcon-H1: a parallel hybrid, every block runs a Mamba-2 SSM and attention side by side.

Block-level `hook_ssm_out` / `hook_attn_out` are the contributions added to the residual, i.e.
after `ssm_out_multiplier` / `attention_out_multiplier`.
"""

from __future__ import annotations

import warnings

import torch
from transformers.models.falcon_h1 import modeling_falcon_h1 as hf

from ..hook_points import Tap
from ..mixers import mamba2
from ..mixers.state import split_scan
from .base import Adapter, HookedBlock, MixerHooks, resid_in
from .taps import (add_attention_points, add_projection_point, input_tap, mixer_output,
                   recurrent_eager_tap, refuse_cache, single)


class FalconH1Adapter(Adapter):
    """`FalconH1ForCausalLM`."""

    family = "falcon_h1"
    architectures = ("FalconH1ForCausalLM",)
    model_types = ("falcon_h1",)
    final_norm_attr = "final_layernorm"

    def layer_mixers(self, config):
        return [("ssm", "attn")] * config.num_hidden_layers

    def logit_scale(self, hf_model):
        return hf_model.model.lm_head_multiplier

    def layer_output(self, hidden_states):
        return (hidden_states,)

    def block_forward(self, block: HookedBlock, layer, entry):
        def forward(hidden_states, attention_mask=None, mamba_attention_mask=None, position_ids=None,
                    cache=None, use_cache=False, position_embeddings=None, **kwargs):
            residual = resid_in(block, entry, hidden_states)
            normed = layer.input_layernorm(residual)
            ssm_out = layer.mamba(
                hidden_states=normed, cache=cache, attention_mask=mamba_attention_mask, **kwargs
            )
            ssm_out = block.hook_ssm_out(ssm_out * layer.ssm_out_multiplier)
            attn_out, _ = layer.self_attn(
                hidden_states=normed * layer.attention_in_multiplier,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                position_embeddings=position_embeddings,
                **kwargs,
            )
            attn_out = block.hook_attn_out(attn_out * layer.attn_out_multiplier)
            resid_mid = block.hook_resid_mid(residual + (ssm_out + attn_out))
            mlp_out = block.hook_mlp_out(layer.feed_forward(layer.pre_ff_layernorm(resid_mid)))
            return self.layer_output(block.hook_resid_post(resid_mid + mlp_out))

        return forward

    def add_inner_points(self, block: HookedBlock, layer, pattern_mode: Tap) -> list[Tap]:
        return [
            *add_mamba2_points(block.ssm, layer.mamba, pattern_mode),
            *add_attention_points(block.attn, layer.self_attn, pattern_mode),
        ]


def add_mamba2_points(hooks: MixerHooks, mamba, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Mamba-2 mixer (TransformerLens `SSM2MixerBridge` names, x/B/C/dt/z/y split out).

    From projections (cheap): `hook_in_proj` `[batch, pos, d_in_proj]` (raw `in_proj` output, before
    the muP vector), `hook_y` `[batch, pos, head, d_head]` (gated scan output entering `out_proj`).
    From an eager forward that runs only while one of them is hooked: `hook_conv`
    `[batch, pos, conv_dim]` (after conv + activation), `hook_x` `[batch, pos, head, d_head]`,
    `hook_B`, `hook_C` `[batch, pos, group, d_state]`, `hook_dt` `[batch, pos, head]` (before bias
    and softplus), `hook_z` `[batch, pos, d_ssm]` (gate, after the muP vector), `hook_pattern`
    `[batch, head, query_pos, key_pos]` (the semiseparable matrix M, scan output `M x + D x`;
    computed only while hooked, and a replaced M is applied to x instead of the scan), and
    `hook_state` `[batch, head, d_head, d_state]` (the SSM state after chosen positions, see
    `StateHookPoint`).
    """
    split, join = single("hook_y", mamba.num_heads)
    taps = [
        add_projection_point(hooks, mamba.in_proj, "hook_in_proj", None, "in_proj output"),
        input_tap(hooks, mamba.out_proj, split, join, ["hook_y"], "out_proj input"),
    ]
    eager = recurrent_eager_tap(hooks, mamba, _eager_mamba2(mamba, hooks, pattern_mode),
                                ["hook_z", "hook_dt", "hook_conv", "hook_x", "hook_B", "hook_C", "hook_pattern"],
                                "eager Mamba-2 forward")
    return [*taps, eager]


def _eager_mamba2(mamba, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` Falcon-H1 Mamba-2 forward (no-cache path) with hook points on x/B/C/dt/z."""

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Mamba-2 (hook_x/B/C/dt/z/conv, hook_state)")
        if mamba.training:
            warnings.warn("Inner Mamba-2 hook points run the unfused scan path; in training mode transformers would "
                          "otherwise use the fused mamba_split_conv1d_scan_combined kernel (when mamba-ssm is "
                          "installed). Eval mode uses the same kernels either way.", stacklevel=2)
        batch, seq, _ = hidden_states.shape
        dtype = hidden_states.dtype
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        projected = mamba.in_proj(hidden_states * mamba.ssm_in_multiplier) * mamba.mup_vector
        A = -torch.exp(mamba.A_log.float())
        gate, xbc, dt = projected.split([mamba.intermediate_size, mamba.conv_dim, mamba.num_heads], dim=-1)
        gate = hooks.hook_z(gate)
        dt = hooks.hook_dt(dt)
        xbc = hf.causal_conv1d_fn(
            xbc.transpose(1, 2), mamba.conv1d.weight.squeeze(1), mamba.conv1d.bias, activation=mamba.activation, **kwargs
        )
        xbc = hooks.hook_conv(hf.apply_mask_to_padding_states(xbc.transpose(1, 2), attention_mask))
        state = mamba.n_groups * mamba.ssm_state_size
        x, B, C = torch.split(xbc, [mamba.intermediate_size, state, state], dim=-1)
        x = hooks.hook_x(x.view(batch, seq, -1, mamba.head_dim))
        B = hooks.hook_B(B.view(batch, seq, mamba.n_groups, -1))
        C = hooks.hook_C(C.view(batch, seq, mamba.n_groups, -1))

        def scan(parts, initial_state, final):
            result = hf.mamba2_chunk_scan(
                *parts[:2], A, *parts[2:], chunk_size=mamba.chunk_size, D=mamba.D, z=None, return_final_states=final,
                dt_bias=mamba.dt_bias, dt_softplus=True, initial_states=initial_state, dt_limit=mamba.time_step_limit,
                **kwargs,
            )
            return result if final else (result, None)

        def pattern():
            step = torch.nn.functional.softplus(dt + mamba.dt_bias).clamp(*mamba.time_step_limit)
            return mamba2.implicit_attention(step, A, B, C)

        y = mixer_output(hooks, lambda: split_scan(hooks.hook_state, scan, [x, dt, B, C]), pattern,
                         lambda edited: mamba2.apply_pattern(edited, x, mamba.D), pattern_mode)
        y = y.reshape(batch, seq, -1)
        y = mamba.norm(y, gate) if mamba.mamba_rms_norm else y * torch.nn.functional.silu(gate)
        return mamba.out_proj(y.to(dtype))

    return forward
