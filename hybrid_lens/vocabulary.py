"""The vocabulary: component kinds, hook-point names and component labels, each defined once here.

Every other module builds hook names with `hook_name` (or `point_name` inside a block) and labels
components with `ComponentLabel`, so the naming scheme lives in this one place. The kinds themselves
are declared by the mixer modules that implement them (`hybrid_lens.mixers.kinds`); the constants
below are read from those declarations.
"""

from __future__ import annotations

from collections.abc import Sequence

from .mixers.inputs import ATTENTION_INPUTS
from .mixers.kinds import MLP, ComponentKind, mixer_kinds

KINDS: dict[str, ComponentKind] = {**mixer_kinds(), MLP.name: MLP}
MIXER_KINDS = tuple(mixer_kinds())
COMPONENT_KINDS = tuple(KINDS)
RESID_KINDS = ("resid_pre", "resid_mid", "resid_post")
# TransformerLens's input points of a block (`mixers.inputs`): what the attention heads and the MLP read
INPUT_POINTS = (*ATTENTION_INPUTS, "hook_mlp_in")
# What reports and condition labels call each kind (the same words for every family: `linear_attn` is
# Gated DeltaNet, KDA or lightning attention, `ssm` Mamba-1, Mamba-2 or RG-LRU, by family).
KIND_NAMES = {**{name: kind.label for name, kind in KINDS.items()}, "block": "block"}


def mixers_of(components: Sequence[str]) -> tuple[str, ...]:
    """A block's mixer kinds: its components without the MLP.

    Examples:
        >>> mixers_of(("ssm", "attn", "mlp")), mixers_of(("mlp",))
        (('ssm', 'attn'), ())
    """
    return tuple(kind for kind in components if kind != MLP.name)


def layer_type(mixers: Sequence[str]) -> str:
    """A block's type: its mixer kinds joined by `+` (`attn`, `linear_attn`, `ssm+attn`), as
    `HookedHybrid.layer_types` and the `layer_kind` column of the analyses name it.

    Examples:
        >>> layer_type(("ssm", "attn")), layer_type(("linear_attn",))
        ('ssm+attn', 'linear_attn')
    """
    return "+".join(mixers) or "mlp"  # a block with an MLP only (Nemotron-H)


def point_name(kind: str) -> str:
    """The name of a block-level hook point inside its block.

    Args:
        kind: A component kind (its output, `hook_{kind}_out`) or a residual point (`hook_{kind}`).

    Examples:
        >>> point_name("ssm"), point_name("resid_mid")
        ('hook_ssm_out', 'hook_resid_mid')
    """
    if kind in COMPONENT_KINDS:
        return f"hook_{kind}_out"
    if kind in RESID_KINDS:
        return f"hook_{kind}"
    raise ValueError(f"Unknown kind {kind!r}; choose one of {(*COMPONENT_KINDS, *RESID_KINDS)}.")


def hook_name(layer: int, kind: str, inner: str | None = None) -> str:
    """The canonical hook name of a point of block `layer`.

    Args:
        layer: Block index.
        kind: A component kind or a residual point (`resid_pre` / `resid_mid` / `resid_post`);
            with `inner`, the mixer kind holding the inner point.
        inner: An inner hook point of the mixer `kind` (e.g. `hook_v`), or None.

    Examples:
        >>> hook_name(3, "ssm"), hook_name(0, "resid_pre"), hook_name(3, "attn", "hook_v")
        ('blocks.3.hook_ssm_out', 'blocks.0.hook_resid_pre', 'blocks.3.attn.hook_v')
    """
    if inner is not None:
        return f"blocks.{layer}.{kind}.{inner}"
    return f"blocks.{layer}.{point_name(kind)}"


def cache_key(kind: str, layer: int, mixer: str | None = None) -> str:
    """The hook name of a TransformerLens-style cache key `(kind, layer[, mixer])`.

    Args:
        kind: The hook name's suffix after `hook_` (`ssm_out`, `resid_pre`, or an inner point
            such as `q` with `mixer`).
        layer: Block index.
        mixer: The mixer kind holding an inner point, or None for a block-level point.

    Examples:
        >>> cache_key("ssm_out", 3), cache_key("q", 3, "attn")
        ('blocks.3.hook_ssm_out', 'blocks.3.attn.hook_q')
    """
    point = f"hook_{kind}"
    return f"blocks.{layer}.{point}" if mixer is None else hook_name(layer, mixer, point)


class ComponentLabel(str):
    """A component's label as data (`layer`, `kind`) that is also its printed text.

    The text is TransformerLens's label of the output's hook point, `{layer}_{kind}_out` (`3_ssm_out`,
    `3_attn_out`, `3_mlp_out`, as `decompose_resid` labels them), or the kind alone without a layer
    (`embed`), so a label compares equal to, prints and serialises as that string.

    Attributes:
        layer: Block index, or None for a component outside the blocks (the embedding).
        kind: `attn`, `linear_attn`, `ssm`, `conv`, `mlp` or `embed`.

    Examples:
        >>> label = ComponentLabel(3, "ssm")
        >>> label, label.layer, label.kind, label == "3_ssm_out"
        ('3_ssm_out', 3, 'ssm', True)
        >>> print(ComponentLabel(None, "embed"))
        embed
    """

    layer: int | None
    kind: str

    def __new__(cls, layer: int | None, kind: str) -> ComponentLabel:
        label = super().__new__(cls, kind if layer is None else f"{layer}_{point_name(kind).removeprefix('hook_')}")
        object.__setattr__(label, "layer", layer)
        object.__setattr__(label, "kind", kind)
        return label

    def __setattr__(self, name, value):
        raise AttributeError(f"A ComponentLabel is immutable; cannot set {name!r}.")

    def __reduce__(self):
        return ComponentLabel, (self.layer, self.kind)


class UnitLabel(str):
    """The label of one head or neuron in a stack of per-head or per-neuron results, as data.

    TransformerLens's labels where it has the unit: `L3H1` (head 1 of block 3's softmax attention) and
    `L0N5` (neuron 5 of block 0's MLP); a head of another mixer kind adds the kind: `L0H2_linear_attn`,
    `L3H1_ssm`.

    Attributes:
        layer: Block index.
        kind: The component kind (`attn`, `linear_attn`, `ssm`, `mlp` for a neuron).
        index: The head or neuron index.

    Examples:
        >>> UnitLabel(3, "attn", 1), UnitLabel(3, "ssm", 1), UnitLabel(0, "mlp", 5)
        ('L3H1', 'L3H1_ssm', 'L0N5')
        >>> UnitLabel(3, "ssm", 1).kind
        'ssm'
    """

    layer: int
    kind: str
    index: int

    def __new__(cls, layer: int, kind: str, index: int) -> UnitLabel:
        text = f"L{layer}N{index}" if kind == MLP.name else f"L{layer}H{index}" + ("" if kind == "attn" else f"_{kind}")
        label = super().__new__(cls, text)
        for name, value in (("layer", layer), ("kind", kind), ("index", index)):
            object.__setattr__(label, name, value)
        return label

    def __setattr__(self, name, value):
        raise AttributeError(f"A UnitLabel is immutable; cannot set {name!r}.")

    def __reduce__(self):
        return UnitLabel, (self.layer, self.kind, self.index)
