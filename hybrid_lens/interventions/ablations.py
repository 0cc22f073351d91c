"""Interventions as hook functions with a small JSON description.

Each intervention turns a `Target` into `(hook_name, fn)` pairs where `fn(value, hook) -> value`
maps the activation to its replacement. Position masks and batch rows are applied around `fn` by
the `Condition` that holds it, so every intervention works on any positions and inside batched
conditions. Interventions that need reference activations (mean, resample, patch) compute them in
`prepare`, before any hook is attached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import Tensor

from .selectors import Target

HookFn = Callable[[Tensor, Any], Tensor]
REGISTRY: dict[str, type[Intervention]] = {}


class Intervention:
    """Base class: subclasses are dataclasses with a `type` tag and implement `hook_fns`."""

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            REGISTRY[cls.type] = cls

    def prepare(self, model, targets: list[Target]) -> None:
        """Compute reference activations needed by `hook_fns` (default: nothing)."""

    def hook_fns(self, target: Target) -> list[tuple[str, HookFn]]:
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """`{"type": ..., **parameters}`; tensors (reference token ids) become nested lists."""
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data = {k: v.tolist() if isinstance(v, Tensor) else v for k, v in data.items()}
        return {"type": self.type, **data}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Intervention:
        data = dict(data)
        kind = data.pop("type")
        if kind not in REGISTRY:
            raise ValueError(f"Unknown intervention type {kind!r}; known: {sorted(REGISTRY)}.")
        return REGISTRY[kind](**data)


class _Elementwise(Intervention):
    def hook_fns(self, target):
        return [(name, self.replace) for name in target.hook_names]

    def replace(self, value: Tensor, hook) -> Tensor:
        raise NotImplementedError


@dataclass
class Zero(_Elementwise):
    """Replace the activation by zeros (the paper's parallel zeroing when applied to a mixer output)."""

    type: ClassVar[str] = "zero"

    def replace(self, value, hook):
        return torch.zeros_like(value)


@dataclass
class Scale(_Elementwise):
    """Multiply the activation by `alpha`."""

    alpha: float
    type: ClassVar[str] = "scale"

    def replace(self, value, hook):
        return self.alpha * value


@dataclass
class Noise(_Elementwise):
    """Add Gaussian noise of standard deviation `sigma`; the same `seed` gives the same noise."""

    sigma: float
    seed: int = 0
    type: ClassVar[str] = "noise"

    def replace(self, value, hook):
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
        return value + self.sigma * noise.to(device=value.device, dtype=value.dtype)


@dataclass
class SkipLayer(Intervention):
    """The whole block becomes the identity, `resid_post = resid_pre` (the paper's sequential skip)."""

    type: ClassVar[str] = "skip_layer"

    def hook_fns(self, target):
        if target.kind != "block":
            raise ValueError("skip_layer acts on whole blocks: select kind='block'.")
        saved: dict[str, Tensor] = {}
        pre, post = target.hook_names

        def keep_input(value, hook):
            saved["input"] = value
            return value

        def output_is_input(value, hook):
            return saved.pop("input")

        return [(pre, keep_input), (post, output_is_input)]


class _FromReference(Intervention):
    """Values taken from activations of a reference run, cached by `prepare`."""

    def reference_tokens(self, model) -> Tensor:
        return model._encode(self.reference, None)[0]

    def prepare(self, model, targets):
        """Run the reference once per model for the hook points not cached yet."""
        if getattr(self, "_model_id", None) != id(model):
            self._values, self._model_id = {}, id(model)
        names = [n for target in targets for n in target.hook_names if n not in self._values]
        if names:
            _, cache = model.run_with_cache(self.reference_tokens(model), names_filter=names)
            self._values.update(self.summarise(dict(cache)))

    def summarise(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        return values

    def hook_fns(self, target):
        if not getattr(self, "_values", None):
            raise RuntimeError(f"{type(self).__name__} needs prepare(model, targets) before use.")
        return [(name, self.replace) for name in target.hook_names]


@dataclass
class Mean(_FromReference):
    """Replace by the mean activation over a reference set: global (over examples and positions)
    or per position (over examples; the reference must be at least as long as the input)."""

    reference: Any
    per_position: bool = False
    type: ClassVar[str] = "mean"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def summarise(self, values):
        return {n: v.mean(0) if self.per_position else v.mean((0, 1)) for n, v in values.items()}

    def replace(self, value, hook):
        mean = self._values[hook.name]
        if self.per_position:
            mean = mean[: value.shape[1]]
        return mean.expand_as(value).clone()


@dataclass
class Resample(_FromReference):
    """Replace each example's activation by that of a randomly drawn reference example (seeded)."""

    reference: Any
    seed: int = 0
    type: ClassVar[str] = "resample"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def replace(self, value, hook):
        source = self._values[hook.name]
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(0, source.shape[0], (value.shape[0],), generator=generator)
        return source[rows.to(source.device), : value.shape[1]].clone()


@dataclass
class Patch(_FromReference):
    """Activation patching: replace by the activation of the same example in a source (clean) run."""

    reference: Any
    type: ClassVar[str] = "patch"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def replace(self, value, hook):
        source = self._values[hook.name]
        if source.shape != value.shape:
            raise ValueError(f"Patch source shape {tuple(source.shape)} != activation shape {tuple(value.shape)} at {hook.name}.")
        return source.clone()
