"""TransformerLens's four switches on `HookedHybrid`: `set_use_attn_result`, `set_use_split_qkv_input`,
`set_use_hook_mlp_in`, `set_use_attn_in`, and what they govern (`mixers.inputs`).

The points exist whatever the switches say (as TransformerLens's: `model.hook_dict` has them). A switch left
unset (None) feeds its points when they are named; True also puts them in `run_with_cache()`'s every-point
cache and in name predicates (TransformerLens's "on"); False refuses them: `add_hook` raises TransformerLens's
`AssertionError`, and so does naming them in `run_with_hooks` / `run_with_cache` (TransformerLens would add the
hook and never call it), and hooks already attached are not fed. `set_use_...(None)` unsets a switch.
"""

from __future__ import annotations

from .mixers.inputs import Switches
from .vocabulary import INPUT_POINTS

__all__ = ["Switching"]


class Switching:
    """`HookedHybrid`'s switch methods (its `switches` state is made by the constructor).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> model.set_use_split_qkv_input(True)
        >>> _, cache = model.run_with_cache("In the beginning")
        >>> cache["blocks.0.hook_q_input"].shape, cache["blocks.0.hook_k_input"].shape  # [batch, pos, head, d_model]
        (torch.Size([1, 3, 4, 128]), torch.Size([1, 3, 2, 128]))
        >>> model.set_use_split_qkv_input(False)
        >>> model.add_hook("blocks.0.hook_q_input", lambda value, hook: value)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        AssertionError: Cannot add hook blocks.0.hook_q_input while use_split_qkv_input is False...
    """

    switches: Switches

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """TransformerLens's switch of the per-head results `blocks.{i}.{kind}.hook_result` `[batch, pos, head,
        d_model]` (every mixer whose projection reads heads: attention, Gated DeltaNet, Mamba-2, ...). True: they
        are in `run_with_cache()`'s default cache and match name predicates; False: refused. Unset, they are fed
        when named."""
        self._switch("use_attn_result", use_attn_result)

    def set_use_split_qkv_input(self, use_split_qkv_input: bool) -> None:
        """TransformerLens's switch of `blocks.{i}.hook_q_input` `[batch, pos, head, d_model]` and `hook_k_input` /
        `hook_v_input` `[batch, pos, kv_head, d_model]`: the residual stream each softmax-attention head reads for
        its query, and each key-value head for its keys and values (before the block's norm). Editing one head's
        input changes only that head. See `set_use_attn_result` for True / False."""
        self._switch("use_split_qkv_input", use_split_qkv_input)

    def set_use_hook_mlp_in(self, use_hook_mlp_in: bool) -> None:
        """TransformerLens's switch of `blocks.{i}.hook_mlp_in` `[batch, pos, d_model]`, what the MLP's norm reads
        (the skip path keeps the stream). See `set_use_attn_result` for True / False."""
        if not any(layer.has_mlp for layer in self.layout):
            raise AssertionError("This model has no MLP, so no hook_mlp_in.")
        self._switch("use_hook_mlp_in", use_hook_mlp_in)

    def set_use_attn_in(self, use_attn_in: bool) -> None:
        """TransformerLens's switch of `blocks.{i}.hook_attn_in` `[batch, pos, head, d_model]`, the residual stream
        each softmax-attention head reads for its query, key and value (before the block's norm). Under
        grouped-query attention (where TransformerLens refuses the switch) a group's heads share their keys and
        values: edits must treat a group's heads alike, else use `set_use_split_qkv_input`. See
        `set_use_attn_result` for True / False."""
        self._switch("use_attn_in", use_attn_in)

    def _switch(self, switch: str, on: bool | None) -> None:
        if on is not None and not isinstance(on, bool):
            raise TypeError(f"set_{switch} takes True, False or None (unset), got {on!r}.")
        setattr(self.switches, switch, on)

    def check_hooks_to_add(self, hook_point, hook_point_name: str, hook, dir="fwd", is_permanent=False,
                           prepend=False) -> None:
        """TransformerLens's check before `add_hook` / `add_perma_hook`: an `AssertionError` for a point whose
        switch is off."""
        self.check_switched_on(hook_point_name)

    def check_switched_on(self, name: str) -> None:
        """An `AssertionError` (TransformerLens's) when the switch of the point `name` is off."""
        if not self.switches.fed(name):
            switch = self.switches.of(name)
            raise AssertionError(f"Cannot add hook {name} while {switch} is False: call model.set_{switch}(True) "
                                 "first (or leave it unset to feed the point when named).")

    def input_point_error(self, name: str) -> KeyError | None:
        """A `KeyError` saying where TransformerLens's input points exist, for such a name in a block without
        them (a block without softmax attention or without an MLP); None for any other name."""
        block, _, point = name.partition(".")[2].partition(".")
        if not name.startswith("blocks.") or not block.lstrip("-").isdigit() or \
                point not in INPUT_POINTS or int(block) >= len(self.layout):
            return None
        layer = self.layout[int(block)]
        if point == "hook_mlp_in":
            where = [other.index for other in self.layout if "hook_mlp_in" in self.blocks[other.index]._modules]
            return KeyError(f"blocks.{layer.index} ({layer.type} block) has no MLP reading the residual stream, so "
                            f"no hook_mlp_in; blocks with one: {where}.")
        where = [other.index for other in self.layout if "hook_attn_in" in self.blocks[other.index]._modules]
        mixers = ", ".join(f"blocks.{layer.index}.{kind}.*" for kind in layer.mixers) or "none"
        return KeyError(
            f"blocks.{layer.index} ({layer.type} block) has no softmax attention with q/k/v projections reading the "
            f"residual stream, so no {point}: per-head inputs exist in blocks {where}. A linear mixer reads the "
            f"block's normed input as a whole (fused projections, then a causal convolution or a recurrence): hook "
            f"blocks.{layer.index}.ln1.hook_normalized for what it reads, or its inner points ({mixers}).")
