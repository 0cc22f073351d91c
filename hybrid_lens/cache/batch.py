"""The batch axis of a cache: removing it, or keeping some of its rows (TransformerLens's methods)."""

from __future__ import annotations

import logging
from collections import Counter

from .positions import Slice, as_slice


class BatchSizeError(ValueError, AssertionError):
    """A batch of more than one row where one is needed; also an `AssertionError`, which is what
    TransformerLens raises there (so code catching either works).

    Examples:
        >>> issubclass(BatchSizeError, ValueError), issubclass(BatchSizeError, AssertionError)
        (True, True)
    """


class BatchAxis:
    """`ActivationCache` methods over the batch axis.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache(["In the beginning", "And God said"])
        >>> cache.batch_size
        2
    """

    @property
    def batch_size(self) -> int:
        """The number of rows: the most common leading size of the cached values (1 without values)."""
        counts = Counter(value.shape[0] for value in self.cache_dict.values() if value.ndim > 0)
        return counts.most_common(1)[0][0] if counts else 1

    def remove_batch_dim(self):
        """Drop the batch axis of every value, in place (a cache of one row only); returns the cache.
        Raises `BatchSizeError` for more rows; a second call only logs a warning, as in TransformerLens.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache("In the beginning")
            >>> cache.remove_batch_dim()["resid_pre", 0].shape, cache.has_batch_dim
            (torch.Size([4, 128]), False)
        """
        if not self.has_batch_dim:
            logging.getLogger(__name__).warning("Tried removing batch dimension after already having removed it.")
            return self
        if self.batch_size != 1:
            raise BatchSizeError(f"Cannot remove the batch dimension of a cache of {self.batch_size} rows; "
                                 "keep one row with apply_slice_to_batch_dim(row) instead.")
        self.cache_dict = {name: value[0] if value.ndim > 0 else value for name, value in self.cache_dict.items()}
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice):
        """A new cache of the rows `batch_slice` selects (an int drops the batch axis, like `remove_batch_dim`).

        Args:
            batch_slice: An int, a `(stop,)` / `(start, stop[, step])` tuple, a list or tensor of rows,
                or a TransformerLens `Slice`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache(["In the beginning", "And God said"])
            >>> cache.apply_slice_to_batch_dim(1)["resid_pre", 0].shape
            torch.Size([4, 128])
            >>> cache.apply_slice_to_batch_dim((0, 1)).batch_size
            1
        """
        batch_slice: Slice = as_slice(batch_slice)
        if not self.has_batch_dim and batch_slice.mode != "identity":
            raise ValueError("This cache has no batch axis (remove_batch_dim was applied): there is no row to pick.")
        rows = self.batch_size
        values = {name: batch_slice.apply(value, dim=0) if value.ndim > 0 and value.shape[0] == rows else value
                  for name, value in self.cache_dict.items()}
        return type(self)(values, self.model if self.model is not None else self.layout,
                          has_batch_dim=self.has_batch_dim and batch_slice.mode != "int")
