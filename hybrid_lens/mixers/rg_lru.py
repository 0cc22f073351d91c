"""Griffin's recurrent block (RecurrentGemma): a short convolution, then the RG-LRU, gated by a GeLU branch.

`out = linear_out(rg_lru(conv(linear_x(u))) * gelu(linear_y(u)))`. The Real-Gated Linear
Recurrent Unit is diagonal, one scalar state per channel (`lru_width` channels):

    h_t = a_t * h_{t-1} + sqrt(1 - a_t^2) * (i_t * x_t),   log a_t = -8 * r_t * softplus(Lambda)

with input gate `i_t` and recurrence gate `r_t` (sigmoids of block-diagonal maps of `x_t`), and the
state reset (`a_t` ignored, no sqrt factor) where `position_ids == 0` (De et al. 2024, "Griffin").
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..hook_points import Tap
from .state import split_scan
from .taps import MixerHooks, add_projection_point, recurrent_eager_tap

EAGER_POINTS = ["hook_conv", "hook_input_gate", "hook_recurrent_gate", "hook_log_decay", "hook_recurrence_out"]


def add_points(hooks: MixerHooks, block: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Inner points of a RecurrentGemma recurrent block (`RecurrentGemmaRecurrentBlock`).

    From projections (cheap): `hook_x` `[batch, pos, lru_width]` (`linear_x` output, entering the
    convolution) and `hook_y` `[batch, pos, lru_width]` (`linear_y` output, the gate branch before
    its GeLU). From an eager forward that runs only while one of them is hooked (runs with
    `use_cache=False` only): `hook_conv` (after the causal convolution, the RG-LRU input),
    `hook_input_gate` (`i_t`), `hook_recurrent_gate` (`r_t`), `hook_log_decay` (`log a_t`, the log
    of the per-step state decay), `hook_recurrence_out` (the RG-LRU output `h_t`, before the GeLU
    gate), all `[batch, pos, lru_width]`, and `hook_state` `[batch, lru_width]` (float32, the
    RG-LRU state after chosen positions, see `StateHookPoint`). `pattern_mode` is unused (no
    `hook_pattern`).
    """
    taps = [
        add_projection_point(hooks, block.linear_x, "hook_x", None, "linear_x output"),
        add_projection_point(hooks, block.linear_y, "hook_y", None, "linear_y output"),
    ]
    return [*taps, recurrent_eager_tap(hooks, block, _eager_forward(block, hooks), EAGER_POINTS,
                                       "eager RG-LRU recurrent-block forward")]


def _eager_forward(block: nn.Module, hooks: MixerHooks):
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

        recurrence = split_scan(hooks.hook_state, scan, [normalized_x, torch.exp(log_decay), reset])
        return hooks.hook_recurrence_out(recurrence)

    return forward
