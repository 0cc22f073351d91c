"""Readout: from the residual stream to logits and loss, outside the forward pass (no hook points fire), and
the model-level weight views `W_U` / `W_E`."""

from __future__ import annotations

from operator import attrgetter

from jaxtyping import Float, Int
from torch import Tensor, nn

from .checks import is_int

NO_POSITIONS = ("hybrid-lens models have no learned positional embedding (TransformerLens's W_pos / pos_embed): "
                "attention applies rotary positions inside (cfg.positional_embedding_type 'rotary') or none, and the "
                "recurrent mixers encode order themselves; the token embedding is W_E.")
ABSENT = {"W_pos": NO_POSITIONS, "pos_embed": NO_POSITIONS, "hook_pos_embed": NO_POSITIONS}


class Readout:
    """`HookedHybrid`'s readout methods: the final norm, the unembedding of any residual, the weight views
    `W_U` and `W_E`, and a clear error for TransformerLens attributes that cannot exist here (`W_pos`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> logits, cache = model.run_with_cache("In the beginning")
        >>> torch.equal(model.unembed(model.apply_final_norm(cache["resid_post", 7])), logits)
        True
    """

    def apply_final_norm(self, resid: Float[Tensor, "... d_model"]) -> Float[Tensor, "... d_model"]:
        """The model's final norm applied to any residual-stream tensor (no hook points fire).

        Args:
            resid: `Float[Tensor, "... d_model"]`, e.g. a cached `resid_post`.

        Returns:
            `Float[Tensor, "... d_model"]`, the normed residual.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> model.apply_final_norm(cache["resid_post", 5]).shape
            torch.Size([1, 4, 128])
        """
        return self.adapter.final_norm(self.hf_model).forward(resid)

    def block_norm(self, layer: int, mlp_input: bool = False) -> nn.Module | None:
        """The norm that reads the residual stream entering block `layer`: TransformerLens's `ln1` (the norm of
        the block's first mixer; of its MLP in a block with an MLP only), with `mlp_input` its `ln2` (the MLP's
        norm, reading `resid_mid`); the final norm for `layer == n_layers`. None where that input is not normed
        (OLMo-Hybrid's attention blocks); `ValueError` for `mlp_input` in a block without an MLP, and for a block
        whose components feed a mixer's input (Zamba2's hybrid blocks), where no norm reads the stream alone.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> type(model.block_norm(0)).__name__, model.block_norm(12) is model.adapter.final_norm(model.hf_model)
            ('FalconH1RMSNorm', True)
        """
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer <= self.n_layers:
            raise ValueError(f"layer must be an int in [0, {self.n_layers}] ({self.n_layers}: the final norm), "
                             f"not {layer!r}.")
        if layer == self.n_layers:
            return self.adapter.final_norm(self.hf_model)
        block = self.adapter.block_of(self.layout[layer].block_key)
        if block.feeds_mixer:
            raise ValueError(f"No norm of block {layer} reads the residual stream alone: its {block.feeds_mixer} "
                             f"outputs feed its {block.mixers[-1].kind} input ({self.adapter.family}'s adapter says "
                             "how), so there is no norm to apply to parts of the stream there.")
        if mlp_input or not block.mixers:
            if block.mlp is None:
                raise ValueError(f"Block {layer} ({self.layout[layer].type}) has no MLP, so there is no MLP input.")
            path = block.mlp.norm
        else:
            path = block.mixers[0].norm
        return None if path is None else attrgetter(path)(self.adapter.layers(self.hf_model)[layer])

    def unembed(self, normed: Float[Tensor, "... d_model"]) -> Float[Tensor, "... vocab"]:
        """Logits from final-normed residuals: `lm_head` with any logit multiplier or divisor, through
        any logit soft cap (RecurrentGemma); no hooks fire.

        Args:
            normed: `Float[Tensor, "... d_model"]`, the output of the final norm.

        Returns:
            `Float[Tensor, "... vocab"]` logits.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits, cache = model.run_with_cache("In the beginning")
            >>> torch.allclose(model.unembed(cache["ln_final.hook_normalized"]), logits)
            True
        """
        logits = self.adapter.scale_logits(self.hf_model, self.hf_model.lm_head.forward(normed))
        transform = self.adapter.logit_transform
        return logits if transform is None else transform(self.hf_model, logits)

    @property
    def W_U(self) -> Float[Tensor, "d_model vocab"]:
        """Unembedding matrix, TransformerLens layout `Float[Tensor, "d_model vocab"]`: a view of
        `lm_head.weight` (transposed; not a copy: edits reach the model), or where the model multiplies or
        divides its logits (Falcon-H1, Granite) the scaled matrix, a new tensor, so that always
        `ln_final.hook_normalized @ W_U` = logits. Raises `NotImplementedError` for a model whose logits are
        not linear in the final-normed residual (a soft cap): `unembed` gives its logits.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> model.W_U.shape, model.W_U.data_ptr() == model.hf_model.lm_head.weight.data_ptr()
            (torch.Size([128, 4096]), True)
        """
        if self.adapter.logit_transform is not None:
            raise NotImplementedError(
                f"{self.adapter.family} soft-caps its logits, so they are not linear in the final-normed residual and "
                "there is no W_U (direct logit attribution would not sum to the logits). Use model.unembed for the "
                "logits, or hf_model.lm_head.weight for the pre-cap unembedding.")
        weight, hf_model = self.hf_model.lm_head.weight.T, self.hf_model
        unscaled = self.adapter.logit_scale(hf_model) == 1 and self.adapter.logit_divisor(hf_model) == 1
        return weight if unscaled else self.adapter.scale_logits(hf_model, weight)

    @property
    def W_E(self) -> Float[Tensor, "vocab d_model"]:
        """Embedding matrix, TransformerLens layout `Float[Tensor, "vocab d_model"]`: a view of the
        `transformers` embedding weight (not a copy), or where the model scales its embeddings before
        block 0 (Falcon-H1, Granite, RecurrentGemma: `Family.embed_scale`) the scaled matrix, a new tensor,
        so that always `hook_embed` = `W_E[tokens]`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model.W_E.data_ptr() == model.hf_model.get_input_embeddings().weight.data_ptr()
            True
            >>> tokens = model.to_tokens("In the beginning")
            >>> _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
            >>> torch.equal(cache["hook_embed"], model.W_E[tokens])
            True
        """
        weight = self.hf_model.get_input_embeddings().weight
        scale = self.adapter.embed_scale(self.hf_model)
        return weight if isinstance(scale, (int, float)) and scale == 1 else weight * scale

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, "..."],
    ) -> Float[Tensor, "d_model"] | Float[Tensor, "... d_model"]:
        """The unembedding direction of each token: `W_U[:, token]`, the vector whose dot product with
        `ln_final.hook_normalized` is that token's logit (no folding: the final norm's gain is in
        `hook_normalized`, not in `W_U`). As TransformerLens: a one-token string, an id or a 1-element
        tensor gives `[d_model]`; a tensor of ids `[...]` gives `[..., d_model]`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
            >>> model.tokens_to_residual_directions(" God").shape
            torch.Size([128])
            >>> model.tokens_to_residual_directions(model.to_tokens(["In the beginning", "And God"])).shape
            torch.Size([2, 3, 128])
        """
        if isinstance(tokens, Tensor) and tokens.numel() > 1:
            return self.W_U.T[tokens]
        if isinstance(tokens, str):
            return self.W_U[:, self.to_single_token(tokens)]
        if isinstance(tokens, Tensor) and not tokens.is_floating_point():
            return self.W_U[:, int(tokens.item())]
        if not is_int(tokens):
            raise TypeError(f"tokens must be a one-token string, a token id or a tensor of ids, not {tokens!r}.")
        return self.W_U[:, int(tokens)]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in ABSENT:
                raise AttributeError(f"{type(self).__name__} has no {name}: {ABSENT[name]}") from None
            raise


