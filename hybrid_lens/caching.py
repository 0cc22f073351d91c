"""Caching activations: `HookedHybrid.run_with_cache` and the caching hooks it runs with, TransformerLens's.

With no `names_filter`, `run_with_cache` caches every hook point of the model, as TransformerLens does:
the block- and model-level points and every inner point (attention q/k/v/z and patterns, the linear
mixers' eager paths, implicit patterns and states, MoE routers). Inner points are fed by taps that
switch the mixers to their eager paths while hooked (softmax attention computes its pattern; a linear
mixer runs its eager scan and builds its `[batch, head, pos, pos]` implicit pattern), so a full cache
costs more than a plain forward (`benchmarks/cache_cost.py` measures it) and its logits equal the
plain forward's up to float rounding, not bit for bit. A `names_filter` (e.g.
`model.hook_names(inner=False)`, the block-level points) is the fast path and leaves the mixers alone.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import Tensor

from .cache import ActivationCache, BatchSizeError, not_cached
from .cache.positions import as_slice, slice_positions
from .forward_state import uses_a_cache


class Caching:
    """`HookedHybrid`'s caching methods (the model's hook points and forward come from `HookedHybrid`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache("In the beginning")
        >>> len(cache) == len(model.hook_names()) - 1, "blocks.0.linear_attn.hook_pattern" in cache  # all but hook_tokens
        (True, True)
    """

    def get_caching_hooks(self, names_filter=None, incl_bwd: bool = False, device=None,
                          remove_batch_dim: bool = False, cache: dict | None = None,
                          pos_slice=None) -> tuple[dict, list, list]:
        """Hooks that store activations into `cache` (not attached: pass them to `hooks()`), TransformerLens's
        method with hybrid-lens's names and position axes.

        Args:
            names_filter: A name, names, or a predicate on names (unknown names raise); None: every point but
                `hook_tokens` (the input ids, cached when named).
            incl_bwd: Also backward hooks, storing each point's gradient as `{name}_grad`.
            device: Move the stored tensors there.
            remove_batch_dim: Store row 0 without the batch axis (`BatchSizeError` for a batch of several rows).
            cache: The dict to fill (a new one by default).
            pos_slice: Keep these positions of each value's position axis (`cache.positions.position_axis`);
                an int keeps the axis, with length 1.

        Returns:
            `(cache, forward hooks, backward hooks)`, the hooks as `(name, function)` pairs.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> store, fwd, bwd = model.get_caching_hooks("blocks.0.ssm.hook_B", pos_slice=-1)
            >>> with model.hooks(fwd_hooks=fwd):
            ...     _ = model("In the beginning")
            >>> store["blocks.0.ssm.hook_B"].shape           # [batch, pos, group, d_state], the last position
            torch.Size([1, 1, 1, 32])
        """
        cache = {} if cache is None else cache
        positions = as_slice(pos_slice, keep_dim=True)

        def save(value: Tensor, hook, backward: bool = False) -> None:
            value = slice_positions(value.detach(), hook.name, positions)
            if remove_batch_dim:
                if value.shape[0] != 1:
                    raise BatchSizeError(f"remove_batch_dim=True needs a batch of 1; this batch has {value.shape[0]} "
                                         "rows.")
                value = value[0]
            cache[hook.name + ("_grad" if backward else "")] = value if device is None else value.to(device)

        names = self.resolve_hook_names(names_filter)
        if names_filter is None:  # every activation: the input ids (`hook_tokens`) only when named
            names = [name for name in names if name != "hook_tokens"]
        fwd_hooks = [(name, save) for name in names]
        bwd_hooks = [(name, partial(save, backward=True)) for name in names] if incl_bwd else []
        return cache, fwd_hooks, bwd_hooks

    def run_with_cache(
        self,
        *model_args,
        names_filter=None,
        device: str | torch.device | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        pos_slice=None,
        return_cache_object: bool = True,
        **model_kwargs,
    ) -> tuple[Tensor, ActivationCache]:
        """Run the model and cache activations (TransformerLens's arguments).

        Args:
            *model_args: Passed to `forward` (the input: text, texts or token ids).
            names_filter: A name, names, or a predicate on names. None caches every hook point, inner ones
                included (they switch on eager mixer paths: see the module docstring for the cost); a run
                continuing a `transformers` cache (`use_cache=True`, `past_key_values=`) caches the block-
                and model-level points then, since the eager paths of recurrent mixers need a run without one.
            device: Move cached tensors there (e.g. "cpu").
            remove_batch_dim: Drop the batch axis (batch size 1 only; a larger batch is an error).
            incl_bwd: Also call `backward()` on the output (a scalar: `return_type="loss"`) and cache
                every point's gradient as `{name}_grad` (the model's parameters get their `.grad`, as in
                TransformerLens).
            reset_hooks_end: Remove the caching hooks afterwards.
            clear_contexts: Also clear the hook points' contexts then.
            pos_slice: Keep only these positions of every value (an int keeps a length-1 axis; patterns
                are sliced on the query axis, recurrent states not at all).
            return_cache_object: Return an `ActivationCache` (else the plain dict).
            **model_kwargs: Passed to `forward` (`attention_mask=`, `return_type=`, `stop_at_layer=`, ...).

        Returns:
            The model output (logits `Float[Tensor, "batch pos vocab"]` by default) and an
            `ActivationCache` of detached tensors, e.g. `Float[Tensor, "batch pos d_model"]` for
            block-level points. With `stop_at_layer`, only points before the stop are cached.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits, cache = model.run_with_cache("In the beginning")
            >>> cache["blocks.0.hook_resid_post"].shape, cache["blocks.0.ssm.hook_pattern"].shape
            (torch.Size([1, 4, 128]), torch.Size([1, 4, 4, 4]))
            >>> _, cache = model.run_with_cache("In the beginning", names_filter="blocks.0.ssm.hook_B")
            >>> list(cache)
            ['blocks.0.ssm.hook_B']
            >>> loss, cache = model.run_with_cache("In the beginning", names_filter="blocks.2.hook_ssm_out",
            ...                                    incl_bwd=True, return_type="loss")
            >>> cache["blocks.2.hook_ssm_out_grad"].shape
            torch.Size([1, 4, 128])
        """
        if names_filter is None and uses_a_cache(model_kwargs):
            names_filter = self.hook_names(inner=False)
        if incl_bwd and not torch.is_grad_enabled():
            raise ValueError("incl_bwd=True needs autograd: call run_with_cache outside torch.no_grad() / "
                             "torch.inference_mode().")
        store, fwd_hooks, bwd_hooks = self.get_caching_hooks(names_filter, incl_bwd, device, remove_batch_dim,
                                                            pos_slice=pos_slice)
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks, reset_hooks_end=reset_hooks_end,
                        clear_contexts=clear_contexts):
            output = self(*model_args, **model_kwargs)
            if incl_bwd:
                if not isinstance(output, Tensor) or output.numel() != 1:
                    raise ValueError("incl_bwd=True calls backward() on the model output, which must be a scalar: "
                                     "pass return_type='loss'.")
                output.backward()
        if not return_cache_object:
            return output, store
        why = not_cached(model_kwargs.get("stop_at_layer"), self.n_layers)
        missing = {name: why for name, _ in fwd_hooks if name not in store}
        return output, ActivationCache(store, self, has_batch_dim=not remove_batch_dim, missing=missing)
