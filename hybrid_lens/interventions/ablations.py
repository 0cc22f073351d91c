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
    """Base class: subclasses are dataclasses with a `type` tag and implement `hook_fns`.

    Subclasses register themselves by `type`, so `Intervention.from_dict` rebuilds any of them.
    An intervention does nothing alone: pair it with a `Selector` in a `Condition`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> condition = Condition.of(Selector("ssm", layers=3), Scale(0.5))
        >>> with condition.apply(model):
        ...     logits = model("In the beginning")
        >>> Intervention.from_dict({"type": "scale", "alpha": 0.5})
        Scale(alpha=0.5)
    """

    type: ClassVar[str]

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            REGISTRY[cls.type] = cls

    def prepare(self, model, targets: list[Target]) -> None:
        """Compute reference activations needed by `hook_fns` (default: nothing).

        Args:
            model: The `HookedHybrid` the hooks will run on.
            targets: Every target the intervention will act on.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> targets = Selector("ssm", layers=3).targets(model.layer_mixers)
            >>> Zero().prepare(model, targets)          # nothing to compute for Zero
        """

    def hook_fns(self, target: Target) -> list[tuple[str, HookFn]]:
        """`(hook_name, fn)` pairs that carry out this intervention on `target`.

        Each `fn(value, hook)` maps the activation (e.g. `Float[Tensor, "batch pos d_model"]`)
        to its replacement.

        Examples:
            >>> [name for name, fn in Zero().hook_fns(Target(3, "ssm"))]
            ['blocks.3.hook_ssm_out']
        """
        raise NotImplementedError

    def to_dict(self) -> dict[str, Any]:
        """`{"type": ..., **parameters}`; tensors (reference token ids) become nested lists.

        Examples:
            >>> Noise(0.1, seed=1).to_dict()
            {'type': 'noise', 'sigma': 0.1, 'seed': 1}
        """
        data = {f.name: getattr(self, f.name) for f in fields(self) if not f.name.startswith("_")}
        data = {k: v.tolist() if isinstance(v, Tensor) else v for k, v in data.items()}
        return {"type": self.type, **data}

    @staticmethod
    def from_dict(data: dict[str, Any]) -> Intervention:
        """The intervention of a `to_dict` dict; raises `ValueError` for an unknown type.

        Examples:
            >>> Intervention.from_dict(Mean("And God said").to_dict())
            Mean(reference='And God said', per_position=False)
        """
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
    """Replace the activation by zeros (the paper's parallel zeroing when applied to a mixer output).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("ssm", layers="early"), Zero()).apply(model):
        ...     logits, cache = model.run_with_cache("In the beginning")
        >>> bool(cache["ssm_out", 0].eq(0).all())
        True
    """

    type: ClassVar[str] = "zero"

    def replace(self, value, hook):
        """Zeros shaped like `value`.

        Examples:
            >>> Zero().replace(torch.ones(2, 3), hook=None)
            tensor([[0., 0., 0.],
                    [0., 0., 0.]])
        """
        return torch.zeros_like(value)


@dataclass
class Scale(_Elementwise):
    """Multiply the activation by `alpha`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("attn"), Scale(2.0)).apply(model):
        ...     logits = model("In the beginning")
    """

    alpha: float
    type: ClassVar[str] = "scale"

    def replace(self, value, hook):
        """`alpha * value`.

        Examples:
            >>> Scale(0.5).replace(torch.ones(2), hook=None)
            tensor([0.5000, 0.5000])
        """
        return self.alpha * value


@dataclass
class Noise(_Elementwise):
    """Add Gaussian noise of standard deviation `sigma`; the same `seed` gives the same noise.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("resid_pre", layers=0), Noise(0.1, seed=0)).apply(model):
        ...     logits = model("In the beginning")
    """

    sigma: float
    seed: int = 0
    type: ClassVar[str] = "noise"

    def replace(self, value, hook):
        """`value` plus seeded noise `sigma * N(0, 1)` of its shape (drawn in float32 on the CPU).

        Examples:
            >>> noise = Noise(0.1, seed=0)
            >>> torch.equal(noise.replace(torch.zeros(3), None), noise.replace(torch.zeros(3), None))
            True
        """
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
        return value + self.sigma * noise.to(device=value.device, dtype=value.dtype)


