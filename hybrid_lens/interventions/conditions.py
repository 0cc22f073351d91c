"""Conditions: lists of (selector, intervention) that compose, apply reversibly, and batch."""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .ablations import HookFn, Intervention, Mean, Noise, Patch, Resample, Scale, SkipLayer, Zero
from .selectors import Layers, Positions, Selector


def _restrict(fn: HookFn, selector: Selector, rows: slice | None) -> HookFn:
    """Apply `fn` only to batch `rows` and the selector's positions; leave the rest untouched."""

    def hook(value: Tensor, hook) -> Tensor:
        part = value if rows is None else value[rows]
        new = fn(part, hook)
        if new is part:
            return value
        pos_dim = 2 if hook.name.endswith("hook_pattern") else 1
        positions = selector.position_index(part.shape[pos_dim])
        if positions is not None:
            positions = positions.to(part.device)
            new = part.index_copy(pos_dim, positions, new.index_select(pos_dim, positions))
        if rows is None:
            return new
        out = value.clone()
        out[rows] = new
        return out

    return hook


@dataclass(frozen=True)
class Condition:
    """An experimental condition: interventions at selected places, applied together.

    Example:
        >>> ssm_off = Condition.of(Selector("ssm", layers=range(12)), Zero(), name="ssm_off_0-11")
        >>> with (ssm_off + patch_attn).apply(model):
        ...     logits = model(tokens)
    """

    items: tuple[tuple[Selector, Intervention], ...] = ()
    name: str = ""

    @classmethod
    def of(cls, selector: Selector, intervention: Intervention, name: str = "") -> Condition:
        return cls(((selector, intervention),), name)

    def __add__(self, other: Condition) -> Condition:
        name = "+".join(n for n in (self.name, other.name) if n)
        return Condition(self.items + other.items, name)

    def fwd_hooks(self, model, rows: slice | None = None) -> list[tuple[str, HookFn]]:
        """`(hook_name, fn)` pairs for `model` (runs any reference passes first).

        With `rows`, only those batch rows are changed (condition batching).
        """
        hooks = []
        for selector, intervention in self.items:
            targets = selector.targets(model.layer_mixers)
            for target in targets:
                for name in target.hook_names:
                    if name not in model.hook_dict:
                        model.resolve_hook_names(name)  # raises with the closest valid names
            intervention.prepare(model, targets)
            for target in targets:
                hooks += [(name, _restrict(fn, selector, rows)) for name, fn in intervention.hook_fns(target)]
        return hooks

    @contextmanager
    def apply(self, model):
        """Context manager: the condition is active inside, and every hook is gone on exit (also on errors)."""
        with model.hooks(fwd_hooks=self.fwd_hooks(model)):
            yield model

    def nnsight_editor(self, model):
        """A function to call inside an nnsight trace of `model.nnsight()` that applies this condition.

        Reference passes run now, outside the trace. Edits are applied in execution order.
        """
        hooks = sorted(self.fwd_hooks(model), key=lambda pair: model.hook_order[pair[0]])

        def edit(view) -> None:
            for name, fn in hooks:
                envoy = view
                for part in name.split("."):
                    envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                envoy.output = fn(envoy.output, model.hook_dict[name])

        return edit

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "items": [{"selector": s.to_dict(), "intervention": i.to_dict()} for s, i in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        items = tuple((Selector.from_dict(d["selector"]), Intervention.from_dict(d["intervention"])) for d in data["items"])
        return cls(items, data.get("name", ""))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Condition:
        return cls.from_dict(json.loads(text))


# --- one-line constructors ---------------------------------------------------------------------
def zero(kind: str, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Zero `kind` outputs (parallel zeroing), e.g. `zero("ssm")` turns off every SSM path."""
    return Condition.of(Selector(kind, layers, positions), Zero(), name or f"{kind}_zero")


def mixer_off(layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Zero every mixer of the selected layers but keep their MLPs (finer than a layer skip)."""
    return Condition.of(Selector("mixer", layers, positions), Zero(), name or "mixer_off")


def skip_layer(layers: Layers, positions: Positions = None, name: str = "") -> Condition:
    """The selected blocks become identities, `resid_post = resid_pre` (sequential skip)."""
    return Condition.of(Selector("block", layers, positions), SkipLayer(), name or "skip_layer")


def scale(kind: str, alpha: float, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    return Condition.of(Selector(kind, layers, positions), Scale(alpha), name or f"{kind}_scale{alpha:g}")


def noise(kind: str, sigma: float, seed: int = 0, layers: Layers = None, positions: Positions = None,
          name: str = "") -> Condition:
    return Condition.of(Selector(kind, layers, positions), Noise(sigma, seed), name or f"{kind}_noise{sigma:g}")


def mean(kind: str, reference, layers: Layers = None, positions: Positions = None, per_position: bool = False,
         name: str = "") -> Condition:
    """Mean-ablate `kind` with means over `reference` (texts or token ids)."""
    return Condition.of(Selector(kind, layers, positions), Mean(reference, per_position), name or f"{kind}_mean")


def resample(kind: str, reference, seed: int = 0, layers: Layers = None, positions: Positions = None,
             name: str = "") -> Condition:
    """Resample-ablate `kind` with activations of randomly drawn `reference` examples."""
    return Condition.of(Selector(kind, layers, positions), Resample(reference, seed), name or f"{kind}_resample")


def patch_from(source, kind: str, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Patch `kind` activations from a run on `source` (same shape as the input)."""
    return Condition.of(Selector(kind, layers, positions), Patch(source), name or f"{kind}_patch")


# --- condition batching ------------------------------------------------------------------------
@torch.no_grad()
def run_conditions(model, input, conditions: Sequence[Condition], attention_mask: Tensor | None = None) -> Tensor:
    """Run K conditions in one forward pass: the input is stacked K times along the batch and
    condition k acts on slice k only.

    Returns:
        `Float[Tensor, "K batch pos vocab"]`, equal to K separate runs.
    """
    tokens, mask = model._encode(input, attention_mask)
    batch = tokens.shape[0]
    hooks = []
    for k, condition in enumerate(conditions):
        hooks += condition.fwd_hooks(model, rows=slice(k * batch, (k + 1) * batch))
    repeat = len(conditions)
    stacked_mask = None if mask is None else mask.repeat(repeat, 1)
    with model.hooks(fwd_hooks=hooks):
        logits = model(tokens.repeat(repeat, 1), attention_mask=stacked_mask)
    return logits.view(repeat, batch, *logits.shape[1:])
