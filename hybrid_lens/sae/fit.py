"""Checks before an SAE is spliced in: is it a module, does the point carry `[batch, pos, ...]` activations,
and does the SAE read and return the point's shapes.

The shape of a point is measured once per model and name by probing: a forward pass of one token and
one of two (hooks off, stopping after the point's block), each recording what enters the module at the
point. A point is spliceable when its value is `[1, 1, *rest]` and `[1, 2, *rest]` there (a pattern
`[batch, head, query, key]` or a recurrent state is not). The SAE then runs once, without gradient and
with its hook points off, on the probe's activation: it must return one tensor of the activation's
shape (a transcoder: of its output point's).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

import torch
from torch import Tensor, nn

from ..forward_state import current_state, forward_settings
from ..hook_points import HookedRootModule, HookPoint, TappedHookPoint, unknown_hook_error
from .splice import SAESplice, hooks_disabled, reconstruction

__all__ = ["PointSample", "check_exclusion", "check_module", "check_sae_fits", "point_samples"]

_SAMPLES: weakref.WeakKeyDictionary[nn.Module, dict[tuple, PointSample]] = weakref.WeakKeyDictionary()


@dataclass(frozen=True)
class PointSample:
    """What a hook point carries, measured by a probe.

    Attributes:
        name: The hook name.
        value: Its activation on a 2-token probe, `Float[Tensor, "1 2 ..."]`.
        order: When it ran in the probe's pass, relative to the other points probed with it.

    Examples:
        >>> PointSample("blocks.0.attn.hook_z", torch.zeros(1, 2, 4, 32), 0).rest
        (4, 32)
    """

    name: str
    value: Tensor
    order: int

    @property
    def rest(self) -> tuple[int, ...]:
        """Its shape after `[batch, pos]`."""
        return tuple(self.value.shape[2:])

    def describe(self) -> str:
        """`[batch, pos, *rest]` as text.

        Examples:
            >>> PointSample("blocks.0.attn.hook_z", torch.zeros(1, 2, 4, 32), 0).describe()
            '[batch, pos, 4, 32]'
        """
        return "[" + ", ".join(["batch", "pos", *map(str, self.rest)]) + "]"


def check_module(sae, argument: str = "sae") -> nn.Module:
    """`sae` if it is a torch module, else a `TypeError` saying what `argument` takes.

    Examples:
        >>> check_module(lambda x: x)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: sae= takes an SAE-Lens SAE or a torch nn.Module; got the function <lambda>...
    """
    if isinstance(sae, nn.Module):
        return sae
    what = f"the function {sae.__name__}" if callable(sae) and hasattr(sae, "__name__") else f"{type(sae).__name__} {sae!r}"
    raise TypeError(f"{argument}= takes an SAE-Lens SAE or a torch nn.Module; got {what}. To replace an activation "
                    "by a function, use run_with_hooks(fwd_hooks=[(hook_name, fn)]); or wrap it in an nn.Module.")


def check_exclusion(exclude_special_tokens) -> bool | list[int]:
    """`exclude_special_tokens` as SAE-Lens takes it (a bool, or a list of token ids), checked.

    Examples:
        >>> check_exclusion((1, 2)), check_exclusion(False)
        ([1, 2], False)
        >>> check_exclusion("blocks.0.hook_resid_pre")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: exclude_special_tokens takes True, False or a list of token ids; got str 'blocks.0.hook_resid_pre'...
    """
    if isinstance(exclude_special_tokens, bool):
        return exclude_special_tokens
    if isinstance(exclude_special_tokens, Sequence) and not isinstance(exclude_special_tokens, str) \
            and all(isinstance(token, Integral) and not isinstance(token, bool) for token in exclude_special_tokens):
        return [int(token) for token in exclude_special_tokens]
    raise TypeError(f"exclude_special_tokens takes True, False or a list of token ids; got "
                    f"{type(exclude_special_tokens).__name__} {exclude_special_tokens!r}. (The hook name is a "
                    "keyword: add_sae(sae, hook_name=...).)")


def point_samples(model: HookedRootModule, names: Sequence[str]) -> dict[str, PointSample]:
    """What each of `names` carries (probed once per model and name; points probed together are
    ordered within their pass). Raises `KeyError` for an unknown name (the closest valid ones listed)
    and `ValueError` for a point an SAE cannot stand at.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> point_samples(model, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"].describe()
        '[batch, pos, 4, 32]'
        >>> point_samples(model, ["blocks.1.attn.hook_pattern"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: An SAE cannot stand at blocks.1.attn.hook_pattern: it carries [1, 4, 1, 1] on 1 token...
    """
    spliced = {name: module for name, module in model.named_modules() if isinstance(module, SAESplice)}
    for name in names:
        point = spliced[name].hook_point if name in spliced else model.hook_dict.get(name)
        if point is None:
            raise unknown_hook_error(name, model.hook_dict)
        if not isinstance(point, HookPoint) or name.rpartition(".")[0] in spliced:
            raise ValueError(f"{name} is a hook point of a spliced SAE; SAEs splice into the model's own points.")
    known = _SAMPLES.setdefault(model, {})
    setting = (str(model.device), model.cfg.dtype)  # a model moved or cast is probed again
    missing = list(names) if len(names) > 1 else [name for name in names if (name, *setting) not in known]
    if missing:  # several points are probed together, so that their order is known
        known.update({(name, *setting): sample for name, sample in _probe(model, missing, spliced).items()})
    return {name: known[(name, *setting)] for name in names}


def check_sae_fits(sae: nn.Module, point: PointSample, out_point: PointSample) -> None:
    """Raise before splicing if the SAE does not read `point` or does not return `out_point`'s shape
    (`ValueError`), or returns something else than one tensor (`TypeError`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> name = "blocks.1.hook_attn_out"
        >>> sample = point_samples(model, [name])[name]
        >>> check_sae_fits(torch.nn.Linear(128, 1), sample, sample)
        Traceback (most recent call last):
        ...
        ValueError: The SAE Linear(in_features=128, out_features=1, bias=True) at blocks.1.hook_attn_out returns shape (1, 2, 1) for an activation of shape (1, 2, 128); it must return the activation's shape [batch, pos, 128].
    """
    name = point.name
    config = getattr(sae, "cfg", None)
    d_in = getattr(config, "d_in", None)
    if isinstance(d_in, int):
        rest = point.rest
        reshaping = getattr(config, "reshape_activations", "none") == "hook_z" and len(rest) >= 2
        width = rest[-2] * rest[-1] if reshaping else (rest[-1] if rest else 1)
        if d_in != width:
            flat = len(rest) >= 2 and d_in == rest[-2] * rest[-1]
            hint = " (or its last two axes flattened, which an SAE-Lens SAE does with reshape_activations='hook_z')"
            raise ValueError(f"The SAE has d_in={d_in}, but {name} carries {point.describe()}: it needs "
                             f"d_in={width}{hint if flat else ''}.")
    description = _short(sae)
    try:
        with torch.no_grad(), hooks_disabled(sae):
            out = reconstruction(sae, point.value)
    except (RuntimeError, ValueError, IndexError) as error:
        raise ValueError(f"The SAE {description} fails on an activation of {name} {point.describe()}: "
                         f"{type(error).__name__}: {error}") from error
    if not isinstance(out, Tensor):
        raise TypeError(f"The SAE {description} at {name} returns {type(out).__name__}; a module spliced into the "
                        "model must return one tensor shaped like the activation (wrap it to return its reconstruction).")
    expected = (*point.value.shape[:2], *out_point.rest)
    if tuple(out.shape) != expected:
        target = name if out_point is point else f"its output point {out_point.name}"
        raise ValueError(f"The SAE {description} at {name} returns shape {tuple(out.shape)} for an activation of shape "
                         f"{tuple(point.value.shape)}; it must return {'the activation' if out_point is point else target}"
                         f"'s shape {out_point.describe()}.")
    if point.order >= out_point.order and out_point is not point:
        raise ValueError(f"A transcoder reads {name} and writes {out_point.name}, but {name} runs after "
                         f"{out_point.name} in the forward pass.")


def _short(module: nn.Module) -> str:
    text = repr(module)
    return text if "\n" not in text and len(text) < 120 else type(module).__name__


def _probe(model, names: list[str], spliced: dict[str, SAESplice]) -> dict[str, PointSample]:
    """Run the probes (1 and 2 tokens) recording what enters the module at each of `names`."""
    if (state := current_state()) is not None and state.running:
        raise RuntimeError("SAEs cannot be spliced in while the model runs (from inside a hook).")
    blocks = [_block(name) for name in names]
    stop = None if None in blocks else max(blocks) + 1  # the pass ends after the last block probed
    seen: dict[int, dict[str, Tensor]] = {1: {}, 2: {}}
    order: list[str] = []
    length = [1]

    def recorder(name):
        def record(_module, args):
            if name not in seen[length[0]]:
                seen[length[0]][name] = args[0].detach()
                order.append(name)
        return record

    handles, taps = [], []
    try:
        for name in names:
            module = model.get_submodule(name)
            handles.append(module.register_forward_pre_hook(recorder(name)))
            if name not in spliced and isinstance(module, TappedHookPoint):
                module.tap.acquire()
                taps.append(module.tap)
        with torch.no_grad(), forward_settings(model, hooks=False):
            for length[0] in (1, 2):
                order.clear()
                model(torch.zeros(1, length[0], dtype=torch.long, device=model.device), return_type=None,
                      stop_at_layer=stop)
    finally:
        for handle in handles:
            handle.remove()
        for tap in taps:
            tap.release()
    samples = {}
    for name in names:
        one, two = seen[1].get(name), seen[2].get(name)
        if one is None or two is None:
            raise ValueError(f"An SAE cannot stand at {name}: no activation passed through it in a forward pass (a "
                             "point computed only for its own hooks, such as a linear mixer's hook_pattern or a "
                             "recurrent hook_state, carries none); SAEs read float activations [batch, pos, ...].")
        if not two.is_floating_point() or one.shape[:2] != (1, 1) or two.shape[:2] != (1, 2) \
                or one.shape[2:] != two.shape[2:]:
            raise ValueError(f"An SAE cannot stand at {name}: it carries {list(one.shape)} on 1 token and "
                             f"{list(two.shape)} ({two.dtype}) on 2; SAEs read float activations [batch, pos, ...].")
        samples[name] = PointSample(name, two, order.index(name))
    return samples


def _block(name: str) -> int | None:
    match = re.match(r"blocks\.(\d+)\.", name)
    return int(match.group(1)) if match else None