@dataclass
class SkipLayer(Intervention):
    """The whole block becomes the identity, `resid_post = resid_pre` (the paper's sequential skip).

    Acts on `Selector("block", ...)` targets only.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("block", layers=5), SkipLayer()).apply(model):
        ...     logits, cache = model.run_with_cache("In the beginning")
        >>> torch.equal(cache["resid_post", 5], cache["resid_pre", 5])
        True
    """

    type: ClassVar[str] = "skip_layer"

    def hook_fns(self, target):
        """Save `resid_pre` and return it again at `resid_post`; raises unless `target.kind == "block"`.

        Examples:
            >>> [name for name, fn in SkipLayer().hook_fns(Target(5, "block"))]
            ['blocks.5.hook_resid_pre', 'blocks.5.hook_resid_post']
        """
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
    or per position (over examples; the reference must be at least as long as the input).

    Args:
        reference: Texts or token ids `Int[Tensor, "batch pos"]` of the reference run.
        per_position: Average over examples only, keeping positions.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> reference = ["And God said", "In the beginning", "Let there be light"]
        >>> with Condition.of(Selector("ssm", layers=3), Mean(reference)).apply(model):
        ...     logits = model("And the earth was without form")
    """

    reference: Any
    per_position: bool = False
    type: ClassVar[str] = "mean"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def summarise(self, values):
        """Mean over examples and positions, `Float[Tensor, "d_model"]` per hook (per position:
        over examples only, `Float[Tensor, "pos d_model"]`).

        Examples:
            >>> values = {"blocks.3.hook_ssm_out": torch.ones(2, 5, 128)}
            >>> Mean("And God said").summarise(values)["blocks.3.hook_ssm_out"].shape
            torch.Size([128])
        """
        return {n: v.mean(0) if self.per_position else v.mean((0, 1)) for n, v in values.items()}

    def replace(self, value, hook):
        """The prepared mean of `hook`'s point, broadcast to `value`'s shape.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> mean = Mean("And God said unto Moses")
            >>> mean.prepare(model, Selector("ssm", layers=3).targets(model.layer_mixers))
            >>> hook = model.hook_dict["blocks.3.hook_ssm_out"]
            >>> mean.replace(torch.zeros(2, 4, 128), hook).shape
            torch.Size([2, 4, 128])
        """
        mean = self._values[hook.name]
        if self.per_position:
            mean = mean[: value.shape[1]]
        return mean.expand_as(value).clone()


@dataclass
class Resample(_FromReference):
    """Replace each example's activation by that of a randomly drawn reference example (seeded).

    Reference examples must be at least as long as the input.

    Args:
        reference: Texts or token ids `Int[Tensor, "batch pos"]` of the reference run.
        seed: Seed of the draw.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> reference = ["And God said unto Moses", "In the beginning God created"]
        >>> with Condition.of(Selector("attn", layers=2), Resample(reference, seed=0)).apply(model):
        ...     logits = model("Let there be light")
    """

    reference: Any
    seed: int = 0
    type: ClassVar[str] = "resample"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def replace(self, value, hook):
        """Rows of the prepared reference activations, one drawn per example, cut to `value`'s length.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> resample = Resample(["And God said unto Moses", "In the beginning God created"])
            >>> resample.prepare(model, Selector("attn", layers=2).targets(model.layer_mixers))
            >>> hook = model.hook_dict["blocks.2.hook_attn_out"]
            >>> resample.replace(torch.zeros(3, 4, 128), hook).shape
            torch.Size([3, 4, 128])
        """
        source = self._values[hook.name]
        generator = torch.Generator().manual_seed(self.seed)
        rows = torch.randint(0, source.shape[0], (value.shape[0],), generator=generator)
        return source[rows.to(source.device), : value.shape[1]].clone()


@dataclass
class Patch(_FromReference):
    """Activation patching: replace by the activation of the same example in a source (clean) run.

    Args:
        reference: The source run's input, tokenizing to the same shape as the patched run's.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> clean, corrupt = "And God said unto Moses", "And God said unto Aaron"
        >>> with Condition.of(Selector("resid_pre", layers=6), Patch(clean)).apply(model):
        ...     patched = model(corrupt)
        >>> torch.allclose(patched, model(clean), atol=1e-5)   # the whole residual stream patched
        True
    """

    reference: Any
    type: ClassVar[str] = "patch"
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def replace(self, value, hook):
        """The prepared source activation of `hook`'s point; raises `ValueError` on a shape mismatch.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> source = Patch("And God said unto Moses")
            >>> source.prepare(model, Selector("attn", layers=2).targets(model.layer_mixers))
            >>> hook = model.hook_dict["blocks.2.hook_attn_out"]
            >>> source.replace(torch.zeros(1, 5, 128), hook).shape
            torch.Size([1, 5, 128])
        """
        source = self._values[hook.name]
        if source.shape != value.shape:
            raise ValueError(f"Patch source shape {tuple(source.shape)} != activation shape {tuple(value.shape)} at {hook.name}.")
        return source.clone()
