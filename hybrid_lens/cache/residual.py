"""The residual stream of a cached run: stacks over layers, the accumulated stream, its decomposition.

The methods take TransformerLens's arguments and give its values and labels. `layer` counts residual
streams (`stream_layer`): `k` is the input of block `k`, `n_layers` (or None, -1) the final output.
Where TransformerLens has attention and MLP sublayers, a hybrid block has its mixers (`attn`,
`linear_attn`, `ssm`, `conv`) and its MLP: `decompose_resid` labels each output by its hook point,
`{layer}_{kind}_out` (`3_ssm_out`, `3_attn_out`, `3_mlp_out`).
"""

from __future__ import annotations

from typing import Literal

import torch
from jaxtyping import Float
from torch import Tensor

from ..vocabulary import COMPONENT_KINDS, MIXER_KINDS, ComponentLabel, hook_name
from .keys import stream_layer
from .positions import as_slice

Mode = Literal["all", "mixer", "attn", "linear_attn", "ssm", "conv", "mlp"]


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

    def stack_activation(self, activation_name: str, layer: int | None = -1,
                         sublayer_type: str | None = None) -> Float[Tensor, "layers_covered ..."]:
        """`cache[activation_name, l, sublayer_type]` stacked for every block `l` before `layer`
        (TransformerLens's method; None and -1: every block). A point some of those blocks lack raises a
        `KeyError` naming the blocks that have it (`stack` stacks a kind over the blocks that have it).

        Args:
            activation_name: The point's name or shorthand (`"pattern"`, `"resid_pre"`, `"scale"`).
            layer: Stack the blocks before this one (see `stream_layer`).
            sublayer_type: The point's layer type (`"ln1"`, or a mixer kind: `"linear_attn"`, `"ssm"`).

        Returns:
            `Float[Tensor, "layers_covered ..."]`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.stack_activation("pattern").shape, cache.stack_activation("resid_post", 3).shape
            (torch.Size([8, 1, 4, 3, 3]), torch.Size([3, 1, 3, 128]))
        """
        stop = stream_layer(layer, self.n_layers)
        return torch.stack([self[(activation_name, i, sublayer_type)] for i in range(stop)])

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice=None,
        mlp_input: bool = False,
        return_labels: bool = False,
    ) -> Float[Tensor, "layers_covered *batch_and_pos d_model"] | tuple[Tensor, list[str]]:
        """The residual stream before each block up to block `layer` (its input included), as TransformerLens.

        Entries are `blocks.{i}.hook_resid_pre` for `i <= layer` (labelled `{i}_pre`); for `layer` = None,
        -1 or `n_layers` also the final stream `blocks.{n-1}.hook_resid_post` (`final_post`). With
        `incl_mid` each earlier block's `resid_mid` (where it has one) follows its `resid_pre`; with
        `mlp_input` block `layer`'s own `resid_mid` ends the stack.

        Args:
            layer: The last block whose input is included (see `stream_layer`).
            incl_mid: Include each earlier block's `resid_mid`.
            apply_ln: Apply the norm at block `layer`'s input to every entry (`apply_ln_to_stack`); at the
                final norm each entry is normalised by its own scale (the logit lens).
            pos_slice: Positions to keep (TransformerLens `Slice` input; an int drops the axis).
            mlp_input: Add block `layer`'s `resid_mid` (the MLP's input), and normalise with its MLP's norm.
            return_labels: Also return labels `{i}_pre`, `{i}_mid`, `final_post`.

        Returns:
            `Float[Tensor, "layers_covered *batch_and_pos d_model"]`, and the labels if `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.accumulated_resid().shape               # 12 resid_pre + final resid_post
            torch.Size([13, 1, 4, 128])
            >>> cache.accumulated_resid(layer=2, incl_mid=True, return_labels=True)[1]
            ['0_pre', '0_mid', '1_pre', '1_mid', '2_pre']
            >>> cache.accumulated_resid(apply_ln=True, pos_slice=-1).shape   # the logit lens' input
            torch.Size([13, 1, 128])
        """
        layer = stream_layer(layer, self.n_layers)
        if mlp_input and layer < self.n_layers and not self.layout[layer].has_mlp:
            raise ValueError(f"Block {layer} ({self.layout[layer].type}) has no MLP, so there is no MLP input.")
        pos = as_slice(pos_slice)
        tensors, labels = [], []
        for i in range(layer + 1):
            if i == self.n_layers:
                tensors.append(self[hook_name(i - 1, "resid_post")])
                labels.append("final_post")
                continue
            tensors.append(self[hook_name(i, "resid_pre")])
            labels.append(f"{i}_pre")
            if ((incl_mid and i < layer) or (mlp_input and i == layer)) and self.layout[i].has_resid_mid:
                tensors.append(self[hook_name(i, "resid_mid")])
                labels.append(f"{i}_mid")
        stacked = torch.stack([pos.apply(t, dim=-2) for t in tensors])
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, mlp_input=mlp_input, pos_slice=pos,
                                             has_batch_dim=self.has_batch_dim, recompute_ln=layer == self.n_layers)
        return (stacked, labels) if return_labels else stacked

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: Mode = "all",
        apply_ln: bool = False,
        pos_slice=None,
        incl_embeds: bool = True,
        return_labels: bool = False,
    ) -> Float[Tensor, "component *batch_and_pos d_model"] | tuple[Tensor, list[ComponentLabel]]:
        """Per-component contributions whose sum is the residual stream entering block `layer`.

        Components are the embedding (`embed`), then for every earlier block each output added to the
        residual (its mixers in order, then its MLP), labelled as TransformerLens labels them by hook point:
        `{i}_{kind}_out` (`3_ssm_out`, `3_attn_out`, `3_mlp_out`). With `layer=None` they sum to the final
        `resid_post`. Raises `ValueError` for a family whose blocks renormalise the stream (MiniMax), where
        no such sum exists.

        Args:
            layer: The block whose input is decomposed (see `stream_layer`); None: the final stream.
            mlp_input: Decompose block `layer`'s MLP input instead: add its mixers' outputs.
            mode: Which outputs: `"all"`; `"mlp"` (MLPs only); `"mixer"` (every mixer, TransformerLens's
                attention sublayer); or one mixer kind: `"attn"` (softmax attention only, as the word means
                in hybrid-lens), `"linear_attn"`, `"ssm"`, `"conv"`.
            apply_ln: Apply the norm at that input to every component (`apply_ln_to_stack`).
            pos_slice: Positions to keep (TransformerLens `Slice` input; an int drops the axis).
            incl_embeds: Include the embedding.
            return_labels: Also return the labels (`ComponentLabel`s: strings that also carry `layer`, `kind`).

        Returns:
            `Float[Tensor, "component *batch_and_pos d_model"]`, and the labels if `return_labels`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> parts, labels = cache.decompose_resid(layer=2, return_labels=True)
            >>> parts.shape, labels
            (torch.Size([7, 1, 4, 128]),
             ['embed', '0_ssm_out', '0_attn_out', '0_mlp_out', '1_ssm_out', '1_attn_out', '1_mlp_out'])
            >>> torch.allclose(parts.sum(0), cache["resid_pre", 2], atol=1e-5)
            True
            >>> cache.decompose_resid(layer=2, mode="ssm", incl_embeds=False, return_labels=True)[1]
            ['0_ssm_out', '1_ssm_out']
        """
        if not self.layout.additive:
            raise ValueError("This model's blocks renormalise the residual stream (each skip path is "
                             "alpha * norm(stream)), so the stream is not a sum of component outputs; "
                             "use the per-block points instead.")
        if mode not in ("all", "mixer", *COMPONENT_KINDS):
            raise ValueError(f"mode must be 'all', 'mixer' or a component kind {COMPONENT_KINDS}, not {mode!r}.")
        layer = stream_layer(layer, self.n_layers)
        if mlp_input and (layer == self.n_layers or not self.layout[layer].has_mlp):
            where = "the final stream" if layer == self.n_layers else f"block {layer} ({self.layout[layer].type})"
            raise ValueError(f"mlp_input=True needs a block with an MLP, not {where}.")
        wanted = {"all": COMPONENT_KINDS, "mixer": MIXER_KINDS}.get(mode, (mode,))
        labels = [ComponentLabel(None, "embed")] if incl_embeds else []
        for block in self.layout[: layer + 1 if mlp_input else layer]:
            terms = block.residual_terms if block.index < layer else block.mixers  # block `layer`: its mixers
            labels += [ComponentLabel(block.index, kind) for kind in terms
                       if kind in wanted and kind in block.residual_terms]
        if not labels:
            raise ValueError(f"Nothing to decompose into: layer={layer}, mode={mode!r}, incl_embeds={incl_embeds}.")
        pos = as_slice(pos_slice)
        names = ["hook_embed" if label.layer is None else hook_name(label.layer, label.kind) for label in labels]
        stacked = torch.stack([pos.apply(self[name], dim=-2) for name in names])
        if apply_ln:
            stacked = self.apply_ln_to_stack(stacked, layer, mlp_input=mlp_input, pos_slice=pos,
                                             has_batch_dim=self.has_batch_dim)
        return (stacked, labels) if return_labels else stacked
