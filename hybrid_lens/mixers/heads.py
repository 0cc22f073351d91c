"""Per-head results: `blocks.{i}.{kind}.hook_result`, each head's share of a mixer's output.

A mixer whose output projection reads per-head values (softmax attention's `o_proj` reads z; Gated
DeltaNet's, KDA's and lightning attention's `out_proj` / `o_proj` read their gated, normed per-head
outputs, `hook_z`; Mamba-2's `out_proj` reads `hook_y`) writes the sum over heads of
`z[..., h, :] @ W_O[h]`, plus the projection's bias. `hook_result` `[batch, pos, head, d_model]` holds
those terms times the block's output multiplier (Falcon-H1's `attn_out_multiplier` /
`ssm_out_multiplier`, Granite's `residual_multiplier`, MiniMax's `beta`), so that

    hook_result.sum(-2) + multiplier * b_O == hook_{kind}_out        (to float rounding)

the contribution of every head to the residual stream, as TransformerLens's `hook_result` (which
also leaves `b_O` out). Where the block normalises the mixer output before adding it (OLMo-Hybrid's
attention: `post_attention_layernorm`), the sum is the normalised module's input, not
`hook_{kind}_out` (`Heads.exact` is False). A hook that returns new results makes the projection
output their sum (divided by the multiplier) plus its bias, as if the heads had produced them. Heads
in one group of a norm that spans heads (Mamba-2's grouped gated norm, lightning attention's norm
over all heads) are coupled through that norm's scale before the projection; their results are still
the exact split of the projection.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .inputs import Switches
from .taps import MixerHooks, input_tap, single
from .weights import WeightViews, bias_or_zeros, head_outputs

__all__ = ["Heads", "add_head_input", "add_result_point", "declare_heads"]

Multiplier = Callable[[], float | Tensor | None]


@dataclass(frozen=True)
class Heads:
    """How one mixer's output projection reads per-head values.

    Attributes:
        projection: The output projection (`nn.Linear`, input `[..., n_heads * d_head]`).
        n_heads: Number of heads it reads.
        source: The mixer's inner point holding the projection input per head (`hook_z`, `hook_y`).
        multiplier: What the block multiplies the mixer output by before it joins the residual
            (None: nothing).
        exact: Whether the results sum (plus bias) to `hook_{kind}_out` (False after a post-norm).

    Examples:
        >>> heads = Heads(torch.nn.Linear(8, 4, bias=False), n_heads=2, source="hook_z")
        >>> heads.W_O.shape, heads.d_head                      # [head, d_head, d_model]
        (torch.Size([2, 4, 4]), 4)
        >>> z = torch.randn(1, 3, 2, 4)
        >>> torch.allclose(heads.results(z).sum(-2), heads.projection(z.flatten(-2)), atol=1e-6)
        True
    """

    projection: nn.Linear
    n_heads: int
    source: str
    multiplier: Multiplier | None = None
    exact: bool = True

    def factor(self) -> float | Tensor | None:
        """The multiplier's value now (None: no multiplier).

        Examples:
            >>> Heads(torch.nn.Linear(4, 2), 2, "hook_z", multiplier=lambda: 0.5).factor()
            0.5
        """
        return None if self.multiplier is None else self.multiplier()

    @property
    def d_head(self) -> int:
        """Width of one head's input to the projection."""
        return self.projection.in_features // self.n_heads

    @property
    def W_O(self) -> Float[Tensor, "head d_head d_model"]:
        """The projection's weight per head (a view)."""
        return head_outputs(self.projection.weight, self.n_heads)

    @property
    def b_O(self) -> Float[Tensor, " d_model"]:
        """The projection's bias (zeros without one)."""
        return bias_or_zeros(self.projection)

    def results(self, z: Float[Tensor, "... head d_head"]) -> Float[Tensor, "... head d_model"]:
        """Each head's share `z[..., h, :] @ W_O[h]` of the projection output, times the multiplier.

        Examples:
            >>> heads = Heads(torch.nn.Linear(4, 3), n_heads=2, source="hook_z", multiplier=lambda: 2.0)
            >>> heads.results(torch.ones(1, 2, 2)).shape
            torch.Size([1, 2, 3])
        """
        results = torch.einsum("...hd,hdm->...hm", z, self.W_O.to(z.dtype))
        factor = self.factor()
        return results if factor is None else results * factor

    def output(self, results: Float[Tensor, "... head d_model"]) -> Float[Tensor, "... d_model"]:
        """The projection output whose per-head results are `results`: their sum, divided by the
        multiplier, plus the bias (what a write to `hook_result` makes the projection return).

        Examples:
            >>> heads = Heads(torch.nn.Linear(4, 3), n_heads=2, source="hook_z")
            >>> z = torch.randn(2, 2, 2)
            >>> torch.allclose(heads.output(heads.results(z)), heads.projection(z.flatten(-2)), atol=1e-6)
            True
        """
        total = results.sum(-2)
        factor = self.factor()
        if factor is not None:
            total = total / factor
        return total + self.b_O.to(total.dtype) if self.projection.bias is not None else total


