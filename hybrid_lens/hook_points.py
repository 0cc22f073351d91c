"""Hook points: TransformerLens `HookPoint`s that can switch on the plumbing that feeds them.

Block-level points (residual stream, mixer and MLP outputs) sit directly in the block forward and
are always called. Inner mixer points (attention q/k/v, Gated DeltaNet beta, Mamba-2 x/B/C/dt, ...)
live inside the `transformers` mixer modules; the plumbing that calls them (a torch hook on a
projection, or an eager mixer forward) is installed only while some hook or trace needs it, so
unused inner points cost nothing.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable

from transformer_lens.hook_points import HookPoint

__all__ = ["HookPoint", "Tap", "TappedHookPoint", "unknown_hook_error"]


class Tap:
    """A switchable piece of plumbing shared by one or more inner hook points.

    Args:
        install: Installs the plumbing on the wrapped `transformers` module and returns a
            function that removes it again.
        description: Human-readable origin of the values (for errors and docs).
    """

    def __init__(self, install: Callable[[], Callable[[], None]], description: str):
        self._install = install
        self.description = description
        self._remove: Callable[[], None] | None = None
        self._users = 0
        self.always_on = False

    @property
    def active(self) -> bool:
        return self._remove is not None

    def acquire(self) -> None:
        self._users += 1
        self._sync()

    def release(self) -> None:
        self._users = max(0, self._users - 1)
        self._sync()

    def set_always_on(self, on: bool) -> None:
        self.always_on = on
        self._sync()

    def _sync(self) -> None:
        wanted = self.always_on or self._users > 0
        if wanted and self._remove is None:
            self._remove = self._install()
        elif not wanted and self._remove is not None:
            remove, self._remove = self._remove, None
            remove()


class TappedHookPoint(HookPoint):
    """A `HookPoint` whose value is produced by a `Tap` that is active only while it is needed."""

    def __init__(self, tap: Tap):
        super().__init__()
        self.tap = tap

    def add_hook(self, hook, dir="fwd", is_permanent=False, level=None, prepend=False, alias_names=None):
        handle = super().add_hook(
            hook, dir=dir, is_permanent=is_permanent, level=level, prepend=prepend, alias_names=alias_names
        )
        self.tap.acquire()
        return handle

    def remove_hooks(self, dir="fwd", including_permanent=False, level=None) -> None:
        before = len(self.fwd_hooks) + len(self.bwd_hooks)
        super().remove_hooks(dir=dir, including_permanent=including_permanent, level=level)
        for _ in range(before - len(self.fwd_hooks) - len(self.bwd_hooks)):
            self.tap.release()


def unknown_hook_error(name: str, valid: Iterable[str]) -> KeyError:
    """A `KeyError` for an unknown hook name that lists the closest valid names."""
    valid = list(valid)
    close = difflib.get_close_matches(name, valid, n=5, cutoff=0.5)
    hint = f" Closest valid names: {', '.join(close)}." if close else ""
    return KeyError(
        f"Unknown hook point {name!r}.{hint} Call model.hook_names() for all {len(valid)} names."
    )
