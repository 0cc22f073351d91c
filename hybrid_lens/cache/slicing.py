"""TransformerLens's `Slice` for the `pos_slice=` / `neuron_slice=` arguments of cache methods.

`as_slice(None)` keeps everything, an int picks one index (dropping the axis), a tuple is a range
(`(k,)` = `:k`, `(m, k)` = `m:k`), a list / tensor / array picks those indices, as TransformerLens
takes them.
"""

from __future__ import annotations

try:  # TransformerLens >= 3.x keeps it in `utilities`
    from transformer_lens.utilities import Slice
except ImportError:  # pragma: no cover - older 3.x
    from transformer_lens.utils import Slice

__all__ = ["Slice", "as_slice"]


def as_slice(value) -> Slice:
    """`value` as a TransformerLens `Slice` (a `Slice` is returned as it is).

    Examples:
        >>> as_slice(-1).apply(torch.arange(6).reshape(2, 3), dim=-1)
        tensor([2, 5])
        >>> as_slice(None).apply(torch.arange(3)).tolist()
        [0, 1, 2]
    """
    return value if isinstance(value, Slice) else Slice(value)
