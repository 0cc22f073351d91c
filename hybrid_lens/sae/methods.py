"""`HookedHybrid`'s SAE methods, with the signatures of SAE-Lens's `HookedSAETransformer`."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .splice import SAESplice
from .splicing import add_sae, attached_saes, re_add, reset_saes, saes

__all__ = ["SAESplicing"]

_saes = saes  # the module function, under a name that the methods' `saes` arguments do not hide


class SAESplicing:
    """`HookedHybrid`'s SAE methods: those of SAE-Lens's `HookedSAETransformer`, argument for argument
    (`hook_name=` / `hook_names=` are extra keywords naming the point for plain modules).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with model.saes(torch.nn.Identity(), hook_names="blocks.0.hook_attn_out"):
        ...     sorted(model.acts_to_saes)
        ['blocks.0.hook_attn_out']
    """

    @property
    def acts_to_saes(self) -> dict[str, nn.Module]:
        """The spliced SAEs by the hook name they read (as `HookedSAETransformer.acts_to_saes`)."""
        return {name: splice.sae for name, splice in attached_saes(self).items()}

    @property
    def _acts_to_saes(self) -> dict[str, SAESplice]:
        """The splices by the hook name their SAE reads (as `HookedSAETransformer._acts_to_saes`, a
        view: change it with `add_sae` / `reset_saes`)."""
        return attached_saes(self)

    def add_sae(self, sae: nn.Module, use_error_term: bool | None = None,
                exclude_special_tokens: bool | Sequence[int] = False, *, hook_name: str | None = None,
                hook_name_out: str | None = None) -> SAESplice:
        """Splice an SAE in at its hook point until `reset_saes`; see `hybrid_lens.sae.add_sae`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
            >>> model.reset_saes()
        """
        return add_sae(self, sae, use_error_term, exclude_special_tokens, hook_name=hook_name,
                       hook_name_out=hook_name_out)

    def _reset_sae(self, act_name: str, prev_wrapper=None) -> None:
        """Remove the SAE reading `act_name`; with `prev_wrapper` (a splice, or SAE-Lens's
        `_SAEWrapper`), splice its SAE in again with its settings (as `HookedSAETransformer._reset_sae`)."""
        reset_saes(self, act_name)
        if prev_wrapper is not None:
            re_add(self, prev_wrapper)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove spliced SAEs (all, or those reading `act_names`); see `hybrid_lens.sae.reset_saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> model.reset_saes()
            >>> model.acts_to_saes
            {}
        """
        reset_saes(self, act_names)

    def saes(self, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None,
             exclude_special_tokens: bool | Sequence[int] = False, *, hook_names=None):
        """Context manager splicing SAEs in for a `with` block; see `hybrid_lens.sae.saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> with model.saes(torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out"):
            ...     list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
        """
        return _saes(self, saes, reset_saes_end, use_error_term, exclude_special_tokens, hook_names=hook_names)

    def run_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None,
                      exclude_special_tokens: bool | Sequence[int] = False, hook_names=None, **model_kwargs):
        """`forward` with SAEs spliced in for this one run.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits = model.run_with_saes("In the beginning", saes=torch.nn.Identity(),
            ...                              hook_names="blocks.3.hook_ssm_out")
            >>> torch.allclose(logits, model("In the beginning"))
            True
        """
        with self.saes(saes, reset_saes_end, use_error_term, exclude_special_tokens, hook_names=hook_names):
            return self(*model_args, **model_kwargs)

    def run_with_cache_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, exclude_special_tokens: bool | Sequence[int] = False,
                                 return_cache_object: bool = True, remove_batch_dim: bool = False, hook_names=None,
                                 **kwargs):
        """`run_with_cache` with SAEs spliced in; their hook points (`{hook}.hook_sae_acts_post`, ...)
        are cached like any other (by default too). `return_cache_object=False` gives a plain dict.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     names_filter="blocks.3.hook_ssm_out.hook_sae_output")
            >>> cache["blocks.3.hook_ssm_out.hook_sae_output"].shape
            torch.Size([1, 4, 128])
        """
        with self.saes(saes, reset_saes_end, use_error_term, exclude_special_tokens, hook_names=hook_names):
            output, cache = self.run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        return output, (cache if return_cache_object else dict(cache.items()))

    def run_with_hooks_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 exclude_special_tokens: bool | Sequence[int] = False, fwd_hooks=(), bwd_hooks=(),
                                 reset_hooks_end: bool = True, clear_contexts: bool = False,
                                 use_error_term: bool | None = None, hook_names=None, **model_kwargs):
        """`run_with_hooks` with SAEs spliced in (`use_error_term=` is ours: SAE-Lens's method lacks it).

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> zero = lambda value, hook: torch.zeros_like(value)
            >>> logits = model.run_with_hooks_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     fwd_hooks=[("blocks.3.hook_ssm_out.hook_sae_output", zero)])
            >>> torch.allclose(logits, model("In the beginning"))
            False
        """
        with self.saes(saes, reset_saes_end, use_error_term, exclude_special_tokens, hook_names=hook_names):
            return self.run_with_hooks(*model_args, fwd_hooks=list(fwd_hooks), bwd_hooks=list(bwd_hooks),
                                       reset_hooks_end=reset_hooks_end, clear_contexts=clear_contexts, **model_kwargs)
