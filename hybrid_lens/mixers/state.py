"""Recurrent-state hook points: the state of a linear mixer after chosen token positions.

A `StateHookPoint` (`blocks.{i}.linear_attn.hook_state`, `blocks.{i}.ssm.hook_state`) fires once
per chosen position `t` with the state after token `t`. The eager mixer path splits the recurrence
at those positions (the `transformers` chunked scans' `initial_state` / `output_final_state`), so a
hook that returns a new state makes the recurrence continue from it (state patching).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

from ..hook_points import TappedHookPoint

Scan = Callable[[list[Tensor], Tensor | None, bool], tuple[Tensor, Tensor | None]]


class StateHookPoint(TappedHookPoint):
    """A hook point on a mixer's recurrent state, fired once per chosen position.

    Positions are token columns (negative ones count from the end; with right padding, a row's state
    after its last real token is at that token's column); a hook reads the current one as
    `hook.position` (and the sequence length as `hook.length`). They are the union of `positions`
    (set with `state_positions`) and the `state_positions` attribute of every hook function
    attached (how `PatchState` asks for its own); the last position when nothing asks for any.
    The recurrence is split only while the point has a hook or `positions` are set (an nnsight
    trace of `model.nnsight(inner_points=True)` reads it inside `state_positions`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> seen = []
        >>> with state_positions(model, [1, -1]):
        ...     _ = model.run_with_hooks("In the beginning God", fwd_hooks=[("blocks.0.linear_attn.hook_state",
        ...         lambda state, hook: seen.append((hook.position, tuple(state.shape))))])
        >>> seen                                  # (position, [batch, head, d_k, d_v])
        [(1, (1, 4, 32, 32)), (3, (1, 4, 32, 32))]
    """

    def __init__(self, tap):
        super().__init__(tap)
        self.positions: tuple[int, ...] | None = None
        self.position: int | None = None
        self.length: int | None = None
        self.changed_rows: Tensor | None = None  # after a split scan: the batch rows whose state a hook replaced
        self._asked: dict[int, tuple[int, ...]] = {}  # id of a forward hook's handle -> its state_positions

    def add_hook(self, hook, dir="fwd", **kwargs):
        """`TappedHookPoint.add_hook`, remembering the hook function's `state_positions` attribute.

        Args:
            hook: `fn(state, hook) -> state | None`; `fn.state_positions` (ints) adds positions.
            dir: `"fwd"` or `"bwd"`.
            **kwargs: As TransformerLens's `HookPoint.add_hook` takes them.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_state"]
            >>> def keep(state, hook):
            ...     return None
            >>> keep.state_positions = (1,)
            >>> _ = point.add_hook(keep)
            >>> point.requested()
            [1]
            >>> point.remove_hooks()
        """
        before = {id(handle) for handle in self.fwd_hooks}
        handle = super().add_hook(hook, dir=dir, **kwargs)
        asked = tuple(getattr(inspect.unwrap(hook), "state_positions", ()))
        self._asked = {id(h): asked if id(h) not in before else self._asked.get(id(h), ()) for h in self.fwd_hooks}
        return handle

    def requested(self) -> list[int]:
        """Positions asked for by `positions` and by the attached hooks' `state_positions` (unresolved).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_state"]
            >>> with state_positions(model, [2, -1]):
            ...     point.requested()
            [2, -1]
        """
        asked = list(self.positions) if self.positions is not None else []
        for handle in self.fwd_hooks:
            asked += list(self._asked.get(id(handle), ()))
        return asked

    def wanted(self) -> bool:
        """Whether a forward pass must split the recurrence (a hook is attached or positions are set).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> model.hook_dict["blocks.0.ssm.hook_state"].wanted()
            False
        """
        return bool(self.fwd_hooks or self.bwd_hooks) or self.positions is not None

    def resolve(self, length: int) -> list[int]:
        """The sorted, distinct column indices to fire at in a sequence of `length` tokens.

        Raises `ValueError` naming the positions out of range.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_state"]
            >>> point.resolve(10)                             # default: the last position
            [9]
            >>> with state_positions(model, [-1, 3, 3]):
            ...     point.resolve(10)
            [3, 9]
        """
        asked = self.requested() or ([-1] if self.positions is None else [])
        bad = sorted({p for p in asked if not -length <= p < length})
        if bad:
            raise ValueError(f"State positions {bad} out of range at {self.name} for {length} tokens; "
                             f"use positions in [{-length}, {length - 1}].")
        return sorted({p % length for p in asked})


def split_scan(point: StateHookPoint, scan: Scan, sequences: list[Tensor]) -> Tensor:
    """Run a chunked scan segment by segment, passing the state after each of `point`'s positions
    through `point` and continuing from what it returns.

    Args:
        point: The mixer's state hook point.
        scan: `scan(segments, initial_state, want_final) -> (output, final_state)`, the
            `transformers` scan on `[batch, pos, ...]` segments of `sequences`.
        sequences: The scan's inputs, positions on dim 1.

    Returns:
        The scan output of the whole sequence, segments concatenated along dim 1.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> point = model.hook_dict["blocks.0.ssm.hook_state"]
        >>> def running_sum(parts, state, final):             # a toy scan: state = sum of inputs so far
        ...     out = parts[0].cumsum(1) + (0 if state is None else state[:, None])
        ...     return out, out[:, -1]
        >>> with state_positions(model, 1), model.hooks(fwd_hooks=[(point.name, lambda s, hook: s * 0)]):
        ...     split_scan(point, running_sum, [torch.ones(1, 4)])   # the state after token 1 is zeroed
        tensor([[1., 2., 1., 2.]])
    """
    point.changed_rows = None
    if not point.wanted():
        return scan(sequences, None, False)[0]
    length = sequences[0].shape[1]
    outputs, state, start = [], None, 0
    changed = torch.zeros(sequences[0].shape[0], dtype=torch.bool)
    for end in point.resolve(length):
        output, state = scan([x[:, start : end + 1] for x in sequences], state, True)
        point.position, point.length = end, length
        try:
            new = point(state)
        finally:
            point.position = point.length = None
        if new is not state:
            changed |= (new != state).reshape(new.shape[0], -1).any(1).cpu()
        state = new
        outputs.append(output)
        start = end + 1
    if start < length:
        outputs.append(scan([x[:, start:] for x in sequences], state, False)[0])
    point.changed_rows = changed
    return torch.cat(outputs, dim=1)


def state_points(model) -> dict[str, StateHookPoint]:
    """Every recurrent-state hook point of `model`, by name.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> list(state_points(model))[:2]
        ['blocks.0.ssm.hook_state', 'blocks.1.ssm.hook_state']
    """
    return {name: point for name, point in model.hook_dict.items() if isinstance(point, StateHookPoint)}


@contextmanager
def state_positions(model, positions: int | Sequence[int]) -> Iterator[None]:
    """Make every `hook_state` of `model` fire after each of these token positions (restored on exit).

    Args:
        model: A `HookedHybrid`.
        positions: A token index or indices (negative ones count from the end); checked against
            the sequence length when the model runs.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with state_positions(model, [0, 2]):
        ...     _, cache = model.run_with_cache("In the beginning", names_filter="blocks.0.ssm.hook_state")
        >>> cache["blocks.0.ssm.hook_state"].shape  # the last one fired: after token 2, [batch, head, d_head, d_state]
        torch.Size([1, 4, 32, 32])
    """
    positions = [positions] if isinstance(positions, int) else list(positions)
    if not positions or any(isinstance(p, bool) or not isinstance(p, int) for p in positions):
        raise ValueError(f"State positions must be an int or a non-empty list of ints, not {positions!r}.")
    points = state_points(model)
    if not points:
        raise ValueError(f"This model has no recurrent mixer (layer kinds {sorted(set(model.layer_types))}), "
                         "so no hook_state.")
    previous = {name: point.positions for name, point in points.items()}
    try:
        for point in points.values():
            point.positions = tuple(positions)
        yield
    finally:
        for name, point in points.items():
            point.positions = previous[name]


@torch.no_grad()
def cache_states(model, input, positions: int | Sequence[int], names: Sequence[str] | None = None,
                 **forward_kwargs) -> dict[str, Tensor]:
    """Recurrent states of one run after several positions: `{name: [batch, n_positions, head, ...]}`.

    (`run_with_cache` keeps only the last state a point fires, since it fires once per position.)

    Args:
        model: A `HookedHybrid`.
        input: Text, texts or token ids, as `model(...)` takes them.
        positions: Token positions (negative ones count from the end); the result lists them in
            increasing column order.
        names: `hook_state` names to read (default: all of them).
        **forward_kwargs: Passed to `model(...)` (`attention_mask=`, ...).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> states = cache_states(model, "In the beginning God", [0, -1])
        >>> states["blocks.0.linear_attn.hook_state"].shape      # [batch, position, head, d_k, d_v]
        torch.Size([1, 2, 4, 32, 32])
    """
    points = state_points(model)
    names = list(points) if names is None else list(names)
    unknown = [name for name in names if name not in points]
    if unknown:
        raise ValueError(f"Not recurrent-state points: {unknown}; this model's are {list(points) or 'none'}.")
    store: dict[str, list[Tensor]] = {name: [] for name in names}

    def save(value: Tensor, hook) -> None:
        store[hook.name].append(value.detach())

    with state_positions(model, positions):
        model.run_with_hooks(input, fwd_hooks=[(name, save) for name in names], **forward_kwargs)
    return {name: torch.stack(values, dim=1) for name, values in store.items()}
