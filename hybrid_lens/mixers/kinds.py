"""Component kinds as data: each mixer kind is declared once, in the mixer module that implements it.

A `ComponentKind` holds every fact about a kind that code outside its mixer module uses: its name
in hook names and selectors, what reports call it, its colour in figures, whether it has a recurrent
state (`hook_state`, state patching) and what shape that state has, and what its `hook_pattern` is
(a softmax pattern, renormalised by knockouts, or the implicit attention of a linear mixer).

The mixer kinds are the `ComponentKind`s defined at the top level of the `hybrid_lens.mixers`
modules (`attention.ATTN`, `gated_deltanet.LINEAR_ATTN`, `mamba2.SSM`, `short_conv.CONV`), found
in module order; `MLP` is the channel mixer every kind of block may have. Adding a mixer kind is
adding its mixer module (with its declaration) and the adapter that uses it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Literal

from ..registry import discover

Pattern = Literal["softmax", "implicit"] | None


@dataclass(frozen=True)
class ComponentKind:
    """The facts of one component kind.

    Attributes:
        name: Its name in hook names (`hook_{name}_out`) and selectors (`Selector("ssm")`).
        label: What reports and condition labels call it (the same words for every family).
        colour: RGB of its paths in figures.
        recurrent: Whether it carries a recurrent state, `blocks.{i}.{name}.hook_state` (state patching).
        state: The shape of that state, by implementation (None without one).
        pattern: Its `hook_pattern`: `"softmax"` (rows sum to 1, so a knockout renormalises them),
            `"implicit"` (the exact token-to-token matrix of a linear mixer), or None.

    Examples:
        >>> from hybrid_lens.mixers.mamba2 import SSM
        >>> SSM.label, SSM.recurrent, SSM.pattern
        ('SSM', True, 'implicit')
    """

    name: str
    label: str
    colour: tuple[int, int, int]
    recurrent: bool = False
    state: str | None = None
    pattern: Pattern = None


MLP = ComponentKind("mlp", "MLP", (127, 127, 127))


@cache
def mixer_kinds() -> dict[str, ComponentKind]:
    """Every mixer kind declared in the `hybrid_lens.mixers` modules, by name, in module order.

    Two different declarations with one name raise `ValueError`.

    Examples:
        >>> list(mixer_kinds())
        ['attn', 'linear_attn', 'ssm', 'conv']
    """
    kinds = discover(__package__, ComponentKind, lambda kind: kind.name, "component kinds")
    kinds.pop(MLP.name, None)
    return kinds
