"""The published configs of the reference models, and shrunken copies for tests and demos."""

from __future__ import annotations

import json
from pathlib import Path

from transformers import AutoConfig, PretrainedConfig

HERE = Path(__file__).parent
REFERENCE_CONFIGS = {
    "qwen2": "Qwen2.5-0.5B.json",
    "qwen3_5": "Qwen3.5-0.8B.json",
    "falcon_h1": "Falcon-H1-0.5B-Base.json",
}

# Widths of the shrunken copies; layer pattern, multipliers and flags stay as published.
_TINY = {
    "qwen2": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                  num_hidden_layers=4, vocab_size=256, max_window_layers=4),
    "qwen3_5": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=32, linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
                    linear_value_head_dim=16, num_hidden_layers=8, vocab_size=256),
    "falcon_h1": dict(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                      head_dim=16, mamba_d_ssm=64, mamba_n_heads=4, mamba_d_head=16, mamba_d_state=16,
                      mamba_chunk_size=16, num_hidden_layers=4, vocab_size=256),
}


def reference_config(family: str) -> PretrainedConfig:
    """The published config of `family` (qwen2 / qwen3_5 / falcon_h1), text model only.

    Read from the bundled copies of the configs of Qwen2.5-0.5B, Qwen3.5-0.8B and
    Falcon-H1-0.5B-Base (no network); build a randomly initialised full-size model from it with
    `HookedHybrid.from_config`.

    Examples:
        >>> config = reference_config("qwen3_5")
        >>> type(config).__name__, config.num_hidden_layers, config.hidden_size
        ('Qwen3_5TextConfig', 24, 1024)
        >>> config.layer_types[:4]
        ['linear_attention', 'linear_attention', 'linear_attention', 'full_attention']
    """
    data = json.loads((HERE / REFERENCE_CONFIGS[family]).read_text())
    data = data.get("text_config", data)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def tiny_config(family: str, num_hidden_layers: int | None = None, **overrides) -> PretrainedConfig:
    """A tiny config of a registered family (`hybrid_lens.adapters.FAMILIES`).

    For `qwen2`, `qwen3_5` and `falcon_h1`, a shrunken copy of the published config (same layer
    pattern and multipliers); for every other family, the `transformers` config class's defaults
    with the family's `tiny` fields (`Family.tiny`). d_model 64, vocabulary 256 (ids 0 = pad,
    1 = bos, 2 = eos), float32; the tests build their random-init models from these.

    Args:
        family: A registered family name (`hybrid-lens models` lists them).
        num_hidden_layers: Number of layers (default 4, or 8 for `qwen3_5`); Qwen3.5's layer
            pattern is repeated to that length.
        **overrides: Any other config field.

    Examples:
        >>> config = tiny_config("qwen3_5", num_hidden_layers=4)
        >>> config.hidden_size, config.layer_types
        (64, ['linear_attention', 'linear_attention', 'linear_attention', 'full_attention'])
        >>> model = HookedHybrid.from_config(config, seed=0)
        >>> model.layer_types
        ['linear_attn', 'linear_attn', 'linear_attn', 'attn']
    """
    from ..adapters import FAMILIES

    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}; registered: {sorted(FAMILIES)}.")
    if family in REFERENCE_CONFIGS:
        data = json.loads((HERE / REFERENCE_CONFIGS[family]).read_text())
        data = data.get("text_config", data)
        data.update(_TINY[family])
    else:
        data = dict(FAMILIES[family].tiny, model_type=FAMILIES[family].model_types[0], vocab_size=256)
    data.update(dtype="float32", torch_dtype="float32", bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if num_hidden_layers is not None:
        data["num_hidden_layers"] = num_hidden_layers
    if family == "qwen3_5":
        pattern = data["layer_types"]
        data["layer_types"] = [pattern[i % len(pattern)] for i in range(data["num_hidden_layers"])]
        data["rope_parameters"] = dict(data["rope_parameters"], mrope_section=[2, 1, 1])
    data.update(overrides)
    return AutoConfig.for_model(data.pop("model_type"), **data)
