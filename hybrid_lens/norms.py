"""The arithmetic of a model's norms as TransformerLens sees it: a scale per token, and a gain.

An RMSNorm computes `gain * x / scale(x)` with `scale(x) = sqrt(mean(x^2) + eps)`; a LayerNorm
computes `gain * (x - mean(x)) / scale(x) + bias` with `scale(x) = sqrt(var(x) + eps)`. With the scale
frozen at its value on the actual residual, the norm is linear in each part of the residual stream:
this is how `ActivationCache.apply_ln_to_stack` applies a norm to a stack of components.
`NormForm.of` reads the form from the model's own norm module, whatever its parametrisation (a gain
`w`, Qwen3.5's `1 + w`, no weight at all), and `NormForm.check` verifies it against that module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

EPS_ATTRIBUTES = ("variance_epsilon", "eps", "epsilon")


@dataclass(frozen=True)
class NormForm:
    """A norm module as `gain * center(x) / scale(x) (+ bias)`, in float32.

    Attributes:
        centered: Whether the norm subtracts the mean first (LayerNorm) or not (RMSNorm).
        eps: The epsilon added under the square root.
        gain: `Float[Tensor, "d_model"]`, the effective per-channel gain (`w`, `1 + w` or ones).
        bias: `Float[Tensor, "d_model"]` of a LayerNorm with a bias, else None.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> final = model.adapter.final_norm(model.hf_model)
        >>> form = NormForm.of(final)                    # Qwen3.5: gain is 1 + weight
        >>> torch.equal(form.gain, 1 + final.weight.float()), form.centered
        (True, False)
    """

    centered: bool
    eps: float
    gain: Float[Tensor, "d_model"]
    bias: Float[Tensor, "d_model"] | None = None

    @classmethod
    def of(cls, norm: nn.Module) -> NormForm:
        """The form of `norm`: a `torch.nn.LayerNorm` (centered), else an RMSNorm whose gain is read by
        running the module on a constant vector (and is its `weight`, or `1 + weight`, where one of them
        gives that output). `ValueError` if the module names no epsilon.

        Examples:
            >>> form = NormForm.of(torch.nn.LayerNorm(4))
            >>> form.centered, form.gain.tolist(), form.bias.tolist()
            (True, [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0])
        """
        eps = next((float(getattr(norm, name)) for name in EPS_ATTRIBUTES if hasattr(norm, name)), None)
        if eps is None:
            raise ValueError(f"{type(norm).__name__} has none of {EPS_ATTRIBUTES}: not a norm whose scale is known.")
        weight = getattr(norm, "weight", None)
        if isinstance(norm, nn.LayerNorm):
            d_model = norm.normalized_shape[-1]
            gain = weight.detach().float() if weight is not None else torch.ones(d_model)
            bias = norm.bias.detach().float() if norm.bias is not None else None
            return cls(True, eps, gain, bias)
        device = weight.device if weight is not None else next(iter(norm.buffers()), torch.empty(0)).device
        d_model = weight.shape[-1] if weight is not None else getattr(norm, "hidden_size", None)
        if d_model is None:
            raise ValueError(f"{type(norm).__name__} has no weight or hidden_size: its width is unknown.")
        with torch.no_grad():
            probe = norm(torch.ones(d_model, device=device)).float() * math.sqrt(1 + eps)
        for candidate in ((weight.detach().float(), 1 + weight.detach().float()) if weight is not None else ()):
            if torch.allclose(candidate, probe, rtol=1e-5, atol=1e-6):
                return cls(False, eps, candidate)
        return cls(False, eps, probe)

    def scale(self, x: Float[Tensor, "... d_model"]) -> Float[Tensor, "... 1"]:
        """TransformerLens's `hook_scale` of the residual `x`: `sqrt(mean(x^2) + eps)` (RMSNorm) or
        `sqrt(var(x) + eps)` (LayerNorm), computed in float32.

        Examples:
            >>> NormForm(False, 0.0, torch.ones(2)).scale(torch.tensor([[3.0, 4.0]]))
            tensor([[3.5355]])
        """
        x = x.float()
        if self.centered:
            x = x - x.mean(-1, keepdim=True)
        return (x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt()

    def apply(self, parts: Float[Tensor, "... d_model"], scale: Float[Tensor, "... 1"]) -> Float[Tensor, "... d_model"]:
        """The norm with its scale frozen at `scale`, without the bias: `gain * center(parts) / scale`,
        linear in `parts` (so the normed parts of a stack sum to the normed sum, minus any bias).
        Returned in the dtype of `parts`.

        Examples:
            >>> form = NormForm(False, 0.0, torch.tensor([2.0, 1.0]))
            >>> form.apply(torch.tensor([[1.0, 1.0]]), torch.tensor([[2.0]]))
            tensor([[1.0000, 0.5000]])
        """
        x = parts.float()
        if self.centered:
            x = x - x.mean(-1, keepdim=True)
        gain = self.gain.to(x.device)
        return (x / scale.to(x.device).float() * gain).to(parts.dtype)

    def check(self, norm: nn.Module, x: Float[Tensor, "... d_model"], where: str) -> None:
        """Raise `ValueError` unless this form reproduces `norm(x)` (within float32 rounding of its
        dtype), naming the norm's class and `where` it is.

        Examples:
            >>> norm = torch.nn.LayerNorm(4)
            >>> NormForm.of(norm).check(norm, torch.randn(2, 4), "a test")
        """
        if x.shape[-1] != self.gain.shape[-1]:
            raise ValueError(f"The norm of {where} ({type(norm).__name__}) has width {self.gain.shape[-1]}, "
                             f"not the residual stream's {x.shape[-1]}.")
        with torch.no_grad():
            expected = norm(x.to(self.gain.device)).float()
        ours = self.apply(x, self.scale(x)).float() + (0 if self.bias is None else self.bias.to(x.device))
        tolerance = 1e-3 if x.dtype in (torch.float16, torch.bfloat16) else 1e-5
        if not torch.allclose(ours, expected, rtol=tolerance, atol=tolerance * float(expected.abs().mean()) + 1e-6):
            raise ValueError(f"The norm of {where} ({type(norm).__name__}) is neither gain * x / rms(x) nor a "
                             "LayerNorm, so its scale cannot be frozen to apply it to parts of the residual stream.")
