"""TransformerLens's input points and its four switches: what each attention head and each MLP reads.

Points of a block (TransformerLens's names), all before the block's norm, as TransformerLens's:

- `hook_attn_in` `[batch, pos, head, d_model]`: the residual stream as each softmax-attention head reads it
  for its query, key and value (`set_use_attn_in`).
- `hook_q_input` `[batch, pos, head, d_model]`, `hook_k_input` / `hook_v_input` `[batch, pos, kv_head,
  d_model]`: what each query head reads for its query and each key-value head for its keys and values
  (`set_use_split_qkv_input`). They read `hook_attn_in` (a key-value head: its group's), so with both
  switches on an edit of `hook_attn_in` reaches the heads (TransformerLens 3 then feeds the split inputs from
  the residual stream and drops it: a deliberate difference).
- `hook_mlp_in` `[batch, pos, d_model]`: what the MLP's norm reads (`set_use_hook_mlp_in`); the skip path
  keeps the residual stream.

An edited input reaches only what reads it: the block's norm (and any input multiplier) is applied to each
head's input and the q/k/v projection output of that head, at the edited positions, is recomputed from it
(`[query | gate]` for a gated attention); every other head and position keeps the `transformers` value bit for
bit. Under grouped-query attention the heads of one group share their keys and values, so an edit of
`hook_attn_in` must treat the heads of a group alike (else use the split inputs).

Like every inner point they are taps: fed only while hooked. A switch has three states: None (the default:
a point is fed when named, but left out of `run_with_cache()`'s every-point cache and of name predicates),
True (also cached by default and matched by predicates, TransformerLens's "on") and False (refused:
adding a hook raises an `AssertionError` as TransformerLens's `check_hooks_to_add` does, and hooks already
attached are not fed). `use_attn_result` switches every mixer's `hook_result` (`mixers.heads`) the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import HookPoint, Tap

__all__ = ["QKV", "HeadInputs", "MlpInput", "Switches", "SWITCHED_POINTS"]

SWITCHED_POINTS = {"hook_result": "use_attn_result", "hook_q_input": "use_split_qkv_input",
                   "hook_k_input": "use_split_qkv_input", "hook_v_input": "use_split_qkv_input",
                   "hook_attn_in": "use_attn_in", "hook_mlp_in": "use_hook_mlp_in"}
ATTENTION_INPUTS = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


@dataclass
class Switches:
    """The state of TransformerLens's four switches on one model (None: not set; see the module docstring).

    Examples:
        >>> switches = Switches(use_split_qkv_input=False)
        >>> switches.of("blocks.0.hook_k_input"), switches.fed("blocks.0.hook_k_input")
        ('use_split_qkv_input', False)
        >>> switches.listed("blocks.0.attn.hook_result"), switches.listed("blocks.0.hook_resid_pre")
        (False, True)
    """

    use_attn_result: bool | None = None
    use_split_qkv_input: bool | None = None
    use_hook_mlp_in: bool | None = None
    use_attn_in: bool | None = None

    @staticmethod
    def of(name: str) -> str | None:
        """The switch of the point `name` (None: a point no switch governs)."""
        return SWITCHED_POINTS.get(name.rpartition(".")[2])

    def fed(self, name: str) -> bool:
        """Whether the point `name` may be fed (its switch is not off)."""
        switch = self.of(name)
        return switch is None or getattr(self, switch) is not False

    def listed(self, name: str) -> bool:
        """Whether `name` is among the points every-point caches and name predicates select (its switch, if
        any, is on)."""
        switch = self.of(name)
        return switch is None or getattr(self, switch) is True

    def copy(self) -> Switches:
        return Switches(**{field.name: getattr(self, field.name) for field in fields(self)})


@dataclass(frozen=True)
class QKV:
    """The query, key and value projections of a softmax attention, each reading `d_model` and writing its
    heads side by side (`q` writes `n_heads` heads, `k` and `v` `n_kv` heads), as its kind declares them."""

    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    n_heads: int
    n_kv: int


def fork(resid: Float[Tensor, "... d_model"], n: int) -> Float[Tensor, "... n d_model"]:
    """`resid` repeated along a new head axis (a copy: a hook may edit it in place)."""
    return resid.unsqueeze(-2).expand(*resid.shape[:-1], n, resid.shape[-1]).clone()


class HeadInputs:
    """The per-head input points of one block's softmax attention and their plumbing: while hooked, the block
    forward calls `run`, and a projection whose heads' inputs were edited returns, for those heads and
    positions, the output computed from them.

    Args:
        qkv: The attention's projections.
        points: The block's points by name (`hook_attn_in`, `hook_q_input`, ...; a module spliced in the place of
            one, an SAE, is called instead: `HookPoint.stand_in`).
        switches: The model's switches.
    """

    def __init__(self, qkv: QKV, points: dict, switches: Switches):
        self.qkv, self.points, self.switches = qkv, points, switches
        self._pending: dict[nn.Module, Callable[[Tensor], Tensor]] = {}
        self.tap = Tap(self._install, "q/k/v projections (per-head inputs)")

    def _install(self) -> Callable[[], None]:
        def on_output(module, _args, output):
            replace = self._pending.get(module)
            return None if replace is None else replace(output)

        handles = [proj.register_forward_hook(on_output, prepend=True) for proj in (self.qkv.q, self.qkv.k, self.qkv.v)]
        return lambda: [handle.remove() for handle in handles] and None

    def _point(self, name: str, value: Tensor) -> Tensor:
        """`value` through the point `name`, unless its switch is off."""
        return self.points[name](value) if getattr(self.switches, SWITCHED_POINTS[name]) is not False else value

    def prepare(self, resid: Float[Tensor, "batch pos d_model"], reads: Callable[[Tensor], Tensor]) -> dict:
        """Feed the input points from `resid` (in TransformerLens's order, before the block's norm runs) and return
        what the projections must recompute (empty: nothing was edited), for `run`; `reads` maps a per-head input
        to what the projections read (the block's norm and input multiplier)."""
        qkv = self.qkv
        attn_in = self._point("hook_attn_in", fork(resid, qkv.n_heads))
        shared = _grouped(attn_in, qkv.n_kv, self.points["hook_attn_in"].name)
        inputs = {qkv.q: (self._point("hook_q_input", attn_in), qkv.n_heads),
                  qkv.k: (self._point("hook_k_input", shared.clone()), qkv.n_kv),
                  qkv.v: (self._point("hook_v_input", shared.clone()), qkv.n_kv)}
        pending = {}
        for projection, (value, n) in inputs.items():
            changed = (value != resid.unsqueeze(-2)).any(-1)  # [batch, pos, head]
            if bool(changed.any()):
                pending[projection] = _recompute(projection, reads(value), changed, n)
        return pending

    def run(self, call: Callable[[], Tensor], pending: dict) -> Tensor:
        """`call()` (the attention module's forward on the normed stream), its projections recomputing what
        `prepare` found edited."""
        if not pending:
            return call()
        self._pending = pending
        try:
            return call()
        finally:
            self._pending = {}


def _grouped(attn_in: Float[Tensor, "... head d_model"], n_kv: int, name: str) -> Float[Tensor, "... kv_head d_model"]:
    """The key/value input of each key-value head: the input of its group's heads, which must agree."""
    groups = attn_in.unflatten(-2, (n_kv, -1))
    first = groups[..., :1, :]
    if groups.shape[-2] > 1 and not torch.equal(groups, first.expand_as(groups)):
        raise ValueError(f"{name} gives heads of one grouped-query group different inputs, but they share their keys "
                         f"and values ({groups.shape[-2]} query heads per key-value head). Edit the heads of a group "
                         "alike, or switch on model.set_use_split_qkv_input(True) and edit hook_q_input (each head's "
                         "query) and hook_k_input / hook_v_input (each key-value head's).")
    return first.squeeze(-2)


def _recompute(projection: nn.Linear, normed: Float[Tensor, "... n d_model"], changed: Tensor, n: int):
    """The projection output with heads `changed` `[..., n]` recomputed from their own normed inputs."""

    def replace(output: Float[Tensor, "... out"]) -> Float[Tensor, "... out"]:
        weight = projection.weight.unflatten(0, (n, -1))  # [head, out_per_head, d_model]
        own = torch.einsum("...hd,hod->...ho", normed.to(weight.dtype), weight)
        if projection.bias is not None:
            own = own + projection.bias.unflatten(0, (n, -1))
        heads = output.unflatten(-1, (n, -1))
        return torch.where(changed[..., None], own.to(output.dtype), heads).flatten(-2)

    return replace


class MlpInput:
    """`hook_mlp_in` of one block: what its MLP's norm reads, `resid` through the point while it is hooked and not
    switched off (a module spliced in its place, an SAE, is called instead: `HookPoint.stand_in`)."""

    def __init__(self, point: HookPoint, switches: Switches):
        self.point, self.switches = point, switches

    def __call__(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        if not self.point.tap.active or self.switches.use_hook_mlp_in is False:
            return resid
        return self.point(resid.clone())
