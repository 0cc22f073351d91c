"""Recurrent-state hook points: the state of a linear mixer after chosen token positions.

A `StateHookPoint` (`blocks.{i}.linear_attn.hook_state`, `blocks.{i}.ssm.hook_state`) fires with the
state after each chosen position `t`, counted in real tokens per row (padding on either side). The
eager mixer path splits the recurrence at those columns (the `transformers` chunked scans'
`initial_state` / `output_final_state`), so a hook that returns a new state makes the recurrence
continue from it (state patching).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Int
from torch import Tensor

from ..checks import int_list
from ..forward_state import current_state
from ..hook_points import TappedHookPoint
from ..tokens import real_positions

Scan = Callable[[list[Tensor], Tensor | None, bool], tuple[Tensor, Tensor | None]]


class StateHookPoint(TappedHookPoint):
    """A hook point on a mixer's recurrent state, fired once per chosen position.

    Positions count real tokens per row, as everywhere else (`0` is each row's first real token,
    `-1` its last, with left or right padding). They are the union of `positions` (set with
    `state_positions`) and the `state_positions` attribute of every hook function attached (how
    `PatchState` asks for its own); the last position when nothing asks for any. The point fires at
    each column where some row reaches a chosen position, with the whole batch's state; the hook reads
    `hook.position` (the position as asked), `hook.rows` (`Bool[Tensor, "batch"]`: the rows whose state
    after their real token `position` this is) and `hook.column`. Only those rows take what the hook
    returns; a row whose position came at an earlier column shows its state there (so the last firing
    of a position holds every row's state, which `run_with_cache` keeps). The recurrence is split only
    while the point has a hook or `positions` are set (an nnsight trace of
    `model.nnsight(inner_points=True)` reads it inside `state_positions`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> seen = []
        >>> with state_positions(model, [1, -1]):
        ...     _ = model.run_with_hooks("In the beginning God", fwd_hooks=[("blocks.0.linear_attn.hook_state",
        ...         lambda state, hook: seen.append((hook.position, hook.column, tuple(state.shape))))])
        >>> seen                                  # (position, column, [batch, head, d_k, d_v])
        [(1, 1, (1, 4, 32, 32)), (-1, 3, (1, 4, 32, 32))]
    """

    def __init__(self, tap):
        super().__init__(tap)
        self.positions: tuple[int, ...] | None = None
        self.position: int | None = None
        self.rows: Tensor | None = None
        self.column: int | None = None
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

    def columns(self, positions: Int[Tensor, "batch pos"]) -> dict[int, Int[Tensor, " batch"]]:
        """Per chosen position (as asked, in the order asked), the column of each row's state after it.

        Args:
            positions: Each column's real-token index per row, -1 on padding (`ForwardState.positions`).

        Raises `ValueError` naming the positions out of range and the rows too short for them.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_state"]
            >>> point.columns(torch.tensor([[0, 1, 2, -1], [0, 1, 2, 3]]))    # default: the last real token
            {-1: tensor([2, 3])}
            >>> with state_positions(model, [0, -2]):
            ...     point.columns(torch.tensor([[-1, 0, 1, 2], [0, 1, 2, 3]]))   # row 0 left-padded
            {0: tensor([1, 0]), -2: tensor([2, 2])}
        """
        asked = list(dict.fromkeys(self.requested() or [-1]))
        positions = positions.cpu()
        lengths = positions.max(1).values + 1
        found, bad = {}, {}
        for position in asked:
            index = lengths + position if position < 0 else torch.full_like(lengths, position)
            match = (positions == index[:, None]) & (index[:, None] >= 0)  # -1 marks padding, not a token
            short = (~match.any(1)).nonzero().flatten().tolist()
            if short:
                bad[position] = short
            found[position] = match.long().argmax(1)
        if bad:
            rows = sorted({row for short in bad.values() for row in short})
            raise ValueError(f"State positions {sorted(bad)} out of range at {self.name} for rows {rows} of "
                             f"{sorted({int(lengths[row]) for row in rows})} real tokens; positions count real "
                             f"tokens per row: use positions in [-{int(lengths.min())}, {int(lengths.min()) - 1}].")
        return found


def split_scan(point: StateHookPoint, scan: Scan, sequences: list[Tensor]) -> Tensor:
    """Run a chunked scan segment by segment, passing the state at each column where a row reaches one of
    `point`'s positions through `point` and continuing from what it returns (for those rows).

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
    batch, length = sequences[0].shape[:2]
    state_now = current_state()
    positions = state_now.positions if state_now is not None and state_now.running else None
    if positions is None or tuple(positions.shape) != (batch, length):
        positions = real_positions(None, batch, length)
    columns = point.columns(positions)
    outputs, state, start = [], None, 0
    changed = torch.zeros(batch, dtype=torch.bool)
    shown: dict[int, tuple[Tensor, Tensor]] = {}  # position -> (rows fired so far, their states there)
    for end in sorted({column for cols in columns.values() for column in cols.tolist()}):
        output, state = scan([x[:, start : end + 1] for x in sequences], state, True)
        for position, cols in columns.items():
            if bool((cols == end).any()):
                state, edited = _fire(point, state, position, cols == end, end, shown)
                changed |= edited
        outputs.append(output)
        start = end + 1
    if start < length:
        outputs.append(scan([x[:, start:] for x in sequences], state, False)[0])
    point.changed_rows = changed
    return torch.cat(outputs, dim=1)


def _fire(point: StateHookPoint, state: Tensor, position: int, rows: Tensor, column: int,
          shown: dict[int, tuple[Tensor, Tensor]]) -> tuple[Tensor, Tensor]:
    """Pass `state` through `point` for the batch `rows` at their `position`; returns the state the scan
    continues from (only `rows` take the hook's value) and the rows it changed."""
    def per_row(mask: Tensor) -> Tensor:
        return mask.to(state.device).view(-1, *[1] * (state.ndim - 1))

    earlier = shown.get(position)
    value = state if earlier is None else torch.where(per_row(earlier[0]), earlier[1], state)
    point.position, point.rows, point.column = position, rows, column
    try:
        new = point(value)
    finally:
        point.position = point.rows = point.column = None
    edited = torch.zeros_like(rows)
    if new is not value:
        new = torch.where(per_row(rows), new, state)
        edited = rows & (new != state).reshape(new.shape[0], -1).any(1).cpu()
        state = new
    done = rows if earlier is None else earlier[0] | rows
    shown[position] = (done, state if earlier is None else torch.where(per_row(rows), state, earlier[1]))
    return state, edited


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
        positions: A token position or positions, counted in real tokens per row (negative ones
            count from each row's end); checked against every row when the model runs.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with state_positions(model, [0, 2]):
        ...     _, cache = model.run_with_cache("In the beginning", names_filter="blocks.0.ssm.hook_state")
        >>> cache["blocks.0.ssm.hook_state"].shape  # the last one fired: after token 2, [batch, head, d_head, d_state]
        torch.Size([1, 4, 32, 32])
    """
    positions = check_state_positions(positions)
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

    (`run_with_cache` keeps only the last position a point fires for.) Positions count real tokens per
    row, so a padded batch (with its `attention_mask=`, or texts) gives each row the states of its own
    tokens, as the row run alone gives them.

    Args:
        model: A `HookedHybrid`.
        input: Text, texts or token ids, as `model(...)` takes them.
        positions: Token positions (negative ones count from each row's end); each row lists its
            states in increasing order of position (one entry per distinct position given).
        names: `hook_state` names to read (default: all of them).
        **forward_kwargs: Passed to `model(...)` (`attention_mask=`, ...).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> states = cache_states(model, "In the beginning God", [0, -1])
        >>> states["blocks.0.linear_attn.hook_state"].shape      # [batch, position, head, d_k, d_v]
        torch.Size([1, 2, 4, 32, 32])
        >>> padded = cache_states(model, ["In the beginning God", "And God"], -1)    # each row's last token
        >>> alone = cache_states(model, "And God", -1)
        >>> torch.allclose(padded["blocks.0.linear_attn.hook_state"][1], alone["blocks.0.linear_attn.hook_state"][0])
        True
    """
    positions = check_state_positions(positions)
    points = state_points(model)
    names = list(points) if names is None else [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in points]
    if unknown or not names:
        raise ValueError(f"names must be recurrent-state points of this model; got {unknown or names}, this model's "
                         f"are {list(points) or 'none'}.")
    fired: dict[str, list[tuple[int, Tensor, int, Tensor]]] = {name: [] for name in names}

    def save(value: Tensor, hook) -> None:
        fired[hook.name].append((hook.position, hook.rows.clone(), hook.column, value.detach()))

    with state_positions(model, positions):
        model.run_with_hooks(input, fwd_hooks=[(name, save) for name in names], **forward_kwargs)
    return {name: _per_row(fired[name], list(dict.fromkeys(positions))) for name in names}


def _per_row(fired: list[tuple[int, Tensor, int, Tensor]], asked: list[int]) -> Tensor:
    """The firings of one point gathered into `[batch, len(asked), ...]`, each row in increasing order."""
    values: dict[int, Tensor] = {}
    columns: dict[int, Tensor] = {}
    for position, rows, column, value in fired:
        if position not in values:
            values[position], columns[position] = value.clone(), torch.zeros(rows.shape[0], dtype=torch.long)
        values[position][rows.to(value.device)] = value[rows.to(value.device)]
        columns[position][rows] = column
    stacked = torch.stack([values[p] for p in asked], dim=1)
    order = torch.stack([columns[p] for p in asked], dim=1).argsort(dim=1, stable=True).to(stacked.device)
    return stacked.gather(1, order.view(*order.shape, *[1] * (stacked.ndim - 2)).expand_as(stacked))


def check_state_positions(positions) -> tuple[int, ...]:
    """State positions as a tuple of ints: an int (numpy integers too) or a non-empty list of them;
    `ValueError` naming the accepted forms otherwise.

    Examples:
        >>> check_state_positions(2), check_state_positions([0, -1])
        ((2,), (0, -1))
        >>> check_state_positions([1.5])
        Traceback (most recent call last):
        ...
        ValueError: State positions must be an int or a non-empty list of ints (token positions, negative from the end), not [1.5].
    """
    return int_list("State positions", positions, "token positions, negative from the end")
