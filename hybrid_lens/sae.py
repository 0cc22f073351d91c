"""SAE splicing: put a sparse autoencoder where a hook point was, as SAE-Lens's `HookedSAETransformer` does.

`add_sae(model, sae)` replaces the hook point module named by `sae.cfg.metadata.hook_name` (an
SAE-Lens `SAE`) or by `hook_name=` (any module mapping activations to activations of the same
shape) with an `SAESplice`, so the SAE's reconstruction flows on instead of the activation.
The semantics are those of SAE-Lens 6 (`add_sae`, `reset_saes`, `saes`, `run_with_saes`,
`use_error_term`):

- the SAE's own hook points appear under the spliced name (`blocks.3.hook_ssm_out.hook_sae_acts_post`,
  ..., plus `hook_sae_error` and `hook_sae_output`), and the spliced name itself leaves `hook_dict`;
- `use_error_term=True` adds the SAE's error `x - sae(x)` (computed without gradient and with the
  SAE's hook points disabled) so the output equals the clean activation while the SAE's hook points
  still see, and can edit, the features;
- the SAE is not a submodule of the model (its parameters are not the model's).

Differences, on purpose: an unknown hook name raises (SAE-Lens logs a warning and attaches
nothing); `reset_saes` puts the original hook point object back (SAE-Lens installs a fresh one),
so permanent hooks on it survive; the reconstruction is cast back to the activation's dtype.
Not supported: inner mixer points (`blocks.{i}.attn.hook_z`, ...: their taps hold the hook point
object, so a replaced one would never be called; `add_sae` raises), transcoders (`hook_name_out`
different from `hook_name`) and `exclude_special_tokens`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint as TLHookPoint

from .hook_points import HookedRootModule, HookPoint, TappedHookPoint, unknown_hook_error

__all__ = ["SAESplice", "SAESplicing", "add_sae", "attached_saes", "reset_saes", "saes", "sae_hook_name"]


class SAESplice(nn.Module):
    """Stands in the module tree where a hook point was and returns the SAE's reconstruction.

    Like SAE-Lens's `_SAEWrapper`: the SAE is held outside the module tree (so hook names read
    `{hook_name}.hook_sae_acts_post`, not `{hook_name}.sae.hook_sae_acts_post`), its hook points
    are registered on the splice, and the splice owns `hook_sae_error` and `hook_sae_output`.

    Args:
        sae: An SAE-Lens `SAE` (its `encode` / `decode` are called) or any module mapping
            `Float[Tensor, "... d_in"]` to the same shape (it is called).
        hook_point: The hook point it replaces (put back by `reset_saes`).
        use_error_term: Add the SAE's error so the output equals the input.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> splice = add_sae(model, torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
        >>> type(model.blocks[3].hook_ssm_out).__name__, splice.use_error_term
        ('SAESplice', False)
        >>> reset_saes(model)
    """

    def __init__(self, sae: nn.Module, hook_point: HookPoint, use_error_term: bool = False):
        super().__init__()
        self.__dict__["sae"] = sae
        self.__dict__["hook_point"] = hook_point
        for name, point in _sae_hook_points(sae).items():
            if name not in ("hook_sae_error", "hook_sae_output"):
                self.add_module(name, point)
        self.hook_sae_error = HookPoint()
        self.hook_sae_output = HookPoint()
        self.use_error_term = use_error_term

    def reconstruct(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_in"]:
        """The SAE's reconstruction of `x` (`decode(encode(x))` for SAE-Lens SAEs), in `x`'s dtype.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> splice = add_sae(model, torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> splice.reconstruct(torch.ones(2)).tolist()
            [1.0, 1.0]
            >>> reset_saes(model)
        """
        sae = self.sae
        out = sae.decode(sae.encode(x)) if hasattr(sae, "encode") and hasattr(sae, "decode") else sae(x)
        return out.to(x.dtype)

    def forward(self, x: Float[Tensor, "batch pos ..."]) -> Float[Tensor, "batch pos ..."]:
        """The reconstruction (plus the error term when `use_error_term`), through `hook_sae_output`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> splice = add_sae(model, torch.nn.Linear(128, 128), hook_name="blocks.3.hook_ssm_out",
            ...                  use_error_term=True)
            >>> x = torch.randn(1, 3, 128)
            >>> torch.allclose(splice(x), x, atol=1e-6)
            True
            >>> reset_saes(model)
        """
        out = self.reconstruct(x)
        if self.use_error_term:
            with torch.no_grad(), _hooks_disabled(self.sae):
                error = x - self.reconstruct(x)
            out = out + self.hook_sae_error(error)
        return self.hook_sae_output(out)


def sae_hook_name(sae: nn.Module) -> str:
    """The hook point an SAE-Lens SAE was trained on (`sae.cfg.metadata.hook_name`).

    Raises `ValueError` when `sae` carries no hook name (pass `hook_name=` to `add_sae` then), and
    `NotImplementedError` for transcoders (an output hook different from the input hook).

    Examples:
        >>> sae_hook_name(torch.nn.Identity())
        Traceback (most recent call last):
        ...
        ValueError: Identity() names no hook point (no sae.cfg.metadata.hook_name); pass hook_name=...
    """
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    name = getattr(metadata, "hook_name", None)
    if not name:
        raise ValueError(f"{sae} names no hook point (no sae.cfg.metadata.hook_name); pass hook_name=...")
    out = getattr(metadata, "hook_name_out", None)
    if out and out != name:
        raise NotImplementedError(f"Transcoders ({name} -> {out}) are not supported; splice SAEs only.")
    return name


def attached_saes(model: HookedRootModule) -> dict[str, SAESplice]:
    """The splices in `model`, by the hook name they replace.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _ = add_sae(model, torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
        >>> list(attached_saes(model))
        ['blocks.3.hook_ssm_out']
        >>> reset_saes(model)
        >>> attached_saes(model)
        {}
    """
    return {name: module for name, module in model.named_modules() if isinstance(module, SAESplice)}


def add_sae(
    model: HookedRootModule, sae: nn.Module, hook_name: str | None = None, use_error_term: bool | None = None
) -> SAESplice:
    """Splice `sae` in at its hook point (replacing any SAE already there), until `reset_saes`.

    Args:
        model: A `HookedHybrid` (any `HookedRootModule` whose forward looks its hook points up
            when it runs).
        sae: An SAE-Lens `SAE`, or any module mapping activations to activations of the same shape.
        hook_name: Where to splice; defaults to `sae.cfg.metadata.hook_name`.
        use_error_term: Add the SAE's error so downstream values are unchanged; None takes
            `sae.use_error_term` (False for plain modules), as SAE-Lens does.

    Returns:
        The `SAESplice` now in the module tree.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
        >>> tokens = model.to_tokens("In the beginning")
        >>> clean = model(tokens)
        >>> _ = add_sae(model, torch.nn.Linear(128, 128), hook_name="blocks.0.hook_linear_attn_out")
        >>> "blocks.0.hook_linear_attn_out.hook_sae_output" in model.hook_dict
        True
        >>> torch.equal(model(tokens), clean)
        False
        >>> reset_saes(model)
        >>> torch.equal(model(tokens), clean)
        True
    """
    name = hook_name or sae_hook_name(sae)
    current = attached_saes(model).get(name)
    point = current.hook_point if current is not None else model.hook_dict.get(name)
    if point is None:
        raise unknown_hook_error(name, model.hook_dict)
    if isinstance(point, TappedHookPoint):  # its taps call the point object they were built with
        raise NotImplementedError(
            f"{name} is an inner mixer point; SAEs splice into block-level points only "
            "(hook_embed, blocks.{i}.hook_resid_pre/mid/post, blocks.{i}.hook_{kind}_out, ln_final.hook_normalized)."
        )
    if use_error_term is None:
        use_error_term = bool(getattr(sae, "use_error_term", False))
    splice = SAESplice(sae, point, use_error_term)
    _set_module(model, name, splice)
    model.setup()
    return splice


def reset_saes(model: HookedRootModule, hook_names: str | Sequence[str] | None = None) -> None:
    """Remove spliced SAEs (all, or those at `hook_names`), putting the original hook points back.

    Raises `KeyError` for a name with no SAE spliced in, before removing anything.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> point = model.hook_dict["blocks.3.hook_ssm_out"]
        >>> _ = add_sae(model, torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
        >>> reset_saes(model, "blocks.3.hook_ssm_out")
        >>> model.hook_dict["blocks.3.hook_ssm_out"] is point
        True
    """
    attached = attached_saes(model)
    names = list(attached) if hook_names is None else [hook_names] if isinstance(hook_names, str) else list(hook_names)
    missing = [name for name in names if name not in attached]
    if missing:
        raise KeyError(f"No SAE is spliced in at {missing}; spliced: {sorted(attached) or 'none'}.")
    for name in names:
        splice = attached[name]
        _set_module(model, name, splice.hook_point)
        if isinstance(splice.sae, HookedRootModule):
            splice.sae.setup()  # the model's setup renamed the SAE's hook points
    model.setup()


@contextmanager
def saes(
    model: HookedRootModule,
    saes: nn.Module | Sequence[nn.Module] = (),
    hook_names: str | Sequence[str | None] | None = None,
    reset_saes_end: bool = True,
    use_error_term: bool | None = None,
) -> Iterator[HookedRootModule]:
    """Splice SAEs in for the duration of a `with` block; on exit put back what was there before
    (an earlier SAE at the same point, or the hook point).

    Args:
        model: The model.
        saes: One SAE or several.
        hook_names: Their hook names (one per SAE; None entries take `sae.cfg.metadata.hook_name`).
        reset_saes_end: Undo the splices on exit (False keeps them, as in SAE-Lens).
        use_error_term: As `add_sae`, for every SAE.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with saes(model, torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out"):
        ...     list(attached_saes(model))
        ['blocks.3.hook_ssm_out']
        >>> attached_saes(model)
        {}
    """
    modules = [saes] if isinstance(saes, nn.Module) else list(saes)
    names = [hook_names] if isinstance(hook_names, str) or hook_names is None else list(hook_names)
    names = names * len(modules) if hook_names is None else names
    if len(names) != len(modules):
        raise ValueError(f"Got {len(modules)} SAEs but {len(names)} hook names.")
    names = [name or sae_hook_name(sae) for sae, name in zip(modules, names)]
    attached = attached_saes(model)
    previous = {name: attached.get(name) for name in names}
    added: list[str] = []
    try:
        for sae, name in zip(modules, names):
            add_sae(model, sae, name, use_error_term)
            added.append(name)
        yield model
    finally:
        if reset_saes_end:
            for name in dict.fromkeys(added):
                if name in attached_saes(model):  # not already reset inside the block
                    reset_saes(model, name)
                before = previous[name]
                if before is not None:
                    add_sae(model, before.sae, name, before.use_error_term)


_saes = saes  # the module function, under a name that the methods' `saes` arguments do not hide


class SAESplicing:
    """`HookedHybrid`'s SAE methods, those of SAE-Lens's `HookedSAETransformer`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with model.saes(torch.nn.Identity(), hook_names="blocks.0.hook_attn_out"):
        ...     sorted(model.acts_to_saes)
        ['blocks.0.hook_attn_out']
    """

    @property
    def acts_to_saes(self) -> dict[str, nn.Module]:
        """The spliced SAEs by hook name (as SAE-Lens's `HookedSAETransformer.acts_to_saes`)."""
        return {name: splice.sae for name, splice in attached_saes(self).items()}

    def add_sae(self, sae: nn.Module, use_error_term: bool | None = None, hook_name: str | None = None):
        """Splice an SAE in at its hook point until `reset_saes`; see `hybrid_lens.sae.add_sae`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
            >>> model.reset_saes()
        """
        return add_sae(self, sae, hook_name, use_error_term)

    def reset_saes(self, act_names: str | Sequence[str] | None = None) -> None:
        """Remove spliced SAEs (all, or those at `act_names`); see `hybrid_lens.sae.reset_saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _ = model.add_sae(torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
            >>> model.reset_saes()
            >>> model.acts_to_saes
            {}
        """
        reset_saes(self, act_names)

    def saes(self, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None, hook_names=None):
        """Context manager splicing SAEs in for a `with` block; see `hybrid_lens.sae.saes`.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> with model.saes(torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out"):
            ...     list(model.acts_to_saes)
            ['blocks.3.hook_ssm_out']
        """
        return _saes(self, saes, hook_names, reset_saes_end, use_error_term)

    def run_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True, use_error_term: bool | None = None,
                      hook_names=None, **model_kwargs):
        """`forward` with SAEs spliced in for this one run.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> logits = model.run_with_saes("In the beginning", saes=torch.nn.Identity(),
            ...                              hook_names="blocks.3.hook_ssm_out")
            >>> torch.allclose(logits, model("In the beginning"))
            True
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self(*model_args, **model_kwargs)

    def run_with_cache_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, hook_names=None, **kwargs):
        """`run_with_cache` with SAEs spliced in; their hook points (`{hook}.hook_sae_acts_post`, ...)
        are cached like any other.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> _, cache = model.run_with_cache_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     names_filter="blocks.3.hook_ssm_out.hook_sae_output")
            >>> cache["blocks.3.hook_ssm_out.hook_sae_output"].shape
            torch.Size([1, 3, 128])
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self.run_with_cache(*model_args, **kwargs)

    def run_with_hooks_with_saes(self, *model_args, saes=(), reset_saes_end: bool = True,
                                 use_error_term: bool | None = None, hook_names=None, **kwargs):
        """`run_with_hooks` with SAEs spliced in.

        Examples:
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
            >>> zero = lambda value, hook: torch.zeros_like(value)
            >>> logits = model.run_with_hooks_with_saes(
            ...     "In the beginning", saes=torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out",
            ...     fwd_hooks=[("blocks.3.hook_ssm_out.hook_sae_output", zero)])
            >>> torch.allclose(logits, model("In the beginning"))
            False
        """
        with self.saes(saes, reset_saes_end, use_error_term, hook_names):
            return self.run_with_hooks(*model_args, **kwargs)


def _sae_hook_points(sae: nn.Module) -> dict[str, TLHookPoint]:
    """The SAE's own hook points by attribute name (`hook_sae_acts_post`, ...; none for plain modules)."""
    return {name: module for name, module in sae.named_children() if isinstance(module, TLHookPoint)}


@contextmanager
def _hooks_disabled(sae: nn.Module) -> Iterator[None]:
    """Swap the SAE's hook points for identities (as SAE-Lens's `_disable_hooks`)."""
    points = _sae_hook_points(sae)
    try:
        for name in points:
            setattr(sae, name, nn.Identity())
        yield
    finally:
        for name, point in points.items():
            setattr(sae, name, point)


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)
