"""Mamba-1 selective scan (Mamba, FalconMamba, Jamba): inner hook points and a state-resumable scan.

Per channel `d` of `d_inner` and state dimension `n`, with `dt = softplus(dt_raw + dt_bias)` and
`A = -exp(A_log)`:

    h_t[d, n] = exp(dt_t[d] A[d, n]) h_{t-1}[d, n] + dt_t[d] B_t[n] x_t[d]
    y_t[d] = (C_t . h_t[d] + D[d] x_t[d]) * silu(z_t[d])

(Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces").
"""

from __future__ import annotations

import sys
import warnings

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from ..hook_points import Tap
from .state import split_scan
from .taps import MixerHooks, add_projection_point, input_tap, recurrent_eager_tap, refuse_cache, single


def resumed_scan(
    x: Float[Tensor, "batch d_inner pos"], dt: Float[Tensor, "batch d_inner pos"], A: Float[Tensor, "d_inner d_state"],
    B: Float[Tensor, "batch d_state pos"], C: Float[Tensor, "batch d_state pos"], D: Float[Tensor, "d_inner"],
    z: Float[Tensor, "batch d_inner pos"], dt_bias: Float[Tensor, "d_inner"] | None,
    state: Float[Tensor, "batch d_inner d_state"],
) -> tuple[Float[Tensor, "batch d_inner pos"], Float[Tensor, "batch d_inner d_state"]]:
    """The sequential `mamba_selective_scan` of `transformers` (its torch path, `delta_softplus=True`,
    `return_last_state=True`), continued from `state` instead of zeros: the same operations in the
    same order, so a scan split at any position and resumed here equals the unsplit scan exactly.

    Examples:
        >>> from transformers.models.mamba.modeling_mamba import mamba_selective_scan
        >>> x, dt, z = torch.randn(3, 1, 4, 6).unbind(0)              # [batch, d_inner, pos]
        >>> A, D, B, C = -torch.rand(4, 2), torch.ones(4), torch.randn(1, 2, 6), torch.randn(1, 2, 6)
        >>> whole = mamba_selective_scan(x, dt, A, B, C, D=D, z=z, delta_softplus=True)
        >>> _, state = mamba_selective_scan(x[..., :2], dt[..., :2], A, B[..., :2], C[..., :2], D=D, z=z[..., :2],
        ...                                 delta_softplus=True, return_last_state=True)
        >>> rest, _ = resumed_scan(x[..., 2:], dt[..., 2:], A, B[..., 2:], C[..., 2:], D, z[..., 2:], None, state)
        >>> torch.equal(rest, whole[..., 2:])
        True
    """
    dtype = x.dtype
    if dt_bias is not None:
        dt = dt + dt_bias.to(dt.dtype)[..., None]
    dt = F.softplus(dt)
    B, C = B.transpose(1, 2), C.transpose(1, 2)
    discrete_A = torch.exp(A[None, :, None, :] * dt[:, :, :, None])
    deltaB_u = dt[:, :, :, None] * B[:, None, :, :].float() * x[:, :, :, None].float()
    outputs = []
    for index in range(x.shape[-1]):
        state = discrete_A[:, :, index] * state + deltaB_u[:, :, index]
        outputs.append(torch.matmul(state.to(dtype), C[:, index, :].unsqueeze(-1))[:, :, 0])
    output = torch.stack(outputs, dim=-1) + x * D[None, :, None]
    return output * F.silu(z), state


