"""Interventions that take their values from a reference run: mean and resample ablation, and
activation patching. The reference runs once per model in `prepare`, before any hook is attached,
masked, so padding never enters a statistic; positions correspond by real-token index per row."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..tokens import real_positions
from ..checks import check_seed
from .base import Intervention, row_positions
from .selectors import Selector


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

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): mean-ablate the MLP of block 1 over the rows of `tokens` in reverse order, per position."""
        return Selector("mlp", layers=1), cls(tokens.flip(0), per_position=True)


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


    def __post_init__(self):
        self.seed = check_seed(self.seed, "Resample seed")

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

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): resample the attention output of block 1 from `tokens` reversed along positions."""
        return Selector("attn", layers=1), cls(tokens.flip(1), seed=1)


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

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): patch the residual stream entering block 1 from `tokens` reversed along positions."""
        return Selector("resid_pre", layers=1), cls(tokens.flip(1))


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
