"""ActivationCache: activations of one run by hook name, with residual-stream helpers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from jaxtyping import Float
from torch import Tensor

from .vocabulary import RESID_KINDS, ComponentLabel, cache_key, has_resid_mid, hook_name, mixers_of


class ActivationCache(Mapping[str, Tensor]):
    """Cached activations keyed by canonical hook name (e.g. `blocks.3.hook_ssm_out`).

    Also indexable TransformerLens-style by `(kind, layer)`: `cache["ssm_out", 3]`,
    `cache["resid_pre", 0]`, `cache["q", 3, "attn"]`.

    Block-level points hold `Float[Tensor, "batch pos d_model"]` (without the batch axis when
    cached with `remove_batch_dim=True`); see the README for the inner points' shapes.

    Args:
        values: Hook name -> tensor.
        layer_components: Components of every block (mixer kinds, then `mlp` if present), as
            `HookedHybrid.layer_components`.
        residual_terms: The components of every block whose outputs are added to the residual
            stream (default: all; Zamba2's shared block feeds its Mamba input instead).
        additive: Whether the residual stream is the sum of its terms (False for MiniMax, whose
            blocks renormalise the stream).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> cache
        ActivationCache(75 tensors, 12 layers)
        >>> cache["ssm_out", 3].shape                  # same as cache["blocks.3.hook_ssm_out"]
        torch.Size([1, 3, 128])
    """

    def __init__(self, values: dict[str, Tensor], layer_components: list[tuple[str, ...]],
                 residual_terms: list[tuple[str, ...]] | None = None, additive: bool = True):
        self._values = values
        self.layer_components = layer_components
        self.residual_terms = layer_components if residual_terms is None else residual_terms
        self.additive = additive
        self.layer_mixers = [mixers_of(components) for components in layer_components]

    # --- mapping ------------------------------------------------------------------------------
    def _key(self, key) -> str:
        if isinstance(key, str):
            return key
        return cache_key(*key)

    def __getitem__(self, key) -> Tensor:
        name = self._key(key)
        try:
            return self._values[name]
        except KeyError:
            from .hook_points import unknown_hook_error

            raise unknown_hook_error(name, self._values) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors, {len(self.layer_components)} layers)"

    def to(self, device: str | torch.device) -> ActivationCache:
        """A copy with every tensor moved to `device`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.to("cpu")["resid_pre", 0].device
            device(type='cpu')
        """
        return ActivationCache({k: v.to(device) for k, v in self._values.items()}, self.layer_components,
                               self.residual_terms, self.additive)

    def cpu(self) -> ActivationCache:
        """A copy with every tensor on the CPU, `self.to("cpu")`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.cpu()
            ActivationCache(75 tensors, 12 layers)
        """
        return self.to("cpu")

    # --- residual stream ------------------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        """Number of blocks of the model the cache comes from."""
        return len(self.layer_components)

    def layers_with(self, kind: str) -> list[int]:
        """Layers whose block has component `kind` (attn / linear_attn / ssm / mlp / resid_*).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.layers_with("attn")
            [3, 7]
        """
        if kind == "resid_mid":
            return [i for i, components in enumerate(self.layer_components) if has_resid_mid(components)]
        if kind in RESID_KINDS:
            return list(range(self.n_layers))
        return [i for i, components in enumerate(self.layer_components) if kind in components]

    def stack(self, kind: str, return_labels: bool = False):
        """Stack one kind over the layers that have it.

        Args:
            kind: `attn`, `linear_attn`, `ssm`, `mlp` (block-level outputs) or `resid_pre`,
                `resid_mid`, `resid_post`.
            return_labels: Also return the layer indices.

        Returns:
            `Float[Tensor, "n batch pos d_model"]` (n = number of layers with `kind`), and the
            layer indices if `return_labels`. Raises `ValueError` if no layer has `kind`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> attn, layers = cache.stack("attn", return_labels=True)
            >>> attn.shape, layers
            (torch.Size([2, 1, 3, 128]), [3, 7])
        """
        layers = self.layers_with(kind)
        if not layers:
            raise ValueError(f"No layer of this model has a {kind!r} component (layer components: {self.layer_components}).")
        stacked = torch.stack([self[hook_name(i, kind)] for i in layers])
        return (stacked, layers) if return_labels else stacked

    def accumulated_resid(
        self, layer: int | None = None, incl_mid: bool = False, return_labels: bool = False
    ) -> Float[Tensor, "n batch pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before each block up to `layer` (exclusive), plus the final output.

        With `layer=None` the last entry is `blocks.{n-1}.hook_resid_post` (labelled `final_post`);
        with `incl_mid` each block's `resid_mid` (where it has one) follows its `resid_pre`.

        Args:
            layer: Stop before this block; None covers every block and adds the final output.
            incl_mid: Include each block's `resid_mid`.
            return_labels: Also return labels `{i}_pre`, `{i}_mid`, `final_post`.

        Returns:
            `Float[Tensor, "n batch pos d_model"]`, and the labels if `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.accumulated_resid().shape               # 12 resid_pre + final resid_post
            torch.Size([13, 1, 3, 128])
            >>> cache.accumulated_resid(layer=2, incl_mid=True, return_labels=True)[1]
            ['0_pre', '0_mid', '1_pre', '1_mid']
        """
        stop = self.n_layers if layer is None else layer
        tensors, labels, mids = [], [], set(self.layers_with("resid_mid"))
        for i in range(stop):
            tensors.append(self[hook_name(i, "resid_pre")])
            labels.append(f"{i}_pre")
            if incl_mid and i in mids:
                tensors.append(self[hook_name(i, "resid_mid")])
                labels.append(f"{i}_mid")
        if layer is None:
            tensors.append(self[hook_name(self.n_layers - 1, "resid_post")])
            labels.append("final_post")
        stacked = torch.stack(tensors)
        return (stacked, labels) if return_labels else stacked

    def decompose_resid(
        self, layer: int | None = None, return_labels: bool = False
    ) -> Float[Tensor, "component batch pos d_model"] | tuple[Tensor, list[str]]:
        """Per-component contributions whose sum is the residual stream entering `layer`.

        Components are the embedding, then for every earlier block each output added to the
        residual (mixers, then the MLP), labelled `embed`, `{i}_{kind}` (e.g. `3_ssm`, `3_attn`,
        `3_mlp`). With `layer=None` they sum to the final `resid_post`. Raises `ValueError` for a
        family whose blocks renormalise the stream (MiniMax), where no such sum exists.

        Args:
            layer: The block whose input is decomposed; None decomposes the final output.
            return_labels: Also return the component labels.

        Returns:
            `Float[Tensor, "component batch pos d_model"]`, and the labels if `return_labels`
            (`ComponentLabel`s: strings that also carry their `layer` and `kind`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> parts, labels = cache.decompose_resid(layer=2, return_labels=True)
            >>> parts.shape, labels
            (torch.Size([7, 1, 3, 128]), ['embed', '0_ssm', '0_attn', '0_mlp', '1_ssm', '1_attn', '1_mlp'])
            >>> torch.allclose(parts.sum(0), cache["resid_pre", 2], atol=1e-5)
            True
        """
        if not self.additive:
            raise ValueError("This model's blocks renormalise the residual stream (each skip path is "
                             "alpha * norm(stream)), so the stream is not a sum of component outputs; "
                             "use the per-block points instead.")
        stop = self.n_layers if layer is None else layer
        tensors, labels = [self["hook_embed"]], [ComponentLabel(None, "embed")]
        for i in range(stop):
            for kind in self.residual_terms[i]:
                tensors.append(self[hook_name(i, kind)])
                labels.append(ComponentLabel(i, kind))
        stacked = torch.stack(tensors)
        return (stacked, labels) if return_labels else stacked
