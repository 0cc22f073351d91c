"""LFM2's gated short convolution: `y = C * conv(B * x)`, a depthwise causal convolution over a few tokens.

`in_proj` produces three gates of width d_model, B, C and x; the convolution (kernel `w`,
`conv_L_cache` = L taps, default 3) mixes B * x over the last L tokens only, so the mixer has no
long-range recurrent state (its cache holds the last inputs). It is linear in x, per channel c:
`y_t = sum_s P[c, t, s] x_s (+ C_t * conv bias)` with the banded implicit attention

    P[c, t, s] = C_t[c] * w[c, L - 1 - (t - s)] * B_s[c]      (0 <= t - s < L, else 0).
"""

from __future__ import annotations

import sys

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .kinds import ComponentKind
from .taps import MixerHooks, eager_forward_tap, input_tap, mixer_output, output_tap, refuse_cache, single

CONV = ComponentKind("conv", "short convolution", (148, 103, 189), pattern="implicit")
PIECES = ("hook_B", "hook_C", "hook_x")  # the order of in_proj's output chunks


def implicit_attention(B: Float[Tensor, "batch pos channel"], C: Float[Tensor, "batch pos channel"],
                       weight: Float[Tensor, "channel tap"]) -> Float[Tensor, "batch channel pos pos"]:
    """The banded matrix `P` (float32) of one short convolution, `y = P x` per channel (no conv bias).

    Args:
        B: The input gate (`hook_B`).
        C: The output gate (`hook_C`).
        weight: The depthwise kernel, `conv.weight[:, 0]`.

    Examples:
        >>> ones = torch.ones(1, 4, 1)
        >>> implicit_attention(ones, ones, torch.tensor([[0.25, 0.5, 1.0]]))[0, 0]
        tensor([[1.0000, 0.0000, 0.0000, 0.0000],
                [0.5000, 1.0000, 0.0000, 0.0000],
                [0.2500, 0.5000, 1.0000, 0.0000],
                [0.0000, 0.2500, 0.5000, 1.0000]])
    """
    taps = weight.shape[-1]
    positions = torch.arange(B.shape[1], device=B.device)
    lag = positions[:, None] - positions[None, :]
    kernel = weight.float()[:, (taps - 1 - lag).clamp(0, taps - 1)] * ((lag >= 0) & (lag < taps))
    return C.float().transpose(1, 2)[..., :, None] * kernel * B.float().transpose(1, 2)[..., None, :]


def add_points(hooks: MixerHooks, conv: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Inner points of an LFM2 short-convolution mixer (`Lfm2ShortConv`).

    From projections (cheap): `hook_B`, `hook_C`, `hook_x` `[batch, pos, d_model]` (the three
    chunks of `in_proj`'s output), `hook_y` `[batch, pos, d_model]` (`C * conv(B * x)`, entering
    `out_proj`). From an eager forward that runs only while one of them is hooked (runs without a
    cache): `hook_conv` `[batch, pos, d_model]` (the causal convolution of `B * x`) and
    `hook_pattern` `[batch, d_model, query_pos, key_pos]` (the implicit attention of each channel,
    see `implicit_attention`; computed only while hooked or while `pattern_mode` is on, and a
    replaced pattern is applied to x instead of the convolution).
    """

    def split(projected):
        return dict(zip(PIECES, projected.chunk(3, dim=-1)))

    def join(parts, projected):
        return torch.cat([parts[name] for name in PIECES], dim=-1)

    y_split, y_join = single("hook_y", None)
    forward = _eager_forward(conv, hooks, pattern_mode)
    return [
        output_tap(hooks, conv.in_proj, split, join, list(PIECES), "in_proj output"),
        input_tap(hooks, conv.out_proj, y_split, y_join, ["hook_y"], "out_proj input"),
        eager_forward_tap(hooks, conv, forward, ["hook_conv", "hook_pattern"], "eager short-convolution forward"),
    ]


def _eager_forward(conv: nn.Module, hooks: MixerHooks, pattern_mode: Tap):
    """The `transformers` short-convolution forward (no-cache path) with `hook_conv` and `hook_pattern`."""
    hf = sys.modules[type(conv).__module__]  # the modeling module of the family: its kernels and helpers

    def forward(hidden_states, cache=None, attention_mask=None, **kwargs):
        refuse_cache(cache, "short convolution (hook_conv, hook_pattern)")
        weight = conv.conv.weight.squeeze(1)
        hidden_states = hf.apply_mask_to_padding_states(hidden_states, attention_mask)
        B, C, x = conv.in_proj(hidden_states).transpose(-1, -2).chunk(3, dim=-2)

        def convolved():
            mixed = hf.causal_conv1d_fn(B * x, weight, conv.conv.bias, **kwargs)
            return (C * hooks.hook_conv(mixed.transpose(-1, -2)).transpose(-1, -2)).transpose(-1, -2)

        def applied(edited):
            y = torch.einsum("bcts,bsc->btc", edited.float(), x.transpose(-1, -2).float()).to(x.dtype)
            return y if conv.conv.bias is None else y + (C * conv.conv.bias[:, None]).transpose(-1, -2)

        y = mixer_output(hooks, convolved, lambda: implicit_attention(B.transpose(-1, -2), C.transpose(-1, -2), weight),
                         applied, pattern_mode)
        return conv.out_proj(y.contiguous())

    return forward
