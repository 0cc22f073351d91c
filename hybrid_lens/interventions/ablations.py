"""Ablations that act on the activation alone: zero, scale, noise, and skipping a whole block."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..checks import check_number, check_seed
from .base import Intervention
from .selectors import Selector


class _Elementwise(Intervention):
    def hook_fns(self, target):
        return [(name, self.replace) for name in target.hook_names]

    def replace(self, value: Tensor, hook) -> Tensor:
        raise NotImplementedError


@dataclass
class Zero(_Elementwise):
    """Replace the activation by zeros (the paper's parallel zeroing when applied to a mixer output).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("ssm", layers="early"), Zero()).apply(model):
        ...     logits, cache = model.run_with_cache("In the beginning")
        >>> bool(cache["ssm_out", 0].eq(0).all())
        True
    """

    type: ClassVar[str] = "zero"
    cache_safe: ClassVar[bool] = True


    def replace(self, value, hook):
        """Zeros shaped like `value`.

        Examples:
            >>> Zero().replace(torch.ones(2, 3), hook=None)
            tensor([[0., 0., 0.],
                    [0., 0., 0.]])
        """
        return torch.zeros_like(value)

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): zero the SSM path of block 1."""
        return Selector("ssm", layers=1), cls()


@dataclass
class Scale(_Elementwise):
    """Multiply the activation by `alpha`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("attn"), Scale(2.0)).apply(model):
        ...     logits = model("In the beginning")
    """

    alpha: float
    type: ClassVar[str] = "scale"
    cache_safe: ClassVar[bool] = True


    def __post_init__(self):
        self.alpha = check_number("Scale alpha", self.alpha)

    def replace(self, value, hook):
        """`alpha * value`.

        Examples:
            >>> Scale(0.5).replace(torch.ones(2), hook=None)
            tensor([0.5000, 0.5000])
        """
        return self.alpha * value

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): halve the attention outputs of block 1."""
        return Selector("attn", layers=1), cls(0.5)


@dataclass
class Noise(_Elementwise):
    """Add Gaussian noise of standard deviation `sigma`; the same `seed` gives the same noise.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("resid_pre", layers=0), Noise(0.1, seed=0)).apply(model):
        ...     logits = model("In the beginning")
    """

    sigma: float
    seed: int = 0
    type: ClassVar[str] = "noise"


    def __post_init__(self):
        self.sigma = check_number("Noise sigma", self.sigma, minimum=0.0)
        self.seed = check_seed(self.seed, "Noise seed")

    def replace(self, value, hook):
        """`value` plus seeded noise `sigma * N(0, 1)` of its shape (drawn in float32 on the CPU).

        Examples:
            >>> noise = Noise(0.1, seed=0)
            >>> torch.equal(noise.replace(torch.zeros(3), None), noise.replace(torch.zeros(3), None))
            True
        """
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(value.shape, generator=generator, dtype=torch.float32)
        return value + self.sigma * noise.to(device=value.device, dtype=value.dtype)

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): noise on the residual stream entering block 1."""
        return Selector("resid_pre", layers=1), cls(1.0, seed=3)


@dataclass
class SkipLayer(Intervention):
    """The whole block becomes the identity, `resid_post = resid_pre` (the paper's sequential skip).

    Acts on `Selector("block", ...)` targets only.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with Condition.of(Selector("block", layers=5), SkipLayer()).apply(model):
        ...     logits, cache = model.run_with_cache("In the beginning")
        >>> torch.equal(cache["resid_post", 5], cache["resid_pre", 5])
        True
    """

    type: ClassVar[str] = "skip_layer"
    cache_safe: ClassVar[bool] = True


    def hook_fns(self, target):
        """Save `resid_pre` and return it again at `resid_post`; raises unless `target.kind == "block"`.

        Examples:
            >>> [name for name, fn in SkipLayer().hook_fns(Target(5, "block"))]
            ['blocks.5.hook_resid_pre', 'blocks.5.hook_resid_post']
        """
        if target.kind != "block":
            raise ValueError("skip_layer acts on whole blocks: select kind='block'.")
        saved: dict[str, Tensor] = {}
        pre, post = target.hook_names

        def keep_input(value, hook):
            saved["input"] = value
            return value

        def output_is_input(value, hook):
            return saved.pop("input")

        return [(pre, keep_input), (post, output_is_input)]

    @classmethod
    def example(cls, tokens):
        """Example (see `Intervention.example`): skip block 1."""
        return Selector("block", layers=1), cls()
