"""Implicit attention of Mamba-2 (SSD): the semiseparable matrix of the selective scan.

With `dt` after its bias, softplus and clamp, and `A = -exp(A_log)`, the scan output (before the
gate) is `y = M x + D x` per head, with

    M[b, h, t, s] = (C_t . B_s) * exp(sum_{r=s+1..t} dt_r A_h) * dt_s      (s <= t, else 0)

(Dao & Gu 2024, "Transformers are SSMs"; Ali, Zimerman & Wolf 2024, "The Hidden Attention of Mamba
Models").
"""

from __future__ import annotations

import sys
import warnings

import torch
from jaxtyping import Float
from torch import Tensor

from ..hook_points import Tap
from .heads import declare_heads
from .kinds import ComponentKind
from .state import split_scan
from .taps import MixerHooks, add_projection_point, input_tap, mixer_output, recurrent_eager_tap, refuse_cache, single

from .gated_deltanet import decay_matrix

SSM = ComponentKind("ssm", "SSM", (31, 119, 180), recurrent=True, pattern="implicit",
                    state="[batch, head, d_head, d_state] (Mamba-2), [batch, d_inner, d_state] (Mamba-1), "
                          "[batch, lru_width] (RG-LRU)")

__all__ = ["apply_pattern", "implicit_attention"]  # `add_points` is the adapters' plumbing, not user API


def implicit_attention(
    dt: Float[Tensor, "batch pos head"],
    A: Float[Tensor, "head"],
    B: Float[Tensor, "batch pos group d_state"],
    C: Float[Tensor, "batch pos group d_state"],
) -> Float[Tensor, "batch head pos pos"]:
    """The semiseparable matrix `M` (float32) of one Mamba-2 scan.

    Args:
        dt: Step sizes after `dt_bias`, softplus and the `time_step_limit` clamp.
        A: The (negative) state decay rates, `-exp(A_log)`.
        B: Input projections (`hook_B`); groups are shared by `head // group` heads.
        C: Output projections (`hook_C`).

    Examples:
        >>> dt, A = torch.rand(1, 5, 4), -torch.rand(4)
        >>> M = implicit_attention(dt, A, torch.randn(1, 5, 1, 8), torch.randn(1, 5, 1, 8))
        >>> M.shape                                          # [batch, head, query_pos, key_pos]
        torch.Size([1, 4, 5, 5])
    """
    heads = dt.shape[-1]
    B, C = (x.float().repeat_interleave(heads // x.shape[2], dim=2).transpose(1, 2) for x in (B, C))
    dt = dt.float().transpose(1, 2)
    gamma = decay_matrix(dt * A.float()[:, None])
    return (C @ B.transpose(-1, -2)) * gamma * dt[..., None, :]


def apply_pattern(
    pattern: Float[Tensor, "batch head pos pos"], x: Float[Tensor, "batch pos head d_head"], D: Float[Tensor, "head"]
) -> Float[Tensor, "batch pos head d_head"]:
    """The scan output `M x + D x` (float32) of a (possibly edited) semiseparable matrix.

    Examples:
        >>> apply_pattern(torch.zeros(1, 2, 3, 3), torch.ones(1, 3, 2, 4), torch.tensor([1.0, 2.0]))[0, 0]
        tensor([[1., 1., 1., 1.],
                [2., 2., 2., 2.]])
    """
    return torch.einsum("bhts,bshp->bthp", pattern.float(), x.float()) + D.float()[:, None] * x.float()


def add_points(hooks: MixerHooks, mamba, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Mamba-2 mixer (TransformerLens `SSM2MixerBridge` names, x/B/C/dt/z/y split out).

    Serves the Mamba-2 mixers of Falcon-H1, Bamba, Granite-4.0-H, Nemotron-H and Mamba-2 (the same
    `transformers` forward; Falcon-H1 adds `ssm_in_multiplier`, a muP vector on the `in_proj`
    output and an optional gated norm). From projections (cheap): `hook_in_proj`
    `[batch, pos, d_in_proj]` (raw `in_proj` output, before any muP vector), `hook_y`
    `[batch, pos, head, d_head]` (gated, normed scan output entering `out_proj`).
    From an eager forward that runs only while one of them is hooked: `hook_conv`
    `[batch, pos, conv_dim]` (after conv + activation), `hook_x` `[batch, pos, head, d_head]`,
    `hook_B`, `hook_C` `[batch, pos, group, d_state]`, `hook_dt` `[batch, pos, head]` (before bias
    and softplus), `hook_z` `[batch, pos, d_ssm]` (gate, after any muP vector), `hook_pattern`
    `[batch, head, query_pos, key_pos]` (the semiseparable matrix M, scan output `M x + D x`;
    computed only while hooked, and a replaced M is applied to x instead of the scan), and
    `hook_state` `[batch, head, d_head, d_state]` (the SSM state after chosen positions, see
    `StateHookPoint`). `hook_result` splits `out_proj`'s output by head from `hook_y` (`mixers.heads`;
    views `W_O` `[head, d_head, d_model]`, `b_O`).
    """
    split, join = single("hook_y", mamba.num_heads)
    taps = [
        add_projection_point(hooks, mamba.in_proj, "hook_in_proj", None, "in_proj output"),
        input_tap(hooks, mamba.out_proj, split, join, ["hook_y"], "out_proj input"),
    ]
    eager = recurrent_eager_tap(hooks, mamba, _eager_forward(mamba, hooks, pattern_mode),
                                ["hook_z", "hook_dt", "hook_conv", "hook_x", "hook_B", "hook_C", "hook_pattern"],
                                "eager Mamba-2 forward")
    declare_heads(hooks, mamba, mamba.out_proj, mamba.num_heads, "hook_y")
    return [*taps, eager]


def _eager_forward(mamba, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` Mamba-2 forward (no-cache path) with hook points on x/B/C/dt/z."""
    hf = sys.modules[type(mamba).__module__]  # the modeling module of the family: its kernels and helpers

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Mamba-2 (hook_x/B/C/dt/z/conv, hook_state)")
        if mamba.training:
            warnings.warn("Inner Mamba-2 hook points run the unfused scan path; in training mode transformers would "
                          "otherwise use the fused mamba_split_conv1d_scan_combined kernel (when mamba-ssm is "
                          "installed). Eval mode uses the same kernels either way.", stacklevel=2)
        batch, seq, _ = hidden_states.shape
        dtype = hidden_states.dtype
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        if hasattr(mamba, "ssm_in_multiplier"):  # Falcon-H1's muP multipliers (the other families have none)
            hidden_states = hidden_states * mamba.ssm_in_multiplier
        projected = mamba.in_proj(hidden_states)
        if hasattr(mamba, "mup_vector"):
            projected = projected * mamba.mup_vector
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
            return implicit_attention(step, A, B, C)

        y = mixer_output(hooks, lambda: split_scan(hooks.hook_state, scan, [x, dt, B, C]), pattern,
                         lambda edited: apply_pattern(edited, x, mamba.D), pattern_mode)
        y = y.reshape(batch, seq, -1)
        y = mamba.norm(y, gate) if getattr(mamba, "mamba_rms_norm", True) else y * torch.nn.functional.silu(gate)
        return mamba.out_proj(y.to(dtype))

    return forward
