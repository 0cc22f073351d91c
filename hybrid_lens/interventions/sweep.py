"""Sweeps: many conditions on the same input, with prefix reuse and planned condition batching.

A condition that first acts at block `l` leaves the residual stream before block `l` unchanged.
A sweep therefore runs the clean model once, only as deep as it must, keeps the residual stream
entering the blocks where passes start, and runs each condition from there: blocks before `l` are
not recomputed (a recurrent mixer needs nothing else, since every block sees the whole sequence).
Conditions can also be stacked along the batch, each acting on its own slice; a stacked pass
starts at its earliest condition's block, so stacking trades prefix reuse for larger batches. The
sweep plans its passes with a cost model measured on the model (`plan_passes`).

Exactness: a condition evaluated alone in its pass (`batch=1`) gives logits bit-identical to a
separate run. Stacked passes run a larger batch, and the `transformers` model itself is not
batch-size invariant (matrix kernels pick other blockings for other shapes), so stacked rows agree
with separate runs to float rounding, as the plain model's batch of one agrees with its batch of
several (both measured by `benchmarks/sweep.py`).
"""

from __future__ import annotations

import math
import time
import weakref
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from ..forward_state import forward_settings
from ..checks import as_int
from .conditions import Condition
from .validation import check_conditions

STACKED_KWARGS = ("logits_to_keep", "position_ids")  # batch-first tensors that are stacked with the input
COST_REPEATS = 2  # timings per measured size; the fastest counts
COST_BLOCKS = 2  # blocks timed by `measured_cost` (the last ones)


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
    layers = [target.layer for selector, _ in condition.items for target in selector.targets(model.layout)]
    return min(layers, default=model.n_layers)


@dataclass(frozen=True)
class PassCost:
    """Cost of one block of a forward pass over `copies` stacked copies of an input: `fixed + per_copy * copies`.

    Units are arbitrary but shared (a `Sweep` measures seconds). `fixed` is what stacking
    amortises (per-call and kernel-launch overhead, an idle GPU's spare width); `per_copy` is
    what each stacked copy adds.

    Examples:
        >>> PassCost(fixed=1.0, per_copy=2.0)(copies=3)
        7.0
    """

    fixed: float
    per_copy: float

    def __call__(self, copies: int) -> float:
        return self.fixed + self.per_copy * copies


def plan_passes(starts: Sequence[int], n_layers: int, batch: int, cost: PassCost) -> list[tuple[int, list[int]]]:
    """The cheapest passes for conditions that first act at `starts` (`n_layers`: no intervention).

    A pass of conditions `group` starts at their earliest block and costs
    `(n_layers - start + 1) * cost(len(group))` (its blocks plus one for embedding and per-call
    overhead; unembedding is left out, as every plan unembeds each condition once); the clean pass
    costs `cost(1)` per block up to the deepest start, or `(n_layers + 1) * cost(1)` when a
    condition without interventions needs the clean logits.
    Conditions are taken in order of their first block and cut into runs of at most `batch`
    (dynamic programming over the cut points, so the plan is optimal for the cost model):
    conditions with the same first block share a pass whenever `cost` is subadditive, and
    passes with different first blocks merge only when the larger batch saves more than the
    reuse it gives up.

    Returns:
        `(start, condition indices)` per pass, by start; conditions with no interventions are in
        no pass (they take the clean logits).

    Examples:
        >>> starts = [0, 1, 2, 3, 4, 5, 6, 7]                  # skip every layer of 8
        >>> plan_passes(starts, 8, batch=8, cost=PassCost(fixed=0.1, per_copy=1.0))   # a busy CPU
        [(0, [0]), (1, [1]), (2, [2]), (3, [3]), (4, [4]), (5, [5]), (6, [6, 7])]
        >>> # (6 and 7 share a pass, so the clean pass stops one block earlier)
        >>> plan_passes(starts, 8, batch=4, cost=PassCost(fixed=1.0, per_copy=0.05))  # an idle GPU
        [(0, [0, 1, 2, 3]), (4, [4, 5, 6, 7])]
        >>> plan_passes([3, 3, 8, 0], 8, batch=8, cost=PassCost(fixed=0.1, per_copy=1.0))
        [(0, [3]), (3, [0, 1])]
    """
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}.")
    order = sorted((i for i, start in enumerate(starts) if start < n_layers), key=starts.__getitem__)
    if not order:
        return []
    clean_logits = len(order) < len(starts)

    def run(j: int, i: int) -> float:  # conditions order[j:i] in one pass
        return (n_layers - starts[order[j]] + 1) * cost(i - j)

    def clean(deepest: int) -> float:
        return (n_layers + 1) * cost(1) if clean_logits else deepest * cost(1)

    best, cut = [0.0] + [math.inf] * len(order), [0] * (len(order) + 1)
    for i in range(1, len(order) + 1):
        for j in range(i - 1, max(0, i - batch) - 1, -1):  # ties: the smaller pass
            if best[j] + run(j, i) < best[i]:
                best[i], cut[i] = best[j] + run(j, i), j
    n = len(order)
    last = min(range(max(0, n - batch), n), key=lambda j: (best[j] + run(j, n) + clean(starts[order[j]]), -j))
    bounds, i, j = [], n, last
    while i > 0:
        bounds.append((j, i))
        i, j = j, cut[j]
    return [(starts[order[j]], order[j:i]) for j, i in reversed(bounds)]


_COSTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> {(input size, copies): PassCost}


def measured_cost(model, tokens: Tensor, attention_mask: Tensor | None = None, copies: int = 2) -> PassCost:
    """`PassCost` of `model` per block, in seconds, for inputs the size of `tokens` `[batch, pos]`
    stacked up to `copies` times.

    Times a pass through the last `COST_BLOCKS` blocks (earlier blocks entered as in a sweep) of one
    and of `copies` stacked copies, the fastest of `COST_REPEATS` each, with the model's hooks
    suspended and only the last position unembedded (unembedding costs every plan the same), and
    fits `fixed + per_copy * copies` through both (a pass counts as its blocks plus one). Timing
    the largest stack matters: on a CPU a stack that outgrows the caches costs more per copy than
    a small one. Measured once per model, input size (batch x tokens, rounded up to a power of
    two) and `copies`, and cached; timings depend on the device and its load, so plans can differ
    between runs (results only to float rounding, see the module docstring).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> cost = measured_cost(model, model.to_tokens("In the beginning God created the heaven"), copies=4)
        >>> cost.per_copy > 0 and cost.fixed >= 0
        True
    """
    if copies < 2:
        raise ValueError(f"copies must be at least 2 to fit a cost per copy, got {copies}.")
    key = (1 << (tokens.numel() - 1).bit_length(), copies)
    costs = _COSTS.setdefault(model, {})
    if key not in costs:
        blocks = min(COST_BLOCKS, model.n_layers)
        start = model.n_layers - blocks
        seconds = {1: math.inf, copies: math.inf}
        resid = torch.randn(*tokens.shape, model.cfg.hidden_size, generator=torch.Generator().manual_seed(0))
        resid = resid.to(device=tokens.device, dtype=model.hf_model.dtype)
        with torch.no_grad():
            for _ in range(COST_REPEATS):
                for k in seconds:
                    mask = None if attention_mask is None else _stack(attention_mask, k)
                    with forward_settings(model, start=start, resid=_stack(resid, k) if start else None, hooks=False):
                        _synchronize(tokens.device)
                        begin = time.perf_counter()
                        model(_stack(tokens, k), attention_mask=mask, logits_to_keep=1)
                        _synchronize(tokens.device)
                    seconds[k] = min(seconds[k], time.perf_counter() - begin)
        per_copy = max(seconds[copies] - seconds[1], 1e-3 * seconds[1]) / (copies - 1) / (blocks + 1)
        costs[key] = PassCost(fixed=max(seconds[1] / (blocks + 1) - per_copy, 0.0), per_copy=per_copy)
    return costs[key]


