"""The nnsight view of a `HookedHybrid`: every hook point is a module whose `.output` a trace reads or writes."""

from __future__ import annotations


class NNsightView:
    """`HookedHybrid.nnsight` and `HookedHybrid.trace`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> with model.trace("In the beginning"):
        ...     resid = model.nnsight().blocks[2].hook_resid_pre.output.save()
        >>> resid.shape
        torch.Size([1, 3, 128])
    """

    def nnsight(self, inner_points: bool = False, patterns: bool = False):
        """An `nnsight.NNsight` view of this module tree (cached): every hook point is a module
        whose `.output` can be read or written inside a trace. Several `tracer.invoke(...)` run as one
        batch, and `.generate(...)` traces `generate` (see `nnsight_envoy.HybridEnvoy`).

        Inner mixer points are fed only while their taps are on: `inner_points=True` switches them
        all on (eager mixer paths) until called again with False; `patterns=True` also switches
        attention to the eager path that feeds `hook_pattern`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> view = model.nnsight()
            >>> with view.trace("In the beginning"):
            ...     ssm3 = view.blocks[3].hook_ssm_out.output.save()
            >>> ssm3.shape                                   # [batch, pos, d_model]
            torch.Size([1, 4, 128])
        """
        from .nnsight_envoy import HybridEnvoy

        for tap in self._wrapping.taps:
            tap.set_always_on(inner_points)
        self._pattern_mode.set_always_on(patterns)
        if getattr(self, "_envoy", None) is None:
            object.__setattr__(self, "_envoy", HybridEnvoy(self))
        return self._envoy

    def trace(self, *inputs, **kwargs):
        """`self.nnsight().trace(*inputs, **kwargs)`: an nnsight trace over this model.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> view = model.nnsight()
            >>> with model.trace("In the beginning"):
            ...     resid = view.blocks[0].hook_resid_post.output.save()
            >>> resid.shape
            torch.Size([1, 4, 128])
        """
        return self.nnsight().trace(*inputs, **kwargs)
