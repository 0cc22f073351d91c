"""LFM2's gated short convolution: `y = C * conv(B * x)`, a depthwise causal convolution over a few tokens.

`in_proj` produces three gates of width d_model, B, C and x; the convolution (kernel
`conv_L_cache`, default 3) mixes B * x over the last tokens only, so the mixer has no long-range
recurrent state (its cache holds the last inputs).
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from ..hook_points import Tap
from .taps import MixerHooks, eager_forward_tap, input_tap, output_tap, refuse_cache, single

PIECES = ("hook_B", "hook_C", "hook_x")  # the order of in_proj's output chunks


def add_points(hooks: MixerHooks, conv: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Inner points of an LFM2 short-convolution mixer (`Lfm2ShortConv`).

    From projections (cheap): `hook_B`, `hook_C`, `hook_x` `[batch, pos, d_model]` (the three
    chunks of `in_proj`'s output), `hook_y` `[batch, pos, d_model]` (`C * conv(B * x)`, entering
    `out_proj`). From an eager forward that runs only while it is hooked (runs without a cache):
    `hook_conv` `[batch, pos, d_model]` (the causal convolution of `B * x`). `pattern_mode` is
    unused: a short convolution has no attention pattern.
    """

    def split(projected):
        return dict(zip(PIECES, projected.chunk(3, dim=-1)))

    def join(parts, projected):
        return torch.cat([parts[name] for name in PIECES], dim=-1)

    y_split, y_join = single("hook_y", None)
    return [
        output_tap(hooks, conv.in_proj, split, join, list(PIECES), "in_proj output"),
        input_tap(hooks, conv.out_proj, y_split, y_join, ["hook_y"], "out_proj input"),
        eager_forward_tap(hooks, conv, _eager_forward(conv, hooks), ["hook_conv"], "eager short-convolution forward"),
    ]


def _eager_forward(conv: nn.Module, hooks: MixerHooks):
    """The `transformers` short-convolution forward (no-cache path) with `hook_conv` on the convolution output."""
    hf = sys.modules[type(conv).__module__]  # the modeling module of the family: its kernels and helpers

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "short convolution (hook_conv)")
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        B, C, x = conv.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)
        mixed = hf.causal_conv1d_fn(B * x, conv.conv.weight.squeeze(1), conv.conv.bias, **kwargs)
        mixed = hooks.hook_conv(mixed.transpose(-1, -2)).transpose(-1, -2)
        return conv.out_proj((C * mixed).transpose(-1, -2).contiguous())

    return forward
