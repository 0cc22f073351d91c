"""The layer layout: what every decoder layer's block holds, read once from the config.

One `Layout` per model answers every question about the structure: the family's block key of each
layer, its components (mixer kinds in execution order, then `mlp`), the components added to the
residual stream, whether it has an MLP and a `hook_resid_mid`, and which layers have a kind. The
model, its hooked blocks, `ActivationCache`, selectors, the study plan and patching all read it.

"Layer type" has one meaning here, the mixer label of a layer (`ssm+attn`, `HookedHybrid.layer_types`);
the family's name for a layer's block (`linear_attention`, read from the config) is its `block_key`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from .vocabulary import COMPONENT_KINDS, RESID_KINDS, hook_name, layer_type, mixers_of

# Selector kinds that are not components: every mixer of a layer, the whole block, a residual point.
GROUP_KINDS = ("mixer", "block")


@dataclass(frozen=True)
class Component:
    """One mixer or MLP of one block, as listed by `HookedHybrid.components`.

    Attributes:
        layer: Block index.
        kind: A component kind (`attn`, `linear_attn`, `ssm`, `conv` or `mlp`).
        hook_name: The block-level hook point of its output, `blocks.{layer}.hook_{kind}_out`
            (`Float[Tensor, "batch pos d_model"]`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> model.components("attn")[0]
        Component(layer=3, kind='attn', hook_name='blocks.3.hook_attn_out')
    """

    layer: int
    kind: str
    hook_name: str


@dataclass(frozen=True)
class Layer:
    """One decoder layer's block.

    Attributes:
        index: Block index.
        block_key: The family's key of this layer's block (`Family.blocks`), read from the config.
        components: Mixer kinds in execution order, then `mlp` when the block has an MLP.
        residual_terms: The components whose outputs are added to the residual stream, in execution
            order (all of them, except in Zamba2's shared block, whose outputs feed the Mamba input).

    Examples:
        >>> layer = Layer(0, "block", ("ssm", "attn", "mlp"), ("ssm", "attn", "mlp"))
        >>> layer.mixers, layer.type, layer.has_mlp, layer.has_resid_mid
        (('ssm', 'attn'), 'ssm+attn', True, True)
    """

    index: int
    block_key: str
    components: tuple[str, ...]
    residual_terms: tuple[str, ...]

    @property
    def mixers(self) -> tuple[str, ...]:
        """The mixer kinds: the components without the MLP."""
        return mixers_of(self.components)

    @property
    def type(self) -> str:
        """The layer type: mixer kinds joined by `+` (`mlp` for a block with an MLP only)."""
        return layer_type(self.mixers)

    @property
    def has_mlp(self) -> bool:
        """Whether the block has an MLP (or MoE), output in `hook_mlp_out`."""
        return "mlp" in self.components

    @property
    def has_resid_mid(self) -> bool:
        """Whether the block has `hook_resid_mid`: only one with both mixers and an MLP."""
        return bool(self.mixers) and self.has_mlp

    def has(self, kind: str) -> bool:
        """Whether this layer has `kind`: a component kind, `mixer` (any mixer), `block`, or a
        residual point (`resid_mid` only where `has_resid_mid`).

        Examples:
            >>> Layer(0, "block", ("ssm",), ("ssm",)).has("ssm"), Layer(0, "block", ("ssm",), ("ssm",)).has("resid_mid")
            (True, False)
        """
        if kind == "resid_mid":
            return self.has_resid_mid
        if kind == "mixer":
            return bool(self.mixers)
        return kind in self.components or kind in ("block", "resid_pre", "resid_post")


@dataclass(frozen=True)
class Layout(Sequence[Layer]):
    """The layers of a model, in order, and whether its residual stream is a sum of terms.

    Build it with `Layout.of` (from per-layer components) or read a model's as `model.layout`.

    Attributes:
        layers: One `Layer` per block.
        additive: Whether the residual stream is the embedding plus every block's residual terms
            (False for MiniMax, whose blocks renormalise the stream on the skip path).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> model.layout.layers_with("attn"), model.layout.kinds()
        ([3, 7], ['linear_attn', 'mlp', 'attn'])
        >>> model.layout[3]
        Layer(index=3, block_key='full_attention', components=('attn', 'mlp'), residual_terms=('attn', 'mlp'))
    """

    layers: tuple[Layer, ...]
    additive: bool = True

    @classmethod
    def of(cls, components: Sequence[Sequence[str]], residual_terms: Sequence[Sequence[str]] | None = None,
           block_keys: Sequence[str] | None = None, additive: bool = True) -> Layout:
        """A layout from each layer's components (mixer kinds, then `mlp` if present).

        Args:
            components: Per layer, its components.
            residual_terms: Per layer, the components added to the residual (default: all).
            block_keys: Per layer, the family's block key (default: `block`).
            additive: As the attribute.

        Examples:
            >>> Layout.of([("ssm", "attn", "mlp")] * 12).layers_with("ssm")[:3]
            [0, 1, 2]
        """
        residual_terms = components if residual_terms is None else residual_terms
        block_keys = ["block"] * len(components) if block_keys is None else block_keys
        unknown = sorted({kind for layer in components for kind in layer} - set(COMPONENT_KINDS))
        if unknown:
            raise ValueError(f"Unknown component kinds {unknown}; known: {COMPONENT_KINDS}.")
        return cls(tuple(Layer(i, key, tuple(parts), tuple(terms))
                         for i, (parts, terms, key) in enumerate(zip(components, residual_terms, block_keys))),
                   additive)

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self) -> Iterator[Layer]:
        return iter(self.layers)

    def __repr__(self) -> str:
        return f"Layout({[layer.type for layer in self.layers]})"

    def layers_with(self, kind: str) -> list[int]:
        """The layers that have `kind` (see `Layer.has`), in order.

        Examples:
            >>> layout = Layout.of([("linear_attn", "mlp"), ("attn", "mlp"), ("ssm",)])
            >>> layout.layers_with("mlp"), layout.layers_with("resid_mid"), layout.layers_with("block")
            ([0, 1], [0, 1], [0, 1, 2])
        """
        check_kind(kind)
        return [layer.index for layer in self.layers if layer.has(kind)]

    def kinds(self, mixers_only: bool = False) -> list[str]:
        """The component kinds present, in order of first appearance (only mixers with `mixers_only`).

        Examples:
            >>> Layout.of([("linear_attn", "mlp"), ("attn", "mlp")]).kinds(mixers_only=True)
            ['linear_attn', 'attn']
        """
        return list(dict.fromkeys(kind for layer in self.layers
                                  for kind in (layer.mixers if mixers_only else layer.components)))

    @property
    def parallel(self) -> bool:
        """Whether some block runs several mixers side by side (Falcon-H1: attention and SSM)."""
        return any(len(layer.mixers) > 1 for layer in self.layers)

    def components(self, kind: str) -> list[Component]:
        """Every `kind` component, in layer order; `ValueError` for an unknown kind.

        Examples:
            >>> [c.hook_name for c in Layout.of([("ssm", "attn", "mlp")] * 2).components("attn")]
            ['blocks.0.hook_attn_out', 'blocks.1.hook_attn_out']
        """
        if kind not in COMPONENT_KINDS:
            raise ValueError(f"Unknown component kind {kind!r}; choose one of {COMPONENT_KINDS}.")
        return [Component(i, kind, hook_name(i, kind)) for i in self.layers_with(kind)]


def check_kind(kind: str) -> None:
    """Raise `ValueError` unless `kind` is a component kind, `mixer`, `block` or a residual point.

    Examples:
        >>> check_kind("ssm")
        >>> check_kind("sm")
        Traceback (most recent call last):
        ...
        ValueError: Unknown kind 'sm'; choose one of ('attn', 'linear_attn', 'ssm', 'conv', 'mlp', 'mixer', 'block', 'resid_pre', 'resid_mid', 'resid_post').
    """
    kinds = selector_kinds()
    if kind not in kinds:
        raise ValueError(f"Unknown kind {kind!r}; choose one of {kinds}.")


def selector_kinds() -> tuple[str, ...]:
    """Every kind a `Selector` or `Layout.layers_with` takes: the component kinds, `mixer`, `block`
    and the residual points.

    Examples:
        >>> selector_kinds()[-3:]
        ('resid_pre', 'resid_mid', 'resid_post')
    """
    return (*COMPONENT_KINDS, *GROUP_KINDS, *RESID_KINDS)
