"""Implicit attention patterns of linear mixers, scaled for circuitsvis.

`hook_pattern` of Gated DeltaNet (`linear_attn`) and Mamba-2 (`ssm`) is an exact token-to-token matrix,
but unlike a softmax pattern it is signed and unnormalised (a Mamba-2 head of a bundled model runs from
-7.4 to 7.9, a Gated DeltaNet head within +-0.07), so circuitsvis, which colours values in [0, 1], shows
saturated or blank blocks. `SignedPattern` divides each head by its own largest |entry| off the diagonal
(its `scales`): every head then spans [-1, 1] with its sign kept, and its name carries the divisor. The
diagonal (each token reading itself) is left out of the scale by default because in Mamba-2 it can be
far larger than every route between tokens (`C_t . B_t dt_t`; in the first four layers of tiny-falcon-h1
on the circuits tutorial's prompt, the largest off-diagonal entry of a head is at most 21% of its
largest entry), which would leave those routes invisible; it is clipped to [-1, 1] then, by at most 100x
(`scale_diagonal=True` scales by every entry, clipping nothing).

`html` renders the heads with `circuitsvis.attention.attention_heads` on a diverging scale (blue
positive, red negative); `split` holds each head's positive part and negative magnitude as two [0, 1]
heads, for views that show one sign at a time (`circuitsvis.attention.attention_patterns`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

__all__ = ["SignedPattern"]

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # a diverging pair that stays distinct for colour-blind readers
DIAGONAL_CLIP = 100  # at most this factor of a head's largest entry is clipped off its diagonal


@dataclass(frozen=True)
class SignedPattern:
    """One row's pattern `[head, query, key]`, each head divided by its largest |entry| off the diagonal.

    Attributes:
        scaled: `Float[Tensor, "head query key"]`, `(pattern / scales[:, None, None]).clamp(-1, 1)`.
        scales: `Float[Tensor, "head"]`, each head's divisor (see `of`).
        names: Per head, its name and divisor (`"L3H0 (÷7.91)"`: multiply by 7.91 for the pattern).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning God", names_filter="blocks.0.ssm.hook_pattern")
        >>> pattern = cache["blocks.0.ssm.hook_pattern"][0]          # [head, query, key]
        >>> signed = SignedPattern.of(pattern, layer=0)
        >>> signed.scaled.shape, signed.names[0]
        (torch.Size([4, 5, 5]), 'L0H0 (÷0.5)')
        >>> off = ~torch.eye(5, dtype=torch.bool)
        >>> torch.allclose(signed.scaled[:, off] * signed.scales[:, None], pattern[:, off])
        True
    """

    scaled: Float[Tensor, "head query key"]
    scales: Float[Tensor, " head"]
    names: list[str]

    @classmethod
    def of(cls, pattern: Float[Tensor, "head query key"], head_names: Sequence[str] | None = None,
           layer: int | None = None, scale_diagonal: bool = False) -> SignedPattern:
        """Scale each head of `pattern` (one batch row of a `hook_pattern`: `cache[name][row]`).

        Args:
            pattern: `[head, query, key]`, any sign and size.
            head_names: One name per head (default `L{layer}H{head}`, or `H{head}` without `layer`).
            layer: The pattern's layer, for the default names.
            scale_diagonal: Let the diagonal set the scale too (default: only the entries off it, the
                diagonal clipped to [-1, 1]; the divisor is at least 1/100 of the head's largest entry,
                so a head that reads almost only its own token shows its other routes faintly, not at
                full contrast).

        Raises `ValueError` for another shape (a whole batch: pick a row) or a wrong number of names.

        Examples:
            >>> pattern = torch.tensor([[[9.0, 0.0], [-4.0, 1.0]]])
            >>> SignedPattern.of(pattern).scaled.tolist(), SignedPattern.of(pattern).names
            ([[[1.0, 0.0], [-1.0, 0.25]]], ['H0 (÷4)'])
            >>> SignedPattern.of(pattern, scale_diagonal=True).scaled.tolist()
            [[[1.0, 0.0], [-0.4444444477558136, 0.1111111119389534]]]
            >>> SignedPattern.of(torch.zeros(1, 2, 3, 3))  # doctest: +ELLIPSIS
            Traceback (most recent call last):
            ...
            ValueError: A pattern of one batch row [head, query, key] is needed; got shape (1, 2, 3, 3)...
        """
        if pattern.ndim != 3 or pattern.shape[1] != pattern.shape[2]:
            raise ValueError(f"A pattern of one batch row [head, query, key] is needed; got shape {tuple(pattern.shape)}"
                             " (for a cached hook_pattern [batch, head, query, key], pass cache[name][row]).")
        pattern = pattern.detach().float().cpu()
        everything = pattern.abs().amax(dim=(1, 2))
        diagonal = torch.eye(pattern.shape[-1], dtype=torch.bool)
        scales = everything if scale_diagonal else pattern.abs().masked_fill(diagonal, 0).amax(dim=(1, 2))
        scales = torch.maximum(scales, everything / DIAGONAL_CLIP)
        scales = torch.where(scales > 0, scales, torch.ones_like(scales))
        prefix = "H" if layer is None else f"L{layer}H"
        heads = list(head_names) if head_names is not None else [f"{prefix}{head}" for head in range(len(pattern))]
        if len(heads) != len(pattern):
            raise ValueError(f"Got {len(heads)} head names for {len(pattern)} heads.")
        names = [f"{name} (÷{scale:.3g})" for name, scale in zip(heads, scales.tolist())]
        return cls((pattern / scales[:, None, None]).clamp(-1, 1), scales, names)

    @property
    def split(self) -> Float[Tensor, "head_sign query key"]:
        """Each head's positive part and negative magnitude as two heads in [0, 1] (`h0+, h0-, h1+, ...`),
        for `circuitsvis.attention.attention_patterns(tokens, attention=signed.split)`.

        Examples:
            >>> SignedPattern.of(torch.tensor([[[2.0, 0.0], [-4.0, 1.0]]])).split[:, 1, 0].tolist()  # h0+, h0-
            [0.0, 1.0]
        """
        return torch.stack([self.scaled.clamp(min=0), (-self.scaled).clamp(min=0)], dim=1).flatten(0, 1)

    @property
    def split_names(self) -> list[str]:
        """The names of the `split` heads (`"... +"`, `"... −"`)."""
        return [f"{name} {sign}" for name in self.names for sign in ("+", "−")]

    def html(self, tokens: Sequence[str], split: bool = False):
        """The heads rendered by `circuitsvis.attention.attention_heads` (needs `pip install circuitsvis`):
        on a diverging scale from -1 (red) to 1 (blue), or with `split` each sign as its own [0, 1] head.

        Args:
            tokens: One string per position (`model.to_str_tokens(...)`).
            split: Show `split` (positive and negative parts side by side) instead of the signed heads.

        Returns:
            circuitsvis's `RenderedHTML` (displays itself in a notebook; `str(html)` is the HTML).

        Examples:
            >>> html = SignedPattern.of(torch.tensor([[[2.0, 0.0], [-4.0, 1.0]]])).html(["In", " the"])
            >>> '"attention": [[[0.5, 0.0], [-1.0, 0.25]]]' in str(html)          # pattern / 4
            True
        """
        try:
            from circuitsvis.attention import attention_heads
        except ImportError as error:
            raise ImportError("Rendering patterns needs circuitsvis: pip install circuitsvis") from error
        if len(tokens) != self.scaled.shape[-1]:
            raise ValueError(f"Got {len(tokens)} tokens for a pattern of {self.scaled.shape[-1]} positions.")
        values, names, low = (self.split, self.split_names, 0.0) if split else (self.scaled, self.names, -1.0)
        return attention_heads(values, list(tokens), attention_head_names=names, min_value=low, max_value=1.0,
                               negative_color=NEGATIVE, positive_color=POSITIVE, mask_upper_tri=True)
