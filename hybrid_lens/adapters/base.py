"""The adapter protocol: what a family's blocks contain and how their forward exposes hook points.

An adapter is mostly data: which mixers each block holds (read from the config), where the decoder
layers and final norm live, and a block forward that calls the `transformers` submodules in the
same order and with the same arithmetic as the original layer, passing every residual-stream
quantity through a hook point. With no hooks attached the result is bit-identical to the
original model.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..hook_points import HookPoint, Tap, TappedHookPoint
from ..vocabulary import point_name


class MixerHooks(nn.Module):
    """Inner hook points of one mixer (e.g. `blocks.3.attn.hook_q`), all fed by taps."""

    def add(self, name: str, tap: Tap) -> TappedHookPoint:
        point = TappedHookPoint(tap)
        self.add_module(name, point)
        return point


class HookedBlock(nn.Module):
    """Block-level hook points of decoder layer `index`.

    Holds `hook_resid_pre`, one `hook_{kind}_out` per mixer in the block, `hook_resid_mid`,
    `hook_mlp_out`, `hook_resid_post`, and one `MixerHooks` container per mixer kind.
    """

    def __init__(self, index: int, mixers: tuple[str, ...]):
        super().__init__()
        self.index = index
        self.mixers = mixers
        self.hook_resid_pre = HookPoint()
        for kind in mixers:
            self.add_module(point_name(kind), HookPoint())
            self.add_module(kind, MixerHooks())
        self.hook_resid_mid = HookPoint()
        self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.stop_here = False  # set by `HookedHybrid.forward(stop_at_layer=index)`

    def extra_repr(self) -> str:
        return f"index={self.index}, mixers={self.mixers}"


BlockForward = Callable[..., object]
Entry = Callable[[Tensor], Tensor]


class StopForward(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised where `HookedHybrid.forward(stop_at_layer=...)` ends; carries the residual stream."""

    def __init__(self, resid: Tensor):
        super().__init__("stop_at_layer reached")
        self.resid = resid


class Adapter:
    """Base class of the per-family adapters. Subclasses fill in the class attributes and hooks."""

    family: str = ""
    architectures: tuple[str, ...] = ()
    model_types: tuple[str, ...] = ()
    final_norm_attr: str = "norm"

    def layer_mixers(self, config) -> list[tuple[str, ...]]:
        """The mixer kinds of every block, in execution order, read from the config."""
        raise NotImplementedError

    def decoder(self, hf_model: nn.Module) -> nn.Module:
        return hf_model.model

    def layers(self, hf_model: nn.Module) -> nn.ModuleList:
        return self.decoder(hf_model).layers

    def final_norm(self, hf_model: nn.Module) -> nn.Module:
        return getattr(self.decoder(hf_model), self.final_norm_attr)

    def logit_scale(self, hf_model: nn.Module) -> float:
        """Factor the model applies to `lm_head` outputs (Falcon-H1's `lm_head_multiplier`)."""
        return 1.0

    def layer_output(self, hidden_states):
        """`hidden_states` in the form the family's decoder loop expects from a layer."""
        return hidden_states

    def block_forward(self, block: HookedBlock, layer: nn.Module, entry: Entry | None) -> BlockForward:
        """A replacement for `layer.forward` that routes values through `block`'s hook points.

        `entry` (block 0 only) calls `hook_embed`, before `hook_resid_pre`. Hook points are looked
        up on `block` at call time, so a module put in a hook point's place (an SAE) takes effect.
        """
        raise NotImplementedError

    def add_inner_points(self, block: HookedBlock, layer: nn.Module, pattern_mode: Tap) -> list[Tap]:
        """Create the inner hook points of `block`'s mixers; return their taps.

        `pattern_mode` is the model-wide tap that feeds every `hook_pattern`.
        """
        raise NotImplementedError


def replace_forward(module: nn.Module, forward: Callable) -> Callable[[], None]:
    """Make `module` run `forward`; returns a function that restores the previous forward.

    Under accelerate's dispatch hooks (`device_map=...`, offloading) the hook's inner forward is
    replaced, so the hook still moves weights and inputs to the execution device around it.
    """
    attribute = "_old_forward" if hasattr(module, "_hf_hook") and "_old_forward" in vars(module) else "forward"
    previous = vars(module).get(attribute)  # None: the class's own forward
    setattr(module, attribute, forward)

    def restore() -> None:
        if previous is None:
            delattr(module, attribute)
        else:
            setattr(module, attribute, previous)

    return restore


def is_hooked(layer: nn.Module) -> bool:
    """Whether a HookedHybrid block forward is installed on `layer`."""
    attribute = "_old_forward" if hasattr(layer, "_hf_hook") else "forward"
    return getattr(vars(layer).get(attribute), "hybrid_lens_block", False)


def resid_in(block: HookedBlock, entry: Entry | None, hidden_states):
    """Pass the block input through `hook_embed` (block 0) and `hook_resid_pre`; stop the forward
    pass here (`StopForward`) when the block is where `stop_at_layer` ends."""
    if entry is not None:
        hidden_states = entry(hidden_states)
    if block.stop_here:
        raise StopForward(hidden_states)
    return block.hook_resid_pre(hidden_states)
