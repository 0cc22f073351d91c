"""Weight views: a `transformers` module's weights in TransformerLens's layout, as views that share storage.

`blocks[i].attn.W_Q`, `blocks[i].mlp.W_out`, `blocks[i].ln1.w` ... are read from the `transformers`
weights every time they are asked for, reshaped and transposed into TransformerLens's layout
(`W_Q` `[head, d_model, d_head]`, `W_O` `[head, d_head, d_model]`, `W_in` `[d_model, d_mlp]`, ...)
without copying: an in-place write to a view changes the model. Three kinds of value cannot be views
and are said so where they are defined: a bias the module does not have (zeros, as TransformerLens
gives), key/value weights repeated over the query heads of grouped-query attention (TransformerLens's
`W_K`; `_W_K` is the view), and a norm gain stored as `1 + weight` (Gemma-style norms).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["WeightViews", "bias_or_zeros", "head_inputs", "head_outputs"]

View = Callable[[nn.Module], Tensor]


class WeightViews:
    """The TransformerLens-named weights of one `transformers` module, read on demand.

    Args:
        module: The `transformers` module holding the weights.
        views: TransformerLens name (`W_Q`, `b_O`, ...) -> function of `module` returning the value.
        absent: Names this module has no value for -> why (the error message says it).

    Examples:
        >>> linear = torch.nn.Linear(4, 6)
        >>> views = WeightViews(linear, {"W_in": lambda m: m.weight.T})
        >>> views["W_in"].shape, views["W_in"].untyped_storage().data_ptr() == linear.weight.untyped_storage().data_ptr()
        (torch.Size([4, 6]), True)
    """

    def __init__(self, module: nn.Module, views: Mapping[str, View], absent: Mapping[str, str] | None = None):
        self.module = module
        self.views = dict(views)
        self.absent = dict(absent or {})

    def __contains__(self, name: str) -> bool:
        return name in self.views

    def __getitem__(self, name: str) -> Tensor:
        """The value of `name`; `KeyError` saying why for a name in `absent`.

        Examples:
            >>> WeightViews(torch.nn.Linear(2, 2), {}, {"W_K": "no keys"})["W_K"]
            Traceback (most recent call last):
            ...
            KeyError: 'W_K: no keys'
        """
        if name in self.absent:
            raise KeyError(f"{name}: {self.absent[name]}")
        return self.views[name](self.module)

    @property
    def names(self) -> list[str]:
        """The names this module has values for."""
        return list(self.views)


def head_inputs(weight: Tensor, n_heads: int, width: int | None = None) -> Tensor:
    """An input projection's weight `[n_heads * d_head, d_model]` as `[head, d_model, d_head]` (a view);
    with `width`, only the first `width` rows of each head (a gated query's query half).

    Examples:
        >>> weight = torch.arange(12.0).reshape(6, 2)          # 3 heads of width 2, d_model 2
        >>> head_inputs(weight, 3)[1]                           # head 1 reads rows 2-3
        tensor([[4., 6.],
                [5., 7.]])
    """
    per_head = weight.view(n_heads, -1, weight.shape[-1])
    return (per_head if width is None else per_head[:, :width]).transpose(1, 2)


def head_outputs(weight: Tensor, n_heads: int) -> Tensor:
    """An output projection's weight `[d_model, n_heads * d_head]` as `[head, d_head, d_model]` (a view).

    Examples:
        >>> weight = torch.arange(12.0).reshape(2, 6)          # d_model 2, 3 heads of width 2
        >>> head_outputs(weight, 3)[1]                          # head 1 writes through columns 2-3
        tensor([[2., 8.],
                [3., 9.]])
    """
    return weight.view(weight.shape[0], n_heads, -1).permute(1, 2, 0)


def bias_or_zeros(linear: nn.Linear, *shape: int) -> Tensor:
    """`linear.bias` viewed as `shape` (its output width by default), or zeros of that shape where the
    layer has no bias (a new tensor, as TransformerLens's zero biases: writing it changes nothing).

    Examples:
        >>> bias_or_zeros(torch.nn.Linear(2, 4, bias=False), 2, 2)
        tensor([[0., 0.],
                [0., 0.]])
    """
    shape = shape or (linear.out_features,)
    if linear.bias is None:
        return torch.zeros(shape, dtype=linear.weight.dtype, device=linear.weight.device)
    return linear.bias.view(shape)
