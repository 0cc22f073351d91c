"""Kimi Delta Attention (KDA, Kimi-Linear's linear attention): inner points and implicit attention.

KDA is the gated delta rule with a per-channel decay: with `D_t = diag(exp(g_t))` over the key
channels, `S_t = (I - beta_t k_t k_t^T) D_t S_{t-1} + beta_t k_t v_t^T` and `o_t = S_t^T q_t`. From a
zero state the output is linear in the values, `o = P v` per head, with

    P = Scores (I + strict_tril(diag(beta) A))^{-1} diag(beta),
    Scores[t, s] = sum_c q_t[c] k_s[c] exp(G_t[c] - G_s[c])   (s <= t),
    A[t, s]      = sum_c k_t[c] k_s[c] exp(G_t[c] - G_s[c])   (s < t),

where `G` is the cumulative sum of `g` over positions, and q, k are L2-normalised with q scaled by
`d_k ** -0.5`, as `transformers`' `chunk_kimi_delta_attention(use_qk_l2norm_in_kernel=True)` does.
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Float
from torch import Tensor

from ..hook_points import Tap
from .gated_deltanet import apply_pattern, delta_rule_matrix
from .heads import add_head_input
from .state import split_scan
from .taps import MixerHooks, add_projection_point, mixer_output, recurrent_eager_tap, refuse_cache

__all__ = ["decayed_products", "implicit_attention"]  # `add_points` is the adapters' plumbing, not user API

ROWS = 64  # query positions per block of `decayed_products` (bounds its [.., rows, pos, d_k] temporary)


def _l2norm(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def decayed_products(
    a: Float[Tensor, "batch head pos d_k"], b: Float[Tensor, "batch head pos d_k"],
    cumulative: Float[Tensor, "batch head pos d_k"], strict: bool,
) -> Float[Tensor, "batch head pos pos"]:
    """`out[t, s] = sum_c a[t, c] b[s, c] exp(cumulative[t, c] - cumulative[s, c])` for `s <= t`
    (`s < t` if `strict`), 0 elsewhere.

    Examples:
        >>> ones = torch.ones(1, 1, 3, 1)
        >>> decayed_products(ones, ones, torch.log(torch.tensor([1.0, 0.5, 0.25]))[None, None, :, None], False)
        tensor([[[[1.0000, 0.0000, 0.0000],
                  [0.5000, 1.0000, 0.0000],
                  [0.2500, 0.5000, 1.0000]]]])
    """
    length = a.shape[-2]
    causal = torch.ones(length, length, dtype=torch.bool, device=a.device).tril(-1 if strict else 0)
    rows = []
    for start in range(0, length, ROWS):
        block = slice(start, start + ROWS)
        diff = cumulative[..., block, None, :] - cumulative[..., None, :, :]
        decay = torch.where(causal[block, :, None], diff, float("-inf")).exp()
        rows.append(torch.einsum("bhtc,bhsc,bhtsc->bhts", a[..., block, :], b, decay))
    return torch.cat(rows, dim=-2)


def implicit_attention(
    query: Float[Tensor, "batch pos head d_k"], key: Float[Tensor, "batch pos head d_k"],
    log_decay: Float[Tensor, "batch pos head d_k"], beta: Float[Tensor, "batch pos head"],
) -> Float[Tensor, "batch head pos pos"]:
    """KDA's matrix `P` with `recurrence_out[b, t, h] = sum_s P[b, h, t, s] * v[b, s, h]` (float32): the
    arguments of `gated_deltanet.implicit_attention` (post-conv `hook_q` / `hook_k` before the kernel's
    L2 norm, `hook_beta`), except that `log_decay` (`hook_log_decay`) decays every key channel apart.

    Examples:
        >>> q, k = torch.randn(1, 4, 2, 8), torch.randn(1, 4, 2, 8)
        >>> pattern = implicit_attention(q, k, -torch.rand(1, 4, 2, 8), torch.rand(1, 4, 2))
        >>> pattern.shape                                    # [batch, head, query_pos, key_pos]
        torch.Size([1, 2, 4, 4])
        >>> bool(pattern.triu(1).eq(0).all())                # causal
        True
    """
    q, k = (_l2norm(x.float().transpose(1, 2)) for x in (query, key))
    q = q * q.shape[-1] ** -0.5
    cumulative = log_decay.float().transpose(1, 2).cumsum(-2)
    beta = beta.float().transpose(1, 2)
    return delta_rule_matrix(decayed_products(q, k, cumulative, strict=False),
                             decayed_products(k, k, cumulative, strict=True), beta)


def add_points(hooks: MixerHooks, kda, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a Kimi Delta Attention mixer (`KimiLinearDeltaAttention`).

    From submodules (cheap, also during cached generation): `hook_q_pre_conv`, `hook_k_pre_conv`,
    `hook_v_pre_conv` `[batch, pos, head, d_head]` (q/k/v projections), `hook_log_decay`
    `[batch, pos, head, d_k]` (g, the per-channel log decay: `forget_gate` output, float32),
    `hook_beta_logit` `[batch, pos, head]` (`b_proj` output), `hook_gate_input`
    `[batch, pos, head, d_v]` (output-gate logits, `g_b_proj` output). From an eager forward that
    runs only while one of them is hooked: `hook_q`, `hook_k`, `hook_v` (after the causal conv),
    `hook_beta` (sigmoid), `hook_recurrence_out` `[batch, pos, head, d_v]` (delta-rule output before
    the gated norm), `hook_pattern` `[batch, head, query_pos, key_pos]` (implicit attention,
    `recurrence_out = pattern @ v` per head; computed only while hooked, a replaced pattern is applied
    to the values instead of the recurrence), and `hook_state` `[batch, head, d_k, d_v]` (the
    recurrent state after chosen positions, see `StateHookPoint`). From the output projection (cheap):
    `hook_z` `[batch, pos, head, d_v]`, the input of `o_proj` (the gated, normed recurrence output per
    head), which `hook_result` splits by head (`mixers.heads`; views `W_O`, `b_O`).
    """
    heads = kda.num_heads
    taps = [
        add_projection_point(hooks, kda.q_proj, "hook_q_pre_conv", heads, "q_proj output"),
        add_projection_point(hooks, kda.k_proj, "hook_k_pre_conv", heads, "k_proj output"),
        add_projection_point(hooks, kda.v_proj, "hook_v_pre_conv", heads, "v_proj output"),
        add_projection_point(hooks, kda.forget_gate, "hook_log_decay", None, "forget_gate output"),
        add_projection_point(hooks, kda.b_proj, "hook_beta_logit", None, "b_proj output"),
        add_projection_point(hooks, kda.g_b_proj, "hook_gate_input", heads, "g_b_proj output"),
    ]
    names = ["hook_q", "hook_k", "hook_v", "hook_beta", "hook_recurrence_out", "hook_pattern"]
    forward = _eager_forward(kda, hooks, pattern_mode)
    return [*taps, recurrent_eager_tap(hooks, kda, forward, names, "eager Kimi Delta Attention forward"),
            add_head_input(hooks, kda, kda.o_proj, heads, "o_proj input")]


