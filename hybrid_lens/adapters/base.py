"""The hooked block: the block-level hook points of one decoder layer, and the plumbing around it.

`adapters.spec.Family` describes what a family's blocks contain; its generic block forward feeds
these points.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..hook_points import HookPoint
from ..mixers.taps import MixerHooks
from ..vocabulary import has_resid_mid, mixers_of, point_name


class HookedBlock(nn.Module):
    """Block-level hook points of decoder layer `index`.

    Holds `hook_resid_pre`, one `hook_{kind}_out` and one `MixerHooks` container per mixer in the
    block, `hook_resid_mid` (only in a block with both mixers and an MLP), `hook_mlp_out` (only
    with an MLP) and `hook_resid_post`.
    """

    def __init__(self, index: int, components: tuple[str, ...], spec_key: str = "block"):
        super().__init__()
        self.index = index
        self.components = components
        self.mixers = mixers_of(components)
        self.spec_key = spec_key  # the family's layer type this block follows
        self.hook_resid_pre = HookPoint()
        for kind in self.mixers:
            self.add_module(point_name(kind), HookPoint())
            self.add_module(kind, MixerHooks())
        if has_resid_mid(components):
            self.hook_resid_mid = HookPoint()
        if "mlp" in components:
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()
        self.stop_here = False  # set by `HookedHybrid.forward(stop_at_layer=index)`

    def extra_repr(self) -> str:
        return f"index={self.index}, components={self.components}"


BlockForward = Callable[..., object]
Entry = Callable[[Tensor], Tensor]


class StopForward(Exception):  # noqa: N818 (a control-flow signal, not an error)
    """Raised where `HookedHybrid.forward(stop_at_layer=...)` ends; carries the residual stream."""

    def __init__(self, resid: Tensor):
        super().__init__("stop_at_layer reached")
        self.resid = resid


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
