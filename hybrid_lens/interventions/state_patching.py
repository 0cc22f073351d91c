"""State patching: continue a linear mixer's recurrence from a source run's state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch

from ..checks import as_int
from ..mixers.state import cache_states
from ..vocabulary import KINDS
from .base import Intervention
from .conditions import Condition
from .selectors import Layers, Selector, Target

RECURRENT_KINDS = tuple(name for name, kind in KINDS.items() if kind.recurrent)  # as the kinds declare


@dataclass
class PatchState(Intervention):
    """Replace the recurrent state after token `position` by the source run's state there.

    The mixer then continues its recurrence from the source state on the patched run's own later
    inputs; earlier outputs are unchanged. Acts on `Selector(kind, point="hook_state")` targets of
    a recurrent kind (`linear_attn`, `ssm`). Positions count real tokens per row in both runs, so
    either may be a padded batch (texts, or token ids with their `attention_mask`): each row gets
    its source row's state after that row's own real token `position`.

    Args:
        reference: The source run's input (text, texts or token ids), one row per patched row.
        position: The token position, counted in real tokens per row (negative: from each row's end).
        attention_mask: The source's mask `Int[Tensor, "batch pos"]` when `reference` is padded token
            ids (left or right padding); None for texts and unpadded ids.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> condition = Condition.of(Selector("ssm", layers=2, point="hook_state"),
        ...                          PatchState("And God said unto Moses", position=2))
        >>> with condition.apply(model):
        ...     patched = model("And God said unto Aaron")
        >>> Intervention.from_dict(PatchState("And God said", 1).to_dict())
        PatchState(reference='And God said', position=1, attention_mask=None)
    """

    reference: Any
    position: int = -1
    attention_mask: Any = None
    type: ClassVar[str] = "patch_state"
    needs_reference: ClassVar[bool] = True
    _values: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self):
        self.position = as_int("PatchState position", self.position, "an int (a token position, negative from the end)")
        if self.attention_mask is not None:  # kept as nested tuples: compares, serialises and hashes as data
            mask = torch.as_tensor(self.attention_mask)
            if mask.is_floating_point() or mask.ndim not in (1, 2):
                raise ValueError(f"PatchState attention_mask must be 0/1 integers [batch, pos], not {mask.dtype} of "
                                 f"shape {tuple(mask.shape)}.")
            self.attention_mask = tuple(tuple(row) for row in mask.long().reshape(-1, mask.shape[-1]).tolist())

    def prepare(self, model, targets: list[Target]) -> None:
        """Read the source states at `position` for every target (one run; each row at its own real token).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> source = PatchState("And God said", position=-1)
            >>> source.prepare(model, Selector("ssm", layers=0, point="hook_state").targets(model.layout))
            >>> source._values["blocks.0.ssm.hook_state"].shape     # [batch, head, d_head, d_state]
            torch.Size([1, 4, 32, 32])
        """
        bad = [t for t in targets if t.kind not in RECURRENT_KINDS or t.point != "hook_state"]
        if bad:
            raise ValueError(f"PatchState acts on recurrent states: Selector(kind in {RECURRENT_KINDS}, "
                             f"point='hook_state'); got {bad}.")
        names = [t.hook_names[0] for t in targets]
        mask = {} if self.attention_mask is None else {"attention_mask": torch.tensor(self.attention_mask)}
        self._values = {name: states[:, 0] for name, states in cache_states(model, self.reference, self.position,
                                                                            names, **mask).items()}

    def hook_fns(self, target: Target):
        """One hook on `target`'s `hook_state` that replaces the state at `position` only (the point takes
        it in the rows at that position, see `StateHookPoint`).

        Examples:
            >>> [name for name, fn in PatchState("And God said").hook_fns(Target(0, "ssm", "hook_state"))]
            ['blocks.0.ssm.hook_state']
        """
        name = target.hook_names[0]

        def replace(value, hook):
            if hook.position != self.position:
                return value
            if name not in self._values:
                raise RuntimeError("PatchState needs prepare(model, targets) before use.")
            source = self._values[name]
            if source.shape != value.shape:
                raise ValueError(f"PatchState at {name}: the source state is {tuple(source.shape)}, the patched run's "
                                 f"{tuple(value.shape)}; give one source row per patched row.")
            return source.to(device=value.device, dtype=value.dtype).clone()

        replace.state_positions = (self.position,)
        return [(name, replace)]

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): continue the SSM recurrence of block 0 after the second token from `tokens` reversed."""
        return Selector("ssm", layers=0, point="hook_state"), cls(tokens.flip(1), position=1)


def patch_state(source, kind: str, position: int = -1, layers: Layers = None, name: str = "",
                attention_mask=None) -> Condition:
    """Patch the recurrent state of `kind` mixers (`linear_attn` / `ssm`) after `position` from a run on `source`.

    `position` counts real tokens per row; `attention_mask` is the source's, for padded token ids
    (see `PatchState`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> with patch_state("And God said unto Moses", "linear_attn", position=3, layers=[0, 1]).apply(model):
        ...     patched = model("And God said unto Aaron")
        >>> patch_state("And God said", "ssm", 1).name
        'ssm_patch_state'
    """
    if kind not in RECURRENT_KINDS:
        raise ValueError(f"State patching acts on a recurrent mixer kind {RECURRENT_KINDS}, not {kind!r}.")
    return Condition.of(Selector(kind, layers, point="hook_state"), PatchState(source, position, attention_mask),
                        name or f"{kind}_patch_state")