def _eager_forward(kda, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` KDA forward (no-cache path) with hook points on its intermediates."""
    hf = sys.modules[type(kda).__module__]  # the modeling module of the family: its kernels and helpers

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "Kimi Delta Attention (hook_q/k/v, hook_beta, hook_recurrence_out, hook_state)")
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        batch, seq = hidden_states.shape[:2]
        heads = (batch, seq, -1, kda.head_dim)
        mixed_qkv = torch.cat([kda.q_proj(hidden_states), kda.k_proj(hidden_states), kda.v_proj(hidden_states)], dim=-1)
        mixed_qkv = hf.causal_conv1d_fn(mixed_qkv.transpose(1, 2), weight=kda.conv1d.weight.squeeze(1),
                                        bias=kda.conv1d.bias, activation=kda.activation, **kwargs)
        query, key, value = torch.split(mixed_qkv.transpose(1, 2), [kda.qkv_dim] * 3, dim=-1)
        query = hooks.hook_q(query.reshape(heads))
        key = hooks.hook_k(key.reshape(heads))
        value = hooks.hook_v(value.reshape(heads))
        g = kda.forget_gate(hidden_states)
        beta = hooks.hook_beta(torch.sigmoid(kda.b_proj(hidden_states)))

        def scan(parts, initial_state, final):
            return hf.chunk_kimi_delta_attention(*parts[:3], g=parts[3], beta=parts[4], initial_state=initial_state,
                                                 output_final_state=final, use_qk_l2norm_in_kernel=True, **kwargs)

        core = mixer_output(hooks, lambda: split_scan(hooks.hook_state, scan, [query, key, value, g, beta]),
                            lambda: implicit_attention(query, key, g, beta),
                            lambda edited: apply_pattern(edited, value).to(query.dtype), pattern_mode)
        core = hooks.hook_recurrence_out(core)
        gate = kda.g_b_proj(kda.g_a_proj(hidden_states)).view(heads)
        return kda.o_proj(kda.o_norm(core, gate).reshape(batch, seq, -1))

    return forward
