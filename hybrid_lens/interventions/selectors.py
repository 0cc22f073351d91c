"""Selectors: pick hook points by component kind, layer and token position, on any family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..adapters import COMPONENT_KINDS, MIXER_KINDS

RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
THIRDS = ("early", "middle", "late")
KINDS = (*COMPONENT_KINDS, "mixer", "block", *RESID_KINDS)
Layers = None | int | str | Sequence[int]
Positions = None | int | slice | Sequence[int]


@dataclass(frozen=True)
class Target:
    """One selected place: a component (or whole block, or residual point) of one layer.

    Attributes:
        layer: Block index.
        kind: A component kind, `block`, or a residual point (see `Selector`).
        point: An inner hook point of the mixer `kind` (e.g. `hook_v`), or None for its output.

    Examples:
        >>> Target(3, "ssm").hook_names
        ['blocks.3.hook_ssm_out']
        >>> Target(3, "attn", "hook_v").hook_names
        ['blocks.3.attn.hook_v']
    """

    layer: int
    kind: str
    point: str | None = None

    @property
    def hook_names(self) -> list[str]:
        """The hook points an intervention on this target touches (`block`: resid_pre and resid_post).

        Examples:
            >>> Target(3, "block").hook_names
            ['blocks.3.hook_resid_pre', 'blocks.3.hook_resid_post']
        """
        if self.point is not None:
            return [f"blocks.{self.layer}.{self.kind}.{self.point}"]
        if self.kind == "block":
            return [f"blocks.{self.layer}.hook_resid_pre", f"blocks.{self.layer}.hook_resid_post"]
        if self.kind in RESID_KINDS:
            return [f"blocks.{self.layer}.hook_{self.kind}"]
        return [f"blocks.{self.layer}.hook_{self.kind}_out"]


def layer_thirds(n_layers: int) -> dict[str, list[int]]:
    """Split layers 0..n-1 into early / middle / late thirds (sizes differ by at most one).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> layer_thirds(model.n_layers)
        {'early': [0, 1, 2], 'middle': [3, 4, 5], 'late': [6, 7]}
    """
    return {name: part.tolist() for name, part in zip(THIRDS, np.array_split(np.arange(n_layers), 3))}


@dataclass(frozen=True)
class Selector:
    """Where an intervention applies.

    Args:
        kind: `attn`, `linear_attn`, `ssm`, `mlp`, `mixer` (every mixer of the layer), `block`
            (the whole layer), or a residual point `resid_pre` / `resid_mid` / `resid_post`.
        layers: None (all), an index, a list of indices, or `early` / `middle` / `late` (thirds).
        positions: None (all tokens), an index, a slice, or a list of token positions.
        point: an inner hook point of the mixer `kind` (e.g. `hook_v`), instead of its output.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> early_ssm = Selector("ssm", layers="early")      # every SSM output in the first third
        >>> [target.layer for target in early_ssm.targets(model.layer_mixers)]
        [0, 1, 2, 3]
        >>> late_attn = Selector("attn", layers=[-2, -1], positions=slice(1, 3))
        >>> with Condition.of(late_attn, Zero()).apply(model):
        ...     logits = model("In the beginning God created")
    """

    kind: str
    layers: Layers = None
    positions: Positions = None
    point: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"Unknown selector kind {self.kind!r}; choose one of {KINDS}.")
        if self.point is not None and self.kind not in MIXER_KINDS:
            raise ValueError(f"An inner point needs a mixer kind {MIXER_KINDS}, not {self.kind!r}.")
        if isinstance(self.layers, str) and self.layers not in THIRDS:
            raise ValueError(f"Layer group {self.layers!r} unknown; use an index, a list, or one of {THIRDS}.")

    def layer_indices(self, n_layers: int) -> list[int]:
        """The selected layers of a model with `n_layers` blocks (negative indices wrap around).

        Raises `ValueError` for an index out of range.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> Selector("ssm", layers="late").layer_indices(model.n_layers)
            [8, 9, 10, 11]
            >>> Selector("ssm", layers=-1).layer_indices(model.n_layers)
            [11]
        """
        if self.layers is None:
            return list(range(n_layers))
        if isinstance(self.layers, str):
            return layer_thirds(n_layers)[self.layers]
        layers = [self.layers] if isinstance(self.layers, int) else list(self.layers)
        bad = [layer for layer in layers if not -n_layers <= layer < n_layers]
        if bad:
            raise ValueError(f"Layers {bad} out of range for a model with {n_layers} layers.")
        return [layer % n_layers for layer in layers]

    def targets(self, layer_mixers: list[tuple[str, ...]]) -> list[Target]:
        """The targets on a model with these per-layer mixers; raises if there are none.

        Layers without the selected kind are skipped (on Qwen3.5, `attn` selects only the
        full-attention layers); `mixer` gives one target per mixer of each layer.

        Args:
            layer_mixers: `HookedHybrid.layer_mixers`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> Selector("attn").targets(model.layer_mixers)
            [Target(layer=3, kind='attn', point=None), Target(layer=7, kind='attn', point=None)]
        """
        found = []
        for layer in self.layer_indices(len(layer_mixers)):
            mixers = layer_mixers[layer]
            if self.kind == "mixer":
                found += [Target(layer, kind) for kind in mixers]
            elif self.kind in mixers or self.kind in ("mlp", "block", *RESID_KINDS):
                found.append(Target(layer, self.kind, self.point))
        if not found:
            raise ValueError(
                f"{self} matches nothing on this model (layer kinds: "
                f"{['+'.join(m) for m in layer_mixers]}). Pick a kind the selected layers have."
            )
        return found

    def position_index(self, length: int) -> torch.Tensor | None:
        """Positions as a LongTensor index into a sequence of `length` tokens (None: all).

        Returns:
            `Int[Tensor, "n_positions"]` (negative positions wrapped), or None for all positions.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens = model.to_tokens("In the beginning God created")
            >>> Selector("attn", positions=[0, -1]).position_index(tokens.shape[1])
            tensor([0, 4])
        """
        if self.positions is None:
            return None
        if isinstance(self.positions, slice):
            return torch.arange(length)[self.positions]
        positions = [self.positions] if isinstance(self.positions, int) else list(self.positions)
        if any(not -length <= p < length for p in positions):
            raise ValueError(f"Positions {positions} out of range for {length} tokens.")
        return torch.tensor([p % length for p in positions], dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (a slice becomes `{"slice": [start, stop, step]}`); see `from_dict`.

        Examples:
            >>> Selector("attn", layers=(3, 7), positions=slice(0, 2)).to_dict()
            {'kind': 'attn', 'layers': [3, 7], 'positions': {'slice': [0, 2, None]}, 'point': None}
        """
        positions = self.positions
        if isinstance(positions, slice):
            positions = {"slice": [positions.start, positions.stop, positions.step]}
        layers = list(self.layers) if isinstance(self.layers, Sequence) and not isinstance(self.layers, str) else self.layers
        positions = list(positions) if isinstance(positions, Sequence) else positions
        return {"kind": self.kind, "layers": layers, "positions": positions, "point": self.point}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selector:
        """The selector of a `to_dict` dict (lists come back as tuples).

        Examples:
            >>> selector = Selector("attn", layers=(3, 7), positions=slice(0, 2))
            >>> Selector.from_dict(selector.to_dict()) == selector
            True
        """
        positions = data.get("positions")
        if isinstance(positions, dict):
            positions = slice(*positions["slice"])
        layers = data.get("layers")
        layers = tuple(layers) if isinstance(layers, list) else layers
        positions = tuple(positions) if isinstance(positions, list) else positions
        return cls(data["kind"], layers, positions, data.get("point"))
