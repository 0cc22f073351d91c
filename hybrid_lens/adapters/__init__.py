"""Architecture adapters: one `Family` (data) per family, chosen from the model class or
`config.model_type`; `spec.Family.block_forward` runs every family's blocks."""

from __future__ import annotations

from ..vocabulary import COMPONENT_KINDS, MIXER_KINDS
from .base import HookedBlock
from .dense import LLAMA, QWEN2, QWEN3
from .falcon_h1 import FALCON_H1
from .qwen3_5 import QWEN3_5
from .spec import Block, Family, Mixer, Mlp

ADAPTERS: tuple[Family, ...] = (QWEN3_5, FALCON_H1, QWEN2, LLAMA, QWEN3)
FAMILIES: dict[str, Family] = {adapter.family: adapter for adapter in ADAPTERS}


def supported_architectures() -> list[str]:
    """The `transformers` model classes `HookedHybrid` can wrap (from the registered adapters).

    Examples:
        >>> from hybrid_lens import supported_architectures
        >>> supported_architectures()[:4]
        ['Qwen3_5ForCausalLM', 'FalconH1ForCausalLM', 'Qwen2ForCausalLM', 'LlamaForCausalLM']
    """
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


def adapter_for(hf_model) -> Family:
    """The adapter for a `transformers` causal LM, by class name, else by `config.model_type`."""
    name = type(hf_model).__name__
    model_type = getattr(hf_model.config, "model_type", None)
    for adapter in ADAPTERS:
        if name in adapter.architectures or (model_type in adapter.model_types and name.endswith("ForCausalLM")):
            return adapter
    raise NotImplementedError(
        f"Unsupported architecture {name} (model_type={model_type!r}). hybrid-lens supports: "
        f"{', '.join(supported_architectures())}. Qwen3.5 vision-language checkpoints load as their "
        "text model through HookedHybrid.from_pretrained."
    )


__all__ = ["ADAPTERS", "COMPONENT_KINDS", "FAMILIES", "MIXER_KINDS", "Block", "Family", "HookedBlock", "Mixer", "Mlp",
           "adapter_for", "supported_architectures"]
