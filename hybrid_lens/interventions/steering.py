"""Steering: add a direction to any point (a residual point, a mixer or MLP output, an inner point)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..checks import check_number
from .base import Intervention
from .conditions import Condition
from .selectors import Layers, Positions, Selector, Target


def _nested_tuple(values):
    return tuple(_nested_tuple(v) for v in values) if isinstance(values, list) else float(values)


@dataclass(repr=False)
class Add(Intervention):
    """Add `coeff * direction` to the activation (activation steering, "ActAdd").

    Acts on each token alone, so it is `cache_safe`: `generate` keeps decoding with the cache, and a
    steered generation equals recomputing the whole sequence under it at every step.

    Args:
        direction: What is added, shaped like the activation's trailing dimensions (`[d_model]` at a
            residual point or a component output, `[head, d_head]` at a per-head inner point); it
            broadcasts as torch broadcasts (a one-entry direction shifts every entry). A tensor or
            (nested) lists of numbers; kept as nested tuples of floats, so it serialises to JSON.
        coeff: The scale of the direction.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> direction = torch.randn(model.cfg.d_model)
        >>> steer = Condition.of(Selector("resid_pre", layers=4), Add(direction, coeff=8.0))
        >>> with steer.apply(model):
        ...     steered = model.generate("In the beginning", max_new_tokens=4, do_sample=False, verbose=False)
        >>> Intervention.from_dict(Add([1.0, -2.0], 3.0).to_dict())
        Add(direction=<2 values>, coeff=3.0)
    """

    direction: Any
    coeff: float = 1.0
    type: ClassVar[str] = "add"
    cache_safe: ClassVar[bool] = True
    _vector: Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.coeff = check_number("Add coeff", self.coeff)
        try:
            vector = torch.as_tensor(self.direction.tolist() if isinstance(self.direction, Tensor) else self.direction,
                                     dtype=torch.float64)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ValueError(f"Add direction must be numbers shaped like the activation's last dimensions ({err}).") from None
        if vector.ndim == 0 or vector.numel() == 0 or not bool(torch.isfinite(vector).all()):
            raise ValueError(f"Add direction must be a non-empty vector (or array) of finite numbers, got shape "
                             f"{tuple(vector.shape)}.")
        self.direction = _nested_tuple(vector.tolist())
        self._vector = vector

    def __repr__(self) -> str:
        return f"Add(direction=<{self._vector.numel()} values>, coeff={self.coeff!r})"

    def hook_fns(self, target: Target):
        """One hook per point of `target` (refused for a whole block, which has two).

        Examples:
            >>> [name for name, fn in Add([1.0]).hook_fns(Target(2, "resid_post"))]
            ['blocks.2.hook_resid_post']
        """
        if target.kind == "block" and target.point is None:
            raise ValueError("add acts on one point: select a residual point (resid_pre / resid_mid / resid_post), "
                             "a component output or an inner point, not a whole block.")
        return [(name, self.replace) for name in target.hook_names]

    def replace(self, value: Tensor, hook) -> Tensor:
        """`value + coeff * direction` (in `value`'s dtype); `ValueError` if the direction does not fit.

        Examples:
            >>> Add([1.0, 2.0], coeff=0.5).replace(torch.zeros(1, 2, 2), hook=None)
            tensor([[[0.5000, 1.0000],
                     [0.5000, 1.0000]]])
        """
        vector = self._vector
        if vector.ndim > value.ndim - 2 or any(d not in (1, v) for d, v in zip(vector.shape[::-1], value.shape[::-1])):
            where = f" at {hook.name}" if hook is not None else ""
            raise ValueError(f"Add direction has shape {tuple(vector.shape)}; the activation{where} is "
                             f"{tuple(value.shape)} ([batch, pos, ...]): give a direction of shape "
                             f"{tuple(value.shape[2:])}.")
        return value + (self.coeff * vector).to(device=value.device, dtype=value.dtype)

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): shift every entry of the residual stream entering block 1
        by 4 (a one-entry direction broadcasts over `d_model`)."""
        return Selector("resid_pre", layers=1), cls([1.0], coeff=4.0)


def add(kind: str, direction, coeff: float = 1.0, layers: Layers = None, positions: Positions = None,
        point: str | None = None, name: str = "") -> Condition:
    """Steer: add `coeff * direction` to `kind` (a residual point, a component output, or a mixer's inner
    `point`) at the selected layers and positions. See `Add`; `name` defaults to `{kind}_add{coeff}`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache(["I love it", "I hate it"], names_filter="blocks.4.hook_resid_pre")
        >>> love, hate = cache["blocks.4.hook_resid_pre"].mean(1)
        >>> with add("resid_pre", love - hate, coeff=4.0, layers=4).apply(model):
        ...     text = model.generate("I think", max_new_tokens=5, do_sample=False, verbose=False)
        >>> add("resid_pre", love - hate, coeff=4.0, layers=4).name
        'resid_pre_add4'
    """
    return Condition.of(Selector(kind, layers, positions, point), Add(direction, coeff), name or f"{kind}_add{coeff:g}")
