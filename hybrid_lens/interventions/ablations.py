"""Interventions as hook functions with a small JSON description.

Each intervention turns a `Target` into `(hook_name, fn)` pairs where `fn(value, hook) -> value`
maps the activation to its replacement. Position masks and batch rows are applied around `fn` by
the `Condition` that holds it, so every intervention works on any positions and inside batched
conditions. Interventions that need reference activations (mean, resample, patch) compute them in
`prepare`, before any hook is attached.

Each intervention class declares its traits (`cache_safe`, `needs_reference`, `on_patterns`) and an
`example`, and registers itself by its `type` (a second class with a taken `type` is refused), so
adding an intervention is adding one class: `from_dict`, the package's exports and the registry-wide
test (`tests/test_intervention_registry.py`) find it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

import torch
from jaxtyping import Int
from torch import Tensor

from ..forward_state import current_state
from ..registry import register
from ..tokens import real_positions
from .selectors import Selector, Target

HookFn = Callable[[Tensor, Any], Tensor]
REGISTRY: dict[str, type[Intervention]] = {}


def row_positions(value: Tensor) -> Int[Tensor, "batch pos"]:
    """Per row of the activation being replaced (`[batch, pos, ...]`), each column's index among the
    row's real tokens (-1 on padding), as the running forward pass counts them (inside a `Condition`'s
    hook: the rows it acts on); all columns real outside a forward pass.

    Examples:
        >>> row_positions(torch.zeros(2, 3, 8))
        tensor([[0, 1, 2],
                [0, 1, 2]])
    """
    state = current_state()
    positions = state.positions if state is not None and state.running else None
    if positions is None or positions.shape != value.shape[:2]:
        positions = real_positions(None, *value.shape[:2])
    return positions.to(value.device)


class Intervention:
    """Base class: subclasses are dataclasses with a `type` tag that implement `hook_fns` and `example`
    and declare their traits.

    Subclasses register themselves by `type` (a taken `type` is refused), so `Intervention.from_dict`
    rebuilds any of them. An intervention does nothing alone: pair it with a `Selector` in a `Condition`.

    Attributes:
        cache_safe: It acts on each token alone, so a run with a KV/state cache equals recomputing the
            whole sequence at every step (at all positions, on block-level points; see
            `Condition.cache_safe`).
        needs_reference: `prepare` runs the model on a reference input before any hook is attached.
        on_patterns: It may act on attention patterns (`hook_pattern`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> condition = Condition.of(Selector("ssm", layers=3), Scale(0.5))
        >>> with condition.apply(model):
        ...     logits = model("In the beginning")
        >>> Intervention.from_dict({"type": "scale", "alpha": 0.5})
        Scale(alpha=0.5)
    """

    type: ClassVar[str]
    cache_safe: ClassVar[bool] = False
    needs_reference: ClassVar[bool] = False
    on_patterns: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "type" in cls.__dict__:
            register(REGISTRY, cls.type, cls, "intervention type")

    @classmethod
    def example(cls, tokens: Int[Tensor, "batch pos"]) -> tuple[Selector, Intervention]:
        """A selector and an instance of this intervention that change the logits of `tokens` (at
        least 4 per row) on a model with an SSM, attention and an MLP in every block, as Falcon-H1:
        what the registry-wide test runs every intervention on.

        Examples:
            >>> Scale.example(torch.tensor([[5, 6, 7, 8]]))
            (Selector(kind='attn', layers=1, positions=None, point=None), Scale(alpha=0.5))
        """
        raise NotImplementedError(f"{cls.__name__} defines no example(tokens); every intervention needs one.")

    def prepare(self, model, targets: list[Target]) -> None:
        """Compute reference activations needed by `hook_fns` (default: nothing).

        Args:
            model: The `HookedHybrid` the hooks will run on.
            targets: Every target the intervention will act on.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> targets = Selector("ssm", layers=3).targets(model.layout)
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
        kind = data.pop("type", None)
        if kind not in REGISTRY:
            raise ValueError(f"Unknown intervention type {kind!r}; known: {sorted(REGISTRY)}.")
        accepted = {f.name for f in fields(REGISTRY[kind]) if not f.name.startswith("_")}
        unknown, missing = set(data) - accepted, {f.name for f in fields(REGISTRY[kind]) if f.name in accepted
                                                  and f.default is MISSING and f.default_factory is MISSING} - set(data)
        if unknown or missing:
            raise ValueError(f"Intervention {kind!r} takes {sorted(accepted) or 'no parameters'}; got unknown "
                             f"{sorted(unknown) or '-'}, missing {sorted(missing) or '-'}.")
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
    cache_safe: ClassVar[bool] = True

    @classmethod
    def example(cls, tokens):
        """Zero the SSM path of block 1."""
        return Selector("ssm", layers=1), cls()

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
    cache_safe: ClassVar[bool] = True

    @classmethod
    def example(cls, tokens):
        """Halve the attention outputs of block 1."""
        return Selector("attn", layers=1), cls(0.5)

    def __post_init__(self):
        _check_number("Scale alpha", self.alpha)

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

    @classmethod
    def example(cls, tokens):
        """Noise on the residual stream entering block 1."""
        return Selector("resid_pre", layers=1), cls(1.0, seed=3)

    def __post_init__(self):
        _check_number("Noise sigma", self.sigma, minimum=0.0)
        _check_seed(self.seed)

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
    cache_safe: ClassVar[bool] = True

    @classmethod
    def example(cls, tokens):
        """Skip block 1."""
        return Selector("block", layers=1), cls()

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
    """Values taken from activations of a reference run, cached by `prepare`.

    The reference run is masked; `summarise` gets each column's real-token index (-1 on padding),
    so padding never enters a statistic.
    """

    def prepare(self, model, targets):
        """Run the reference once per model for the hook points not cached yet."""
        if getattr(self, "_model_id", None) != id(model):
            self._values, self._model_id = {}, id(model)
        names = [n for target in targets for n in target.hook_names if n not in self._values]
        if names:
            tokens, mask = model.encode(self.reference)
            _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)
            positions = real_positions(mask, *tokens.shape).to(tokens.device)
            self._lengths = (positions >= 0).sum(1)
            for name, value in cache.items():
                if name.endswith("hook_pattern") and not self.on_patterns:
                    raise ValueError(f"{type(self).__name__} does not apply to attention patterns ({name}); "
                                     "patch them from a source run of the same shape instead.")
                self._values[name] = value if name.endswith("hook_pattern") else self.summarise(value, positions)

    def summarise(self, values: Tensor, positions: Tensor) -> Tensor:
        """Reference activations `[batch, pos, ...]` and their real-token indices `[batch, pos]`
        -> what `replace` reads (default: each row's real-token activations, left-aligned)."""
        return _real_tokens_first(values, positions)

    def hook_fns(self, target):
        if not getattr(self, "_values", None):
            raise RuntimeError(f"{type(self).__name__} needs prepare(model, targets) before use.")
        return [(name, self.replace) for name in target.hook_names]


