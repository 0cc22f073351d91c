"""MLP neuron points: TransformerLens's `mlp.hook_pre`, `hook_pre_linear`, `hook_post` and MLP weight views.

For a dense MLP (one module of the block's MLP, `transformers`' gated `gate_proj` / `up_proj` /
`down_proj`, LFM2's `w1` / `w3` / `w2`, Granite's fused `input_linear`, or the non-gated `up_proj` /
`down_proj` of Nemotron-H), in `blocks.{i}.mlp.`:

- `hook_pre` `[batch, pos, d_mlp]`: the activation function's input (the gate projection's output in a
  gated MLP, times Falcon-H1's `gate_multiplier`);
- `hook_pre_linear` `[batch, pos, d_mlp]` (gated MLPs): the linear branch the activation multiplies;
- `hook_post` `[batch, pos, d_mlp]`: the input of the down projection (the neuron activations).

Weight views as TransformerLens lays them out: `W_gate`, `W_in` `[d_model, d_mlp]`, `W_out`
`[d_mlp, d_model]`, `b_in` `[d_mlp]`, `b_out` `[d_model]`. Neuron `n`'s result, its contribution to the
residual stream, is `hook_post[..., n] * W_out[n]` times what follows the down projection (Falcon-H1's
`down_multiplier`, the block's output multiplier: `Neurons.results`), so the results plus the scaled
`b_out` sum to `hook_mlp_out` where no post-norm follows.

A mixture of experts has no such points (each expert sees only the tokens routed to it; its router
points are `mixers.router`'s), nor does a block whose MLP is several modules summed (Granite's MoE
plus shared MLP). Zamba2's shared MLP adds per-depth LoRA adapters to its fused input projection:
it has `hook_post` and `W_out` / `b_out` only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from ..hook_points import Tap
from .taps import MixerHooks, input_tap, output_tap, single
from .weights import WeightViews, bias_or_zeros

__all__ = ["DenseLayout", "Neurons", "add_points", "layout_of"]

Multiplier = Callable[[], float | Tensor | None]


@dataclass(frozen=True)
class DenseLayout:
    """The projections of a dense MLP module, by attribute.

    Attributes:
        down: The down (output) projection, whose input is `hook_post`.
        gate: The gate projection (the activation's input), None when not gated or fused.
        up: The linear input projection (TransformerLens's `W_in`), None when fused.
        fused: One projection holding `[gate | up]` (Granite's `input_linear`), None otherwise.
        inputs: Whether its input projections are exact (False: Zamba2's adapters add to them).

    Examples:
        >>> DenseLayout("w2", "w1", "w3").gate
        'w1'
    """

    down: str
    gate: str | None = None
    up: str | None = None
    fused: str | None = None
    inputs: bool = True


LAYOUTS = (  # the first whose attributes a module has (all `nn.Linear`)
    DenseLayout("down_proj", "gate_proj", "up_proj"),
    DenseLayout("w2", "w1", "w3"),
    DenseLayout("output_linear", fused="input_linear"),
    DenseLayout("down_proj", fused="gate_up_proj", inputs=False),
    DenseLayout("down_proj", up="up_proj"),
)


def layout_of(module: nn.Module | None) -> DenseLayout | None:
    """The `DenseLayout` of an MLP module; None for a mixture of experts or an unknown module.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> layout_of(model.hf_model.model.layers[0].mlp)
        DenseLayout(down='down_proj', gate='gate_proj', up='up_proj', fused=None, inputs=True)
    """
    if module is None:
        return None
    for layout in LAYOUTS:
        names = [name for name in (layout.down, layout.gate, layout.up, layout.fused) if name is not None]
        if all(isinstance(getattr(module, name, None), nn.Linear) for name in names):
            return layout
    return None


@dataclass(frozen=True)
class Neurons:
    """The neurons of one dense MLP: its down projection and what multiplies the MLP output.

    Attributes:
        down: The down projection.
        multiplier: The factor after it (Falcon-H1's `down_multiplier` times the block's multiplier), or None.
        exact: Whether the results (plus the scaled `b_out`) sum to `hook_mlp_out` (False after a post-norm).

    Examples:
        >>> neurons = Neurons(torch.nn.Linear(6, 4, bias=False))
        >>> post = torch.randn(1, 3, 6)
        >>> torch.allclose(neurons.results(post).sum(-2), neurons.down(post), atol=1e-6)
        True
    """

    down: nn.Linear
    multiplier: Multiplier | None = None
    exact: bool = True

    def factor(self) -> float | Tensor | None:
        """The multiplier's value now (None: no multiplier).

        Examples:
            >>> Neurons(torch.nn.Linear(4, 2)).factor() is None
            True
        """
        return None if self.multiplier is None else self.multiplier()

    @property
    def W_out(self) -> Float[Tensor, "d_mlp d_model"]:
        """The down projection's weight (a view)."""
        return self.down.weight.T

    @property
    def b_out(self) -> Float[Tensor, " d_model"]:
        """The down projection's bias, times the multiplier (zeros without one): the constant term."""
        factor = self.factor()
        bias = bias_or_zeros(self.down)
        return bias if factor is None else bias * factor

    def results(self, post: Float[Tensor, "... d_mlp"], W_out: Tensor | None = None) -> Float[Tensor, "... d_mlp d_model"]:
        """Each neuron's contribution `post[..., n] * W_out[n]` (times the multiplier); `W_out`: a slice
        of the rows to use (default: all).

        Examples:
            >>> Neurons(torch.nn.Linear(6, 4)).results(torch.ones(2, 6)).shape   # [pos, d_mlp, d_model]
            torch.Size([2, 6, 4])
        """
        results = post[..., None] * (self.W_out if W_out is None else W_out)
        factor = self.factor()
        return results if factor is None else results * factor


def add_points(hooks: MixerHooks, module: nn.Module, multiplier: Multiplier, exact: bool) -> list[Tap]:
    """The neuron points and weight views of a dense MLP `module` in `hooks` (see the module docstring);
    `multiplier`: the block's factor on the MLP output (None-returning for none), `exact` as in `Neurons`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> names = [f"blocks.0.mlp.{n}" for n in ("hook_pre", "hook_pre_linear", "hook_post")]
        >>> _, cache = model.run_with_cache("In the beginning", names_filter=names)
        >>> post = torch.nn.functional.silu(cache[names[0]]) * cache[names[1]]
        >>> torch.allclose(post, cache[names[2]])
        True
    """
    layout = layout_of(module)
    down = getattr(module, layout.down)
    inner = getattr(module, "down_multiplier", None)  # Falcon-H1's muP multipliers
    gate_factor = getattr(module, "gate_multiplier", None)

    def scaled():
        block = multiplier()
        return inner if block is None else block if inner is None else inner * block

    hooks.neurons = Neurons(down, scaled, exact)
    taps = []
    if layout.inputs and layout.fused is not None:

        def split(x):
            gate, up = x.chunk(2, dim=-1)
            return {"hook_pre": gate, "hook_pre_linear": up}

        def join(parts, x):
            return torch.cat([parts["hook_pre"], parts["hook_pre_linear"]], dim=-1)

        fused = getattr(module, layout.fused)
        taps.append(output_tap(hooks, fused, split, join, ["hook_pre", "hook_pre_linear"], f"{layout.fused} output"))
    elif layout.inputs:
        first = layout.gate or layout.up
        factor = gate_factor if layout.gate else None
        split, join = (single("hook_pre", None) if factor is None else
                       ((lambda x: {"hook_pre": x * factor}), (lambda parts, x: parts["hook_pre"] / factor)))
        taps.append(output_tap(hooks, getattr(module, first), split, join, ["hook_pre"], f"{first} output"))
        if layout.gate is not None:
            split, join = single("hook_pre_linear", None)
            taps.append(output_tap(hooks, getattr(module, layout.up), split, join, ["hook_pre_linear"],
                                   f"{layout.up} output"))
    split, join = single("hook_post", None)
    taps.append(input_tap(hooks, down, split, join, ["hook_post"], f"{layout.down} input"))
    hooks.weights = WeightViews(module, _views(layout), {} if layout.inputs else {
        name: "its input projection gets a per-depth LoRA adapter (gate_up_proj_adapter_list)"
        for name in ("W_in", "W_gate", "b_in")})
    return taps


def _views(layout: DenseLayout) -> dict:
    """TransformerLens's MLP weight views of a module with `layout`."""
    def linear(name):
        return lambda module: getattr(module, name)

    views = {"W_out": lambda m: getattr(m, layout.down).weight.T,
             "b_out": lambda m: bias_or_zeros(getattr(m, layout.down))}
    if layout.fused is not None and layout.inputs:
        half = lambda m: getattr(m, layout.fused).out_features // 2  # noqa: E731
        views["W_gate"] = lambda m: getattr(m, layout.fused).weight[: half(m)].T
        views["W_in"] = lambda m: getattr(m, layout.fused).weight[half(m):].T
        views["b_in"] = lambda m: bias_or_zeros(getattr(m, layout.fused))[half(m):]
    elif layout.inputs:
        views["W_in"] = lambda m: linear(layout.up)(m).weight.T
        views["b_in"] = lambda m: bias_or_zeros(linear(layout.up)(m))
        if layout.gate is not None:
            views["W_gate"] = lambda m: linear(layout.gate)(m).weight.T
    return views
