"""Edge knockout: cut token-to-token routes inside every mixer with a `hook_pattern`: softmax attention and the
implicit attention of the linear mixers (the kinds whose declaration has a `pattern`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from jaxtyping import Float
from torch import Tensor

from ..checks import int_list
from ..vocabulary import KINDS, hook_name
from .base import Intervention, row_positions
from .conditions import Condition
from .selectors import Layers, Selector, Target


def _indices(what: str, value, allow_empty: bool) -> tuple[int, ...] | None:
    return None if value is None else int_list(f"knockout {what}", value, f"{what} positions or indices", allow_empty)


def _pick(wanted: tuple[int, ...] | None, positions: Tensor, what: str) -> Tensor:
    """`[batch, pos]` mask of the columns whose real-token index is in `wanted` (None: every real token)."""
    if wanted is None:
        return positions >= 0
    picked = torch.zeros_like(positions, dtype=torch.bool)
    for row, length in enumerate((positions >= 0).sum(1).tolist()):
        bad = [p for p in wanted if not -length <= p < length]
        if bad:
            raise ValueError(f"knockout {what} {bad} out of range for a row of {length} tokens.")
        picked[row] = torch.isin(positions[row], torch.tensor([p % length for p in wanted], device=positions.device))
    return picked


@dataclass
class EdgeKnockout(Intervention):
    """Cut the routes from `keys` to `queries` in the selected mixers' (implicit) attention patterns.

    Softmax attention: the pattern entries are removed and each row renormalised over the keys left
    (identical to masking the scores before the softmax, as attention knockout does; a row with
    every key cut becomes zero), or only zeroed with `renormalize=False`. Gated DeltaNet and
    Mamba-2: those entries of the implicit attention matrix are zeroed and the mixer output is
    computed from the edited matrix. Positions count real tokens per row (negative: from the end).

    Args:
        keys: Key (source) positions whose routes are cut; empty cuts nothing.
        queries: Query (destination) positions; None: every query.
        heads: Heads to cut in; None: every head.
        renormalize: Softmax attention only: renormalise the rows after the cut.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> cut = Condition.of(Selector("mixer", layers=[0, 1]), EdgeKnockout(keys=[0], queries=[-1]))
        >>> with cut.apply(model):
        ...     logits = model("In the beginning God created")
        >>> Intervention.from_dict(EdgeKnockout(keys=[0, 1]).to_dict())
        EdgeKnockout(keys=(0, 1), queries=None, heads=None, renormalize=True)
    """

    keys: Sequence[int]
    queries: Sequence[int] | None = None
    heads: Sequence[int] | None = None
    renormalize: bool = True
    type: ClassVar[str] = "knockout"
    on_patterns: ClassVar[bool] = True


    def __post_init__(self):
        self.keys = _indices("keys", self.keys, allow_empty=True)
        self.queries = _indices("queries", self.queries, allow_empty=False)
        self.heads = _indices("heads", self.heads, allow_empty=False)
        if not isinstance(self.renormalize, bool):
            raise ValueError(f"knockout renormalize must be True or False, not {self.renormalize!r}.")

    def hook_fns(self, target: Target):
        """One hook on the mixer's `hook_pattern` (any mixer kind).

        Examples:
            >>> [name for name, fn in EdgeKnockout(keys=[0]).hook_fns(Target(2, "ssm"))]
            ['blocks.2.ssm.hook_pattern']
        """
        with_pattern = [name for name, kind in KINDS.items() if kind.pattern is not None]
        if target.kind not in with_pattern or target.point not in (None, "hook_pattern"):
            raise ValueError(f"knockout acts on mixers {tuple(with_pattern)} (their hook_pattern), not {target}.")
        renormalize = self.renormalize and KINDS[target.kind].pattern == "softmax"
        return [(hook_name(target.layer, target.kind, "hook_pattern"),
                 lambda value, hook: self.cut(value, renormalize))]

    def cut(self, pattern: Float[Tensor, "batch head query key"], renormalize: bool
            ) -> Float[Tensor, "batch head query key"]:
        """The pattern with the routes cut (the same tensor when nothing is cut).

        Examples:
            >>> pattern = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])[None, None]
            >>> EdgeKnockout(keys=[0], queries=[1, 2]).cut(pattern, renormalize=True)[0, 0]
            tensor([[1.0000, 0.0000, 0.0000],
                    [0.0000, 1.0000, 0.0000],
                    [0.0000, 0.3750, 0.6250]])
        """
        if not self.keys:
            return pattern
        positions = row_positions(pattern.transpose(1, 2))
        if self.heads is not None:
            bad = [h for h in self.heads if not -pattern.shape[1] <= h < pattern.shape[1]]
            if bad:
                raise ValueError(f"knockout heads {bad} out of range for {pattern.shape[1]} heads.")
        heads = torch.zeros(pattern.shape[1], dtype=torch.bool, device=pattern.device)
        heads[list(self.heads) if self.heads is not None else slice(None)] = True
        cut = (_pick(self.queries, positions, "queries")[:, None, :, None]
               & _pick(self.keys, positions, "keys")[:, None, None, :] & heads[None, :, None, None])
        edited = pattern.masked_fill(cut.to(pattern.device), 0)
        if renormalize:  # only the rows that lost an entry
            total = edited.sum(-1, keepdim=True)
            renormalized = torch.where(total > 0, edited / total.clamp_min(torch.finfo(total.dtype).tiny), 0.0)
            edited = torch.where(cut.any(-1, keepdim=True).to(pattern.device), renormalized, edited)
        return edited

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): cut the routes from the first two tokens to the last one in every mixer of block 1."""
        return Selector("mixer", layers=1), cls(keys=[0, 1], queries=[-1])


def knockout(kind: str, keys: int | Sequence[int], queries: int | Sequence[int] | None = None, layers: Layers = None,
             heads: int | Sequence[int] | None = None, renormalize: bool = True, name: str = "") -> Condition:
    """Cut the routes from `keys` to `queries` in `kind` mixers (a mixer kind with a pattern, or `mixer`).

    See `EdgeKnockout`. `name` defaults to `{kind}_knockout`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> with knockout("linear_attn", keys=[0, 1], queries=-1, layers="early").apply(model):
        ...     logits = model("In the beginning God created")
        >>> knockout("attn", keys=0).to_dict()["items"][0]["intervention"]
        {'type': 'knockout', 'keys': (0,), 'queries': None, 'heads': None, 'renormalize': True}
    """
    return Condition.of(Selector(kind, layers), EdgeKnockout(keys, queries, heads, renormalize), name or f"{kind}_knockout")
