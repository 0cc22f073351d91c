"""Position slices (TransformerLens's `pos_slice=`) and where each cached value keeps its positions.

A `pos_slice` is anything TransformerLens's `Slice` takes (None, an int, a `(stop,)` / `(start, stop[,
step])` tuple, a list or tensor of indices, a `slice`) or a `Slice` itself. Every cached value is
batch-first; its position axis is the one after the batch (`[batch, pos, ...]`), except the patterns
(`hook_pattern`, `hook_attn_scores`: `[batch, head, query_pos, key_pos]`, sliced on the query) and
the recurrent states (`hook_state`: `[batch, head, ...]`, no position axis).
"""

from __future__ import annotations

from torch import Tensor

try:  # TransformerLens >= 3 (the utilities package); older releases kept it in utils
    from transformer_lens.utilities import Slice
except ImportError:  # pragma: no cover - depends on the installed TransformerLens
    from transformer_lens.utils import Slice

__all__ = ["Slice", "as_slice", "position_axis", "slice_positions"]

QUERY_AXIS_POINTS = ("hook_pattern", "hook_attn_scores")
NO_POSITION_POINTS = ("hook_state",)


def as_slice(pos_slice, keep_dim: bool = False) -> Slice:
    """`pos_slice` as a TransformerLens `Slice`; with `keep_dim`, an int keeps its axis (length 1), as
    `run_with_cache(pos_slice=...)` keeps it.

    Examples:
        >>> import torch
        >>> as_slice(-1).apply(torch.arange(6).view(2, 3), dim=-1), as_slice(-1, keep_dim=True).mode
        (tensor([2, 5]), 'array')
    """
    if isinstance(pos_slice, Slice):
        return pos_slice
    return Slice.unwrap(pos_slice) if keep_dim else Slice(pos_slice)


def position_axis(name: str, value: Tensor) -> int | None:
    """The axis of the cached `value` of hook point `name` (a `_grad` name too) that counts token positions,
    batch axis included; None for a value without one.

    Examples:
        >>> import torch
        >>> position_axis("blocks.0.attn.hook_q", torch.zeros(1, 5, 4, 16)), position_axis(
        ...     "blocks.0.attn.hook_pattern", torch.zeros(1, 4, 5, 5)), position_axis("blocks.0.ssm.hook_state", None)
        (1, 2, None)
    """
    point = name.removesuffix("_grad").rsplit(".", 1)[-1]
    if point in NO_POSITION_POINTS or value is None or value.ndim < 2:
        return None
    return 2 if point in QUERY_AXIS_POINTS else 1


def slice_positions(value: Tensor, name: str, pos_slice: Slice) -> Tensor:
    """`value` of hook point `name` (batch-first) with `pos_slice` applied to its position axis, if it has one.

    Examples:
        >>> import torch
        >>> slice_positions(torch.zeros(2, 7, 64), "blocks.0.hook_resid_pre", as_slice(-1, keep_dim=True)).shape
        torch.Size([2, 1, 64])
    """
    axis = position_axis(name, value)
    return value if axis is None else pos_slice.apply(value, dim=axis)
