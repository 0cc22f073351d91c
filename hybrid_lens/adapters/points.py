"""A block's TransformerLens vocabulary beyond its mixers' own points: norms, MLP neurons, per-head results.

`Family.add_inner_points` calls `add_block_points` after each mixer kind has added its points: it makes
`blocks.{i}.ln1` / `ln1_{kind}` / `ln1_post` / `ln2` / `ln2_post` the points of the block's norms
(`mixers.norm`), gives a dense MLP its neuron points and weight views (`mixers.mlp`), and adds
`hook_result` to every mixer whose kind declared its heads (`mixers.heads`), with the block's output
multiplier, so per-head and per-neuron results are contributions to the residual stream.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import attrgetter

from torch import nn

from ..hook_points import Tap
from ..mixers import mlp as dense
from ..mixers import norm as norms
from ..hook_points import TappedHookPoint
from ..mixers.heads import add_result_point
from ..mixers.inputs import ATTENTION_INPUTS, HeadInputs, MlpInput
from .base import HookedBlock


def multiplier(layer: nn.Module, scale) -> Callable[[], object]:
    """The value of a `Mixer` / `Mlp` scale (a layer attribute, a number or None), read at call time."""
    return lambda: getattr(layer, scale) if isinstance(scale, str) else scale


def add_block_points(block: HookedBlock, layer: nn.Module, spec) -> list[Tap]:
    """Norm points, MLP neuron points and per-head results of `block` (whose recipe is `spec`, a
    `Block`, on decoder layer `layer`); return their taps. Placeholder containers `HookedBlock` made
    for a norm the block does not have are removed."""
    taps = []
    mixers = spec.mixers[:1] if spec.parallel else spec.mixers
    places = [(mixer.norm, "ln1" if i == 0 else f"ln1_{mixer.kind}") for i, mixer in enumerate(mixers)]
    places += [(mixer.post_norm, "ln1_post" if len(spec.mixers) == 1 else f"ln1_post_{mixer.kind}")
               for mixer in spec.mixers]
    if spec.mlp is not None:
        places += [(spec.mlp.norm, "ln2"), (spec.mlp.post_norm, "ln2_post")]
    for path, name in places:
        taps += _norm(block, layer, path, name)
    for mixer in spec.mixers:
        hooks = getattr(block, mixer.kind)
        if hooks.heads is not None:
            taps.append(add_result_point(hooks, multiplier(layer, mixer.out_scale), exact=mixer.post_norm is None,
                                         switches=block.switches))
    if spec.mlp is not None:
        modules = [module for module in (attrgetter(attr)(layer) for attr in spec.mlp.modules) if module is not None]
        if len(modules) == 1 and dense.layout_of(modules[0]) is not None:
            taps += dense.add_points(block.mlp, modules[0], multiplier(layer, spec.mlp.out_scale),
                                     exact=spec.mlp.post_norm is None)
    return taps + _inputs(block, spec)


def _inputs(block: HookedBlock, spec) -> list[Tap]:
    """TransformerLens's input points of `block` (`mixers.inputs`): the per-head inputs of its softmax attention
    (one whose kind declared its `qkv` projections) and `hook_mlp_in`; their taps. None where a component reads
    something else than the residual stream (Zamba2's shared transformer: `Block.feeds_mixer`)."""
    taps = []
    if spec.feeds_mixer:
        return taps
    attention = getattr(block, "attn") if "attn" in block.layer.mixers else None
    if attention is not None and attention.qkv is not None:
        points = {}
        block.head_inputs = HeadInputs(attention.qkv, points, block.switches)
        taps.append(block.head_inputs.tap)
        for name in ATTENTION_INPUTS:
            points[name] = TappedHookPoint(block.head_inputs.tap)
            block.add_module(name, points[name])
    if spec.mlp is not None:
        taps.append(Tap(lambda: (lambda: None), "block forward (the MLP's input)"))
        block.add_module("hook_mlp_in", TappedHookPoint(taps[-1]))
        block.mlp_input = MlpInput(block.hook_mlp_in, block.switches)
    return taps


def _norm(block: HookedBlock, layer: nn.Module, path: str | None, name: str) -> list[Tap]:
    """The points of the norm at `path` of `layer` in `block.{name}` (created, or removed when there
    is no such norm); a list of its tap."""
    if path is None:
        if name in block._modules:
            delattr(block, name)
        return []
    if name not in block._modules:
        block.add_module(name, norms.NormHooks())
    tap = norms.add_points(getattr(block, name), attrgetter(path)(layer))
    if tap is None:
        delattr(block, name)
        return []
    return [tap]
