"""Taps: the switchable plumbing that feeds inner hook points from inside `transformers` mixers.

A tap is installed only while one of its hook points has a hook (or a trace asks for all of
them), so inner points cost nothing when unused. Four kinds:

- `output_tap`: a torch forward hook on a submodule (e.g. `q_proj`) that splits its output into
  named views, passes each through its hook point and, if any changed, reassembles the output.
- `input_tap`: the same on a submodule's first positional input (e.g. the `o_proj` input, `z`).
- `eager_forward_tap`: swaps in an instrumented mixer forward that exposes intermediates
  (post-conv q/k/v, x/B/C/dt, ...) which the `transformers` forward computes inline.
- `pattern_mode_tap`: switches attention to an eager implementation that passes the softmax pattern
  through `hook_pattern` (sdpa/flash hide the pattern; they stay in use while nobody asks).

The eager forwards of the linear mixers also feed `hook_state` (`add_state_point`, the recurrence
split at chosen positions) and their implicit attention `hook_pattern` (`mixer_output`).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from ..hook_points import HookPoint, Tap, TappedHookPoint
from .state import StateHookPoint

class MixerHooks(nn.Module):
    """Inner hook points of one mixer, MLP or norm (e.g. `blocks.3.attn.hook_q`), all fed by taps, and
    what its kind declares about the `transformers` module behind it.

    Attributes:
        heads: How its output projection reads per-head values (`mixers.heads.Heads`, declared by the
            kind's `add_points`), which feeds `hook_result`; None for a mixer without heads.
        neurons: The neurons of a dense MLP (`mixers.mlp.Neurons`), in `blocks.{i}.mlp` only; None otherwise.
        weights: Its weights in TransformerLens's layout (`mixers.weights.WeightViews`), read as
            attributes: `blocks[3].attn.W_Q`, `blocks[0].mlp.W_out`; None where none are declared.
        qkv: The query, key and value projections of a softmax attention (`mixers.inputs.QKV`), which feed the
            block's per-head input points (`hook_attn_in`, `hook_q_input`, ...); None for any other mixer.
        runs: For an MLP, what calling the container runs (`blocks[i].mlp(normed)`, TransformerLens's MLP
            component): the block's MLP on a normed input `[..., d_model]`, output multiplier included.
    """

    heads = None
    neurons = None
    weights = None
    qkv = None
    runs = None

    def forward(self, *args, **kwargs):
        """`blocks[i].mlp(normed)`: the block's MLP on `normed` (`Float[Tensor, "... d_model"]`), as
        TransformerLens's MLP component is called; a mixer's container cannot be called (its `transformers` module
        needs the decoder layer's position embeddings, mask and cache).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> model.blocks[0].mlp(torch.zeros(1, 2, 128)).shape
            torch.Size([1, 2, 128])
        """
        if self.runs is None:
            name = getattr(self, "name", None) or type(self).__name__
            raise TypeError(f"{name} holds hook points and weight views; it runs as a module only for a block's MLP "
                            "(TransformerLens's `blocks[i].mlp(normed)`). A mixer's transformers module needs its "
                            "decoder layer's position embeddings, mask and cache: run the model with hooks instead.")
        return self.runs(*args, **kwargs)

    def add(self, name: str, tap: Tap) -> TappedHookPoint:
        point = TappedHookPoint(tap)
        self.add_module(name, point)
        return point

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            weights = self.__dict__.get("weights")
            if weights is None or not (name in weights or name in weights.absent):
                raise
        try:
            return weights[name]
        except KeyError as error:
            raise AttributeError(error.args[0]) from None


def _forward_attribute(module: nn.Module) -> str:
    """The attribute holding what `module` runs: accelerate's inner forward under its dispatch hooks."""
    return "_old_forward" if hasattr(module, "_hf_hook") and "_old_forward" in vars(module) else "forward"


def forward_of(module: nn.Module) -> Callable:
    """The forward `module` runs now (what `replace_forward` replaces), e.g. to call it from a new one."""
    return getattr(module, _forward_attribute(module))


def replace_forward(module: nn.Module, forward: Callable) -> Callable[[], None]:
    """Make `module` run `forward`; returns a function that restores the previous forward.

    Under accelerate's dispatch hooks (`device_map=...`, offloading) the hook's inner forward is
    replaced, so the hook still moves weights and inputs to the execution device around it.
    """
    attribute = _forward_attribute(module)
    previous = vars(module).get(attribute)  # None: the class's own forward
    setattr(module, attribute, forward)

    def restore() -> None:
        if previous is None:
            delattr(module, attribute)
        else:
            setattr(module, attribute, previous)

    return restore


Split = Callable[[torch.Tensor], dict[str, torch.Tensor]]
Join = Callable[[dict[str, torch.Tensor], torch.Tensor], torch.Tensor]


def route(points: dict[str, HookPoint], parts: dict[str, torch.Tensor]) -> bool:
    """Pass each part through its hook point in place; return whether any part was replaced."""
    changed = False
    for name, point in points.items():
        new = point(parts[name])
        if new is not parts[name]:
            parts[name] = new
            changed = True
    return changed


def output_tap(hooks: MixerHooks, module: nn.Module, split: Split, join: Join, names: list[str], where: str) -> Tap:
    """Hook points `names` on views of `module`'s output."""
    points: dict[str, HookPoint] = {}

    def on_output(_module, _args, output):
        parts = split(output)
        return join(parts, output) if route(points, parts) else None

    tap = Tap(lambda: module.register_forward_hook(on_output).remove, where)
    points.update({name: hooks.add(name, tap) for name in names})
    return tap


def input_tap(hooks: MixerHooks, module: nn.Module, split: Split, join: Join, names: list[str], where: str) -> Tap:
    """Hook points `names` on views of `module`'s first positional input."""
    points: dict[str, HookPoint] = {}

    def on_input(_module, args):
        parts = split(args[0])
        return (join(parts, args[0]), *args[1:]) if route(points, parts) else None

    tap = Tap(lambda: module.register_forward_pre_hook(on_input).remove, where)
    points.update({name: hooks.add(name, tap) for name in names})
    return tap


def single(name: str, n_heads: int | None) -> tuple[Split, Join]:
    """Split/join for one hook point on a (per-head, if `n_heads`) view of a tensor."""

    def split(x):
        return {name: x.unflatten(-1, (n_heads, -1)) if n_heads else x}

    def join(parts, x):
        return parts[name].reshape(x.shape)

    return split, join


def add_projection_point(hooks: MixerHooks, module: nn.Module, name: str, n_heads: int | None, where: str) -> Tap:
    """One hook point on a projection's output, viewed per head when `n_heads` is given."""
    split, join = single(name, n_heads)
    return output_tap(hooks, module, split, join, [name], where)


def eager_forward_tap(hooks: MixerHooks, module: nn.Module, forward: Callable, names: list[str], where: str) -> Tap:
    """Hook points `names` fed by `forward`, an instrumented copy of `module`'s forward, used only while needed."""

    def install():
        return replace_forward(module, forward)

    tap = Tap(install, where, with_cache=False)  # the eager forwards are written for whole sequences
    for name in names:
        hooks.add(name, tap)
    return tap


def add_state_point(hooks: MixerHooks, eager: Tap) -> StateHookPoint:
    """`hook_state` of a recurrent mixer, fed by its eager forward (`eager`)."""
    point = StateHookPoint(eager)
    hooks.add_module("hook_state", point)
    return point


def recurrent_eager_tap(hooks: MixerHooks, module: nn.Module, forward: Callable, names: list[str], where: str) -> Tap:
    """`eager_forward_tap` of a recurrent mixer, with its `hook_state` point fed by the same forward."""
    eager = eager_forward_tap(hooks, module, forward, names, where)
    add_state_point(hooks, eager)
    return eager


def refuse_cache(cache, points: str) -> None:
    """Inner points of a recurrent mixer's eager forward exist only for runs without a cache."""
    if cache is not None:
        raise NotImplementedError(f"Inner {points} hook points need a run without a cache: pass use_cache=False.")


def mixer_output(hooks: MixerHooks, recurrence: Callable[[], torch.Tensor], pattern: Callable[[], torch.Tensor],
                 apply: Callable[[torch.Tensor], torch.Tensor], pattern_mode: Tap) -> torch.Tensor:
    """A linear mixer's scan output, with its `hook_pattern` (implicit attention) in the loop.

    `recurrence()` runs the `transformers` scan (split at `hook_state` positions); `pattern()`, the
    implicit attention matrix, is computed only while `hook_pattern` has a hook or the model-wide
    `pattern_mode` is switched on for a trace (`model.nnsight(inner_points=True, patterns=True)`).
    Batch rows whose matrix a hook edited get `apply(edited)`, the output of the edited matrix; the other rows keep
    the recurrence (so knockouts and state patches batch together). A row whose matrix and state
    were both edited is refused: the matrix form starts from a zero state.
    """
    point = hooks.hook_pattern
    if not point.fwd_hooks and not pattern_mode.always_on:
        return recurrence()
    value = pattern()
    new = point(value)
    if new is value:
        return recurrence()
    edited = (new != value).flatten(1).any(1)
    output = apply(new)
    state = getattr(hooks, "hook_state", None)  # None: a mixer without a recurrent state (short convolution)
    if bool(edited.all()) and (state is None or not state.wanted()):
        return output
    plain = recurrence()
    changed = None if state is None else state.changed_rows
    if changed is not None and bool((edited & changed.to(edited.device)).any()):
        raise ValueError(f"{point.name} and {state.name} were both edited in the same batch rows; the implicit "
                         "attention form starts from a zero state, so edit one of them per row.")
    return torch.where(edited.view(-1, *[1] * (output.ndim - 1)), output, plain.to(output.dtype)).to(plain.dtype)


# --- attention pattern -------------------------------------------------------------------------

PATTERN_ATTENTION = "hybrid_lens_eager"
EAGER_POINTS = ("hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern")  # fed by the eager path, in order
_PATTERN_POINTS: "weakref.WeakKeyDictionary[nn.Module, MixerHooks]" = weakref.WeakKeyDictionary()


def _per_position(point: HookPoint, x: torch.Tensor) -> torch.Tensor:
    """Pass `[batch, head, pos, d_head]` through `point` as `[batch, pos, head, d_head]` (TransformerLens's layout)."""
    value = x.transpose(1, 2)
    new = point(value)
    return x if new is value else new.transpose(1, 2)


def _scores(point: HookPoint, scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Pass masked attention scores through `point` with their masked entries at -inf, as TransformerLens
    shows them; a replaced value is used with -inf entries at the dtype's minimum, as the mask's are."""
    lowest = torch.finfo(scores.dtype).min
    shown = scores if mask is None else scores.masked_fill(mask == torch.finfo(mask.dtype).min, float("-inf"))
    new = point(shown)
    return scores if new is shown else new.clamp(min=lowest)


def _attention_with_pattern_hook(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **_):
    """Eager attention whose rotated queries and keys, scores and softmax pattern are hook points."""
    hooks = _PATTERN_POINTS[module]
    query = _per_position(hooks.hook_rot_q, query)
    key = _per_position(hooks.hook_rot_k, key)
    groups = query.shape[1] // key.shape[1]
    key = key.repeat_interleave(groups, dim=1)
    value = value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    mask = None if attention_mask is None else attention_mask[:, :, :, : key.shape[-2]]
    if mask is not None:
        scores = scores + mask
    scores = _scores(hooks.hook_attn_scores, scores, mask)
    pattern = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    pattern = hooks.hook_pattern(pattern)
    pattern = nn.functional.dropout(pattern, p=dropout, training=module.training)
    return torch.matmul(pattern, value).transpose(1, 2).contiguous(), pattern


AttentionInterface.register(PATTERN_ATTENTION, _attention_with_pattern_hook)
AttentionMaskInterface.register(PATTERN_ATTENTION, eager_mask)


def pattern_mode_tap(config) -> Tap:
    """A model-wide tap: while active, every softmax-attention layer runs the eager pattern path."""

    def install():
        previous = config._attn_implementation
        config._attn_implementation = PATTERN_ATTENTION

        def remove():
            config._attn_implementation = previous

        return remove

    return Tap(install, "eager attention with hook_pattern (replaces sdpa while a pattern hook is active)")


def add_pattern_points(hooks: MixerHooks, attention: nn.Module, mode: Tap) -> None:
    """The points of one attention module fed by the model-wide eager pattern path: `hook_rot_q`,
    `hook_rot_k` `[batch, pos, head, d_head]` (queries and keys as the scores read them: after any q/k
    norm and rotary embedding, keys spanning a cache's positions too), `hook_attn_scores`
    `[batch, head, query_pos, key_pos]` (scaled, masked scores: -inf where masked) and `hook_pattern`."""
    for name in EAGER_POINTS:
        hooks.add(name, mode)
    _PATTERN_POINTS[attention] = hooks