@dataclass
class Mean(_FromReference):
    """Replace by the mean activation over a reference set: global (over the real tokens of all
    examples) or per position (over the examples with a real token at that position, counted in
    real tokens; the longest reference must be at least as long as the input). Padding of the
    reference texts never enters the mean.

    Args:
        reference: Texts (padded and masked for you) or token ids `Int[Tensor, "batch pos"]` (all
            real) of the reference run.
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
    needs_reference: ClassVar[bool] = True
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def cache_safe(self) -> bool:
        """A global mean acts on each token alone; a per-position mean depends on the position."""
        return not self.per_position

    @classmethod
    def example(cls, tokens):
        """Mean-ablate the MLP of block 1 over the rows of `tokens` in reverse order, per position."""
        return Selector("mlp", layers=1), cls(tokens.flip(0), per_position=True)

    def summarise(self, values, positions):
        """Mean over the real tokens of every example, `Float[Tensor, "d_model"]` (per position:
        over the examples that have a real token there, `Float[Tensor, "pos d_model"]`).

        Args:
            values: `Float[Tensor, "batch pos d_model"]` of the reference run.
            positions: `Int[Tensor, "batch pos"]`, each column's real-token index (-1 on padding).

        Examples:
            >>> values = torch.tensor([[[1.0], [3.0]], [[0.0], [5.0]]])   # row 1 is left-padded
            >>> Mean("And God said").summarise(values, torch.tensor([[0, 1], [-1, 0]]))
            tensor([3.])
            >>> Mean("And God said", per_position=True).summarise(values, torch.tensor([[0, 1], [-1, 0]]))
            tensor([[3.],
                    [3.]])
        """
        values, lengths = _real_tokens_first(values, positions), (positions >= 0).sum(1)
        real = torch.arange(values.shape[1], device=values.device) < lengths.to(values.device)[:, None]
        real = real.view(*real.shape, *[1] * (values.ndim - 2)).to(values.dtype)
        total = (values * real).sum(0)
        if self.per_position:
            return total / real.sum(0)
        return total.sum(0) / real.sum()

    def replace(self, value, hook):
        """The prepared mean of `hook`'s point, broadcast to `value`'s shape (per position: at each
        row's real-token positions; padding keeps its value).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> mean = Mean("And God said unto Moses")
            >>> mean.prepare(model, Selector("ssm", layers=3).targets(model.layout))
            >>> hook = model.hook_dict["blocks.3.hook_ssm_out"]
            >>> mean.replace(torch.zeros(2, 4, 128), hook).shape
            torch.Size([2, 4, 128])
        """
        mean = self._values[hook.name]
        if not self.per_position:
            return mean.expand_as(value).clone()
        return _gather_positions(mean.expand(value.shape[0], *mean.shape), row_positions(value), value, hook.name)


@dataclass
class Resample(_FromReference):
    """Replace each example's activation by that of a randomly drawn reference example (seeded).

    Positions are matched by real-token index, so references and inputs may be padded on either
    side; each example draws among the reference examples with at least as many real tokens.

    Args:
        reference: Texts (padded and masked for you) of the reference run, or token ids
            `Int[Tensor, "batch pos"]` (all real).
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
    needs_reference: ClassVar[bool] = True
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def example(cls, tokens):
        """Resample the attention output of block 1 from `tokens` reversed along positions."""
        return Selector("attn", layers=1), cls(tokens.flip(1), seed=1)

    def __post_init__(self):
        _check_seed(self.seed)

    def replace(self, value, hook):
        """Per example, the real-token activations of a reference example drawn (seeded) among those
        with at least as many real tokens; padding keeps its value.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> resample = Resample(["And God said unto Moses", "In the beginning God created"])
            >>> resample.prepare(model, Selector("attn", layers=2).targets(model.layout))
            >>> hook = model.hook_dict["blocks.2.hook_attn_out"]
            >>> resample.replace(torch.zeros(3, 4, 128), hook).shape
            torch.Size([3, 4, 128])
        """
        source, positions = self._values[hook.name], row_positions(value)
        needed = (positions.max(1).values + 1).tolist()
        generator = torch.Generator().manual_seed(self.seed)
        rows = []
        for row, length in enumerate(needed):
            eligible = (self._lengths >= length).nonzero().flatten()
            if eligible.numel() == 0:
                raise ValueError(f"Resample at {hook.name}: row {row} has {length} real tokens, but the longest "
                                 f"reference example has {int(self._lengths.max())}. Use longer references.")
            rows.append(eligible[torch.randint(0, eligible.numel(), (1,), generator=generator)])
        drawn = source[torch.cat(rows).to(source.device)]
        return _gather_positions(drawn, positions, value, hook.name)


@dataclass
class Patch(_FromReference):
    """Activation patching: replace by the activation of the same example in a source (clean) run.

    Token positions correspond by real-token index, row by row: real token `j` of row `i` gets
    real token `j` of the source's row `i`, whatever the padding of either run (attention patterns
    are patched as they are, and need the same shape).

    Args:
        reference: The source run's input: as many rows as the patched run, each with at least as
            many real tokens as the patched row (texts are padded and masked for you).

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
    needs_reference: ClassVar[bool] = True
    on_patterns: ClassVar[bool] = True
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def example(cls, tokens):
        """Patch the residual stream entering block 1 from `tokens` reversed along positions."""
        return Selector("resid_pre", layers=1), cls(tokens.flip(1))

    def replace(self, value, hook):
        """The prepared source activation of `hook`'s point; raises `ValueError` on a shape mismatch.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> source = Patch("And God said unto Moses")
            >>> source.prepare(model, Selector("attn", layers=2).targets(model.layout))
            >>> source.replace(torch.zeros(1, 5, 128), model.hook_dict["blocks.2.hook_attn_out"]).shape
            torch.Size([1, 5, 128])
        """
        source = self._values[hook.name]
        if hook.name.endswith("hook_pattern"):
            if source.shape != value.shape:
                raise ValueError(f"Patch source shape {tuple(source.shape)} != activation shape {tuple(value.shape)} "
                                 f"at {hook.name}.")
            return source.clone()
        positions = row_positions(value)
        needed = positions.max(1).values + 1
        if source.shape[0] != value.shape[0] or bool((needed > self._lengths.to(needed.device)).any()):
            raise ValueError(f"Patch at {hook.name}: the source has {source.shape[0]} rows of "
                             f"{self._lengths.tolist()} real tokens; the patched run has {value.shape[0]} rows of "
                             f"{needed.tolist()}. Give one source row per row, at least as long.")
        return _gather_positions(source, positions, value, hook.name)


def _real_tokens_first(values: Tensor, positions: Tensor) -> Tensor:
    """`values` `[batch, pos, ...]` with each row's real tokens moved to the front, in order."""
    order = torch.where(positions >= 0, positions, positions.shape[1]).argsort(dim=1, stable=True)
    order = order.to(values.device).view(*order.shape, *[1] * (values.ndim - 2)).expand_as(values)
    return values.gather(1, order)


def _gather_positions(source: Tensor, positions: Tensor, value: Tensor, name: str) -> Tensor:
    """`value` with each real token replaced by `source[row, its real-token index]`."""
    if int(positions.max()) >= source.shape[1]:
        raise ValueError(f"The reference at {name} has {source.shape[1]} positions; the input needs "
                         f"{int(positions.max()) + 1}. Use references at least as long as the input.")
    index = positions.clamp(min=0).to(source.device)
    index = index.view(*index.shape, *[1] * (value.ndim - 2)).expand(-1, -1, *source.shape[2:])
    taken = source.gather(1, index)
    real = (positions >= 0).to(value.device).view(*positions.shape, *[1] * (value.ndim - 2))
    return torch.where(real, taken.to(value.dtype), value)


def _check_number(what: str, value, minimum: float | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{what} must be a finite number{bound}, not {value!r}.")


def _check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, not {seed!r}.")
