"""Sweeps: many conditions on the same input, with condition batching and prefix reuse.

A condition that first acts at block `l` leaves the residual stream before block `l` unchanged.
A sweep therefore runs the clean model once, keeps the residual stream entering every block that a
condition starts at, and runs each condition from there: blocks before `l` are not recomputed (a
recurrent mixer needs nothing else, since every block sees the whole sequence). Conditions are
also stacked along the batch, `batch` at a time, each acting on its own slice. Both are exact:
each condition's logits equal a separate run of the model under that condition.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from .conditions import Condition

STACKED_KWARGS = ("logits_to_keep", "position_ids")  # batch-first tensors that are stacked with the input


def first_layer(condition: Condition, model) -> int:
    """The first block `condition` acts on (`model.n_layers` for a condition with no interventions).

    A `Sweep` starts that condition from the clean residual stream entering this block.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> first_layer(skip_layer([5, 9]), model)
        5
        >>> first_layer(zero("ssm", layers="late"), model)
        8
        >>> first_layer(Condition(name="baseline"), model)
        12
    """
    layers = [target.layer for selector, _ in condition.items for target in selector.targets(model.layer_mixers)]
    return min(layers, default=model.n_layers)


@dataclass(frozen=True)
class Sweep:
    """Conditions to evaluate on the same inputs, as one unit.

    Evaluation functions that take `condition=` (perplexity, the benchmarks, `loglikelihoods`)
    also take a `Sweep` and then return one result per condition.

    Attributes:
        conditions: the conditions, in the order results are returned.
        batch: how many conditions share one forward pass (1: no condition batching).
        reuse_prefix: start each condition from the clean residual stream at its first block.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> sweep = Sweep([skip_layer(i) for i in range(model.n_layers)], batch=4)
        >>> len(sweep)
        8
        >>> tokens = model.to_tokens("In the beginning God created the heaven")
        >>> per_layer = sweep.logits(model, tokens)      # n_layers tensors [batch, pos, vocab]
        >>> len(per_layer), per_layer[0].shape
        (8, torch.Size([1, 7, 4096]))
    """

    conditions: tuple[Condition, ...]
    batch: int = 8
    reuse_prefix: bool = True

    def __post_init__(self):
        object.__setattr__(self, "conditions", tuple(self.conditions))
        if self.batch < 1:
            raise ValueError(f"Sweep.batch must be at least 1, got {self.batch}.")

    def __len__(self) -> int:
        return len(self.conditions)

    @torch.no_grad()
    def logits(self, model, tokens: Tensor, attention_mask: Tensor | None = None,
               **forward_kwargs) -> list[Float[Tensor, "batch pos vocab"]]:
        """Logits of `tokens` `[batch, pos]` under each condition, equal to separate runs.

        `forward_kwargs` go to `model(...)`; `logits_to_keep` and `position_ids` tensors are
        stacked with the input.

        Returns:
            One `Float[Tensor, "batch pos vocab"]` per condition, in the sweep's order.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tokens = model.to_tokens(["In the beginning God created", "And God said, Let there"])
            >>> sweep = Sweep([zero("ssm", layers=i) for i in range(6, 12)], batch=3)
            >>> logits = sweep.logits(model, tokens)
            >>> len(logits), logits[0].shape
            (6, torch.Size([2, 6, 4096]))
            >>> with zero("ssm", layers=6).apply(model):
            ...     separate = model(tokens)
            >>> torch.allclose(logits[0], separate, atol=1e-4)
            True
        """
        n_layers = model.n_layers
        starts = [first_layer(c, model) if self.reuse_prefix else 0 for c in self.conditions]
        entries = sorted({s for s in starts if 0 < s < n_layers})
        clean, cache = None, None
        if self.reuse_prefix and any(s > 0 for s in starts):
            clean, cache = model.run_with_cache(tokens, attention_mask=attention_mask, **forward_kwargs,
                                                names_filter=[f"blocks.{s}.hook_resid_pre" for s in entries])
        order = sorted(range(len(self.conditions)), key=starts.__getitem__)
        results: list[Tensor | None] = [None] * len(self.conditions)
        for group in (order[i : i + self.batch] for i in range(0, len(order), self.batch)):
            start = min(starts[i] for i in group)
            if start == n_layers:  # no interventions: the clean run
                outputs = [clean] * len(group)
            else:
                resid = cache[f"blocks.{start}.hook_resid_pre"] if start > 0 else None
                outputs = _stacked_run(model, tokens, attention_mask, [self.conditions[i] for i in group],
                                       start, resid, forward_kwargs).split(tokens.shape[0])
            for i, output in zip(group, outputs):
                results[i] = output
        return results


@torch.no_grad()
def run_conditions(model, input, conditions: Sequence[Condition], attention_mask: Tensor | None = None) -> Tensor:
    """Run K conditions in one forward pass: the input is stacked K times along the batch and
    condition k acts on slice k only.

    Returns:
        `Float[Tensor, "K batch pos vocab"]`, equal to K separate runs.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> conditions = [Condition(name="clean"), zero("ssm"), zero("attn")]
        >>> logits = run_conditions(model, "In the beginning God created", conditions)
        >>> logits.shape                                 # [K, batch, pos, vocab]
        torch.Size([3, 1, 5, 4096])
        >>> torch.allclose(logits[0], model("In the beginning God created"), atol=1e-4)
        True
    """
    tokens, mask = model.encode(input, attention_mask)
    logits = _stacked_run(model, tokens, mask, list(conditions), 0, None, {})
    return logits.view(len(conditions), tokens.shape[0], *logits.shape[1:])


def _stacked_run(model, tokens, attention_mask, conditions: list[Condition], start: int, resid: Tensor | None,
                 forward_kwargs: dict) -> Tensor:
    """One forward pass of `len(conditions)` stacked copies of the input, from block `start`;
    returns the logits of the stacked batch, condition k in rows `k * batch` to `(k + 1) * batch`."""
    k, batch = len(conditions), tokens.shape[0]
    hooks = []
    for i, condition in enumerate(conditions):  # reference passes (mean, resample, patch) run here
        hooks += condition.fwd_hooks(model, rows=slice(i * batch, (i + 1) * batch) if k > 1 else None)
    kwargs = {key: _stack(value, k) if key in STACKED_KWARGS else value for key, value in forward_kwargs.items()}
    mask = None if attention_mask is None else _stack(attention_mask, k)
    with model.hooks(fwd_hooks=hooks), _entering_at(model, start, None if resid is None else _stack(resid, k)):
        return model(_stack(tokens, k), attention_mask=mask, **kwargs)


def _stack(value, k: int):
    return value.repeat(k, *([1] * (value.ndim - 1))) if k > 1 and isinstance(value, Tensor) and value.ndim else value


@contextmanager
def _entering_at(model, start: int, resid: Tensor | None) -> Iterator[None]:
    """Blocks before `start` are not computed: each returns `resid`, the residual stream entering
    block `start` (restored on exit, also after errors)."""
    if resid is None:
        yield
        return
    layers = model.adapter.layers(model.hf_model)
    saved = [layers[i].forward for i in range(start)]

    def enter(*args, **kwargs):
        return model.adapter.layer_output(resid)

    try:
        for i in range(start):
            layers[i].forward = enter
        yield
    finally:
        for i, forward in enumerate(saved):
            layers[i].forward = forward

