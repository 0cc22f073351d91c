"""Selectors: pick hook points by component kind, layer and token position, on any family."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ..checks import canonical_ints, int_list, is_int
from ..layout import Layout, selector_kinds
from ..vocabulary import MIXER_KINDS, hook_name

THIRDS = ("early", "middle", "late")
KINDS = selector_kinds()
SELECTOR_KEYS = {"kind", "layers", "positions", "point"}
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
        if self.kind == "block" and self.point is None:
            return [hook_name(self.layer, "resid_pre"), hook_name(self.layer, "resid_post")]
        return [hook_name(self.layer, self.kind, self.point)]


def _check_indices(what: str, value) -> None:
    """`value` must be an int or a non-empty sequence of distinct ints (numpy integers count; bools and floats are refused)."""
    forms = "block indices" if what == "layers" else "token positions"
    indices = int_list(what, value, f"{forms}, negative from the end")
    repeated = sorted({v for v in indices if indices.count(v) > 1})
    if repeated:
        raise ValueError(f"{what} lists {repeated} more than once; list each at most once.")


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
        kind: A component kind (`attn`, `linear_attn`, `ssm`, `conv`, `mlp`), `mixer` (every mixer
            of the layer), `block` (the whole layer), or a residual point `resid_pre` / `resid_mid` /
            `resid_post`.
        layers: None (all), an index, a list of indices, or `early` / `middle` / `late` (thirds).
        positions: None (all tokens), an index, a slice (as Python slices a list, a negative step
            too), or a list of token positions; numpy integers are ints.
        point: an inner hook point of the mixer `kind` (e.g. `hook_v`), instead of its output.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> early_ssm = Selector("ssm", layers="early")      # every SSM output in the first third
        >>> [target.layer for target in early_ssm.targets(model.layout)]
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
        if isinstance(self.positions, slice):  # numpy integers become ints, so the selector serialises as typed
            parts = (self.positions.start, self.positions.stop, self.positions.step)
            object.__setattr__(self, "positions", slice(*map(canonical_ints, parts)))
        object.__setattr__(self, "layers", canonical_ints(self.layers))
        object.__setattr__(self, "positions", canonical_ints(self.positions))
        if not isinstance(self.kind, str) or self.kind not in KINDS:
            raise ValueError(f"Unknown selector kind {self.kind!r}; choose one of {KINDS}.")
        if self.point is not None and (self.kind not in MIXER_KINDS or not isinstance(self.point, str)):
            raise ValueError(f"An inner point is a hook name such as 'hook_v' of a mixer kind {MIXER_KINDS}; "
                             f"got point={self.point!r} with kind {self.kind!r}.")
        if isinstance(self.layers, str):
            if self.layers not in THIRDS:
                raise ValueError(f"Layer group {self.layers!r} unknown; use an index, a list, or one of {THIRDS}.")
        elif self.layers is not None:
            _check_indices("layers", self.layers)
        if self.positions is not None and not isinstance(self.positions, slice):
            _check_indices("positions", self.positions)
        if isinstance(self.positions, slice):
            parts = (self.positions.start, self.positions.stop, self.positions.step)
            if any(p is not None and not is_int(p) for p in parts) or self.positions.step == 0:
                raise ValueError(f"A positions slice takes integer start, stop and a non-zero step; got {self.positions}.")
        if self.positions is not None and self.point == "hook_state":
            raise ValueError("A recurrent state (point='hook_state') has no token axis for a selector's positions: "
                             "give the position to the intervention (PatchState(source, position=...)) or to "
                             "state_positions(model, ...), and leave positions=None.")

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

    def targets(self, layout: Layout) -> list[Target]:
        """The targets on a model with this `Layout`; raises if there are none.

        Layers without the selected kind are skipped (on Qwen3.5, `attn` selects only the
        full-attention layers; on Nemotron-H, `mlp` only the MLP blocks); `mixer` gives one
        target per mixer of each layer; `resid_mid` exists in blocks with mixers and an MLP.

        Args:
            layout: The model's `Layout` (`model.layout`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> Selector("attn").targets(model.layout)
            [Target(layer=3, kind='attn', point=None), Target(layer=7, kind='attn', point=None)]
        """
        found = []
        for layer in (layout[i] for i in self.layer_indices(len(layout))):
            if self.kind == "mixer":
                found += [Target(layer.index, kind) for kind in layer.mixers]
            elif layer.has(self.kind):
                found.append(Target(layer.index, self.kind, self.point))
        if not found:
            raise ValueError(
                f"{self} matches nothing on this model (layer components: "
                f"{['+'.join(layer.components) for layer in layout]}). Pick a kind the selected layers have."
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
            tensor([0, 5])
        """
        if self.positions is None:
            return None
        if isinstance(self.positions, slice):  # Python's slice semantics (a negative step too)
            return torch.tensor(range(length)[self.positions], dtype=torch.long)
        positions = [self.positions] if isinstance(self.positions, int) else list(self.positions)
        if any(not -length <= p < length for p in positions):
            raise ValueError(f"Positions {positions} out of range for {length} tokens.")
        return torch.tensor([p % length for p in positions], dtype=torch.long)

    def position_mask(self, positions: Int[Tensor, "batch pos"], prompt_lengths: Int[Tensor, " batch"] | None = None,
                      ) -> Bool[Tensor, "batch pos"] | None:
        """Which columns the selector's positions pick, row by row, counting real tokens only.

        In a generation (`prompt_lengths` given, see `HookedHybrid.generate`), each token is resolved
        against the tokens of the pass that computes it when decoding with a cache: the prompt pass
        has the prompt, each later pass one token more. So `5` picks the token at 5 once (in the
        prompt, or when it is generated), `-1` the prompt's last token and then every generated
        token, `slice(-3, None)` the prompt's last three and every generated one, `slice(0, 4)` the
        first four tokens; a position beyond the tokens so far picks nothing (yet), and a pass may
        pick nothing. A cached generation and one that recomputes the whole sequence at every step
        pick the same tokens.

        Args:
            positions: Per row, each column's index among the row's real tokens, -1 on padding
                (`HookedHybrid.real_positions`; offset by the tokens before them when the run
                continues a cache, so a row's length is its largest position plus one).
            prompt_lengths: In a generation, each row's real prompt tokens
                (`ForwardState.prompt_lengths`); None outside one.

        Returns:
            `Bool[Tensor, "batch pos"]`, or None for all positions. Position `0` is each row's
            first real token and `-1` its last, with left or right padding. Outside a generation,
            raises `ValueError` when a position is out of range for some row, or nothing is selected.

        Examples:
            >>> positions = torch.tensor([[0, 1, 2, -1], [0, 1, 2, 3]])       # row 0 right-padded
            >>> Selector("attn", positions=-1).position_mask(positions)
            tensor([[False, False,  True, False],
                    [False, False, False,  True]])
            >>> Selector("attn", positions=-1).position_mask(torch.tensor([[0, 1, 2, 3]]), torch.tensor([2]))
            tensor([[False,  True,  True,  True]])
        """
        if self.positions is None:
            return None
        if prompt_lengths is not None:
            return self._generation_mask(positions, prompt_lengths.to(positions.device))
        lengths = positions.max(1).values + 1  # real tokens so far (a continuation's positions are offset)
        picked = torch.zeros_like(positions, dtype=torch.bool)
        for row, length in enumerate(lengths.tolist()):
            wanted = self.position_index(length)
            picked[row] = torch.isin(positions[row], wanted.to(positions.device))
        if not bool(picked.any()):
            raise ValueError(f"Positions {self.positions} select no token of inputs of {sorted(set(lengths.tolist()))} "
                             "real tokens.")
        return picked

    def _generation_mask(self, positions: Tensor, prompt_lengths: Tensor) -> Tensor:
        """`position_mask` in a generation: each column resolved against the real tokens of the pass
        that computes it (its row's prompt for prompt tokens, itself and the tokens before it after)."""
        prompt = prompt_lengths[:, None]
        passes = torch.where(positions < prompt, prompt, positions + 1)  # real tokens of the computing pass
        real, picked = positions >= 0, torch.zeros_like(positions, dtype=torch.bool)
        for length in torch.unique(passes[real]).tolist():
            if isinstance(self.positions, slice):
                wanted = torch.arange(length)[self.positions]
            else:
                wanted = torch.tensor([p % length for p in np.atleast_1d(self.positions).tolist() if -length <= p < length],
                                      dtype=torch.long)
            picked |= real & (passes == length) & torch.isin(positions, wanted.to(positions.device))
        return picked

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
        if not isinstance(data, dict):
            raise ValueError(f"A selector dict is {{'kind': ..., 'layers': ..., 'positions': ..., 'point': ...}} "
                             f"('kind' required), e.g. {{'kind': 'attn', 'layers': [3]}}; got {data!r:.200}.")
        unknown = set(data) - SELECTOR_KEYS
        if unknown or "kind" not in data:
            raise ValueError(f"A selector dict takes the keys {sorted(SELECTOR_KEYS)} ('kind' required); got "
                             f"{sorted(data)}" + (f", unknown: {sorted(unknown)}." if unknown else "."))
        positions = data.get("positions")
        if isinstance(positions, dict):
            if set(positions) != {"slice"} or not isinstance(positions["slice"], list) or len(positions["slice"]) != 3:
                raise ValueError(f"A positions slice is {{'slice': [start, stop, step]}}, not {positions!r}.")
            positions = slice(*positions["slice"])
        layers = data.get("layers")
        layers = tuple(layers) if isinstance(layers, list) else layers
        positions = tuple(positions) if isinstance(positions, list) else positions
        return cls(data["kind"], layers, positions, data.get("point"))
