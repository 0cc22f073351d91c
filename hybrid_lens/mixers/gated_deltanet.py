"""Gated DeltaNet (Qwen3.5, Qwen3-Next, OLMo-Hybrid linear attention): inner points and implicit attention.

From a zero state, the gated delta rule `S_t = exp(g_t) S_{t-1} (I - beta_t k_t k_t^T) + beta_t k_t v_t^T`,
`o_t = S_t^T q_t` is linear in the values: `o = P v` per head, with the delta-rule correction folded in
through the UT transform of the chunked kernels,

    P = (tril(Q K^T) * Gamma) (I + strict_tril(diag(beta) K K^T * Gamma))^{-1} diag(beta),

where `Gamma[t, s] = exp(sum_{r=s+1..t} g_r)`, and q, k are L2-normalised with q scaled by
`d_k ** -0.5`, as `transformers`' `torch_chunk_gated_delta_rule(use_qk_l2norm_in_kernel=True)` does.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .heads import add_head_input
from .kinds import ComponentKind
from .state import split_scan
from .taps import MixerHooks, add_projection_point, mixer_output, output_tap, recurrent_eager_tap, refuse_cache

LINEAR_ATTN = ComponentKind("linear_attn", "linear attention", (44, 160, 44), recurrent=True,
                            state="[batch, head, d_k, d_v]", pattern="implicit")

__all__ = ["apply_pattern", "decay_matrix", "delta_rule_matrix", "implicit_attention"]  # `add_points` is the adapters' plumbing, not user API


def _l2norm(x: Tensor) -> Tensor:
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def decay_matrix(log_decay: Float[Tensor, "batch head pos"]) -> Float[Tensor, "batch head pos pos"]:
    """`Gamma[b, h, t, s] = exp(sum_{r=s+1..t} log_decay[b, h, r])` for `s <= t`, 0 above the diagonal.

    Examples:
        >>> decay_matrix(torch.log(torch.tensor([[[1.0, 0.5, 0.5]]])))
        tensor([[[[1.0000, 0.0000, 0.0000],
                  [0.5000, 1.0000, 0.0000],
                  [0.2500, 0.5000, 1.0000]]]])
    """
    cumulative = log_decay.float().cumsum(-1)
    diff = cumulative[..., :, None] - cumulative[..., None, :]
    causal = torch.ones(diff.shape[-2:], dtype=torch.bool, device=diff.device).tril()
    return torch.where(causal, diff, float("-inf")).exp()


def implicit_attention(
    query: Float[Tensor, "batch pos k_head d_k"], key: Float[Tensor, "batch pos k_head d_k"],
    log_decay: Float[Tensor, "batch pos v_head"], beta: Float[Tensor, "batch pos v_head"],
) -> Float[Tensor, "batch v_head pos pos"]:
    """The matrix `P` with `recurrence_out[b, t, h] = sum_s P[b, h, t, s] * v[b, s, h]` (float32).

    Args:
        query: Post-conv queries (`hook_q`), before the kernel's L2 norm.
        key: Post-conv keys (`hook_k`).
        log_decay: `g` (`hook_log_decay`), the log of the per-step state decay.
        beta: The delta-rule write strength (`hook_beta`).

    Examples:
        >>> q, k = torch.randn(1, 4, 1, 8), torch.randn(1, 4, 1, 8)
        >>> pattern = implicit_attention(q, k, -torch.rand(1, 4, 2), torch.rand(1, 4, 2))
        >>> pattern.shape                                    # [batch, v_head, query_pos, key_pos]
        torch.Size([1, 2, 4, 4])
        >>> bool(pattern.triu(1).eq(0).all())                # causal
        True
    """
    groups = beta.shape[-1] // key.shape[-2]
    q, k = (_l2norm(x.float().repeat_interleave(groups, dim=2).transpose(1, 2)) for x in (query, key))
    q = q * q.shape[-1] ** -0.5
    beta = beta.float().transpose(1, 2)
    gamma = decay_matrix(log_decay.transpose(1, 2))
    return delta_rule_matrix((q @ k.transpose(-1, -2)) * gamma, ((k @ k.transpose(-1, -2)) * gamma).tril(-1), beta)


def delta_rule_matrix(
    scores: Float[Tensor, "batch head pos pos"], gram: Float[Tensor, "batch head pos pos"],
    beta: Float[Tensor, "batch head pos"],
) -> Float[Tensor, "batch head pos pos"]:
    """`scores (I + diag(beta) gram)^{-1} diag(beta)`: the implicit attention of a delta rule from its
    decayed query-key `scores` (`s <= t`) and decayed key-key `gram` (`s < t`), as in the chunked kernels.

    Examples:
        >>> delta_rule_matrix(torch.ones(1, 1, 2, 2).tril(), torch.ones(1, 1, 2, 2).tril(-1), torch.ones(1, 1, 2))
        tensor([[[[1., 0.],
                  [0., 1.]]]])
    """
    correction = beta[..., :, None] * gram
    eye = torch.eye(correction.shape[-1], dtype=correction.dtype, device=correction.device)
    write = torch.linalg.solve_triangular(eye + correction, torch.diag_embed(beta), upper=False, unitriangular=True)
    return scores @ write


def apply_pattern(
    pattern: Float[Tensor, "batch v_head pos pos"], value: Float[Tensor, "batch pos v_head d_v"]
) -> Float[Tensor, "batch pos v_head d_v"]:
    """The recurrence output `P v` (float32) of a (possibly edited) implicit attention matrix.

    Examples:
        >>> apply_pattern(torch.eye(3).expand(1, 2, 3, 3), torch.ones(1, 3, 2, 4)).shape
        torch.Size([1, 3, 2, 4])
    """
    return torch.einsum("bhts,bshd->bthd", pattern.float(), value.float())


@dataclass(frozen=True)
class Layout:
    """How a family's Gated DeltaNet module projects its input, and its names for the gated norm and
    output projection; the eager scan after the projections is shared.

    Args:
        taps: The cheap projection points (`hook_*_pre_conv`, `hook_gate_input`, `hook_beta_logit`).
        project: `project(gdn, hidden) -> (mixed_qkv [batch, pos, conv_dim], z [batch, pos, v_head, d_v],
            b [batch, pos, v_head], a [batch, pos, v_head])`, as the `transformers` forward computes them.
        norm: Attribute of the gated RMS norm.
        out: Attribute of the output projection.
    """

    taps: Callable[[MixerHooks, nn.Module], list[Tap]]
    project: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]
    norm: str = "norm"
    out: str = "out_proj"


def _qkv_heads(gdn) -> dict[str, int]:
    return {"hook_q_pre_conv": gdn.num_k_heads, "hook_k_pre_conv": gdn.num_k_heads, "hook_v_pre_conv": gdn.num_v_heads}


def _fused_qkv_taps(hooks: MixerHooks, gdn) -> list[Tap]:
    """Qwen3.5: `in_proj_qkv` (q, k, v concatenated), `in_proj_z`, `in_proj_b`, `in_proj_a`."""
    sizes, heads = [gdn.key_dim, gdn.key_dim, gdn.value_dim], _qkv_heads(gdn)

    def split(x):
        return {name: part.unflatten(-1, (heads[name], -1)) for name, part in zip(heads, x.split(sizes, dim=-1))}

    def join(parts, x):
        return torch.cat([parts[name].flatten(-2) for name in heads], dim=-1)

    return [
        output_tap(hooks, gdn.in_proj_qkv, split, join, list(heads), "in_proj_qkv output"),
        add_projection_point(hooks, gdn.in_proj_z, "hook_gate_input", gdn.num_v_heads, "in_proj_z output"),
        add_projection_point(hooks, gdn.in_proj_b, "hook_beta_logit", None, "in_proj_b output"),
    ]


def _fused_qkv_project(gdn, hidden_states):
    batch, seq, _ = hidden_states.shape
    z = gdn.in_proj_z(hidden_states).reshape(batch, seq, -1, gdn.head_v_dim)
    return gdn.in_proj_qkv(hidden_states), z, gdn.in_proj_b(hidden_states), gdn.in_proj_a(hidden_states)


def _grouped_taps(hooks: MixerHooks, gdn) -> list[Tap]:
    """Qwen3-Next: `in_proj_qkvz` and `in_proj_ba`, laid out per key head (`fix_query_key_value_ordering`):
    `[..., k_head, (d_k | d_k | v_per_k * d_v | v_per_k * d_v)]` and `[..., k_head, (v_per_k | v_per_k)]`."""
    per_k = gdn.num_v_heads // gdn.num_k_heads
    names = ["hook_q_pre_conv", "hook_k_pre_conv", "hook_v_pre_conv", "hook_gate_input"]
    sizes = [gdn.head_k_dim, gdn.head_k_dim, per_k * gdn.head_v_dim, per_k * gdn.head_v_dim]

    def split(x):
        parts = x.unflatten(-1, (gdn.num_k_heads, -1)).split(sizes, dim=-1)
        return {name: part if name in names[:2] else part.flatten(-2, -1).unflatten(-1, (gdn.num_v_heads, -1))
                for name, part in zip(names, parts)}

    def join(parts, x):
        grouped = [parts[name].reshape(*x.shape[:-1], gdn.num_k_heads, -1) for name in names]
        return torch.cat(grouped, dim=-1).reshape(x.shape)

    def split_ba(x):
        return {"hook_beta_logit": x.unflatten(-1, (gdn.num_k_heads, 2, per_k))[..., 0, :].flatten(-2)}

    def join_ba(parts, x):
        ba = x.unflatten(-1, (gdn.num_k_heads, 2, per_k)).clone()
        ba[..., 0, :] = parts["hook_beta_logit"].unflatten(-1, (gdn.num_k_heads, per_k))
        return ba.reshape(x.shape)

    return [
        output_tap(hooks, gdn.in_proj_qkvz, split, join, names, "in_proj_qkvz output"),
        output_tap(hooks, gdn.in_proj_ba, split_ba, join_ba, ["hook_beta_logit"], "in_proj_ba output (b part)"),
    ]


def _grouped_project(gdn, hidden_states):
    query, key, value, z, b, a = gdn.fix_query_key_value_ordering(gdn.in_proj_qkvz(hidden_states),
                                                                  gdn.in_proj_ba(hidden_states))
    query, key, value = (x.reshape(x.shape[0], x.shape[1], -1) for x in (query, key, value))
    return torch.cat((query, key, value), dim=-1), z, b, a


def _separate_taps(hooks: MixerHooks, gdn) -> list[Tap]:
    """OLMo-Hybrid: `q_proj`, `k_proj`, `v_proj`, `g_proj` (output gate), `b_proj`, `a_proj`."""
    projections = {"hook_q_pre_conv": gdn.q_proj, "hook_k_pre_conv": gdn.k_proj, "hook_v_pre_conv": gdn.v_proj}
    taps = [add_projection_point(hooks, module, name, _qkv_heads(gdn)[name], f"{name[5:6]}_proj output")
            for name, module in projections.items()]
    return [*taps, add_projection_point(hooks, gdn.g_proj, "hook_gate_input", gdn.num_v_heads, "g_proj output"),
            add_projection_point(hooks, gdn.b_proj, "hook_beta_logit", None, "b_proj output")]


def _separate_project(gdn, hidden_states):
    batch, seq, _ = hidden_states.shape
    mixed_qkv = torch.cat([gdn.q_proj(hidden_states), gdn.k_proj(hidden_states), gdn.v_proj(hidden_states)], dim=-1)
    z = gdn.g_proj(hidden_states).reshape(batch, seq, -1, gdn.head_v_dim)
    return mixed_qkv, z, gdn.b_proj(hidden_states), gdn.a_proj(hidden_states)


LAYOUTS = {  # a projection attribute that only this layout has -> the layout
    "in_proj_qkv": Layout(_fused_qkv_taps, _fused_qkv_project),
    "in_proj_qkvz": Layout(_grouped_taps, _grouped_project),
    "q_proj": Layout(_separate_taps, _separate_project, norm="o_norm", out="o_proj"),
}


def layout_of(gdn) -> Layout:
    """The `Layout` of a `transformers` Gated DeltaNet module (Qwen3.5, Qwen3-Next, OLMo-Hybrid)."""
    for attribute, layout in LAYOUTS.items():
        if hasattr(gdn, attribute):
            return layout
    raise NotImplementedError(f"Unknown Gated DeltaNet layout: {type(gdn).__name__}")


def add_points(hooks: MixerHooks, gdn, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Gated DeltaNet mixer (TransformerLens `GatedDeltaNetBridge` names).

    Serves Qwen3.5's, Qwen3-Next's and OLMo-Hybrid's modules (`Layout`). From projections (cheap):
    `hook_q_pre_conv`, `hook_k_pre_conv` `[batch, pos, k_head, d_k]`, `hook_v_pre_conv`,
    `hook_gate_input` `[batch, pos, v_head, d_v]`, `hook_beta_logit` `[batch, pos, v_head]`. From an
    eager forward that runs only while one of them is hooked:
    `hook_q`, `hook_k`, `hook_v` (after the causal conv), `hook_beta` (sigmoid; doubled where the
    module allows negative eigenvalues, OLMo-Hybrid), `hook_log_decay`
    (g, `[batch, pos, v_head]`, float32), `hook_recurrence_out` `[batch, pos, v_head, d_v]`
    (delta-rule output before the gated norm), `hook_pattern` `[batch, v_head, query_pos, key_pos]`
    (implicit attention, `recurrence_out = pattern @ v` per head; computed only while hooked, and a
    replaced pattern is applied to the values instead of the recurrence), and `hook_state`
    `[batch, v_head, d_k, d_v]` (the recurrent state after chosen positions, see `StateHookPoint`).
    From the output projection (cheap): `hook_z` `[batch, pos, v_head, d_v]`, its input (the gated,
    normed recurrence output, per head), which `hook_result` splits by head (`mixers.heads`; weight
    views `W_O` `[v_head, d_v, d_model]`, `b_O`).
    """
    layout = layout_of(gdn)
    names = ["hook_q", "hook_k", "hook_v", "hook_beta", "hook_log_decay", "hook_recurrence_out", "hook_pattern"]
    forward = _eager_forward(gdn, layout, hooks, pattern_mode)
    return [*layout.taps(hooks, gdn), recurrent_eager_tap(hooks, gdn, forward, names, "eager Gated DeltaNet forward"),
            add_head_input(hooks, gdn, getattr(gdn, layout.out), gdn.num_v_heads, f"{layout.out} input")]