def add_points(hooks: MixerHooks, mamba, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Mamba-1 mixer.

    From projections (cheap): `hook_in_proj` `[batch, pos, 2 * d_inner]` (raw `in_proj` output:
    x, then the gate z), `hook_y` `[batch, pos, d_inner]` (gated scan output entering `out_proj`).
    From an eager forward that runs only while one of them is hooked: `hook_z` `[batch, pos,
    d_inner]` (gate), `hook_conv` `[batch, pos, d_inner]` (after conv + activation: the scan input
    x), `hook_dt` `[batch, pos, d_inner]` (`dt_proj.weight` times the low-rank step, before bias
    and softplus), `hook_B`, `hook_C` `[batch, pos, d_state]` (after FalconMamba's / Jamba's RMS
    norms), and `hook_state` `[batch, d_inner, d_state]` (the SSM state after chosen positions, see
    `StateHookPoint`). No `hook_pattern`: Mamba-1's implicit attention is one `[pos, pos]` matrix
    per channel, too large to materialise.
    """
    split, join = single("hook_y", None)
    taps = [
        add_projection_point(hooks, mamba.in_proj, "hook_in_proj", None, "in_proj output"),
        input_tap(hooks, mamba.out_proj, split, join, ["hook_y"], "out_proj input"),
    ]
    eager = recurrent_eager_tap(hooks, mamba, _eager_forward(mamba, hooks),
                                ["hook_z", "hook_conv", "hook_dt", "hook_B", "hook_C"], "eager Mamba-1 forward")
    return [*taps, eager]


def _eager_forward(mamba, hooks: MixerHooks):
    """The `transformers` Mamba-1 mixer forward (no-cache path) with hook points on its intermediates."""
    hf = sys.modules[type(mamba).__module__]  # the modeling module of the family: its kernels and helpers
    normed = hasattr(mamba, "dt_layernorm")  # FalconMamba, Jamba: RMS norms on dt, B and C

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Mamba-1 (hook_z/conv/dt/B/C, hook_state)")
        if mamba.training:
            warnings.warn("Inner Mamba-1 hook points run the unfused scan path; in training mode transformers would "
                          "otherwise use the fused mamba_inner_fn kernel (when mamba-ssm is installed).", stacklevel=2)
        dtype = hidden_states.dtype
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        projected = mamba.in_proj(hidden_states).transpose(1, 2)
        A = -torch.exp(mamba.A_log.float())
        x, gate = projected.chunk(2, dim=1)
        gate = hooks.hook_z(gate.transpose(1, 2))
        x = hf.causal_conv1d_fn(x, mamba.conv1d.weight.squeeze(1), mamba.conv1d.bias, activation=mamba.activation,
                                **kwargs)
        x = hooks.hook_conv(hf.apply_mask_to_padding_states(x.transpose(1, 2), attention_mask))
        size = mamba.ssm_state_size
        time_step, B, C = torch.split(mamba.x_proj(x), [mamba.time_step_rank, size, size], dim=-1)
        if normed:
            time_step, B, C = mamba.dt_layernorm(time_step), mamba.b_layernorm(B), mamba.c_layernorm(C)
        if normed and hasattr(mamba.config, "_is_quantized"):  # as FalconMamba / Jamba do with quantized weights
            time_step = (mamba.dt_proj(time_step) - mamba.dt_proj.bias).transpose(1, 2)
        else:
            time_step = mamba.dt_proj.weight @ time_step.transpose(1, 2)
        dt = hooks.hook_dt(time_step.transpose(1, 2))
        B, C = hooks.hook_B(B), hooks.hook_C(C)
        dt_bias = mamba.dt_proj.bias.float() if mamba.dt_proj.bias is not None else None

        def scan(parts, initial_state, final):
            x, dt, B, C, z = (part.transpose(1, 2) for part in parts)
            if initial_state is not None:
                output, state = resumed_scan(x, dt, A, B, C, mamba.D.float(), z, dt_bias, initial_state)
                return output.transpose(1, 2), state
            result = hf.mamba_selective_scan(
                x, dt, A, B, C, D=mamba.D.float(), z=z, delta_bias=dt_bias, delta_softplus=True,
                return_last_state=final, use_mambapy=mamba.use_mambapy, use_associative_scan=mamba.use_associative_scan,
            )
            output, state = result if final else (result, None)
            return output.transpose(1, 2), state

        y = split_scan(hooks.hook_state, scan, [x, dt, B, C, gate])
        return mamba.out_proj(y.to(dtype))

    return forward
