"""Conditions: lists of (selector, intervention) that compose and apply reversibly (batching: `sweep`)."""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from ..forward_state import ForwardState, current_state, state_of_call
from ..tokens import real_positions
from .ablations import Noise, Scale, SkipLayer, Zero
from .base import HookFn, Intervention
from .reference import Mean, Patch, Resample
from .selectors import Layers, Positions, Selector
from .validation import check_items


def _restrict(fn: HookFn, selector: Selector, rows: slice | None, model) -> HookFn:
    """Apply `fn` only to batch `rows` and the selector's positions (counted in real tokens per row,
    see `Selector.position_mask`); leave the rest untouched. `fn` runs in the forward state of those
    rows, so `row_positions()` gives their real-token positions."""

    def hook(value: Tensor, hook) -> Tensor:
        part = value if rows is None else value[rows]
        pos_dim = 2 if hook.name.endswith("hook_pattern") else 1
        state = current_state()
        if state is None or not state.running or state.model is not model:  # outside a forward of `model`
            state = ForwardState(model, running=True)
        if state.positions is None or state.positions.shape[-1] != part.shape[pos_dim]:
            positions = real_positions(None, value.shape[0], part.shape[pos_dim]).to(part.device)
            state = replace(state, positions=positions, prompt_lengths=None)
        state = state.restricted(rows)
        with state.active():
            new = fn(part, hook)
        if new is part:
            return value
        picked = selector.position_mask(state.positions, state.prompt_lengths)
        if picked is not None:
            shape = [part.shape[0], *[1] * (pos_dim - 1), part.shape[pos_dim], *[1] * (part.ndim - pos_dim - 1)]
            new = torch.where(picked.view(shape), new, part)
        if rows is None:
            return new
        out = value.clone()
        out[rows] = new
        return out

    hook.__wrapped__ = fn  # lets a hook point read attributes of `fn` (StateHookPoint: state_positions)
    return hook


