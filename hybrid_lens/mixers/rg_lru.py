"""Griffin's recurrent block (RecurrentGemma): a short convolution, then the RG-LRU, gated by a GeLU branch.

`out = linear_out(rg_lru(conv(linear_x(u))) * gelu(linear_y(u)))`. The Real-Gated Linear
Recurrent Unit is diagonal, one scalar state per channel (`lru_width` channels):

    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t),   log a_t = -8 * r_t * softplus(Lambda)

with input gate `i_t` and recurrence gate `r_t` (sigmoids of block-diagonal maps of `x_t`), and the
state reset (`a_t` ignored, no sqrt factor) where `position_ids == 0` (De et al. 2024, "Griffin").
From a zero state the recurrence is linear in its normalized input `u_s = sqrt(1 - a_s^2) i_s x_s`:
`h_t = sum_s P[c, t, s] u_s` per channel c, with the implicit attention
`P[c, t, s] = prod_{r=s+1..t} a_r[c]` (s <= t, no reset in (s, t]; else 0).
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from ..hook_points import Tap
from .gated_deltanet import decay_matrix
from .state import split_scan
from .taps import MixerHooks, add_projection_point, mixer_output, recurrent_eager_tap

EAGER_POINTS = ["hook_conv", "hook_input_gate", "hook_recurrent_gate", "hook_log_decay", "hook_recurrence_out",
                "hook_pattern"]


def implicit_attention(log_decay: Float[Tensor, "batch pos channel"], reset: Bool[Tensor, "batch pos"]
                       ) -> Float[Tensor, "batch channel pos pos"]:
    """The matrix `P` (float32) with `h[b, t, c] = sum_s P[b, c, t, s] * u[b, s, c]` for the RG-LRU.

    Args:
        log_decay: `log a_t` (`hook_log_decay`).
        reset: Where the state restarts (`position_ids == 0`).

    Examples:
        >>> log_decay = torch.log(torch.full((1, 3, 1), 0.5))
        >>> implicit_attention(log_decay, torch.tensor([[True, False, False]]))[0, 0]
        tensor([[1.0000, 0.0000, 0.0000],
                [0.5000, 1.0000, 0.0000],
                [0.2500, 0.5000, 1.0000]])
        >>> implicit_attention(log_decay, torch.tensor([[True, False, True]]))[0, 0, 2]   # restarted at 2
        tensor([0., 0., 1.])
    """
    segment = reset.cumsum(-1)
    same = segment[:, None, :, None] == segment[:, None, None, :]
    decay = decay_matrix(log_decay.masked_fill(reset[..., None], 0).transpose(1, 2))
    return decay * same


def apply_pattern(pattern: Float[Tensor, "batch channel pos pos"], normalized: Float[Tensor, "batch pos channel"]
                  ) -> Float[Tensor, "batch pos channel"]:
    """The RG-LRU output `P u` (float32) of a (possibly edited) implicit attention matrix.

    Examples:
        >>> apply_pattern(torch.eye(3).expand(1, 2, 3, 3), torch.ones(1, 3, 2)).shape
        torch.Size([1, 3, 2])
    """
    return torch.einsum("bcts,bsc->btc", pattern.float(), normalized.float())


def add_points(hooks: MixerHooks, block: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a RecurrentGemma recurrent block (`RecurrentGemmaRecurrentBlock`).

    From projections (cheap): `hook_x` `[batch, pos, lru_width]` (`linear_x` output, entering the
    convolution) and `hook_y` `[batch, pos, lru_width]` (`linear_y` output, the gate branch before
    its GeLU). From an eager forward that runs only while one of them is hooked (runs with
    `use_cache=False` only): `hook_conv` (after the causal convolution, the RG-LRU input),
    `hook_input_gate` (`i_t`), `hook_recurrent_gate` (`r_t`), `hook_log_decay` (`log a_t`, the log
    of the per-step state decay), `hook_recurrence_out` (the RG-LRU output `h_t`, before the GeLU
    gate), all `[batch, pos, lru_width]`, `hook_pattern` `[batch, lru_width, query_pos, key_pos]`
    (the implicit attention of each channel, see `implicit_attention`; computed only while hooked or
    while `pattern_mode` is on, and a replaced pattern is applied to the normalized input instead of
    the recurrence), and `hook_state` `[batch, lru_width]` (float32, the RG-LRU state after chosen
    positions, see `StateHookPoint`).
    """
    taps = [
        add_projection_point(hooks, block.linear_x, "hook_x", None, "linear_x output"),
        add_projection_point(hooks, block.linear_y, "hook_y", None, "linear_y output"),
    ]
    return [*taps, recurrent_eager_tap(hooks, block, _eager_forward(block, hooks, pattern_mode), EAGER_POINTS,
                                       "eager RG-LRU recurrent-block forward")]


def _eager_forward(block: nn.Module, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` recurrent-block forward (`use_cache=False` path) with hook points on its intermediates."""
    hf = sys.modules[type(block).__module__]  # the modeling module of the family: its helpers
    lru = block.rg_lru

    def forward(input_states, position_ids, attention_mask=None, use_cache=True, **kwargs):
        if use_cache:
            raise NotImplementedError("Inner RG-LRU hook points (hook_conv, gates, hook_recurrence_out, hook_state) "
                                      "need a run without the stateful cache: pass use_cache=False.")
        seq_len = input_states.shape[1]
        y_branch = block.act_fn(block.linear_y(input_states))
        x_branch = block.linear_x(input_states).transpose(1, 2)
        block.conv1d_state = lru.recurrent_states = None
        x_branch = hooks.hook_conv(block.conv_1d(x_branch)[..., :seq_len].transpose(1, 2))
        return block.linear_out(_rg_lru(x_branch, position_ids) * y_branch), None

    def _rg_lru(activations, position_ids):
        batch, seq_len, width = activations.shape
        reset = position_ids[:, :, None] == 0
        per_head = activations.reshape(batch * seq_len, lru.num_attention_heads, lru.block_width).permute(1, 0, 2)

        def gate(bias, weight):
            return torch.sigmoid(torch.baddbmm(bias[:, None, :], per_head, weight).transpose(0, 1).reshape(
                batch, seq_len, width))

        input_gate = hooks.hook_input_gate(gate(lru.input_gate_bias, lru.input_gate_weight))
        recurrent_gate = hooks.hook_recurrent_gate(gate(lru.recurrent_gate_bias, lru.recurrent_gate_weight))
        log_decay = hooks.hook_log_decay(-8.0 * recurrent_gate * nn.functional.softplus(lru.recurrent_param))
        multiplier = hf.SqrtBoundDerivative.apply(1 - torch.exp(2 * log_decay))
        multiplier = reset + ~reset * multiplier
        normalized_x = activations * input_gate * multiplier.type(activations.dtype)

        def scan(parts, initial_state, final):
            return lru._rnn_scan(hidden_states=parts[0], recurrent_gate=parts[1], reset=parts[2],
                                 recurrent_states=initial_state)

        recurrence = mixer_output(
            hooks, lambda: split_scan(hooks.hook_state, scan, [normalized_x, torch.exp(log_decay), reset]),
            lambda: implicit_attention(log_decay, reset[..., 0]),
            lambda edited: apply_pattern(edited, normalized_x).to(normalized_x.dtype), pattern_mode)
        return hooks.hook_recurrence_out(recurrence)

    return forward
