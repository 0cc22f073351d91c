"""Architecture adapters, one per family, chosen from the model class or `config.model_type`."""

from __future__ import annotations

from ..vocabulary import COMPONENT_KINDS, MIXER_KINDS
from .base import Adapter, HookedBlock
from .falcon_h1 import FalconH1Adapter
from .qwen2 import Qwen2Adapter
from .qwen3_5 import Qwen3_5Adapter

ADAPTERS: tuple[Adapter, ...] = (Qwen3_5Adapter(), FalconH1Adapter(), Qwen2Adapter())


def supported_architectures() -> list[str]:
    """The `transformers` model classes `HookedHybrid` can wrap (from the registered adapters).

    Examples:
        >>> from hybrid_lens import supported_architectures
        >>> supported_architectures()
        ['Qwen3_5ForCausalLM', 'FalconH1ForCausalLM', 'Qwen2ForCausalLM', 'LlamaForCausalLM']
    """
    return [arch for adapter in ADAPTERS for arch in adapter.architectures]


def adapter_for(hf_model) -> Adapter:
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


__all__ = ["ADAPTERS", "COMPONENT_KINDS", "MIXER_KINDS", "Adapter", "HookedBlock", "adapter_for", "supported_architectures"]
