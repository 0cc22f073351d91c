"""What the public entries of `interventions` take, checked before any forward pass: condition items,
lists of conditions (a `Sweep`, `run_conditions`), the `where` and `positions` of patching, and metrics.

The generic forms (ints, numpy integers, seeds, one-number results) are `hybrid_lens.checks`; these are
the interventions' own, with messages that name the argument, the value and the forms accepted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor

from ..checks import check_positions, check_scalar, int_list
from .base import Intervention
from .selectors import Selector

CONDITION_FORMS = ("a list of Conditions, e.g. [zero('attn'), skip_layer(3)] (built by zero, scale, skip_layer, ..., "
                   "Condition.of(Selector(...), Intervention) or Condition.from_dict)")


def check_items(items) -> tuple[tuple[Selector, Intervention], ...]:
    """A condition's items as a tuple of `(Selector, Intervention)` pairs; `ValueError` naming the first bad one.

    Examples:
        >>> check_items([(Selector("attn"), Zero())])
        ((Selector(kind='attn', layers=None, positions=None, point=None), Zero()),)
        >>> check_items([("attn", "zero")])
        Traceback (most recent call last):
        ...
        ValueError: Condition items are (Selector, Intervention) pairs; item 0 is ('attn', 'zero').
    """
    if isinstance(items, (str, bytes)) or not isinstance(items, Sequence):
        raise ValueError(f"Condition items are a sequence of (Selector, Intervention) pairs, not {items!r:.200}.")
    for i, item in enumerate(items):
        if not (isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], Selector)
                and isinstance(item[1], Intervention)):
            raise ValueError(f"Condition items are (Selector, Intervention) pairs; item {i} is {item!r:.200}.")
    return tuple(tuple(item) for item in items)


def check_conditions(conditions, what: str) -> tuple:
    """`conditions` as a non-empty tuple of `Condition`s; `TypeError` / `ValueError` naming `what`, the
    value and the accepted form (a single condition, a `Sweep`, a string, a nested sweep are refused).

    Examples:
        >>> check_conditions([zero("attn")], "run_conditions")[0].name
        'attn_zero'
        >>> check_conditions(["zero"], "Sweep")
        Traceback (most recent call last):
        ...
        TypeError: Sweep takes a list of Conditions, e.g. [zero('attn'), skip_layer(3)] (built by zero, scale, skip_layer, ..., Condition.of(Selector(...), Intervention) or Condition.from_dict); item 0 is str 'zero'.
    """
    from .conditions import Condition
    from .sweep import Sweep

    if isinstance(conditions, Sweep):
        raise TypeError(f"{what} takes {CONDITION_FORMS}, not a Sweep: pass sweep.conditions, or run the sweep "
                        "with sweep.logits(model, tokens).")
    if isinstance(conditions, Condition):
        raise TypeError(f"{what} takes {CONDITION_FORMS}, not one Condition: wrap it in a list, [condition].")
    if conditions is None or isinstance(conditions, (str, bytes, dict, Tensor)) or not isinstance(conditions, Iterable):
        raise TypeError(f"{what} takes {CONDITION_FORMS}, not {type(conditions).__name__} {conditions!r:.80}.")
    conditions = tuple(conditions)
    for i, condition in enumerate(conditions):
        if isinstance(condition, Sweep):
            raise TypeError(f"{what} takes Conditions, not Sweeps (item {i}): a sweep of sweeps is one sweep, "
                            "Sweep([*first.conditions, *second.conditions]).")
        if not isinstance(condition, Condition):
            raise TypeError(f"{what} takes {CONDITION_FORMS}; item {i} is {type(condition).__name__} "
                            f"{condition!r:.80}.")
    if not conditions:
        raise ValueError(f"{what} got no condition: give at least one (Condition() is the clean model).")
    return conditions


def check_where(where) -> list[Selector] | None:
    """`where` of `patch` / `attribution_patch`: None (every component) or one or more `Selector`s.

    Examples:
        >>> check_where(Selector("attn"))
        [Selector(kind='attn', layers=None, positions=None, point=None)]
        >>> check_where([])
        Traceback (most recent call last):
        ...
        ValueError: where=[] matches nothing: give a Selector or a non-empty list of Selectors (None: every mixer, MLP and resid_pre).
    """
    if where is None:
        return None
    selectors = [where] if isinstance(where, Selector) else where
    forms = "a Selector or a non-empty list of Selectors (None: every mixer, MLP and resid_pre)"
    if isinstance(selectors, (str, bytes)) or not isinstance(selectors, Sequence) \
            or not all(isinstance(s, Selector) for s in selectors):
        raise TypeError(f"where must be {forms}, e.g. Selector('attn', layers=[3]); got {where!r:.200}.")
    if not selectors:
        raise ValueError(f"where={where!r} matches nothing: give {forms}.")
    return list(selectors)


def check_patch_positions(positions, length: int) -> tuple[int, ...] | str | None:
    """`positions` of `patch` / `attribution_patch` for inputs of `length` tokens: None (all at once),
    `"each"`, or an int or a non-empty list of ints in range (numpy integers too).

    Examples:
        >>> check_patch_positions([0, -1], 5), check_patch_positions("each", 5)
        ((0, -1), 'each')
        >>> check_patch_positions("all", 5)
        Traceback (most recent call last):
        ...
        ValueError: positions must be None (all positions at once), 'each' (every position separately) or an int or a non-empty list of ints (token positions, negative from the end), not 'all'.
    """
    if positions is None or (isinstance(positions, str) and positions == "each"):
        return positions
    forms = "None (all positions at once), 'each' (every position separately) or an int or a non-empty list of ints"
    try:
        found = int_list("positions", positions, "token positions, negative from the end")
    except ValueError:
        raise ValueError(f"positions must be {forms} (token positions, negative from the end), "
                         f"not {positions!r:.200}.") from None
    check_positions("positions", found, length)
    return found


def check_metric(metric: Callable, logits: Tensor, differentiable: bool) -> None:
    """Call `metric` on `logits` (a stand-in with gradient when `differentiable`) and check its value is
    one number (and depends on the logits through autograd), before any patched run.

    Examples:
        >>> check_metric(lambda logits: logits[:, -1, 0].mean(), torch.zeros(1, 3, 8), differentiable=True)
        >>> check_metric(lambda logits: logits[:, -1].argmax(-1).float().sum(), torch.zeros(1, 3, 8), True)
        Traceback (most recent call last):
        ...
        ValueError: metric must be differentiable in the logits (attribution patching takes its gradient), but its value has no gradient: use logits or log-probabilities (a logit difference, a log-prob), not argmax, comparisons or Python numbers.
    """
    if not callable(metric):
        raise TypeError(f"metric must be a function of the logits [batch, pos, vocab] returning one number, "
                        f"not {type(metric).__name__}.")
    with torch.enable_grad() if differentiable else torch.no_grad():
        probe = logits.detach().clone().requires_grad_(differentiable)
        check_scalar("metric", metric(probe), differentiable)
