"""`model.cfg`: TransformerLens's `HookedTransformerConfig` names over the wrapped `transformers` config.

Code written for TransformerLens (SAE-Lens, circuitsvis demos, tutorials) reads `cfg.d_model`,
`cfg.n_layers`, `cfg.device`, `cfg.default_prepend_bos`, ...; every other attribute falls through to
the `transformers` config (`cfg.hidden_size`, `cfg.layer_types`, ...).
"""

from __future__ import annotations

from operator import attrgetter

import torch
from torch import nn

from .tokens import PaddingSide, check_padding_side, tokenizer_prepends_bos


class LensConfig:
    """TransformerLens-style view of a `HookedHybrid`'s configuration.

    Attributes:
        hf_config: The wrapped model's `transformers` config (other attributes are read from it).
        default_prepend_bos: Whether `to_tokens` and text input get a BOS token by default
            (settable). Defaults to TransformerLens's choice for the architecture (`Family.prepend_bos`:
            True, but False for the Qwen families, Granite and RecurrentGemma), whatever the tokenizer
            does by itself (`tokenizer_prepends_bos`).
        default_padding_side: The side a batch of texts is padded on (settable): the tokenizer's
            `padding_side`, as in TransformerLens (`"right"` without a tokenizer). Either side is exact
            where the family allows left padding (`Family.left_padding`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> model.cfg.d_model, model.cfg.n_layers, model.cfg.d_vocab
        (128, 8, 4096)
        >>> model.cfg.layer_types[:2]                  # falls through to the transformers config
        ['linear_attention', 'linear_attention']
    """

    def __init__(self, model):
        object.__setattr__(self, "_model", model)
        object.__setattr__(self, "hf_config", model.hf_model.config)
        self.default_prepend_bos = model.adapter.prepend_bos
        self._padding_side: PaddingSide = "right"  # the side while the model has no tokenizer

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.hf_config, name)

    def __repr__(self) -> str:
        return (f"LensConfig(model_name={self.model_name!r}, d_model={self.d_model}, n_layers={self.n_layers}, "
                f"n_heads={self.n_heads}, d_vocab={self.d_vocab}, n_ctx={self.n_ctx})")

    @property
    def default_padding_side(self) -> PaddingSide:
        """The side a batch of texts is padded on: the tokenizer's `padding_side` (setting it sets the
        tokenizer's); `"right"` for a model without a tokenizer."""
        tokenizer = self._model.tokenizer
        return self._padding_side if tokenizer is None else tokenizer.padding_side

    @default_padding_side.setter
    def default_padding_side(self, side: PaddingSide) -> None:
        check_padding_side(side)
        tokenizer = self._model.tokenizer
        self._padding_side = side
        if tokenizer is not None:
            tokenizer.padding_side = side

    @property
    def model_name(self) -> str:
        """The checkpoint's name or path (`name_or_path` of the `transformers` config)."""
        return self.hf_config.name_or_path or self.hf_config.model_type

    @property
    def original_architecture(self) -> str:
        """The `transformers` class name, e.g. `FalconH1ForCausalLM`."""
        return type(self._model.hf_model).__name__

    @property
    def d_model(self) -> int:
        """Width of the residual stream (`hidden_size`)."""
        return self.hf_config.hidden_size

    @property
    def n_layers(self) -> int:
        """Number of blocks."""
        return self._model.n_layers

    def _attention(self) -> nn.Module | None:
        """The softmax-attention module of the first layer that has one (None: no attention)."""
        model = self._model
        layers = model.layout.layers_with("attn")
        if not layers:
            return None
        block = model.adapter.block_of(model.layout[layers[0]].block_key)
        path = next(mixer.module for mixer in block.mixers if mixer.kind == "attn")
        return attrgetter(path)(model.adapter.layers(model.hf_model)[layers[0]])

    @property
    def n_heads(self) -> int | None:
        """Query heads of the softmax-attention layers (`num_attention_heads`); None without attention
        (Mamba, Mamba-2, FalconMamba, whose configs have no attention heads)."""
        return None if self._attention() is None else self.hf_config.num_attention_heads

    @property
    def n_key_value_heads(self) -> int | None:
        """Key/value heads of the softmax-attention layers; None without attention."""
        return getattr(self.hf_config, "num_key_value_heads", None) or self.n_heads

    @property
    def d_head(self) -> int | None:
        """Width of one attention head's queries and keys (`hook_q` / `hook_k`; multi-head latent
        attention's values are `v_head_dim` wide); None without attention."""
        attention = self._attention()
        if attention is None:
            return None
        return getattr(attention, "head_dim", None) or attention.qk_head_dim

    @property
    def d_mlp(self) -> int | None:
        """Hidden width of the MLP (`intermediate_size`); None for a model whose blocks have no MLP."""
        return self.hf_config.intermediate_size if self._model.layout.layers_with("mlp") else None

    @property
    def d_vocab(self) -> int:
        """Vocabulary size (rows of the embedding)."""
        return self._model.hf_model.get_input_embeddings().weight.shape[0]

    @property
    def d_vocab_out(self) -> int:
        """Number of logits."""
        return self._model.hf_model.lm_head.weight.shape[0]

    @property
    def n_ctx(self) -> int | None:
        """Maximum positions (`max_position_embeddings`), or None where the model has no limit."""
        return getattr(self.hf_config, "max_position_embeddings", None)

    @property
    def act_fn(self) -> str | None:
        """The MLP activation (`hidden_act`)."""
        return getattr(self.hf_config, "hidden_act", None)

    @property
    def normalization_type(self) -> str:
        """`"RMS"` for an RMSNorm final norm, `"LN"` for a LayerNorm, read from the model (every
        registered family uses RMSNorm; OLMo-Hybrid applies it to each mixer's and MLP's output)."""
        norm = self._model.adapter.final_norm(self._model.hf_model)
        return "LN" if isinstance(norm, nn.LayerNorm) or "LayerNorm" in type(norm).__name__ else "RMS"

    @property
    def positional_embedding_type(self) -> str | None:
        """`"rotary"` when attention applies rotary position embeddings (the model holds a rotary
        embedding module); None when nothing but the causal mask and the recurrent mixers encodes
        positions: Mamba, Mamba-2, FalconMamba, Jamba, Nemotron-H, Kimi-Linear's MLA, and configs
        without RoPE (OLMo-Hybrid or Granite-4.0-H without `rope_parameters`, Zamba2 without
        `use_mem_rope`)."""
        rotary = any(type(module).__name__.endswith("RotaryEmbedding") for module in self._model.hf_model.modules())
        return "rotary" if rotary else None

    @property
    def tokenizer_prepends_bos(self) -> bool:
        """Whether the tokenizer adds a BOS token by itself."""
        tokenizer = self._model.tokenizer
        return tokenizer is not None and tokenizer_prepends_bos(tokenizer)

    @property
    def device(self) -> torch.device:
        """Device of the model's parameters."""
        return self._model.device

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the model's parameters."""
        return next(self._model.hf_model.parameters()).dtype


def _switch(name: str) -> property:
    """`cfg.{name}`: one of TransformerLens's switches (None: unset), settable as `model.set_{name}` sets it."""
    return property(lambda cfg: getattr(cfg._model.switches, name),
                    lambda cfg, on: getattr(cfg._model, f"set_{name}")(on),
                    doc=f"TransformerLens's `{name}` switch (None: unset; see `HookedHybrid.set_{name}`).")


for _name in ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in", "use_attn_in"):
    setattr(LensConfig, _name, _switch(_name))
