"""The base of every intervention: the `Intervention` class, its registry, and what a hook function reads.

An intervention turns a `Target` into `(hook_name, fn)` pairs where `fn(value, hook) -> value` maps
the activation to its replacement. Position masks and batch rows are applied around `fn` by the
`Condition` that holds it, so every intervention works on any positions and inside batched
conditions; `fn` reads the real-token positions of the rows it acts on with `row_positions`.

Each intervention class declares its traits (`cache_safe`, `needs_reference`, `on_patterns`) and an
`example`, and registers itself by its `type` (a second class with a taken `type` is refused), so
adding an intervention is adding one class: `Intervention.from_dict`, the package's exports and the
registry-wide test (`tests/test_intervention_registry.py`) find it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import MISSING, fields
from typing import Any, ClassVar

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
            register(REGISTRY, cls.type, cls, "intervention types")

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
        if not isinstance(data, dict):
            raise ValueError(f"An intervention dict is {{'type': ..., **parameters}}, e.g. {{'type': 'zero'}} or "
                             f"{{'type': 'scale', 'alpha': 0.5}}; got {data!r:.200}.")
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
