"""The hooked block: the block-level hook points of one decoder layer (and of the final norm), and the
plumbing around it.

`adapters.spec.Family` describes what a family's blocks contain; its generic block forward feeds
these points. `Wrapping` installs the block forwards on a `transformers` model and remembers how to
undo every change (`HookedHybrid.unwrap`); a copy of the wrapped model is the plain one (`copies`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ..forward_state import current_state
from ..hook_points import HookPoint, Tap
from ..layout import Layer
from ..mixers.inputs import HeadInputs, MlpInput, Switches
from ..mixers.norm import NormHooks
from ..mixers.norm import add_points as add_norm_points
from ..mixers.taps import MixerHooks, replace_forward
from .copies import copy_plainly
from ..vocabulary import point_name


class HookedBlock(nn.Module):
    """Block-level hook points of decoder layer `layer.index`, and its parts under TransformerLens's names.

    Holds, in TransformerLens's order: `hook_resid_pre`; `ln1` (the mixers' pre-norm, `mixers.norm`);
    per mixer its `MixerHooks` container (`attn`, `linear_attn`, `ssm`, `conv`: inner points, weight
    views) and `hook_{kind}_out`; `hook_resid_mid` (only in a block with both mixers and an MLP); `ln2`,
    the `mlp` container and `hook_mlp_out` (only with an MLP); `hook_resid_post`. A norm the block does
    not have is removed when its points are added (`adapters.points`); asking for `attn`, `mlp`, `ln1`
    or `ln2` where the block has none says what it has instead. TransformerLens's input points
    (`hook_attn_in`, `hook_q_input` / `hook_k_input` / `hook_v_input` with a softmax attention, `hook_mlp_in`
    with an MLP: `mixers.inputs`) follow, added with the other points.

    Args:
        layer: The block's entry of the model's `Layout`.
        switches: The model's TransformerLens switches (`mixers.inputs.Switches`), read by the block's points.
    """

    def __init__(self, layer: Layer, switches: Switches | None = None):
        super().__init__()
        self.layer = layer
        self.switches = Switches() if switches is None else switches
        self.head_inputs: HeadInputs | None = None  # the plumbing of hook_attn_in / hook_q_input / ...
        self.mlp_input: MlpInput | None = None  # of hook_mlp_in
        self.hook_resid_pre = HookPoint()
        if layer.mixers:
            self.ln1 = NormHooks()
        for kind in layer.mixers:
            self.add_module(kind, MixerHooks())
            self.add_module(point_name(kind), HookPoint())
        if layer.has_resid_mid:
            self.hook_resid_mid = HookPoint()
        if layer.has_mlp:
            self.ln2 = NormHooks()
            self.mlp = MixerHooks()
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    @property
    def index(self) -> int:
        """Block index."""
        return self.layer.index

    def extra_repr(self) -> str:
        return f"index={self.index}, components={self.layer.components}"

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            layer = self.__dict__.get("layer")
            if layer is None or name not in ("attn", "mlp", "ln1", "ln2"):
                raise
        parts = ", ".join(f".{part}" for part in self._modules if not part.startswith("hook_"))
        if name == "attn":
            what = f"no softmax attention; its mixer{'s are' if len(layer.mixers) > 1 else ' is'} " + \
                   ", ".join(f"blocks[{layer.index}].{kind}" for kind in layer.mixers) if layer.mixers else "no mixer"
        elif name == "mlp":
            what = "no MLP"
        else:
            what = f"no {'pre-norm before its mixers' if name == 'ln1' else 'pre-norm before its MLP'}"
        raise AttributeError(f"blocks[{layer.index}] ({layer.type} block) has {what} (its parts: {parts}).")


class FinalNormHooks(NormHooks):
    """`ln_final`: `hook_scale` (`mixers.norm`) and `hook_normalized`, the final norm's output
    `Float[Tensor, "batch pos d_model"]` (gain included: what `W_U` reads), and the gain `w`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning", names_filter="ln_final.hook_normalized")
        >>> cache["ln_final.hook_normalized"].shape
        torch.Size([1, 4, 128])
    """

    def attach(self, norm: nn.Module) -> Tap | None:
        """Add `hook_scale` (a tap on `norm`, returned) and `hook_normalized` (fed by `Wrapping.install`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> list(model.ln_final._modules), model.ln_final.w.shape
            (['hook_scale', 'hook_normalized'], torch.Size([128]))
        """
        tap = add_norm_points(self, norm, normalized=False)
        self.hook_normalized = HookPoint()
        return tap


Entry = Callable[[Tensor], Tensor]


def is_hooked(layer: nn.Module) -> bool:
    """Whether a HookedHybrid block forward is installed on `layer`."""
    attribute = "_old_forward" if hasattr(layer, "_hf_hook") else "forward"
    return getattr(vars(layer).get(attribute), "hybrid_lens_block", False)


def resid_in(block: HookedBlock, entry: Entry | None, hidden_states):
    """Pass the block input through `hook_embed` (block 0) and `hook_resid_pre`, telling the running
    forward's state that the block is entered (it may record the input or stop the pass here). The
    block where a pass enters (`ForwardState.start`) reads the given residual stream instead, and
    `hook_embed` does not fire."""
    state = current_state()
    running = state is not None and state.running
    if running and state.resid is not None and block.index == state.start:
        hidden_states = state.resid
    elif entry is not None:
        hidden_states = entry(hidden_states)
    if running:
        state.enter(block.index, hidden_states)
    return block._modules["hook_resid_pre"](hidden_states)  # what `block.hook_resid_pre` gives, faster


class Wrapping:
    """The changes that wrapping made to a `transformers` model: replaced forwards and added torch
    hooks, each with the function that undoes it.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> hf_model = model.unwrap()                     # the plain transformers model again
        >>> HookedHybrid.from_hf(hf_model).n_layers      # and it can be wrapped anew
        8
    """

    def __init__(self):
        self._undo: list[Callable[[], None]] = []
        self._taps: list[Tap] = []

    @staticmethod
    def check(hf_model: nn.Module, family, layout) -> None:
        """Refuse a model that is already wrapped, whose layers are not those of its config, or that
        `family` does not fit (`Family.validate`)."""
        layers = family.layers(hf_model)
        if len(layers) != len(layout):
            raise ValueError(f"Config lists {len(layout)} layers but the model has {len(layers)}.")
        if any(is_hooked(layer) for layer in layers):
            raise ValueError("This transformers model is already wrapped by a HookedHybrid; reuse that wrapper.")
        family.validate(hf_model)

    @classmethod
    def install(cls, model, layers: nn.ModuleList) -> Wrapping:
        """Wrap `model.hf_model`: each decoder layer of `layers` runs its `model.blocks` block forward
        (the inner points of its mixers added), and the final norm feeds `ln_final.hook_normalized`."""
        wrapping, adapter = cls(), model.adapter

        def entry(hidden_states: Tensor) -> Tensor:  # looked up at call time, like every hook point
            return model.hook_embed(hidden_states)

        def enter_final_norm(_module, args) -> None:  # the final norm's input is "block n_layers"'s
            state = current_state()
            if state is not None and state.running:
                state.enter(len(layers), args[0])

        for block, layer in zip(model.blocks, layers):
            forward = adapter.block_forward(block, layer, entry if block.index == 0 else None, wrapping)
            wrapping.install_block(layer, block, forward, adapter.wrap_output)
            for tap in adapter.add_inner_points(block, layer, model._pattern_mode):
                wrapping.add_tap(tap)
        norm = adapter.final_norm(model.hf_model)
        tap = model.ln_final.attach(norm)
        if tap is not None:
            wrapping.add_tap(tap)
        wrapping.add_hook(norm.register_forward_pre_hook(enter_final_norm))
        wrapping.add_hook(norm.register_forward_hook(lambda _module, _args, out: model.ln_final.hook_normalized(out)))
        wrapping._undo.append(lambda: model._pattern_mode.set_always_on(False))
        wrapping._undo.append(copy_plainly(model.hf_model, model._pattern_mode))
        return wrapping

    @property
    def taps(self) -> list[Tap]:
        """The taps feeding the inner hook points, switched off by `unwrap`."""
        return list(self._taps)

    def add_tap(self, tap: Tap) -> None:
        """Keep a tap, switched off (`always_on` cleared) by `unwrap`."""
        self._taps.append(tap)
        self._undo.append(lambda: tap.set_always_on(False))

    def replace_forward(self, module: nn.Module, forward: Callable) -> None:
        """Make `module` run `forward` until `unwrap`."""
        self._undo.append(replace_forward(module, forward))

    def add_hook(self, handle) -> None:
        """Keep a torch hook handle, removed by `unwrap`."""
        self._undo.append(handle.remove)

    def install_block(self, layer: nn.Module, block: HookedBlock, forward: Callable, wrap_output: Callable) -> None:
        """Make decoder layer `layer` run `forward`, the hooked block forward of `block`; in a pass
        entering at a later block it returns the residual stream given for that block instead."""

        def hooked(*args, **kwargs):
            state = current_state()
            if state is not None and state.running and state.skips(block.index):
                return wrap_output(state.resid)
            return forward(*args, **kwargs)

        hooked.hybrid_lens_block = True
        self.replace_forward(layer, hooked)

    def unwrap(self) -> None:
        """Undo every change, last first."""
        while self._undo:
            self._undo.pop()()