@dataclass(frozen=True)
class Condition:
    """An experimental condition: interventions at selected places, applied together.

    Conditions are immutable and add up: `a + b` applies the interventions of both (their names
    joined by `+`). The one-line constructors below (`zero`, `skip_layer`, `mean`, ...) build the
    common ones.

    Attributes:
        items: `(selector, intervention)` pairs, applied in this order.
        name: a label for results tables (`""` for none).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> ssm_off = Condition.of(Selector("ssm", layers=range(4)), Zero(), name="ssm_off_0-3")
        >>> both = ssm_off + scale("attn", 0.5, layers="late")
        >>> both.name
        'ssm_off_0-3+attn_scale0.5'
        >>> with both.apply(model):
        ...     logits = model("In the beginning God created")
        >>> logits.shape                                 # [batch, pos, vocab]
        torch.Size([1, 6, 4096])
    """

    items: tuple[tuple[Selector, Intervention], ...] = ()
    name: str = ""

    def __post_init__(self):
        object.__setattr__(self, "items", check_items(self.items))
        if not isinstance(self.name, str):
            raise ValueError(f"A condition's name must be a string (a label for results tables), not {self.name!r}.")

    @classmethod
    def of(cls, selector: Selector, intervention: Intervention, name: str = "") -> Condition:
        """A condition of one intervention at one selection.

        Examples:
            >>> condition = Condition.of(Selector("attn", layers=[3, 7]), Scale(0.5), name="attn_half")
            >>> condition.items[0]
            (Selector(kind='attn', layers=[3, 7], positions=None, point=None), Scale(alpha=0.5))
        """
        return cls(((selector, intervention),), name)

    def __add__(self, other: Condition) -> Condition:
        if not isinstance(other, Condition):
            return NotImplemented  # Python's TypeError names both types
        name = "+".join(n for n in (self.name, other.name) if n)
        return Condition(self.items + other.items, name)

    @property
    def cache_safe(self) -> bool:
        """Whether the condition acts on each token alone, so a KV/state cache gives the same result
        as recomputing the whole sequence at every step: every intervention is `cache_safe` (zero,
        scale, skip_layer, a global mean) and acts at all positions of block-level points
        (positional selectors and inner points are not).

        Examples:
            >>> zero("ssm").cache_safe, skip_layer([2, 3]).cache_safe, Condition().cache_safe
            (True, True, True)
            >>> zero("attn", positions=slice(0, 4)).cache_safe, noise("ssm", 0.1).cache_safe
            (False, False)
        """
        return all(selector.positions is None and selector.point is None and intervention.cache_safe
                   for selector, intervention in self.items)

    def fwd_hooks(self, model, rows: slice | None = None) -> list[tuple[str, HookFn]]:
        """`(hook_name, fn)` pairs for `model` (runs any reference passes first).

        With `rows`, only those batch rows are changed (condition batching). The pairs suit
        `model.run_with_hooks(..., fwd_hooks=...)` and `model.hooks(fwd_hooks=...)`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> [name for name, fn in zero("ssm", layers=[0, 5]).fwd_hooks(model)]
            ['blocks.0.hook_ssm_out', 'blocks.5.hook_ssm_out']
            >>> hooks = skip_layer(2).fwd_hooks(model)
            >>> logits = model.run_with_hooks("In the beginning", fwd_hooks=hooks)
        """
        hooks = []
        for selector, intervention in self.items:
            targets = selector.targets(model.layout)
            for target in targets:
                for name in target.hook_names:
                    if name not in model.hook_dict:
                        model.resolve_hook_names(name)  # raises with the closest valid names
            if intervention.needs_reference:
                intervention.prepare(model, targets)
            for target in targets:
                for name, fn in intervention.hook_fns(target):
                    hook = _restrict(fn, selector, rows, model)
                    hook.cache_safe = bool(intervention.cache_safe)  # read by generation (`hook_points.cache_safe`)
                    hooks.append((name, hook))
        return hooks

    @contextmanager
    def apply(self, model):
        """Context manager: the condition is active inside, and every hook is gone on exit (also on errors).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> with zero("ssm").apply(model):
            ...     _, cache = model.run_with_cache("In the beginning")
            >>> bool(cache["blocks.4.hook_ssm_out"].eq(0).all())
            True
        """
        with model.hooks(fwd_hooks=self.fwd_hooks(model)):
            yield model

    def nnsight_editor(self, model):
        """A function to call inside an nnsight trace of `model.nnsight()` that applies this condition.

        Reference passes run now, outside the trace. Edits are applied in execution order, in the
        forward state of the traced call (read from the trace's inputs: nnsight runs the edits apart
        from the model's own pass), so positions count real tokens per row as in a hooked run.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> edit = zero("ssm", layers=3).nnsight_editor(model)
            >>> view = model.nnsight()
            >>> with view.trace("In the beginning"):
            ...     edit(view)
            ...     ssm3 = view.blocks[3].hook_ssm_out.output.save()
            >>> bool(ssm3.eq(0).all())
            True
        """
        hooks = sorted(self.fwd_hooks(model), key=lambda pair: model.hook_order[pair[0]])

        def edit(view) -> None:
            args, kwargs = view.inputs
            with state_of_call(model, args, kwargs).active():
                for name, fn in hooks:
                    envoy = view
                    for part in name.split("."):
                        envoy = envoy[int(part)] if part.isdigit() else getattr(envoy, part)
                    envoy.output = fn(envoy.output, model.hook_dict[name])

        return edit

    # --- serialisation ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of the name and every (selector, intervention) pair; see `from_dict`.

        Examples:
            >>> zero("ssm", layers=3).to_dict()
            {'name': 'ssm_zero',
             'items': [{'selector': {'kind': 'ssm', 'layers': 3, 'positions': None, 'point': None},
                        'intervention': {'type': 'zero'}}]}
        """
        return {"name": self.name, "items": [{"selector": s.to_dict(), "intervention": i.to_dict()} for s, i in self.items]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Condition:
        """The condition of a `to_dict` dict.

        Examples:
            >>> condition = skip_layer((2, 5)) + scale("attn", 2.0)
            >>> Condition.from_dict(condition.to_dict()) == condition
            True
        """
        if not isinstance(data, dict) or set(data) - {"name", "items"} or not isinstance(data.get("items"), list):
            raise ValueError(f"A condition dict is {{'name': str, 'items': [{{'selector': ..., 'intervention': ...}}]}}; "
                             f"got {data!r:.200}.")
        for item in data["items"]:
            if not isinstance(item, dict) or set(item) != {"selector", "intervention"}:
                raise ValueError(f"Each condition item has exactly the keys 'selector' and 'intervention'; got {item!r:.200}.")
        items = tuple((Selector.from_dict(d["selector"]), Intervention.from_dict(d["intervention"])) for d in data["items"])
        return cls(items, data.get("name", ""))

    def to_json(self) -> str:
        """`to_dict` as a JSON string (how the study store keeps conditions).

        Examples:
            >>> zero("attn", layers="early").to_json()
            '{"name": "attn_zero", "items": [{"selector": {"kind": "attn", "layers": "early", ...}}]}'
        """
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> Condition:
        """The condition of a `to_json` string.

        Examples:
            >>> condition = noise("resid_pre", 0.1, seed=1, layers=0)
            >>> Condition.from_json(condition.to_json()) == condition
            True
        """
        return cls.from_dict(json.loads(text))


# --- one-line constructors ---------------------------------------------------------------------
def zero(kind: str, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Zero `kind` outputs (parallel zeroing), e.g. `zero("ssm")` turns off every SSM path.

    `kind`, `layers` and `positions` are as in `Selector`; `name` defaults to `{kind}_zero`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with zero("ssm", layers="early").apply(model):
        ...     logits = model("In the beginning God created")
        >>> zero("attn", layers=[0, 1], positions=slice(0, 2)).name
        'attn_zero'
    """
    return Condition.of(Selector(kind, layers, positions), Zero(), name or f"{kind}_zero")


