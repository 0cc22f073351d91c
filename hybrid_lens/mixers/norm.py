"""Norm points: TransformerLens's `hook_scale` and `hook_normalized` of the norms a block applies.

`blocks.{i}.ln1` is the pre-norm of the block's mixers (in a parallel block, Falcon-H1's, the one norm
both mixers read; where a later mixer has a pre-norm of its own, Zamba2's Mamba-2 after the shared
transformer, that one is `blocks.{i}.ln1_{kind}`), `blocks.{i}.ln2` the pre-norm of its MLP,
`ln_final` the final norm; norms applied to a mixer's or the MLP's output before it joins the residual
(OLMo-Hybrid's attention blocks) are `ln1_post` / `ln2_post`. A block without a norm at a place has
no container there.

- `hook_scale` `[batch, pos, 1]` (float32) is TransformerLens's scale: the RMS of the norm's input,
  `sqrt(mean(x^2) + eps)` (a LayerNorm's: the standard deviation). A new value rescales the output
  as if the norm had divided by it.
- `hook_normalized` `[batch, pos, d]` is the norm's output as the next module reads it, gain included
  (TransformerLens without weight folding puts its gain after its `hook_normalized`; with folding, its
  `hook_normalized @ W_Q` is the query, as ours is with the unfolded `W_Q`).
- `w` is the gain: a view of the norm's weight, or `1 + weight` (a copy) for the Gemma-style norms
  that store it so (Qwen3.5, Qwen3-Next, RecurrentGemma); which one a norm uses is measured on the module.

Both points come from one forward hook on the norm module, installed only while hooked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .taps import MixerHooks

__all__ = ["NormForm", "NormHooks", "add_points", "norm_form"]


@dataclass(frozen=True)
class NormForm:
    """How a `transformers` norm computes: `gain * (x - mean?) / scale + bias` with `gain = offset + weight`.

    Attributes:
        eps: Added to the mean square (variance) under the square root.
        offset: 0 for a norm that multiplies by its weight, 1 for one that multiplies by `1 + weight`.
        centered: Whether it subtracts the mean (a LayerNorm) or not (an RMSNorm).

    Examples:
        >>> form = NormForm(eps=0.0, offset=0.0, centered=False)
        >>> form.scale(torch.tensor([[3.0, 4.0]]) * 2 ** 0.5)
        tensor([[5.]])
    """

    eps: float
    offset: float = 0.0
    centered: bool = False

    def scale(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... 1"]:
        """The scale the norm divides its input by (float32).

        Examples:
            >>> NormForm(eps=0.0, centered=True).scale(torch.tensor([[1.0, 3.0]]))
            tensor([[1.]])
        """
        x = x.float()
        if self.centered:
            return (x.var(-1, keepdim=True, unbiased=False) + self.eps).sqrt()
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()


def norm_form(norm: nn.Module) -> NormForm | None:
    """The `NormForm` of a `transformers` norm module, measured on it: its `eps` (`variance_epsilon` or
    `eps`), whether it centres (a LayerNorm) and whether its gain is `weight` or `1 + weight`, by
    comparing its output on a fixed input with both. None for a module without an `eps` or `weight`.

    Examples:
        >>> norm_form(torch.nn.LayerNorm(4))
        NormForm(eps=1e-05, offset=0.0, centered=True)
    """
    eps = next((getattr(norm, name) for name in ("variance_epsilon", "eps") if hasattr(norm, name)), None)
    weight = getattr(norm, "weight", None)
    if eps is None or not isinstance(weight, Tensor) or weight.ndim != 1 or weight.is_meta:
        return None
    centered = isinstance(norm, nn.LayerNorm) or "LayerNorm" in type(norm).__name__
    probe = torch.randn(2, weight.shape[0], generator=torch.Generator().manual_seed(0)).to(weight.device)
    with torch.no_grad():
        output = norm(probe.to(weight.dtype)).float()
        form = NormForm(float(eps), 0.0, centered)
        normed = (probe - probe.mean(-1, keepdim=True) if centered else probe) / form.scale(probe)
        bias = getattr(norm, "bias", None)
        shifted = output - (bias.float() if isinstance(bias, Tensor) else 0.0)
        plain = (shifted - normed * weight.float()).abs().max()
        offset = (shifted - normed * (1.0 + weight.float())).abs().max()
    return NormForm(float(eps), 1.0 if offset < plain else 0.0, centered)


class NormHooks(MixerHooks):
    """`hook_scale` and `hook_normalized` of one norm (`blocks.{i}.ln1`, `.ln2`, `ln_final`, ...), and
    its gain `w` (and bias `b`, zeros for an RMSNorm) as TransformerLens names them.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> ln1 = model.blocks[0].ln1
        >>> ln1.w.shape, ln1.form.offset
        (torch.Size([128]), 0.0)
    """

    norm: nn.Module | None = None
    form: NormForm | None = None

    @property
    def w(self) -> Float[Tensor, " d"]:
        """The gain: a view of the norm's weight (`1 + weight`, a copy, for Gemma-style norms)."""
        weight = self.norm.weight
        return weight if self.form.offset == 0 else self.form.offset + weight

    @property
    def b(self) -> Float[Tensor, " d"]:
        """The norm's bias (zeros for an RMSNorm, as TransformerLens's)."""
        bias = getattr(self.norm, "bias", None)
        return bias if isinstance(bias, Tensor) else torch.zeros_like(self.norm.weight)


def add_points(hooks: NormHooks, norm: nn.Module, normalized: bool = True) -> Tap | None:
    """Make `hooks` the points of `norm`: `hook_scale`, and `hook_normalized` unless `normalized` is
    False (the final norm's, which is fed apart). None, and no points, for a norm whose form is unknown.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache("In the beginning", names_filter=lambda n: n.startswith("blocks.0.ln1"))
        >>> cache["blocks.0.ln1.hook_scale"].shape, cache["blocks.0.ln1.hook_normalized"].shape
        (torch.Size([1, 3, 1]), torch.Size([1, 3, 128]))
    """
    form = norm_form(norm)
    if form is None:
        return None
    object.__setattr__(hooks, "norm", norm)  # a reference, not a submodule (its weights stay the model's)
    hooks.form = form
    names = ["hook_scale", "hook_normalized"] if normalized else ["hook_scale"]

    def on_output(_module, args, output):
        changed = False
        scale = form.scale(args[0])
        new = hooks.hook_scale(scale)  # points looked up at call time (a module may stand in their place)
        if new is not scale:
            bias = hooks.b.to(output.dtype) if form.centered else 0.0
            output, changed = ((output - bias).float() * (scale / new)).to(output.dtype) + bias, True
        if normalized:
            new = hooks.hook_normalized(output)
            output, changed = new, changed or new is not output
        return output if changed else None

    tap = Tap(lambda: norm.register_forward_hook(on_output, prepend=True).remove, f"{type(norm).__name__} output")
    for name in names:
        hooks.add(name, tap)
    hooks.runs = lambda x: norm(x)  # `blocks[i].ln1(x)`: the norm, gain included (TransformerLens's RMSNorm output)
    return tap