def declare_heads(hooks: MixerHooks, module: nn.Module, projection: nn.Linear, n_heads: int, source: str,
                  views: dict | None = None, absent: dict | None = None) -> None:
    """Declare that the mixer `module` of `hooks` reads `n_heads` heads through `projection` (its input
    per head is the point `source`), for `add_result_point`; its weight views are `W_O`, `b_O` and `views`
    (`absent`: names it has no value for, with the reason), see `WeightViews`.

    Examples:
        >>> from hybrid_lens.mixers.taps import MixerHooks
        >>> hooks, projection = MixerHooks(), torch.nn.Linear(8, 4)
        >>> declare_heads(hooks, projection, projection, n_heads=2, source="hook_z")
        >>> hooks.W_O.shape, hooks.heads.source
        (torch.Size([2, 4, 4]), 'hook_z')
    """
    hooks.heads = Heads(projection, n_heads, source)
    own = {"W_O": lambda _: head_outputs(projection.weight, n_heads), "b_O": lambda _: bias_or_zeros(projection)}
    hooks.weights = WeightViews(module, {**(views or {}), **own}, absent)


def add_head_input(hooks: MixerHooks, module: nn.Module, projection: nn.Linear, n_heads: int, where: str,
                   views: dict | None = None, absent: dict | None = None) -> Tap:
    """`hook_z` `[batch, pos, head, d_head]`, the input of the output `projection` per head (a cheap tap on it),
    with the heads declared (`declare_heads`, same arguments); returns its tap.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> _, cache = model.run_with_cache("In the beginning", names_filter="blocks.0.linear_attn.hook_z")
        >>> cache["blocks.0.linear_attn.hook_z"].shape          # [batch, pos, v_head, d_v]
        torch.Size([1, 3, 4, 32])
    """
    split, join = single("hook_z", n_heads)
    tap = input_tap(hooks, projection, split, join, ["hook_z"], where)
    declare_heads(hooks, module, projection, n_heads, "hook_z", views, absent)
    return tap


def add_result_point(hooks: MixerHooks, multiplier: Multiplier, exact: bool, switches: Switches) -> Tap:
    """`hook_result` of a mixer whose kind declared its `heads`, with the block's output `multiplier`
    (and whether the results sum to the block output, `exact`); a forward hook on the projection,
    installed only while hooked, not fed while `switches.use_attn_result` is False (`mixers.inputs`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _, cache = model.run_with_cache("In the beginning", names_filter=["blocks.0.ssm.hook_result",
        ...                                                                   "blocks.0.hook_ssm_out"])
        >>> result = cache["blocks.0.ssm.hook_result"]
        >>> result.shape                                   # [batch, pos, head, d_model]
        torch.Size([1, 4, 4, 128])
        >>> torch.allclose(result.sum(-2), cache["blocks.0.hook_ssm_out"], atol=1e-5)
        True
    """
    heads = hooks.heads = replace(hooks.heads, multiplier=multiplier, exact=exact)

    def on_output(_module, args, output):
        if switches.use_attn_result is False:
            return None
        results = heads.results(args[0].unflatten(-1, (heads.n_heads, -1)))
        new = hooks.hook_result(results)  # looked up at call time (a module may stand in its place)
        return None if new is results else heads.output(new).to(output.dtype)

    tap = Tap(lambda: heads.projection.register_forward_hook(on_output).remove, "output projection (per head)")
    hooks.add("hook_result", tap)
    return tap
