"""Argument checks shared by every public entry: one wording for one kind of mistake.

Each check takes the argument's name (`what`), raises `ValueError` / `TypeError` naming it, the value
given and the forms accepted, and returns the value in its canonical form (numpy integers become Python
ints, so they are accepted wherever an int is). Entries call these before any forward pass, so a bad
argument never leaves a hook attached or half a result behind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

SEED_LIMIT = 2**63  # torch.Generator.manual_seed and numpy take seeds below this on every platform


def is_int(value) -> bool:
    """Whether `value` is an integer (Python or numpy), not a bool.

    Examples:
        >>> is_int(3), is_int(np.int64(3)), is_int(True), is_int(3.0)
        (True, True, False, False)
    """
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def as_int(what: str, value, forms: str = "an int") -> int:
    """`value` as a Python int; `ValueError` naming `what` and `forms` unless it is an integer.

    Examples:
        >>> as_int("batch", np.int64(2))
        2
        >>> as_int("batch", "2", "a positive int")
        Traceback (most recent call last):
        ...
        ValueError: batch must be a positive int, not '2'.
    """
    if not is_int(value):
        raise ValueError(f"{what} must be {forms}, not {value!r}.")
    return int(value)


def int_list(what: str, value, forms: str, allow_empty: bool = False) -> tuple[int, ...]:
    """An int or a sequence of ints as a tuple of Python ints; `ValueError` naming `what`, the value and
    the accepted forms otherwise (a string, a float, a bool, an empty list unless `allow_empty`).

    Examples:
        >>> int_list("layers", [np.int64(1), 2], "layer indices")
        (1, 2)
        >>> int_list("layers", [], "layer indices")
        Traceback (most recent call last):
        ...
        ValueError: layers must be an int or a non-empty list of ints (layer indices), not [].
    """
    if is_int(value):
        return (int(value),)
    items = list(value) if isinstance(value, (Sequence, np.ndarray)) and not isinstance(value, str) else None
    if items is None or not all(is_int(item) for item in items) or (not items and not allow_empty):
        listed = "a list" if allow_empty else "a non-empty list"
        raise ValueError(f"{what} must be an int or {listed} of ints ({forms}), not {value!r}.")
    return tuple(int(item) for item in items)


def canonical_ints(value):
    """`value` with numpy integers made Python ints, in the same container (int, list, tuple; anything
    else unchanged; a 1-D integer array becomes a list): what a dataclass field keeps so that it compares, prints and serialises as typed.

    Examples:
        >>> canonical_ints(np.int64(3)), canonical_ints([np.int64(1), 2]), canonical_ints("late")
        (3, [1, 2], 'late')
    """
    if is_int(value):
        return int(value)
    if isinstance(value, np.ndarray) and value.ndim == 1 and np.issubdtype(value.dtype, np.integer):
        return [int(item) for item in value]
    if isinstance(value, (list, tuple)) and any(isinstance(item, np.integer) for item in value):
        return type(value)(int(item) if is_int(item) else item for item in value)
    return value


def check_seed(seed, what: str = "seed") -> int:
    """`seed` as a Python int in `[0, 2**63)`; `ValueError` otherwise.

    Examples:
        >>> check_seed(np.int64(7))
        7
        >>> check_seed(10**30)
        Traceback (most recent call last):
        ...
        ValueError: seed must be an int in [0, 2**63), not 1000000000000000000000000000000.
    """
    if not is_int(seed) or not 0 <= int(seed) < SEED_LIMIT:
        raise ValueError(f"{what} must be an int in [0, 2**63), not {seed!r}.")
    return int(seed)


def check_number(what: str, value, minimum: float | None = None):
    """`value` (a parameter named `what`) as a finite Python number, at least `minimum`; `ValueError` for
    anything else (a bool, a string, NaN).

    Examples:
        >>> check_number("Scale alpha", np.float32(0.5))
        0.5
        >>> check_number("Noise sigma", -1.0, minimum=0.0)
        Traceback (most recent call last):
        ...
        ValueError: Noise sigma must be a finite number >= 0.0, not -1.0.
    """
    if is_int(value):
        value = int(value)
    elif isinstance(value, np.floating):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or (
            minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{what} must be a finite number{bound}, not {value!r}.")
    return value


def check_positions(what: str, positions: Sequence[int], length: int) -> None:
    """`ValueError` unless every position (negative: from the end) indexes a sequence of `length` tokens.

    Examples:
        >>> check_positions("positions", [0, -1], 5)
        >>> check_positions("positions", [99], 5)
        Traceback (most recent call last):
        ...
        ValueError: positions [99] out of range for inputs of 5 tokens; use positions in [-5, 4].
    """
    bad = [p for p in positions if not -length <= p < length]
    if bad:
        raise ValueError(f"{what} {bad} out of range for inputs of {length} tokens; use positions in "
                         f"[{-length}, {length - 1}].")


def check_scalar(what: str, value, differentiable: bool = False) -> None:
    """`value`, what a metric returned, must be one number: a tensor of one element (or, unless
    `differentiable`, a Python number); with `differentiable`, a tensor that depends on its input
    through autograd (not `argmax`, a comparison or a Python float).

    Examples:
        >>> check_scalar("metric", torch.tensor(0.5))
        >>> check_scalar("metric", torch.ones(3))
        Traceback (most recent call last):
        ...
        ValueError: metric must return one number (a 0-d tensor), not a tensor of shape (3,): reduce it, e.g. with .mean().
        >>> check_scalar("metric", torch.tensor(1.0), differentiable=True)
        Traceback (most recent call last):
        ...
        ValueError: metric must be differentiable in the logits (attribution patching takes its gradient), but its value has no gradient: use logits or log-probabilities (a logit difference, a log-prob), not argmax, comparisons or Python numbers.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{what} must return one number (a 0-d tensor), not a tensor of shape "
                             f"{tuple(value.shape)}: reduce it, e.g. with .mean().")
        if value.is_complex() or value.dtype == torch.bool:
            raise ValueError(f"{what} must return a real number, not a {value.dtype} tensor.")
        if differentiable and not value.requires_grad:
            raise ValueError(f"{what} must be differentiable in the logits (attribution patching takes its gradient), "
                             "but its value has no gradient: use logits or log-probabilities (a logit difference, a "
                             "log-prob), not argmax, comparisons or Python numbers.")
        return
    if differentiable or isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        wanted = "a 0-d tensor computed from the logits" if differentiable else "a 0-d tensor or a number"
        raise TypeError(f"{what} must return {wanted}, not {type(value).__name__} {value!r:.80}.")
