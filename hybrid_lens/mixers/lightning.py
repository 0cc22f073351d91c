"""Lightning attention (MiniMax): linear attention with a constant per-head decay, computed blockwise.

With `q, k, v = silu(qkv_proj(x))` split per head and `lambda_h = slope_rate[h]`, the state after token
`t` is `S_t = exp(-lambda_h) S_{t-1} + k_t v_t^T` and the output `o_t = S_t^T q_t`, so from a zero
state `o = P v` per head with the implicit attention

    P[b, h, t, s] = (q_t . k_s) * exp(-lambda_h (t - s))      (s <= t, else 0).

`transformers` evaluates it blockwise (`block_size` tokens: intra-block `QK^T * decay`, inter-block
through the state), then applies an RMS norm, a sigmoid output gate and `out_proj`.
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .gated_deltanet import apply_pattern, decay_matrix
from .heads import add_head_input
from .state import split_scan
from .taps import MixerHooks, add_projection_point, mixer_output, recurrent_eager_tap, refuse_cache

__all__ = ["implicit_attention"]  # `add_points` and `block_scan` are the adapters' plumbing, not user API


def implicit_attention(
    query: Float[Tensor, "batch pos head d_head"], key: Float[Tensor, "batch pos head d_head"],
    log_decay: Float[Tensor, "batch pos head"],
) -> Float[Tensor, "batch head pos pos"]:
    """The matrix `P` with `recurrence_out[b, t, h] = sum_s P[b, h, t, s] * v[b, s, h]` (float32).

    Args:
        query: Queries after the activation (`hook_q`).
        key: Keys after the activation (`hook_k`).
        log_decay: The log of the state decay at each step (`hook_log_decay`; `-lambda_h` throughout
            in the model), so `P[t, s] = (q_t . k_s) * exp(sum_{r=s+1..t} log_decay_r)`.

    Examples:
        >>> q, k = torch.ones(1, 3, 1, 2), torch.ones(1, 3, 1, 2)
        >>> implicit_attention(q, k, torch.full((1, 3, 1), 0.5).log())[0, 0]  # decay 1/2 per token
        tensor([[2.0000, 0.0000, 0.0000],
                [1.0000, 2.0000, 0.0000],
                [0.5000, 1.0000, 2.0000]])
    """
    q, k = (x.float().transpose(1, 2) for x in (query, key))
    return (q @ k.transpose(-1, -2)) * decay_matrix(log_decay.transpose(1, 2))


def block_scan(
    attention: nn.Module, query: Float[Tensor, "batch head pos d_head"], key: Float[Tensor, "batch head pos d_head"],
    value: Float[Tensor, "batch head pos d_head"], state: Float[Tensor, "batch head d_head d_head"] | None,
) -> tuple[Float[Tensor, "batch head pos d_head"], Float[Tensor, "batch head d_head d_head"]]:
    """The blockwise lightning recurrence of `transformers`' `MiniMaxLightningAttention.forward` (no-cache
    path, the same operations) from `state` (None: zeros); returns the output and the final state."""
    batch, heads, seq, d_head = value.shape
    if state is None:
        state = torch.zeros(batch, heads, d_head, d_head, device=value.device, dtype=value.dtype)
    outputs = []
    for start in range(0, seq, attention.block_size):
        size = min(attention.block_size, seq - start)
        q, k, v = (x[:, :, start : start + size] for x in (query, key, value))
        intra = torch.matmul(torch.matmul(q, k.transpose(-1, -2)) * attention.diagonal_decay[:, :, :size, :size], v)
        outputs.append(torch.matmul(q * attention.query_decay[:, :size], state) + intra)
        written = torch.matmul((k * attention.key_decay[:, -size:]).transpose(-1, -2), v)
        state = state * torch.exp(-attention.slope_rate * size) + written
    return torch.cat(outputs, dim=-2), state


def add_points(hooks: MixerHooks, attention: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a MiniMax lightning-attention mixer.

    From a projection (cheap): `hook_gate` `[batch, pos, head, d_head]` (output-gate logits, before
    the sigmoid). From an eager forward that runs only while one of them is hooked: `hook_q`,
    `hook_k`, `hook_v` `[batch, pos, head, d_head]` (after the activation and padding mask),
    `hook_log_decay` `[batch, pos, head]` (the log state decay of each step, the constant `-lambda_h`;
    batch rows where a hook changed it are computed from their implicit attention, from a zero state),
    `hook_recurrence_out` `[batch, pos, head, d_head]` (the recurrence output, before the norm, the
    gate and `out_proj`), `hook_pattern` `[batch, head, query_pos, key_pos]` (implicit attention,
    `recurrence_out = pattern @ v` per head; computed only while hooked, and a replaced pattern is
    applied to the values instead of the recurrence) and `hook_state` `[batch, head, d_head, d_head]`
    (the state `sum_s exp(-lambda (t - s)) k_s v_s^T` after chosen positions, see `StateHookPoint`).
    From the output projection (cheap): `hook_z` `[batch, pos, head, d_head]`, the input of `out_proj`
    (the normed, gated recurrence output; the norm spans all heads), which `hook_result` splits by head
    (`mixers.heads`; views `W_O`, `b_O`).
    """
    heads = attention.num_attention_heads
    taps = [add_projection_point(hooks, attention.output_gate, "hook_gate", heads, "output_gate output")]
    names = ["hook_q", "hook_k", "hook_v", "hook_log_decay", "hook_recurrence_out", "hook_pattern"]
    forward = _eager_forward(attention, hooks, pattern_mode)
    return [*taps, recurrent_eager_tap(hooks, attention, forward, names, "eager lightning attention forward"),
            add_head_input(hooks, attention, attention.out_proj, heads, "out_proj input")]


