"""The cache as a mapping: hook name (or TransformerLens key) -> tensor, with the model it comes from."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from ..forward_state import stop_block
from ..layout import Layout
from .keys import act_name, missing_key_error


class CacheMapping(Mapping[str, Tensor]):
    """Hook name -> tensor, also indexable by TransformerLens keys; knows its model and the model's `Layout`.

    Attributes:
        cache_dict: The tensors by hook name (TransformerLens's attribute: the cache's own dict).
        model: The `HookedHybrid` the values come from (None for a cache built from a `Layout`).
        layout: The model's `Layout`.
        has_batch_dim: Whether the values keep their batch axis (False after `remove_batch_dim`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache("In the beginning")
        >>> cache.layout.layers_with("attn"), cache.n_layers, cache.has_batch_dim
        ([3, 7], 8, True)
    """

    def __init__(self, cache_dict: dict[str, Tensor], model, has_batch_dim: bool = True,
                 missing: dict[str, str] | None = None):
        self.cache_dict = cache_dict
        self.model = None if isinstance(model, Layout) else model
        self.layout: Layout = model if isinstance(model, Layout) else model.layout
        self.has_batch_dim = has_batch_dim
        self._missing = missing or {}  # hook name asked for but not cached -> why

    def __getitem__(self, key) -> Tensor:
        """The tensor of `key`: a hook name, TransformerLens shorthand (`"embed"`, `"k6a"`) or a tuple
        `(name, layer[, layer_type])` (`hybrid_lens.cache.keys.act_name`). A point of the model that was not
        cached raises a `KeyError` saying how to cache it; an unknown one lists the closest names.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache["pattern", -1].shape, cache["k7a"].shape        # blocks.7.attn.hook_pattern, hook_k
            (torch.Size([1, 4, 3, 3]), torch.Size([1, 3, 2, 32]))
            >>> cache["pattern", 0]  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            KeyError: "('pattern', 0) is blocks.0.attn.hook_pattern, but block 0 is a linear_attn block, without attn...
        """
        if isinstance(key, str) and key in self.cache_dict:
            return self.cache_dict[key]
        name = act_name(key, self.n_layers)
        try:
            return self.cache_dict[name]
        except KeyError:
            if name in self._missing:
                raise KeyError(f"{name} is a hook point of this model but was not cached: {self._missing[name]}. "
                               f"Cached: {len(self.cache_dict)} points.") from None
            names = self.model.hook_names() if self.model is not None else self.cache_dict
            raise missing_key_error(key, name, self.cache_dict, names, self.layout) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self.cache_dict)

    def __len__(self) -> int:
        return len(self.cache_dict)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} tensors, {self.n_layers} layers)"

    @property
    def n_layers(self) -> int:
        """Number of blocks of the model the cache comes from."""
        return len(self.layout)

    def needs_model(self, what: str):
        """The cache's model, or a `ValueError` saying that `what` needs it.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.needs_model("logit_attrs") is model
            True
        """
        if self.model is None:
            raise ValueError(f"{what} needs the model: build the cache as ActivationCache(values, model), "
                             "as run_with_cache does.")
        return self.model

    def to(self, device: str | torch.device):
        """Move every tensor to `device`, in place (as TransformerLens); returns the cache.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.to("cpu")["resid_pre", 0].device
            device(type='cpu')
        """
        self.cache_dict = {name: value.to(device) for name, value in self.cache_dict.items()}
        return self

    def cpu(self):
        """Move every tensor to the CPU, in place, `self.to("cpu")`; returns the cache.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda name: "resid" in name)
            >>> cache.cpu()
            ActivationCache(36 tensors, 12 layers)
        """
        return self.to("cpu")

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Switch autograd on or off globally, `torch.set_grad_enabled(mode)` (TransformerLens's method;
        `torch.no_grad()` / `torch.inference_mode()` do the same without global state).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning", names_filter="hook_embed")
            >>> cache.toggle_autodiff(False)
            >>> torch.is_grad_enabled()
            False
            >>> cache.toggle_autodiff(True)
        """
        logging.getLogger(__name__).warning("Changed the global state, set autodiff to %s", mode)
        torch.set_grad_enabled(mode)

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


def not_cached(stop_at_layer: int | None, n_layers: int) -> str:
    """Why a hook point asked for was not cached, in a run with `stop_at_layer` (or without).

    Examples:
        >>> not_cached(2, 8)
        'the run stopped at the input of block 2 (stop_at_layer=2), before it'
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> _, cache = model.run_with_cache("In the beginning", stop_at_layer=2)
        >>> cache["blocks.5.hook_resid_pre"]  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        KeyError: 'blocks.5.hook_resid_pre is a hook point of this model but was not cached: the run stopped at the input of block 2 (stop_at_layer=2), before it. Cached: ... points.'
    """
    if stop_at_layer is None:
        return "no value passed through it in this run"
    stop = stop_block(stop_at_layer, n_layers)
    where = "the final norm's input" if stop == n_layers else f"the input of block {stop}"
    return f"the run stopped at {where} (stop_at_layer={stop_at_layer}), before it"