def mixer_off(layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Zero every mixer of the selected layers but keep their MLPs (finer than a layer skip).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> [name for name, fn in mixer_off(layers=3).fwd_hooks(model)]
        ['blocks.3.hook_ssm_out', 'blocks.3.hook_attn_out']
    """
    return Condition.of(Selector("mixer", layers, positions), Zero(), name or "mixer_off")


def skip_layer(layers: Layers, positions: Positions = None, name: str = "") -> Condition:
    """The selected blocks become identities, `resid_post = resid_pre` (sequential skip).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> with skip_layer([3, 7]).apply(model):
        ...     _, cache = model.run_with_cache("In the beginning")
        >>> torch.equal(cache["resid_post", 3], cache["resid_pre", 3])
        True
    """
    return Condition.of(Selector("block", layers, positions), SkipLayer(), name or "skip_layer")


def ablation_of(kind: str, layers: Layers = None, name: str = "") -> Condition:
    """The standard ablation of a component kind: `block` skips whole blocks (`skip_layer`,
    sequential skip); any other kind is zeroed (`zero`, parallel zeroing; `mixer`: every mixer).

    Examples:
        >>> ablation_of("block", [3, 7]).items
        ((Selector(kind='block', layers=[3, 7], positions=None, point=None), SkipLayer()),)
        >>> ablation_of("ssm", 3).name, ablation_of("block", 3).name
        ('ssm_zero', 'skip_layer')
    """
    if kind == "block":
        return skip_layer(layers, name=name)
    return zero(kind, layers, name=name)


def scale(kind: str, alpha: float, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Multiply `kind` outputs by `alpha` (0 is `zero`, 1 the clean model).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with scale("attn", 2.0, layers="late").apply(model):
        ...     logits = model("In the beginning God created")
        >>> scale("ssm", 0.5).name
        'ssm_scale0.5'
    """
    return Condition.of(Selector(kind, layers, positions), Scale(alpha), name or f"{kind}_scale{alpha:g}")


def noise(kind: str, sigma: float, seed: int = 0, layers: Layers = None, positions: Positions = None,
          name: str = "") -> Condition:
    """Add Gaussian noise of standard deviation `sigma` to `kind` outputs (seeded, reproducible).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> condition = noise("resid_pre", 0.1, seed=0, layers=0)
        >>> with condition.apply(model):
        ...     first = model("In the beginning")
        >>> with condition.apply(model):
        ...     second = model("In the beginning")
        >>> torch.equal(first, second)
        True
    """
    return Condition.of(Selector(kind, layers, positions), Noise(sigma, seed), name or f"{kind}_noise{sigma:g}")


def mean(kind: str, reference, layers: Layers = None, positions: Positions = None, per_position: bool = False,
         name: str = "") -> Condition:
    """Mean-ablate `kind` with means over `reference` (texts or token ids).

    `per_position`: replace with the mean at each position instead of the mean over all tokens.
    The means are computed by a reference pass when the condition is applied.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> reference = ["And God said", "In the beginning", "Let there be light"]
        >>> with mean("ssm", reference, layers=[2, 3]).apply(model):
        ...     logits = model("And the earth was without form")
    """
    return Condition.of(Selector(kind, layers, positions), Mean(reference, per_position), name or f"{kind}_mean")


def resample(kind: str, reference, seed: int = 0, layers: Layers = None, positions: Positions = None,
             name: str = "") -> Condition:
    """Resample-ablate `kind` with activations of randomly drawn `reference` examples.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> reference = ["And God said unto Moses", "In the beginning God created"]
        >>> with resample("attn", reference, seed=0, layers=2).apply(model):
        ...     logits = model("And the earth was without")
    """
    return Condition.of(Selector(kind, layers, positions), Resample(reference, seed), name or f"{kind}_resample")


def patch_from(source, kind: str, layers: Layers = None, positions: Positions = None, name: str = "") -> Condition:
    """Patch `kind` activations from a run on `source` (same shape as the input).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> clean, corrupt = "And God said unto Moses", "And God said unto Aaron"
        >>> with patch_from(clean, "resid_pre", layers=6, positions=-1).apply(model):
        ...     patched = model(corrupt)
        >>> patched.shape                                # [batch, pos, vocab]
        torch.Size([1, 6, 4096])
    """
    return Condition.of(Selector(kind, layers, positions), Patch(source), name or f"{kind}_patch")