def _eager_forward(gdn, layout: Layout, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` Gated DeltaNet forward (no-cache path) with hook points on its intermediates."""
    hf = sys.modules[type(gdn).__module__]  # the modeling module of the family: its kernels and helpers
    beta_scale = 2.0 if getattr(gdn, "allow_neg_eigval", False) else None

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Gated DeltaNet (hook_q/k/v, hook_beta, hook_log_decay, hook_recurrence_out, hook_state)")
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        batch, seq, _ = hidden_states.shape
        mixed_qkv, z, b, a = layout.project(gdn, hidden_states)
        mixed_qkv = hf.causal_conv1d_fn(
            mixed_qkv.transpose(1, 2), gdn.conv1d.weight.squeeze(1), gdn.conv1d.bias, activation=gdn.activation,
            **kwargs,
        ).transpose(1, 2)
        query, key, value = torch.split(mixed_qkv, [gdn.key_dim, gdn.key_dim, gdn.value_dim], dim=-1)
        query = hooks.hook_q(query.reshape(batch, seq, -1, gdn.head_k_dim))
        key = hooks.hook_k(key.reshape(batch, seq, -1, gdn.head_k_dim))
        value = hooks.hook_v(value.reshape(batch, seq, -1, gdn.head_v_dim))
        beta = b.sigmoid()
        beta = hooks.hook_beta(beta if beta_scale is None else beta * beta_scale)
        g = hooks.hook_log_decay(-gdn.A_log.float().exp() * F.softplus(a.float() + gdn.dt_bias))
        cu_seqlens = kwargs.pop("cu_seq_lens_q", None)

        def scan(parts, initial_state, final):
            return hf.torch_chunk_gated_delta_rule(
                *parts[:3], g=parts[3], beta=parts[4], initial_state=initial_state, output_final_state=final,
                use_qk_l2norm_in_kernel=True, cu_seqlens=cu_seqlens, **kwargs,
            )

        core = mixer_output(hooks, lambda: split_scan(hooks.hook_state, scan, [query, key, value, g, beta]),
                            lambda: implicit_attention(query, key, g, beta),
                            lambda edited: apply_pattern(edited, value).to(query.dtype), pattern_mode)
        core = hooks.hook_recurrence_out(core)
        core = getattr(gdn, layout.norm)(core.reshape(-1, gdn.head_v_dim), z.reshape(-1, gdn.head_v_dim))
        return getattr(gdn, layout.out)(core.reshape(batch, seq, -1))

    return forward
