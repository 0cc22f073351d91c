"""Softmax attention: TransformerLens-named inner points of a `transformers` attention module.

Any attention module with `q_proj`/`k_proj`/`v_proj`/`o_proj` (or `out_proj`, LFM2) and `head_dim`
(Llama, Qwen2/3, Qwen3.5's gated attention, Falcon-H1, Bamba, Jamba, ...) gets `hook_q/k/v/z` and
`hook_pattern`. Multi-head latent attention (Kimi-Linear) gets its own `add_mla_points`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..hook_points import Tap
from .kinds import ComponentKind
from .taps import MixerHooks, add_pattern_point, add_projection_point, input_tap, output_tap, route, single

ATTN = ComponentKind("attn", "attention", (214, 39, 40), pattern="softmax")


def add_points(hooks: MixerHooks, attention: nn.Module, mode: Tap) -> list[Tap]:
    """TransformerLens-named inner points of a softmax-attention module.

    `hook_q/k/v` `[batch, pos, head, d_head]` are the q/k/v projection outputs (before q/k norms,
    rotary and any key multiplier), `hook_z` `[batch, pos, head, d_head]` is the input of `o_proj`
    (after any output gate), `hook_gate` the output-gate logits of gated attention (Qwen3.5,
    Qwen3-Next: a `q_proj` twice as wide as `o_proj`'s input), and
    `hook_pattern` `[batch, head, query_pos, key_pos]` the softmax pattern.
    """
    o_proj = attention.o_proj if hasattr(attention, "o_proj") else attention.out_proj
    n_heads = o_proj.in_features // attention.head_dim
    n_kv = attention.k_proj.out_features // attention.head_dim
    taps = []
    if attention.q_proj.out_features == 2 * o_proj.in_features:  # Qwen3.5 / Qwen3-Next output gate

        def split(x):
            q, gate = x.unflatten(-1, (n_heads, -1)).chunk(2, dim=-1)
            return {"hook_q": q, "hook_gate": gate}

        def join(parts, x):
            return torch.cat([parts["hook_q"], parts["hook_gate"]], dim=-1).reshape(x.shape)

        taps.append(output_tap(hooks, attention.q_proj, split, join, ["hook_q", "hook_gate"], "q_proj output"))
    else:
        taps.append(add_projection_point(hooks, attention.q_proj, "hook_q", n_heads, "q_proj output"))
    taps.append(add_projection_point(hooks, attention.k_proj, "hook_k", n_kv, "k_proj output"))
    taps.append(add_projection_point(hooks, attention.v_proj, "hook_v", n_kv, "v_proj output"))
    split, join = single("hook_z", n_heads)
    taps.append(input_tap(hooks, o_proj, split, join, ["hook_z"], "o_proj input"))
    add_pattern_point(hooks, attention, mode)
    return taps


def add_mla_points(hooks: MixerHooks, attention: nn.Module, mode: Tap) -> list[Tap]:
    """Inner points of multi-head latent attention (MLA without RoPE: Kimi-Linear's full attention).

    `hook_q` `[batch, pos, head, qk_head_dim]` is the query projection output (`q_proj`, or `q_b_proj`
    with a low-rank query); `hook_k` `[batch, key_pos, head, qk_head_dim]` and `hook_v`
    `[batch, key_pos, head, v_head_dim]` are the keys and values `expand_kv` builds from the cached
    latent (per-head keys from `kv_b_proj` followed by the key part shared by all heads; with a cache,
    `key_pos` spans every cached position); `hook_z` `[batch, pos, head, v_head_dim]` is the input of
    `o_proj`, and `hook_pattern` `[batch, head, query_pos, key_pos]` the softmax pattern.
    """
    heads = attention.num_heads
    q_proj = attention.q_proj if attention.q_proj is not None else attention.q_b_proj
    taps = [add_projection_point(hooks, q_proj, "hook_q", heads, "query projection output")]
    points: dict = {}

    def install():
        def expand_kv(kv_nope, k_rot):
            key, value = type(attention).expand_kv(attention, kv_nope, k_rot)
            parts = {"hook_k": key.transpose(1, 2), "hook_v": value.transpose(1, 2)}
            return (parts["hook_k"].transpose(1, 2), parts["hook_v"].transpose(1, 2)) if route(points, parts) \
                else (key, value)

        attention.expand_kv = expand_kv
        return lambda: delattr(attention, "expand_kv")

    taps.append(Tap(install, "expand_kv output"))
    points.update({name: hooks.add(name, taps[-1]) for name in ("hook_k", "hook_v")})
    split, join = single("hook_z", heads)
    taps.append(input_tap(hooks, attention.o_proj, split, join, ["hook_z"], "o_proj input"))
    add_pattern_point(hooks, attention, mode)
    return taps
