"""The residual stream of a cached run: stacks over layers, the accumulated stream, its decomposition."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from ..vocabulary import ComponentLabel, hook_name


class ResidualStream:
    """`ActivationCache` methods over the residual stream and the components that write to it.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> _, cache = model.run_with_cache("In the beginning")
        >>> isinstance(cache, ResidualStream), cache.accumulated_resid().shape
        (True, torch.Size([9, 1, 3, 128]))
    """

    def stack(self, kind: str, return_labels: bool = False):
        """Stack one kind over the layers that have it.

        Args:
            kind: A component kind (`attn`, `linear_attn`, `ssm`, `conv`, `mlp`: block-level outputs) or `resid_pre`,
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
        layers = self.layout.layers_with(kind)
        if not layers:
            raise ValueError(f"No layer of this model has a {kind!r} component (layers: {self.layout}).")
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
        tensors, labels, mids = [], [], set(self.layout.layers_with("resid_mid"))
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
        if not self.layout.additive:
            raise ValueError("This model's blocks renormalise the residual stream (each skip path is "
                             "alpha * norm(stream)), so the stream is not a sum of component outputs; "
                             "use the per-block points instead.")
        stop = self.n_layers if layer is None else layer
        tensors, labels = [self["hook_embed"]], [ComponentLabel(None, "embed")]
        for layer in self.layout[:stop]:
            for kind in layer.residual_terms:
                tensors.append(self[hook_name(layer.index, kind)])
                labels.append(ComponentLabel(layer.index, kind))
        stacked = torch.stack(tensors)
        return (stacked, labels) if return_labels else stacked
