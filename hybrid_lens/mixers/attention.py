"""Softmax attention: TransformerLens-named inner points of a `transformers` attention module.

Any attention module with `q_proj`/`k_proj`/`v_proj`/`o_proj` (or `out_proj`, LFM2) and `head_dim`
(Llama, Qwen2/3, Qwen3.5's gated attention, Falcon-H1, Bamba, Jamba, ...) gets `hook_q/k/v`,
`hook_rot_q/k`, `hook_attn_scores`, `hook_pattern`, `hook_z` and (with the block's multiplier,
`mixers.heads`) `hook_result`, and TransformerLens's weight views (`blocks[i].attn.W_Q`, ...).
Multi-head latent attention (Kimi-Linear) gets its own `add_mla_points`.
"""

from __future__ import annotations

import torch
from torch import nn

from ..hook_points import Tap
from .heads import add_head_input
from .inputs import QKV
from .kinds import ComponentKind
from .taps import MixerHooks, add_pattern_points, add_projection_point, output_tap, route
from .weights import bias_or_zeros, head_inputs

ATTN = ComponentKind("attn", "attention", (214, 39, 40), pattern="softmax")


def add_points(hooks: MixerHooks, attention: nn.Module, mode: Tap) -> list[Tap]:
    """TransformerLens-named inner points of a softmax-attention module.

    `hook_q/k/v` `[batch, pos, head, d_head]` are the q/k/v projection outputs (before q/k norms,
    rotary and any key multiplier; k and v have the key-value heads), `hook_gate` the output-gate
    logits of gated attention (Qwen3.5, Qwen3-Next: a `q_proj` twice as wide as `o_proj`'s input),
    `hook_rot_q` / `hook_rot_k`, `hook_attn_scores` and `hook_pattern` `[batch, head, query_pos, key_pos]`
    the points of the eager path (`taps.add_pattern_points`), `hook_z` `[batch, pos, head, d_head]`
    the input of `o_proj` (after any output gate). Weight views: `W_Q` `[head, d_model, d_head]`,
    `_W_K` / `_W_V` `[kv_head, d_model, d_head]` and `W_K` / `W_V` repeated over the query heads (a copy
    under grouped-query attention, as TransformerLens's), `W_O` `[head, d_head, d_model]`, and the
    biases `b_Q`, `_b_K`, `b_K`, `_b_V`, `b_V` `[head, d_head]`, `b_O` `[d_model]`.
    """
    o_proj = attention.o_proj if hasattr(attention, "o_proj") else attention.out_proj
    n_heads = o_proj.in_features // attention.head_dim
    n_kv = attention.k_proj.out_features // attention.head_dim
    gated = attention.q_proj.out_features == 2 * o_proj.in_features  # Qwen3.5 / Qwen3-Next output gate
    taps = []
    if gated:

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
    add_pattern_points(hooks, attention, mode)
    hooks.qkv = QKV(attention.q_proj, attention.k_proj, attention.v_proj, n_heads, n_kv)
    return [*taps, add_head_input(hooks, attention, o_proj, n_heads, "o_proj input", _attention_views(n_heads, n_kv))]


def _attention_views(n_heads: int, n_kv: int) -> dict:
    """TransformerLens's weight views of an attention module (q/k/v/o projections, `head_dim` wide heads).
    A gated `q_proj` holds `[query | gate]` per head: its views keep the query half."""
    repeat = n_heads // n_kv

    def projection(name: str, heads: int, bias: bool):
        def view(attention):
            linear, width = getattr(attention, name), attention.head_dim
            if bias:
                return bias_or_zeros(linear, heads, linear.out_features // heads)[:, :width]
            return head_inputs(linear.weight, heads, width)
        return view

    def repeated(own):
        return own if repeat == 1 else lambda attention: own(attention).repeat_interleave(repeat, dim=0)

    views = {"W_Q": projection("q_proj", n_heads, False), "b_Q": projection("q_proj", n_heads, True)}
    for name, proj in (("K", "k_proj"), ("V", "v_proj")):
        views[f"_W_{name}"], views[f"_b_{name}"] = projection(proj, n_kv, False), projection(proj, n_kv, True)
        views[f"W_{name}"], views[f"b_{name}"] = repeated(views[f"_W_{name}"]), repeated(views[f"_b_{name}"])
    return views


def add_mla_points(hooks: MixerHooks, attention: nn.Module, mode: Tap) -> list[Tap]:
    """Inner points of multi-head latent attention (MLA without RoPE: Kimi-Linear's full attention).

    `hook_q` `[batch, pos, head, qk_head_dim]` is the query projection output (`q_proj`, or `q_b_proj`
    with a low-rank query); `hook_k` `[batch, key_pos, head, qk_head_dim]` and `hook_v`
    `[batch, key_pos, head, v_head_dim]` are the keys and values `expand_kv` builds from the cached
    latent (per-head keys from `kv_b_proj` followed by the key part shared by all heads; with a cache,
    `key_pos` spans every cached position); `hook_rot_q`, `hook_rot_k`, `hook_attn_scores` and
    `hook_pattern` as in `add_points`; `hook_z` `[batch, pos, head, v_head_dim]` is the input of
    `o_proj`. Weight views: `W_Q` `[head, d_model, qk_head_dim]` (with a full-rank query), `W_O`, `b_O`;
    keys and values come from a shared latent, so `W_K` / `W_V` say so instead.
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
    add_pattern_points(hooks, attention, mode)
    views = {} if attention.q_proj is None else {"W_Q": lambda a: head_inputs(a.q_proj.weight, heads),
                                                 "b_Q": lambda a: bias_or_zeros(a.q_proj, heads, a.qk_head_dim)}
    latent = "multi-head latent attention expands keys and values from a shared latent (kv_b_proj), not per head"
    absent = {name: latent for name in ("W_K", "W_V", "_W_K", "_W_V", "b_K", "b_V")}
    if attention.q_proj is None:
        absent.update({name: "the query is low-rank (q_a_proj, q_b_proj), not one projection" for name in ("W_Q", "b_Q")})
    return [*taps, add_head_input(hooks, attention, attention.o_proj, heads, "o_proj input", views, absent)]