@dataclass(frozen=True)
class Sweep:
    """Conditions to evaluate on the same inputs, as one unit.

    Evaluation functions that take `condition=` (perplexity, the benchmarks, `loglikelihoods`)
    also take a `Sweep` and then return one result per condition.

    Attributes:
        conditions: the conditions, in the order results are returned.
        batch: the most conditions that may share one forward pass (1: one condition per pass,
            bit-identical to separate runs). The sweep stacks fewer where its cost model says
            prefix reuse is worth more (`plan`).
        reuse_prefix: start each pass from the clean residual stream at its first block.
        single: this sweep stands for one condition passed alone (see `as_sweep`): results come
            back as that condition's result, not as a one-item list.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> sweep = Sweep([skip_layer(i) for i in range(model.n_layers)])
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
    single: bool = False

    def __post_init__(self):
        object.__setattr__(self, "conditions", check_conditions(self.conditions, "Sweep"))
        batch = as_int("Sweep.batch", self.batch, "a positive int (the most conditions per forward pass)")
        if batch < 1:
            raise ValueError(f"Sweep.batch must be at least 1, got {self.batch}.")
        object.__setattr__(self, "batch", batch)
        for flag in ("reuse_prefix", "single"):
            if not isinstance(getattr(self, flag), bool):
                raise ValueError(f"Sweep.{flag} must be True or False, not {getattr(self, flag)!r}.")
        if self.single and len(self.conditions) != 1:
            raise ValueError(f"A single Sweep holds exactly one condition, got {len(self.conditions)}.")

    def __len__(self) -> int:
        return len(self.conditions)

    def unwrap(self, values: Sequence) -> Any:
        """`values` (one per condition) as the caller expects them: the lone value for a `single`
        sweep, else the list.

        Examples:
            >>> as_sweep(zero("ssm")).unwrap([0.5]), Sweep([zero("ssm"), zero("attn")]).unwrap([0.5, 0.7])
            (0.5, [0.5, 0.7])
        """
        return values[0] if self.single else list(values)

    def map(self, fn: Callable[[Condition, Any], Any], result: Any) -> Any:
        """`fn(condition, value)` for each condition and its value in `result` (shaped as `unwrap`
        returns it: the lone value for a `single` sweep, else one per condition), shaped alike.

        Examples:
            >>> as_sweep(zero("ssm")).map(lambda c, v: (c.name, v), 0.5)
            ('ssm_zero', 0.5)
            >>> Sweep([zero("ssm"), zero("attn")]).map(lambda c, v: (c.name, v), [0.5, 0.7])
            [('ssm_zero', 0.5), ('attn_zero', 0.7)]
        """
        return self.unwrap([fn(c, v) for c, v in zip(self.conditions, [result] if self.single else result)])

    def lone(self, what: str) -> Condition:
        """The condition of a `single` sweep; `TypeError` for a real sweep (`what` names the caller,
        e.g. generation, which changes its input per condition).

        Examples:
            >>> as_sweep(None).lone("generation")
            Condition(items=(), name='')
            >>> Sweep([zero("ssm"), zero("attn")]).lone("Generation")
            Traceback (most recent call last):
            ...
            TypeError: Generation takes one condition at a time; loop over the sweep's conditions.
        """
        if not self.single:
            raise TypeError(f"{what} takes one condition at a time; loop over the sweep's conditions.")
        return self.conditions[0]

    def plan(self, model, tokens: Tensor, attention_mask: Tensor | None = None) -> list[tuple[int, list[int]]]:
        """The forward passes `logits` makes for `tokens` `[batch, pos]`: `(first block, condition
        indices)` per pass, from `plan_passes` with the model's `measured_cost` up to the largest
        possible stack (measured only when passes with different first blocks could merge).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> sweep = Sweep([zero("attn", layers=3), skip_layer(5), skip_layer(3), Condition()], batch=1)
            >>> sweep.plan(model, model.to_tokens("In the beginning"))   # the clean run serves Condition()
            [(3, [0]), (3, [2]), (5, [1])]
        """
        n_layers = model.n_layers
        starts = [first_layer(c, model) if self.reuse_prefix else 0 for c in self.conditions]
        stack = min(self.batch, sum(s < n_layers for s in starts))
        if stack == 1 or len({s for s in starts if s < n_layers}) < 2:  # cost model irrelevant
            cost = PassCost(fixed=1.0, per_copy=1.0)
        else:
            cost = measured_cost(model, tokens, attention_mask, copies=stack)
        return plan_passes(starts, n_layers, self.batch, cost)

    @torch.no_grad()
    def logits(self, model, tokens: Tensor, attention_mask: Tensor | None = None,
               **forward_kwargs) -> list[Float[Tensor, "batch pos vocab"]]:
        """Logits of `tokens` `[batch, pos]` under each condition, as separate runs give them (bit for
        bit when each condition has its own pass, else to float rounding; see the module docstring).

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
            (6, torch.Size([2, 7, 4096]))
            >>> with zero("ssm", layers=6).apply(model):
            ...     separate = model(tokens)
            >>> torch.allclose(logits[0], separate, atol=1e-4)
            True
        """
        passes = self.plan(model, tokens, attention_mask)
        planned = {i for _, group in passes for i in group}
        entries = sorted({start for start, _ in passes if start > 0})
        clean_logits = len(planned) < len(self.conditions)
        clean, resid = _clean_pass(model, tokens, attention_mask, entries, clean_logits, forward_kwargs)
        results = [None if i in planned else clean for i in range(len(self.conditions))]
        for start, group in passes:
            outputs = _stacked_run(model, tokens, attention_mask, [self.conditions[i] for i in group],
                                   start, resid.get(start), forward_kwargs).split(tokens.shape[0])
            for i, output in zip(group, outputs):
                results[i] = output
        return results


def as_sweep(condition: Condition | Sweep | None) -> Sweep:
    """One type for "one condition or many": a `Sweep` as it is; a lone condition (None: the clean
    model, `Condition()`) as a `single` one-item sweep that runs it as a plain hooked forward pass
    (`batch=1`, no prefix reuse), bit for bit as `condition.apply(model)` would.

    Examples:
        >>> sweep = as_sweep(skip_layer(3))
        >>> sweep.single, len(sweep), sweep.conditions[0].name
        (True, 1, 'skip_layer')
        >>> as_sweep(None).conditions
        (Condition(items=(), name=''),)
        >>> many = Sweep([zero("ssm"), zero("attn")])
        >>> as_sweep(many) is many
        True
    """
    if isinstance(condition, Sweep):
        return condition
    if condition is not None and not isinstance(condition, Condition):
        raise TypeError(f"condition must be a Condition, a Sweep or None, got {type(condition).__name__}.")
    return Sweep((Condition() if condition is None else condition,), batch=1, reuse_prefix=False, single=True)


def _clean_pass(model, tokens, attention_mask, entries: list[int], logits: bool,
                forward_kwargs: dict) -> tuple[Tensor | None, dict[int, Tensor]]:
    """The clean model's logits (None unless `logits`) and the residual stream entering each block
    of `entries`; without `logits` the pass stops at the deepest entry."""
    if not entries and not logits:
        return None, {}
    stop = None if logits else max(entries)
    with forward_settings(model, keep=tuple(entries), stop=stop) as settings:
        output = model(tokens, attention_mask=attention_mask, **forward_kwargs)
    return (output if logits else None), dict(settings.kept)


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
        torch.Size([3, 1, 6, 4096])
        >>> torch.allclose(logits[0], model("In the beginning God created"), atol=1e-4)
        True
    """
    conditions = check_conditions(conditions, "run_conditions")
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
    entering = nullcontext() if resid is None else forward_settings(model, start=start, resid=_stack(resid, k))
    with model.hooks(fwd_hooks=hooks), entering:
        return model(_stack(tokens, k), attention_mask=mask, **kwargs)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stack(value, k: int):
    return value.repeat(k, *([1] * (value.ndim - 1))) if k > 1 and isinstance(value, Tensor) and value.ndim else value
