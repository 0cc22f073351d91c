"""Copies of a wrapped `transformers` model without the wrapper: what wrapping (and an nnsight trace)
added to its modules is left out of the copy, and the model itself is not touched.

Wrapping puts hybrid-lens functions on the model's modules (block forwards, taps' forwards and torch
hooks, `expand_kv`), all of which call the wrapper's hook points; an nnsight view puts its own objects
there. A deep copy would carry them, and run the original's hook points. `plain_copy` copies the
model with those left out (nnsight's objects are never copied; ours, functions, are removed from the
copy), so the copy is the plain model, ready to be wrapped anew (`HookedHybrid`'s own copies do that).
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable, Iterable
from contextlib import ExitStack

from torch import nn

from ..hook_points import Tap

HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_LEFT_OUT = object()  # what a copy holds where an nnsight object was: removed from the copy
OWN_COPIERS = ("__deepcopy__", "__reduce_ex__")


def is_added(value) -> bool:
    """Whether `value`, an attribute or hook of a module, was added by hybrid-lens (a function of ours) or
    by nnsight (one of its objects) rather than being the model's own.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> layer = model.hf_model.model.layers[0]
        >>> is_added(vars(layer)["forward"]), is_added(layer.self_attn.q_proj.weight)
        (True, False)
    """
    if isinstance(value, types.FunctionType):
        return value.__module__.startswith("hybrid_lens.")
    return type(value).__module__.startswith("nnsight")


def plain_copy(model, memo: dict | None = None, switches: Iterable[Tap] = (), scanned: Iterable[nn.Module] = ()):
    """A deep copy of `model` (any object holding wrapped modules) without what `is_added` names, with the
    model-wide `switches` (the attention pattern mode, a config setting) off during the copy.

    Args:
        model: What to copy: a `transformers` model, or a tuple or dict of parts holding modules.
        memo: `copy.deepcopy`'s memo.
        switches: Taps whose plumbing is a setting of the copied objects (paused while copying).
        scanned: The modules whose added objects to leave out (default: `model`'s own).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> plain = plain_copy(model.hf_model)
        >>> any(is_added(value) for module in plain.modules() for value in vars(module).values())
        False
    """
    memo = {} if memo is None else memo
    modules = list(scanned) or (list(model.modules()) if isinstance(model, nn.Module) else [])
    for module in modules:
        for value in vars(module).values():
            if is_added(value) and not isinstance(value, types.FunctionType):
                memo[id(value)] = _LEFT_OUT  # never copied (an nnsight object may refer to the whole tree)
    copiers = [(module, {name: vars(module).pop(name) for name in OWN_COPIERS if name in vars(module)})
               for module in modules]
    try:
        with ExitStack() as paused:
            for switch in switches:
                paused.enter_context(switch.paused())
            twin = copy.deepcopy(model, memo)
    finally:
        for module, popped in copiers:
            vars(module).update(popped)
    for module in _modules_in(twin):
        _leave_out(module)
    return twin


def copy_plainly(hf_model: nn.Module, pattern_mode: Tap) -> Callable[[], None]:
    """Make `copy.deepcopy(hf_model)` and `pickle` of the wrapped model give the plain model (`plain_copy`);
    returns the function that undoes it (`Wrapping.unwrap`).

    Examples:
        >>> import copy
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> plain = copy.deepcopy(model.hf_model)
        >>> HookedHybrid.from_hf(plain).n_layers                # not wrapped: it can be wrapped anew
        8
    """
    def deepcopy(memo=None):
        return plain_copy(hf_model, memo, (pattern_mode,))

    def reduce_ex(protocol):
        return deepcopy().__reduce_ex__(protocol)

    vars(hf_model).update(__deepcopy__=deepcopy, __reduce_ex__=reduce_ex)

    def undo() -> None:
        for name in OWN_COPIERS:
            vars(hf_model).pop(name, None)

    return undo


def _modules_in(obj) -> list[nn.Module]:
    if isinstance(obj, nn.Module):
        return list(obj.modules())
    if isinstance(obj, dict):
        return [m for value in obj.values() for m in _modules_in(value)]
    if isinstance(obj, (list, tuple)):
        return [m for value in obj for m in _modules_in(value)]
    return []


def _leave_out(module: nn.Module) -> None:
    """Remove from a copied module what was added to the original (attributes and torch hooks)."""
    for name, value in list(vars(module).items()):
        if value is _LEFT_OUT or is_added(value):
            del vars(module)[name]
            if name == "_old_forward":  # under accelerate's dispatch hook: the class's forward again
                module._old_forward = types.MethodType(type(module).forward, module)
    removed = set()
    for name in HOOK_DICTS:
        hooks = vars(module).get(name) or {}
        for key in [key for key, value in hooks.items() if value is _LEFT_OUT or is_added(value)]:
            del hooks[key]
            removed.add(key)
    for name, value in vars(module).items():  # the with_kwargs / always_called records of removed hooks
        if name.startswith(("_forward_hooks_", "_forward_pre_hooks_")) and isinstance(value, dict):
            for key in removed & set(value):
                del value[key]
