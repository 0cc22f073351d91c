"""Cache keys: TransformerLens's shorthand (`get_act_name`) resolved to hook names, and the errors for a
key that is not in a cache.

A key is a hook name (`"blocks.3.attn.hook_pattern"`, also a `_grad` name), TransformerLens shorthand
(`"embed"`, `"k6a"`, `"scale4ln1"`) or a tuple `(name, layer[, layer_type])` with negative layers counting
from the end (`("resid_pre", -1)`, `("pattern", 3)`). TransformerLens's own `get_act_name` does the
resolution, read from the installed release; a `layer_type` that is a mixer kind of hybrid-lens
(`("q", 0, "linear_attn")`, `("B", 2, "ssm")`) names that mixer's inner point, which `get_act_name`
(softmax attention only) cannot.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence

from ..hook_points import unknown_hook_error
from ..layout import Layout
from ..vocabulary import MIXER_KINDS, hook_name

try:  # TransformerLens >= 3 (the utilities package); older releases kept it in utils
    from transformer_lens.utilities import get_act_name
except ImportError:  # pragma: no cover - depends on the installed TransformerLens
    from transformer_lens.utils import get_act_name

BLOCK_POINT = re.compile(r"blocks\.(\d+)\.(\w+)\.(hook_\w+)$")


def act_name(key, n_layers: int) -> str:
    """The hook name a cache key means (see the module docstring).

    Args:
        key: A hook name, TransformerLens shorthand, or `(name, layer[, layer_type])`.
        n_layers: The model's number of blocks (negative layers count from it).

    Examples:
        >>> act_name("k6a", 8), act_name(("pattern", -1), 8), act_name("embed", 8)
        ('blocks.6.attn.hook_k', 'blocks.7.attn.hook_pattern', 'hook_embed')
        >>> act_name(("scale", 2, "ln1"), 8), act_name(("q", 0, "linear_attn"), 8), act_name(("ssm_out", 3), 8)
        ('blocks.2.ln1.hook_scale', 'blocks.0.linear_attn.hook_q', 'blocks.3.hook_ssm_out')
    """
    if isinstance(key, str):
        return get_act_name(key)
    if not isinstance(key, Sequence) or not 1 <= len(key) <= 3 or not isinstance(key[0], str):
        raise KeyError(f"A cache key is a hook name or a tuple (name, layer[, layer_type]), not {key!r}.")
    name, layer, layer_type = (*key, None, None)[:3]
    if layer is not None:
        if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers <= layer < n_layers:
            raise KeyError(f"Layer {layer!r} of key {key!r} is not a block of this model: use -{n_layers} .. "
                           f"{n_layers - 1}.")
        layer %= n_layers
    if layer is not None and layer_type in MIXER_KINDS:
        return hook_name(layer, layer_type, f"hook_{name}")
    return get_act_name(name, layer, layer_type)


def missing_key_error(key, name: str, cached: Collection[str], hook_names: Collection[str],
                      layout: Layout | None) -> KeyError:
    """The `KeyError` for `key` (hook name `name`) missing from a cache holding `cached`, of a model with
    `hook_names`: "not cached" for a point of the model (with how to cache it), the point of another mixer
    of that block for an attention point of a block without softmax attention, else the closest names.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> key, name = ("pattern", 0), "blocks.0.attn.hook_pattern"
        >>> print(missing_key_error(key, name, [], model.hook_names(), model.layout).args[0])
        ('pattern', 0) is blocks.0.attn.hook_pattern, but block 0 is a linear_attn block, without attn
        (attn blocks: [3, 7]); its own point is blocks.0.linear_attn.hook_pattern (key ('pattern', 0, 'linear_attn')).
    """
    shown = f"{key!r} is {name}" if key != name else repr(name)
    if name in hook_names or name.removesuffix("_grad") in hook_names:
        how = "incl_bwd=True and " if name.endswith("_grad") and name not in hook_names else ""
        return KeyError(f"{shown}, a hook point of this model that was not cached: run run_with_cache with "
                        f"{how}names_filter including it (this cache holds {len(cached)} names; with no filter, "
                        "run_with_cache caches every point).")
    match = BLOCK_POINT.match(name)
    if match and layout is not None and int(match[1]) < len(layout):
        layer, kind, point = int(match[1]), match[2], match[3]
        block = layout[layer]
        if kind in MIXER_KINDS and kind not in block.mixers:
            own = [f"{hook_name(layer, mixer, point)} (key {(point.removeprefix('hook_'), layer, mixer)!r})"
                   for mixer in block.mixers if hook_name(layer, mixer, point) in hook_names]
            alternative = f"; its own point is {', '.join(own)}" if own else ""
            return KeyError(f"{shown}, but block {layer} is a {block.type} block, without {kind} ({kind} blocks: "
                            f"{layout.layers_with(kind)}){alternative}.")
    return unknown_hook_error(name, hook_names)


def stream_layer(layer: int | None, n_layers: int) -> int:
    """The residual-stream index a cache method's `layer` means, TransformerLens-style: `0 .. n_layers`
    (the input of that block; `n_layers` the final output, before the final norm); None and -1 mean
    `n_layers`, other negative values count back from it. `ValueError` outside `-n_layers-1 .. n_layers`.

    Examples:
        >>> stream_layer(None, 8), stream_layer(-1, 8), stream_layer(-2, 8), stream_layer(3, 8)
        (8, 8, 7, 3)
    """
    if layer is None:
        return n_layers
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n_layers - 1 <= layer <= n_layers:
        raise ValueError(f"layer must be None or an int in [{-n_layers - 1}, {n_layers}] (the input of that block; "
                         f"{n_layers}, None or -1: the final residual stream), not {layer!r}.")
    return layer % (n_layers + 1)
