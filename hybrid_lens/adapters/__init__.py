"""Architecture adapters: one `Family` (data) per family, chosen from the model class or
`config.model_type`; `spec.Family.block_forward` runs every family's blocks.

The registry is this package: every `Family` defined at the top level of a module here is
registered (the three reference families first, then by name), so adding a family is adding a file;
two families with one name are refused.
"""

from __future__ import annotations

from ..registry import discover
from ..vocabulary import COMPONENT_KINDS, MIXER_KINDS
from .base import HookedBlock, Wrapping
from .spec import Block, Family, Mixer, Mlp

REFERENCE_FAMILIES = ("qwen3_5", "falcon_h1", "qwen2")


def _order(family: Family) -> tuple:
    reference = family.family in REFERENCE_FAMILIES
    return (not reference, REFERENCE_FAMILIES.index(family.family) if reference else 0, family.family)


ADAPTERS: tuple[Family, ...] = tuple(sorted(discover(__name__, Family, lambda f: f.family, "families").values(),
                                            key=_order))
FAMILIES: dict[str, Family] = {adapter.family: adapter for adapter in ADAPTERS}


def supported_architectures() -> list[str]:
    """The `transformers` model classes `HookedHybrid` can wrap (from the registered adapters).

    Examples:
        >>> from hybrid_lens import supported_architectures
        >>> supported_architectures()[:3]                   # the reference families first
        ['Qwen3_5ForCausalLM', 'FalconH1ForCausalLM', 'Qwen2ForCausalLM']
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
           "Wrapping", "adapter_for", "supported_architectures"]
