"""Mixture-of-experts routers: the routing decision of an MoE block as hook points (`blocks.{i}.mlp.`).

For MoE blocks whose router submodule `gate` returns `(router_logits, top_k_weights, top_k_indices)`,
as the `transformers` top-k routers of Qwen3-Next and Kimi-Linear do (`Mlp.points`).
"""

from __future__ import annotations

from torch import nn

from ..hook_points import Tap
from .taps import MixerHooks, route

NAMES = ("hook_router_logits", "hook_router_weights", "hook_router_indices")


def add_points(hooks: MixerHooks, moe: nn.Module, pattern_mode: Tap) -> list[Tap]:
    """Router points of an MoE block (none for a dense MLP, which has no `gate` router).

    `hook_router_logits` `[batch, pos, expert]` (read-only: the router chooses from them inside its
    own forward, so a hook that returns a new value is refused), `hook_router_weights`
    `[batch, pos, top_k]` (the weights the chosen experts' outputs are scaled by, after any
    normalisation and routed scaling factor) and `hook_router_indices` `[batch, pos, top_k]` (the
    chosen experts, int64). Writes to the weights and indices take effect.
    """
    router = getattr(moe, "gate", None)
    if router is None or isinstance(router, nn.Linear):
        return []
    lead = []  # the block input's [batch, pos], recorded as the block starts
    points = {}

    def on_input(_module, args):
        lead[:] = [args[0].shape[:-1]]

    def on_output(_module, _args, output):
        parts = {name: value.reshape(*lead[0], -1) for name, value in zip(NAMES, output)}
        logits = parts[NAMES[0]]
        if not route(points, parts):
            return None
        if parts[NAMES[0]] is not logits:
            raise ValueError(f"{points[NAMES[0]].name} is read-only (the router chooses experts from the logits "
                             "inside its forward); write hook_router_weights or hook_router_indices instead.")
        return tuple(parts[name].reshape(value.shape) for name, value in zip(NAMES, output))

    def install():
        handles = [moe.register_forward_pre_hook(on_input), router.register_forward_hook(on_output)]
        return lambda: [handle.remove() for handle in handles]

    tap = Tap(install, "router output")
    points.update({name: hooks.add(name, tap) for name in NAMES})
    return [tap]