def _eager_forward(attention: nn.Module, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` lightning-attention forward (no-cache path) with hook points on its intermediates."""
    hf = sys.modules[type(attention).__module__]  # the modeling module of the family: its helpers

    def forward(hidden_states, position_embeddings=None, attention_mask=None, cache=None, **kwargs):
        refuse_cache(cache, "lightning attention (hook_q/k/v, hook_log_decay, hook_recurrence_out, hook_state)")
        batch, seq, _ = hidden_states.shape
        qkv = hf.apply_mask_to_padding_states(attention.act_fn(attention.qkv_proj(hidden_states)), attention_mask)
        qkv = qkv.reshape(batch, seq, attention.num_attention_heads, 3 * attention.head_dim)
        query, key, value = (point(x) for point, x in zip((hooks.hook_q, hooks.hook_k, hooks.hook_v),
                                                          torch.split(qkv, attention.head_dim, dim=3)))

        constant = -attention.slope_rate.reshape(1, 1, -1)
        log_decay = hooks.hook_log_decay(constant.expand(batch, seq, -1).clone())

        def scan(parts, initial_state, final):
            output, state = block_scan(attention, *(x.transpose(1, 2) for x in parts), initial_state)
            return output.transpose(1, 2), state

        def recurrence():
            output = split_scan(hooks.hook_state, scan, [query, key, value])
            changed = (log_decay != constant).flatten(1).any(1)  # rows whose decay a hook edited
            if not bool(changed.any()):
                return output
            if hooks.hook_state.wanted():
                raise ValueError(f"{hooks.hook_log_decay.name} edits run from a zero state; do not combine them "
                                 f"with {hooks.hook_state.name} in the same pass.")
            edited = apply_pattern(implicit_attention(query, key, log_decay), value).to(output.dtype)
            return torch.where(changed.view(-1, 1, 1, 1), edited, output)

        core = mixer_output(hooks, recurrence, lambda: implicit_attention(query, key, log_decay),
                            lambda edited: apply_pattern(edited, value).to(query.dtype), pattern_mode)
        core = attention.norm(hooks.hook_recurrence_out(core).reshape(batch, seq, -1))
        core = torch.sigmoid(attention.output_gate(hidden_states)) * core
        return attention.out_proj(core), None

    return forward
