"""TransformerLens's loading keywords for `HookedHybrid.from_pretrained`, `from_hf` and `from_config`.

Code written for `HookedTransformer.from_pretrained` passes `device`, `dtype` (or `torch_dtype`),
`default_prepend_bos`, `default_padding_side`, `move_to_device`, `n_devices`, `hf_model` and the
weight-processing flags. `LoadOptions.take` removes them from the keyword arguments (the rest go to
`transformers`), refusing with the reason what cannot apply: hybrid-lens keeps the `transformers`
weights as they are, so a processing flag is accepted with the value that means "no processing" only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .tokens import PaddingSide, check_padding_side

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}

PROCESSING = {  # TransformerLens's weight processing -> how to get the same from the unprocessed weights
    "fold_ln": "the norms' gains stay in the norms: `hook_normalized` is the norm's output with its gain, so "
               "`hook_normalized @ W` equals TransformerLens's folded `hook_normalized @ W_folded`",
    "center_writing_weights": "centering the weights that write to the residual stream leaves a LayerNorm model's "
                              "outputs unchanged but changes an RMSNorm model's (every registered family); center "
                              "activations yourself (`x - x.mean(-1, keepdim=True)`) where an analysis needs it",
    "center_unembed": "softmax ignores a constant, so subtract `logits.mean(-1, keepdim=True)` (or use "
                      "`W_U - W_U.mean(-1, keepdim=True)`) yourself",
    "fold_value_biases": "`hook_z` includes the value bias; `b_V @ W_O` is the constant it adds to the "
                         "attention output",
    "refactor_factored_attn_matrices": "build `transformer_lens.FactoredMatrix(W_Q, W_K.transpose(-2, -1))` "
                                       "from the weights",
}
UNSUPPORTED = {  # TransformerLens keywords that cannot apply -> what to do instead
    "checkpoint_index": "TransformerLens's own training checkpoints are not loaded here; pass revision= for a hub "
                        "revision",
    "checkpoint_value": "TransformerLens's own training checkpoints are not loaded here; pass revision= for a hub "
                        "revision",
    "checkpoint_label": "TransformerLens's own training checkpoints are not loaded here; pass revision= for a hub "
                        "revision",
    "first_n_layers": "hybrid-lens wraps the whole model; run the first layers with forward(..., stop_at_layer=n)",
    "n_ctx": "the context length is the config's max_position_embeddings (cfg.n_ctx)",
}


@dataclass
class LoadOptions:
    """TransformerLens's loading keywords, taken out of a call's keyword arguments (`take`).

    Attributes:
        device: Where to put the model (None: where `transformers` loads it, the CPU by default).
        dtype: Parameter dtype (a `torch.dtype`; TransformerLens's strings such as `"bfloat16"` are read).
        default_prepend_bos: Sets `cfg.default_prepend_bos` (None: the architecture's default).
        default_padding_side: Sets `cfg.default_padding_side`, i.e. the tokenizer's `padding_side`.
        move_to_device: False: leave the model where it was loaded, whatever `device` says.
        hf_model: An already loaded `transformers` model to wrap instead of loading one.

    Examples:
        >>> kwargs = {"device": "cpu", "dtype": "bfloat16", "fold_ln": False, "revision": "main"}
        >>> options = LoadOptions.take(kwargs)
        >>> options.dtype, kwargs
        (torch.bfloat16, {'revision': 'main'})
        >>> LoadOptions.take({"fold_ln": True})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: fold_ln=True: hybrid-lens keeps the transformers weights unprocessed...
    """

    device: str | torch.device | None = None
    dtype: torch.dtype | None = None
    default_prepend_bos: bool | None = None
    default_padding_side: PaddingSide | None = None
    move_to_device: bool = True
    hf_model: torch.nn.Module | None = None

    @classmethod
    def take(cls, kwargs: dict) -> LoadOptions:
        """Remove TransformerLens's keywords from `kwargs` (in place) and return them; `ValueError` for a
        processing flag that asks for processing, `n_devices > 1` or a keyword that cannot apply.

        Examples:
            >>> LoadOptions.take({"n_devices": 2})  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: n_devices > 1 splits TransformerLens's blocks over GPUs; ... pass device_map='auto' ...
        """
        for flag, how in PROCESSING.items():
            if kwargs.pop(flag, None):
                raise ValueError(f"{flag}=True: hybrid-lens keeps the transformers weights unprocessed, so it cannot "
                                 f"apply {flag}. Pass {flag}=False or leave it out (from_pretrained_no_processing is "
                                 f"the same call); to get the same: {how}.")
        for name, instead in UNSUPPORTED.items():
            if kwargs.get(name) is not None:
                raise ValueError(f"{name}={kwargs[name]!r} is a TransformerLens keyword that does not apply here: "
                                 f"{instead}.")
            kwargs.pop(name, None)
        if kwargs.pop("n_devices", 1) not in (1, None):
            raise ValueError("n_devices > 1 splits TransformerLens's blocks over GPUs; hybrid-lens places the "
                             "transformers model: pass device_map='auto' (transformers with accelerate).")
        dtype, torch_dtype = kwargs.pop("dtype", None), kwargs.pop("torch_dtype", None)
        dtype = dtype if torch_dtype is None else torch_dtype  # TransformerLens: torch_dtype overrides dtype
        if isinstance(dtype, str):
            if dtype not in DTYPES:
                raise ValueError(f"dtype {dtype!r} is not one of {sorted(DTYPES)} (or a torch.dtype).")
            dtype = DTYPES[dtype]
        side, bos = kwargs.pop("default_padding_side", None), kwargs.pop("default_prepend_bos", None)
        if side is not None:
            check_padding_side(side)
        if bos is not None and not isinstance(bos, bool):
            raise ValueError(f"default_prepend_bos must be True, False or None, not {bos!r}.")
        return cls(device=kwargs.pop("device", None), dtype=dtype, default_prepend_bos=bos, default_padding_side=side,
                   move_to_device=kwargs.pop("move_to_device", True), hf_model=kwargs.pop("hf_model", None))

    def place(self, hf_model: torch.nn.Module) -> torch.nn.Module:
        """Put `hf_model` on `device` (unless `move_to_device` is False) and in `dtype` (a model already in
        it, e.g. dispatched by `device_map`, is not moved); returns it.

        Examples:
            >>> from hybrid_lens.configs import tiny_config
            >>> from transformers import AutoModelForCausalLM
            >>> hf_model = AutoModelForCausalLM.from_config(tiny_config("qwen3_5"))
            >>> LoadOptions(device="cpu", dtype=torch.bfloat16).place(hf_model).dtype
            torch.bfloat16
        """
        if self.device is not None and self.move_to_device:
            hf_model.to(self.device)
        if self.dtype is not None and next(hf_model.parameters()).dtype != self.dtype:
            hf_model.to(self.dtype)
        return hf_model

    def configure(self, model):
        """Set `model`'s tokenization defaults from these options; returns `model`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> model = LoadOptions(default_prepend_bos=True, default_padding_side="left").configure(model)
            >>> model.cfg.default_prepend_bos, model.tokenizer.padding_side
            (True, 'left')
        """
        if self.default_prepend_bos is not None:
            model.cfg.default_prepend_bos = self.default_prepend_bos
        if self.default_padding_side is not None:
            model.cfg.default_padding_side = self.default_padding_side
        return model