def next_token_loss(
    logits: Float[Tensor, "batch pos vocab"], tokens: Int[Tensor, "batch pos"], mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Cross-entropy of predicting token t+1 from position t (computed in float32).

    Args:
        logits: `Float[Tensor, "batch pos vocab"]`.
        tokens: `Int[Tensor, "batch pos"]`, the input ids (targets are `tokens[:, 1:]`).
        mask: `Int[Tensor, "batch pos"]` attention mask (its last `pos` columns where it is longer); a
            prediction from or of a pad position is left out of the mean (and is 0 with `per_token`),
            under left and right padding alike, as TransformerLens's `lm_cross_entropy_loss` does.
        per_token: Return every loss instead of the mean.

    Returns:
        The mean loss `Float[Tensor, ""]`, or `Float[Tensor, "batch pos-1"]` with `per_token=True`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tokens = model.to_tokens("In the beginning God created the heaven")
        >>> next_token_loss(model(tokens), tokens, per_token=True).shape
        torch.Size([1, 7])
    """
    log_probs = logits[:, :-1].float().log_softmax(-1)
    nll = -log_probs.gather(-1, tokens[:, 1:, None])[..., 0]
    if mask is None:
        return nll if per_token else nll.mean()
    mask = mask[:, -tokens.shape[1]:].bool()
    target_mask = (mask[:, 1:] & mask[:, :-1]).to(nll.dtype)
    return nll * target_mask if per_token else (nll * target_mask).sum() / target_mask.sum()
