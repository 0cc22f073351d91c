"""Hook points: TransformerLens `HookPoint`s that can switch on the plumbing that feeds them.

Block-level points (residual stream, mixer and MLP outputs) sit directly in the block forward and
are always called. Inner mixer points (attention q/k/v, Gated DeltaNet beta, Mamba-2 x/B/C/dt, ...)
live inside the `transformers` mixer modules; the plumbing that calls them (a torch hook on a
projection, or an eager mixer forward) is installed only while some hook or trace needs it, so
unused inner points cost nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.modules import module as torch_module
from transformer_lens.hook_points import HookPoint as _TLHookPoint

from .forward_state import hooks_enabled

try:  # TransformerLens >= 3.3 (4.x removed the hook_points re-export)
    from transformer_lens import HookedRootModule
except ImportError:  # TransformerLens 3.0 - 3.2
    from transformer_lens.hook_points import HookedRootModule

__all__ = ["HookPoint", "HookedRootModule", "Tap", "TappedHookPoint", "attached_hooks", "cache_safe",
           "unknown_hook_error"]


class HookPoint(_TLHookPoint):
    """A TransformerLens `HookPoint` that refuses a forward hook's return value unless it can stand
    in for the activation: a tensor of the same shape, dtype and device (None keeps the value).

    A hook returning `[batch, 1, d]` for a `[batch, pos, d]` activation would otherwise broadcast
    silently downstream, and a float64 one would change the dtype of everything after it. A module put
    in its place (an SAE splice) is its `stand_in`: calls of the point go there.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> point = model.hook_dict["blocks.0.hook_ssm_out"]
        >>> isinstance(point, HookPoint)
        True
        >>> model.run_with_hooks("In the beginning", fwd_hooks=[
        ...     ("blocks.0.hook_ssm_out", lambda value, hook: value[:, :1])])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The hook on blocks.0.hook_ssm_out returned a tensor of shape (1, 1, 128)...
    """

    def add_hook(self, hook, dir="fwd", **kwargs):
        """`transformer_lens` `HookPoint.add_hook`, with forward hooks' return values checked.

        A forward hook whose function (or a function it wraps, `__wrapped__`) has `cache_safe = False`
        is remembered as one a cache would change (see `cache_safe`).

        Args:
            hook: `fn(value, hook) -> value | None`.
            dir: `"fwd"` or `"bwd"` (backward hooks are passed through unchecked).
            **kwargs: `is_permanent`, `level`, `prepend`, ... as TransformerLens takes them.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.hook_ssm_out"]
            >>> _ = point.add_hook(lambda value, hook: 2 * value)
            >>> point.remove_hooks()
        """
        handles = self.fwd_hooks if dir == "fwd" else self.bwd_hooks
        before = {id(handle) for handle in handles}
        result = super().add_hook(checked_hook(hook) if dir == "fwd" else hook, dir=dir, **kwargs)
        added = [handle for handle in (self.fwd_hooks if dir == "fwd" else self.bwd_hooks) if id(handle) not in before]
        for handle in added:
            handle.hybrid_lens_hook = hook  # what a copy of the model adds again (`attached_hooks`)
        if dir == "fwd" and not _declared_cache_safe(hook):
            vars(self).setdefault("_not_cache_safe", set()).update(id(handle) for handle in added)
        return result

    def __call__(self, *args, **kwargs):
        stand_in = self.__dict__.get("_stand_in")
        if stand_in is not None:
            return stand_in(*args, **kwargs)
        if _calls_forward_only(self):  # every point runs in every pass: skip `nn.Module.__call__`'s frames
            return self.forward(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    @property
    def stand_in(self) -> nn.Module | None:
        """The module standing in for this point (an `SAESplice`), or None; see `set_stand_in`."""
        return self.__dict__.get("_stand_in")

    def set_stand_in(self, module: nn.Module | None) -> None:
        """Make calls of this point call `module` instead (its own hooks do not run then); None undoes it.

        Code that holds the point object, such as an inner point's tap, then calls whatever was put
        in its place in the module tree, as block-level points are looked up by name when they run.
        `hybrid_lens.sae` sets it while an SAE is spliced in here. `module` is not made a submodule.

        Examples:
            >>> point = HookPoint()
            >>> point.set_stand_in(torch.nn.Identity())
            >>> point(torch.ones(2)).tolist(), point.stand_in
            ([1.0, 1.0], Identity())
            >>> point.set_stand_in(None)
        """
        self.__dict__["_stand_in"] = module


def _calls_forward_only(module: nn.Module) -> bool:
    """Whether `nn.Module.__call__` of `module` would only call its `forward`: no hook on it, no global
    module hook, not compiled, not traced by `torch.jit`.

    Examples:
        >>> point = HookPoint()
        >>> _calls_forward_only(point)
        True
        >>> handle = point.register_forward_hook(lambda module, args, out: out)
        >>> _calls_forward_only(point)
        False
        >>> handle.remove()
    """
    return not (module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks or torch_module._global_backward_hooks
                or torch_module._global_backward_pre_hooks or module._compiled_call_impl is not None
                or torch._C._get_tracing_state())


def _declared_cache_safe(fn: Callable) -> bool:
    """The first `cache_safe` attribute along `fn` and the functions it wraps (`__wrapped__`); True if none."""
    while fn is not None:
        if hasattr(fn, "cache_safe"):
            return bool(fn.cache_safe)
        fn = getattr(fn, "__wrapped__", None)
    return True


def cache_safe(point: torch.nn.Module) -> bool:
    """Whether every forward hook on `point` acts on each token alone, so that a pass continuing a
    KV/state cache gets what recomputing the whole sequence would give: a hook is, unless its function
    says `cache_safe = False` (a `Condition`'s hooks carry their intervention's trait). `generate`
    recomputes the sequence at every step when some hook is not.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with noise("ssm", 0.1, layers=2).apply(model):
        ...     cache_safe(model.hook_dict["blocks.2.hook_ssm_out"])
        False
        >>> with zero("ssm", layers=2).apply(model):
        ...     cache_safe(model.hook_dict["blocks.2.hook_ssm_out"])
        True
    """
    uncached = vars(point).get("_not_cache_safe", set())
    return not any(id(handle) in uncached for handle in getattr(point, "fwd_hooks", ()))


def checked_hook(fn: Callable) -> Callable:
    """`fn` with its return value checked against the activation it replaces (see `HookPoint`); it does
    nothing while the forward state switches hooks off (`forward_settings(model, hooks=False)`)."""

    def hook(value, hook):
        if not hooks_enabled():
            return None
        new = fn(value, hook=hook)
        if new is None or new is value:
            return new
        if not isinstance(new, torch.Tensor):
            raise TypeError(f"The hook on {hook.name} returned {type(new).__name__}; return a tensor "
                            f"shaped like the activation {tuple(value.shape)}, or None to keep it.")
        if new.shape != value.shape or new.dtype != value.dtype or new.device != value.device:
            raise ValueError(
                f"The hook on {hook.name} returned a tensor of shape {tuple(new.shape)}, {new.dtype} on "
                f"{new.device}; the activation is {tuple(value.shape)}, {value.dtype} on {value.device}. "
                "Return a tensor of the same shape, dtype and device (expand or cast it), or None."
            )
        return new

    hook.__name__ = getattr(fn, "__name__", "hook")
    hook.__wrapped__ = fn
    return hook


class Tap:
    """A switchable piece of plumbing shared by one or more inner hook points.

    The plumbing is installed while at least one hook uses it (`acquire` / `release`, called by
    `TappedHookPoint`) or while it is switched `always_on` (by `HookedHybrid.nnsight`).

    Args:
        install: Installs the plumbing on the wrapped `transformers` module and returns a
            function that removes it again.
        description: Human-readable origin of the values (for errors and docs).
        with_cache: The plumbing also runs in a pass that continues a KV/state cache (False for an
            eager mixer forward written for whole sequences: `generate` then recomputes).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> tap = model.hook_dict["blocks.0.ssm.hook_B"].tap
        >>> tap.description, tap.active
        ('eager Mamba-2 forward', False)
        >>> with model.hooks(fwd_hooks=[("blocks.0.ssm.hook_B", lambda value, hook: value)]):
        ...     tap.active
        True
        >>> tap.active
        False
    """

    def __init__(self, install: Callable[[], Callable[[], None]], description: str, with_cache: bool = True):
        self._install = install
        self.description = description
        self.with_cache = with_cache
        self._remove: Callable[[], None] | None = None
        self._users = 0
        self.always_on = False

    @property
    def active(self) -> bool:
        """Whether the plumbing is installed now."""
        return self._remove is not None

    def acquire(self) -> None:
        """Register one more user; installs the plumbing if it was off.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tap = model.hook_dict["blocks.0.ssm.hook_B"].tap
            >>> tap.acquire()
            >>> tap.active
            True
            >>> tap.release()
        """
        self._users += 1
        self._sync()

    def release(self) -> None:
        """Unregister one user; removes the plumbing when none is left (and not `always_on`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tap = model.hook_dict["blocks.0.ssm.hook_B"].tap
            >>> tap.acquire()
            >>> tap.release()
            >>> tap.active
            False
        """
        self._users = max(0, self._users - 1)
        self._sync()

    def set_always_on(self, on: bool) -> None:
        """Keep the plumbing installed whether or not a hook uses it (`HookedHybrid.nnsight`
        does this for `inner_points=True`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tap = model.hook_dict["blocks.0.ssm.hook_B"].tap
            >>> tap.set_always_on(True)
            >>> tap.active
            True
            >>> tap.set_always_on(False)
        """
        self.always_on = on
        self._sync()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The plumbing removed inside (put back on exit if it was installed), users and `always_on`
        kept: how a copy of the wrapped model leaves out the attention pattern mode (`adapters.copies`).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> tap = model.hook_dict["blocks.0.ssm.hook_B"].tap
            >>> tap.set_always_on(True)
            >>> with tap.paused():
            ...     tap.active
            False
            >>> tap.active
            True
            >>> tap.set_always_on(False)
        """
        remove, self._remove = self._remove, None
        if remove is not None:
            remove()
        try:
            yield
        finally:
            if remove is not None and self._remove is None:
                self._remove = self._install()

    def _sync(self) -> None:
        wanted = self.always_on or self._users > 0
        if wanted and self._remove is None:
            self._remove = self._install()
        elif not wanted and self._remove is not None:
            remove, self._remove = self._remove, None
            remove()


class TappedHookPoint(HookPoint):
    """A `HookPoint` whose value is produced by a `Tap` that is active only while it is needed.

    Inner mixer points (`blocks.{i}.attn.hook_q`, `blocks.{i}.ssm.hook_B`, ...) are of this class;
    adding a hook acquires the tap, removing it releases the tap.

    Args:
        tap: The plumbing that feeds this point.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> point = model.hook_dict["blocks.0.ssm.hook_B"]
        >>> type(point).__name__, point.tap.active
        ('TappedHookPoint', False)
    """

    def __init__(self, tap: Tap):
        super().__init__()
        self.tap = tap

    def add_hook(self, hook, dir="fwd", **kwargs):
        """`HookPoint.add_hook`, and acquire the tap so that the hook is fed.

        Args:
            hook: `fn(value, hook) -> value | None`, as for any TransformerLens hook point.
            dir: `"fwd"` or `"bwd"`.
            **kwargs: `is_permanent`, `level` (set by `model.hooks(...)`), `prepend`, ... as
                TransformerLens's `HookPoint.add_hook` takes them.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_B"]
            >>> seen = []
            >>> _ = point.add_hook(lambda value, hook: seen.append(value.shape))
            >>> _ = model("In the beginning")
            >>> point.remove_hooks()
            >>> seen                               # [batch, pos, group, d_state]
            [torch.Size([1, 4, 1, 32])]
        """
        handle = super().add_hook(hook, dir=dir, **kwargs)
        self.tap.acquire()
        return handle

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None) -> None:
        """`HookPoint.remove_hooks`, releasing the tap once for every hook removed.

        Args:
            dir: `"fwd"`, `"bwd"` or `"both"`.
            including_permanent: Remove permanent hooks too.
            level: Remove only hooks of this context level.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> point = model.hook_dict["blocks.0.ssm.hook_B"]
            >>> _ = point.add_hook(lambda value, hook: value)
            >>> point.remove_hooks()
            >>> point.tap.active
            False
        """
        before = len(self.fwd_hooks) + len(self.bwd_hooks)
        super().remove_hooks(dir=dir, including_permanent=including_permanent, level=level)
        for _ in range(before - len(self.fwd_hooks) - len(self.bwd_hooks)):
            self.tap.release()


def unknown_hook_error(name: str, valid: Iterable[str]) -> KeyError:
    """A `KeyError` for an unknown hook name that lists the closest valid names.

    Args:
        name: The name asked for.
        valid: Every valid name.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> error = unknown_hook_error("blocks.0.hook_sm_out", model.hook_names())
        >>> print(error.args[0])  # doctest: +ELLIPSIS
        Unknown hook point 'blocks.0.hook_sm_out'. Closest valid names: blocks.0.hook_ssm_out, ...
    """
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return KeyError(
        f"Unknown hook point {name!r}.{hint} Call model.hook_names() for all {len(valid)} names."
    )


HookRecord = tuple[str, Callable, str, bool, "int | None"]  # (point name, function, dir, is_permanent, level)


def attached_hooks(points: dict) -> list[HookRecord]:
    """Every hook attached to `points` (name -> hook point), in order, as `add_hook` was given it:
    what a copy of a model attaches again to its own points.

    Raises `TypeError` for a hook whose function cannot be recovered (one added to a plain torch
    module, or by a TransformerLens too old to keep it): remove it before copying.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> def double(value, hook):
        ...     return 2 * value
        >>> model.add_hook("blocks.0.hook_ssm_out", double)
        >>> [(name, fn.__name__, dir) for name, fn, dir, permanent, level in attached_hooks(model.hook_dict)]
        [('blocks.0.hook_ssm_out', 'double', 'fwd')]
        >>> model.reset_hooks()
    """
    records = []
    for name, point in points.items():
        for dir, handles in (("fwd", point.fwd_hooks), ("bwd", point.bwd_hooks)):
            for handle in handles:
                fn = getattr(handle, "hybrid_lens_hook", None) or getattr(handle, "user_hook", None)
                if fn is None:
                    raise TypeError(f"A {dir} hook on {name} was added in a way whose function cannot be read back, "
                                    "so it cannot be copied; remove it first (model.reset_hooks(including_permanent=True)).")
                records.append((name, fn, dir, bool(handle.is_permanent), handle.context_level))
    return records
