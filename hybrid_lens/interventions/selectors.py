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
    """One selected place: a component (or whole block, or residual point) of one layer."""

    layer: int
    kind: str
    point: str | None = None

    @property
    def hook_names(self) -> list[str]:
        """The hook points an intervention on this target touches (`block`: resid_pre and resid_post)."""
        if self.point is not None:
            return [f"blocks.{self.layer}.{self.kind}.{self.point}"]
        if self.kind == "block":
            return [f"blocks.{self.layer}.hook_resid_pre", f"blocks.{self.layer}.hook_resid_post"]
        if self.kind in RESID_KINDS:
            return [f"blocks.{self.layer}.hook_{self.kind}"]
        return [f"blocks.{self.layer}.hook_{self.kind}_out"]


def layer_thirds(n_layers: int) -> dict[str, list[int]]:
    """Split layers 0..n-1 into early / middle / late thirds (sizes differ by at most one)."""
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

    Example:
        >>> Selector("ssm", layers="early")             # every SSM output in the first third
        >>> Selector("attn", layers=20, positions=slice(10, 20))
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
        """The targets on a model with these per-layer mixers; raises if there are none."""
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
        """Positions as a LongTensor index into a sequence of `length` tokens (None: all)."""
        if self.positions is None:
            return None
        if isinstance(self.positions, slice):
            return torch.arange(length)[self.positions]
        positions = [self.positions] if isinstance(self.positions, int) else list(self.positions)
        if any(not -length <= p < length for p in positions):
            raise ValueError(f"Positions {positions} out of range for {length} tokens.")
        return torch.tensor([p % length for p in positions], dtype=torch.long)

    def to_dict(self) -> dict[str, Any]:
        positions = self.positions
        if isinstance(positions, slice):
            positions = {"slice": [positions.start, positions.stop, positions.step]}
        layers = list(self.layers) if isinstance(self.layers, Sequence) and not isinstance(self.layers, str) else self.layers
        positions = list(positions) if isinstance(positions, Sequence) else positions
        return {"kind": self.kind, "layers": layers, "positions": positions, "point": self.point}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Selector:
        positions = data.get("positions")
        if isinstance(positions, dict):
            positions = slice(*positions["slice"])
        layers = data.get("layers")
        layers = tuple(layers) if isinstance(layers, list) else layers
        positions = tuple(positions) if isinstance(positions, list) else positions
        return cls(data["kind"], layers, positions, data.get("point"))
