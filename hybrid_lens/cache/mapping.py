"""The cache as a mapping: hook name (or TransformerLens key) -> tensor, with the model's layout."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from ..hook_points import unknown_hook_error
from ..layout import Layout
from ..vocabulary import cache_key


class CacheMapping(Mapping[str, Tensor]):
    """Hook name -> tensor, also indexable by `(kind, layer[, mixer])`; knows the model's `Layout` and
    (as `model`, made by `run_with_cache`) the model itself.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache("In the beginning")
        >>> cache.layout.layers_with("attn"), cache.n_layers
        ([3, 7], 8)
    """

    def __init__(self, values: dict[str, Tensor], layout: Layout, model=None):
        self._values = values
        self.layout = layout
        self.model = model  # the HookedHybrid the values come from (its weights give head and neuron results)

    def __getitem__(self, key) -> Tensor:
        name = key if isinstance(key, str) else cache_key(*key)
        try:
            return self._values[name]
        except KeyError:
            raise unknown_hook_error(name, self._values) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} tensors, {self.n_layers} layers)"

    @property
    def n_layers(self) -> int:
        """Number of blocks of the model the cache comes from."""
        return len(self.layout)

    def to(self, device: str | torch.device):
        """A copy with every tensor moved to `device`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.to("cpu")["resid_pre", 0].device
            device(type='cpu')
        """
        return type(self)({name: value.to(device) for name, value in self._values.items()}, self.layout, self.model)

    def cpu(self):
        """A copy with every tensor on the CPU, `self.to("cpu")`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.cpu()
            ActivationCache(75 tensors, 12 layers)
        """
        return self.to("cpu")

    def layers_with(self, kind: str) -> list[int]:
        """Layers whose block has `kind` (a component kind, `mixer`, `block` or a residual point),
        `self.layout.layers_with(kind)`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.layers_with("attn")
            [3, 7]
        """
        return self.layout.layers_with(kind)
