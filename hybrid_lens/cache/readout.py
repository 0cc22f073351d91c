"""Stacks of residual-stream parts read out through the model's norms and unembedding: `apply_ln_to_stack`
and `logit_attrs`, TransformerLens's methods.

hybrid-lens does not fold norms into weights, so the norm applied to a stack is the model's own, gain
included: `apply_ln_to_stack` gives `gain * center(part) / scale`, with the scale of the actual residual
(the cached `hook_scale`, else computed exactly from the cached residual). Its parts sum to the norm's
output (`hook_normalized`, minus any LayerNorm bias), and `logit_attrs` with the model's unfolded `W_U`
equal TransformerLens's with its folded one (`fold_ln=True`); TransformerLens without folding leaves the
gain out of both.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from ..norms import NormForm
from ..vocabulary import hook_name
from .keys import stream_layer
from .positions import as_slice

TokenIds = str | int | Int[Tensor, ""] | Int[Tensor, "batch"] | Int[Tensor, "batch pos"]


class StackReadout:
    """`ActivationCache` methods that apply the model's norms and unembedding to stacks of residual parts.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> logits, cache = model.run_with_cache("In the beginning God")
        >>> parts = cache.decompose_resid(pos_slice=-1)                # [component, batch, d_model]
        >>> god = model.to_single_token(" God")
        >>> torch.allclose(cache.logit_attrs(parts, god, pos_slice=-1).sum(0), logits[:, -1, god], atol=1e-4)
        True
    """

    def apply_ln_to_stack(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Float[Tensor, "component *batch_and_pos_out d_model"]:
        """The norm read by the input of block `layer` (its first mixer's, or its MLP's with `mlp_input`;
        the final norm for `layer` = None, -1 or `n_layers`) applied to each part of a residual stack, with
        the scale frozen at the actual residual there: `gain * center(part) / scale`, no bias.

        The scale is the cache's `hook_scale` of that norm when cached, else computed from the cached
        residual that the norm reads (`resid_pre`, `resid_mid`, or the last `resid_post`) with the model's
        own norm (checked to reproduce it). A block input that is not normed returns the stack unchanged.

        Args:
            residual_stack: Parts of the residual stream, `Float[Tensor, "component *batch_and_pos d_model"]`
                (already `pos_slice`d and without the batch axis where the cache has none).
            layer: The block whose input the parts are taken as (see `stream_layer`).
            mlp_input: The block's MLP input (`ln2`) instead of its first mixer's (`ln1`).
            pos_slice: The positions of the stack, applied to the scale (TransformerLens `Slice` input).
            batch_slice: Rows to keep, applied to the stack (with `has_batch_dim`) and the scale.
            has_batch_dim: Whether the stack has a batch axis (its axis 1).
            recompute_ln: At the final norm, normalise each part by its own scale (the model's final norm
                applied to each part: the logit lens), not by the actual residual's.

        Returns:
            `Float[Tensor, "component *batch_and_pos_out d_model"]`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning God")
            >>> normed = cache.apply_ln_to_stack(cache.decompose_resid(layer=3), layer=3)
            >>> normed.shape, torch.allclose(normed.sum(0), model.block_norm(3)(cache["resid_pre", 3]), atol=1e-5)
            (torch.Size([10, 1, 5, 128]), True)
        """
        model = self.needs_model("apply_ln_to_stack")
        layer = stream_layer(layer, self.n_layers)
        pos_slice, batch_slice = as_slice(pos_slice), as_slice(batch_slice)
        if has_batch_dim:
            residual_stack = batch_slice.apply(residual_stack, dim=1)
        norm = model.block_norm(layer, mlp_input)
        if norm is None:
            return residual_stack
        if recompute_ln and layer == self.n_layers:
            return model.apply_final_norm(residual_stack)
        form = NormForm.of(norm)
        scale = pos_slice.apply(self._norm_scale(layer, mlp_input, form, norm), dim=-2)
        if self.has_batch_dim:
            scale = batch_slice.apply(scale, dim=0)
        return form.apply(residual_stack, scale)

    def _norm_scale(self, layer: int, mlp_input: bool, form: NormForm, norm) -> Float[Tensor, "*batch pos 1"]:
        """The scale of the norm at the input of block `layer`: cached, else computed from the cached residual."""
        norm_name = "ln_final" if layer == self.n_layers else f"blocks.{layer}.ln{2 if mlp_input else 1}"
        cached = f"{norm_name}.hook_scale"
        if cached in self.cache_dict:
            return self.cache_dict[cached]
        if layer == self.n_layers:
            resid = hook_name(self.n_layers - 1, "resid_post")
        else:
            resid = hook_name(layer, "resid_mid" if mlp_input and self.layout[layer].has_resid_mid else "resid_pre")
        if resid not in self.cache_dict:
            raise KeyError(f"Applying the norm at the input of block {layer} needs {cached} or {resid} in the cache: "
                           "run run_with_cache with no names_filter, or one that includes it.")
        value = self.cache_dict[resid]
        form.check(norm, value, f"block {layer}" if layer < self.n_layers else "the final norm")
        return form.scale(value)

    def logit_attrs(
        self,
        residual_stack: Float[Tensor, "component *batch_and_pos d_model"],
        tokens: TokenIds,
        incorrect_tokens: TokenIds | None = None,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim: bool = True,
    ) -> Float[Tensor, "component *batch_and_pos_out"]:
        """Each part's direct contribution to the logit of `tokens` (or to the logit difference with
        `incorrect_tokens`): the part through the final norm with the actual residual's scale
        (`apply_ln_to_stack(layer=-1)`), dotted with the tokens' unembedding directions (`W_U` columns).
        Over the parts of `decompose_resid()` they sum to the logits (difference).

        Args:
            residual_stack: Parts of the final residual stream, `Float[Tensor, "component *batch_and_pos d_model"]`.
            tokens: A token (str, int, 0-d tensor), or ids per row `[batch]` / per token `[batch, pos]`.
            incorrect_tokens: Tokens of the same shape whose logits are subtracted, or None.
            pos_slice: The positions of the stack (as in `apply_ln_to_stack`).
            batch_slice: Rows to keep (as in `apply_ln_to_stack`).
            has_batch_dim: Whether the stack has a batch axis.

        Returns:
            `Float[Tensor, "component *batch_and_pos_out"]`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits, cache = model.run_with_cache("And God said unto")
            >>> parts, labels = cache.decompose_resid(pos_slice=-1, return_labels=True)
            >>> attrs = cache.logit_attrs(parts, " Moses", incorrect_tokens=" Aaron", pos_slice=-1)
            >>> attrs.shape, labels[:3]
            (torch.Size([37, 1]), ['embed', '0_ssm_out', '0_attn_out'])
        """
        directions = self._residual_directions(tokens)
        if incorrect_tokens is not None:
            wrong = self._residual_directions(incorrect_tokens)
            if wrong.shape != directions.shape:
                raise ValueError(f"tokens and incorrect_tokens must have the same shape (tokens: "
                                 f"{tuple(directions.shape[:-1])}, incorrect_tokens: {tuple(wrong.shape[:-1])}).")
            directions = directions - wrong
        normed = self.apply_ln_to_stack(residual_stack, -1, pos_slice=pos_slice, batch_slice=batch_slice,
                                        has_batch_dim=has_batch_dim)
        return (normed * directions.to(normed.device, normed.dtype)).sum(-1)

    def _residual_directions(self, tokens: TokenIds) -> Float[Tensor, "*tokens d_model"]:
        """The unembedding directions (`W_U` columns) of token ids or a single token's string."""
        model = self.needs_model("logit_attrs")
        ids = model.to_single_token(tokens) if isinstance(tokens, str) else tokens
        unembedding = model.W_U
        return unembedding.T[torch.as_tensor(ids, device=unembedding.device)]
