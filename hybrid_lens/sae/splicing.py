"""Splicing SAEs in and out: `add_sae`, `reset_saes`, the `saes` context, and `HookedHybrid`'s methods."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from torch import nn

from ..hook_points import HookedRootModule, HookPoint, TappedHookPoint
from .fit import check_exclusion, check_module, check_sae_fits, point_samples
from .splice import SAESplice

__all__ = ["add_sae", "attached_saes", "reset_saes", "sae_hook_names", "saes"]


def sae_hook_names(sae: nn.Module, hook_name: str | None = None, hook_name_out: str | None = None) -> tuple[str, str]:
    """The point an SAE reads and the point it writes: `hook_name` / `hook_name_out` if given, else
    `sae.cfg.metadata.hook_name` / `.hook_name_out` (a transcoder's output point; an SAE writes where it reads).

    Raises `ValueError` when neither names a point.

    Examples:
        >>> sae_hook_names(torch.nn.Identity(), "blocks.0.hook_resid_mid", "blocks.0.hook_mlp_out")
        ('blocks.0.hook_resid_mid', 'blocks.0.hook_mlp_out')
        >>> sae_hook_names(torch.nn.Identity())
        Traceback (most recent call last):
        ...
        ValueError: Identity() names no hook point (no sae.cfg.metadata.hook_name); pass hook_name=...
    """
    metadata = getattr(getattr(sae, "cfg", None), "metadata", None)
    name = hook_name or getattr(metadata, "hook_name", None)
    if not name:
        raise ValueError(f"{sae} names no hook point (no sae.cfg.metadata.hook_name); pass hook_name=...")
    out = getattr(metadata, "hook_name_out", None)
    own_out = out if out and out != getattr(metadata, "hook_name", None) else None
    return name, hook_name_out or own_out or name


def attached_saes(model: HookedRootModule) -> dict[str, SAESplice]:
    """The splices in `model`, by the hook name their SAE reads (a transcoder's input point), as
    SAE-Lens's `HookedSAETransformer._acts_to_saes`.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> _ = add_sae(model, torch.nn.Identity(), hook_name="blocks.3.hook_ssm_out")
        >>> list(attached_saes(model))
        ['blocks.3.hook_ssm_out']
        >>> reset_saes(model)
        >>> attached_saes(model)
        {}
    """
    return {module.hook_name: module for module in model.modules() if isinstance(module, SAESplice)}


def add_sae(model: HookedRootModule, sae: nn.Module, use_error_term: bool | None = None,
            exclude_special_tokens: bool | Sequence[int] = False, *, hook_name: str | None = None,
            hook_name_out: str | None = None) -> SAESplice:
    """Splice `sae` in at its hook point (replacing any SAE read from there), until `reset_saes`.

    The SAE is checked against the point first (see `hybrid_lens.sae.fit`): a module that does not
    read the point's activations or does not return their shape raises, and nothing is attached.

    Args:
        model: A `HookedHybrid`.
        sae: An SAE-Lens `SAE` or `Transcoder`, or any module mapping activations to activations of
            the same shape.
        use_error_term: Add the SAE's error so downstream values are unchanged; None takes
            `sae.use_error_term` (False for plain modules), as SAE-Lens does.
        exclude_special_tokens: Leave the activation unchanged at special tokens (True: the
            tokenizer's BOS, EOS, PAD, SEP, decoder-start) or at the token ids listed.
        hook_name: The point the SAE reads; defaults to `sae.cfg.metadata.hook_name`.
        hook_name_out: The point a transcoder writes; defaults to `sae.cfg.metadata.hook_name_out`,
            else `hook_name`.

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
    sae = check_module(sae)
    exclude = check_exclusion(exclude_special_tokens)
    name, name_out = sae_hook_names(sae, hook_name, hook_name_out)
    samples = point_samples(model, list(dict.fromkeys([name, name_out])))
    check_sae_fits(sae, samples[name], samples[name_out])
    _check_no_conflict(model, name, name_out)
    if name in attached_saes(model):
        reset_saes(model, name)
    if use_error_term is None:
        use_error_term = bool(getattr(sae, "use_error_term", False))
    point = model.hook_dict[name_out]
    splice = SAESplice(sae, point, use_error_term, exclude, hook_name=name)
    if splice.is_transcoder:
        reader = model.hook_dict[name]
        splice.input_handle = reader.register_forward_hook(lambda _module, _args, value: splice.capture_input(value))
        _acquire(reader)
    _set_module(model, name_out, splice)
    point.set_stand_in(splice)
    _acquire(point)
    model.setup()
    return splice


def reset_saes(model: HookedRootModule, hook_names: str | Sequence[str] | None = None) -> None:
    """Remove spliced SAEs (all, or those reading `hook_names`), putting the original hook points back.

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
        point = splice.hook_point
        if splice.input_handle is not None:
            splice.input_handle.remove()
            _release(model.hook_dict[name])
        _set_module(model, point.name, point)
        point.set_stand_in(None)
        _release(point)
        if isinstance(splice.sae, HookedRootModule):
            splice.sae.setup()  # the model's setup renamed the SAE's hook points
    model.setup()


@contextmanager
def saes(
    model: HookedRootModule,
    saes: nn.Module | Sequence[nn.Module] = (),
    reset_saes_end: bool = True,
    use_error_term: bool | None = None,
    exclude_special_tokens: bool | Sequence[int] = False,
    *,
    hook_names: str | Sequence[str | None] | None = None,
) -> Iterator[HookedRootModule]:
    """Splice SAEs in for the duration of a `with` block; on exit put back what was there before
    (an earlier SAE at the same point, or the hook point). Every SAE is checked before any is spliced.

    Args:
        model: The model.
        saes: One SAE or several.
        reset_saes_end: Undo the splices on exit (False keeps them, as in SAE-Lens).
        use_error_term: As `add_sae`, for every SAE.
        exclude_special_tokens: As `add_sae`, for every SAE.
        hook_names: Their hook names (one per SAE; None entries take `sae.cfg.metadata.hook_name`).

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> with saes(model, torch.nn.Identity(), hook_names="blocks.3.hook_ssm_out"):
        ...     list(attached_saes(model))
        ['blocks.3.hook_ssm_out']
        >>> attached_saes(model)
        {}
    """
    modules = [saes] if isinstance(saes, nn.Module) else list(saes) if isinstance(saes, (list, tuple)) else [saes]
    modules = [check_module(sae, "saes") for sae in modules]
    names = [hook_names] if isinstance(hook_names, str) or hook_names is None else list(hook_names)
    names = names * len(modules) if hook_names is None else names
    if len(names) != len(modules):
        raise ValueError(f"Got {len(modules)} SAEs but {len(names)} hook names.")
    exclude = check_exclusion(exclude_special_tokens)
    pairs = [sae_hook_names(sae, name) for sae, name in zip(modules, names)]
    for sae, (name, name_out) in zip(modules, pairs):  # all checked before any is spliced in
        samples = point_samples(model, list(dict.fromkeys([name, name_out])))
        check_sae_fits(sae, samples[name], samples[name_out])
    attached = attached_saes(model)
    previous = {name: attached.get(name) for name, _ in pairs}
    added: list[str] = []
    try:
        for sae, (name, name_out) in zip(modules, pairs):
            add_sae(model, sae, use_error_term, exclude, hook_name=name, hook_name_out=name_out)
            added.append(name)
        yield model
    finally:
        if reset_saes_end:
            for name in dict.fromkeys(added):
                if name in attached_saes(model):  # not already reset inside the block
                    reset_saes(model, name)
                before = previous[name]
                if before is not None:
                    re_add(model, before)


def re_add(model: HookedRootModule, wrapper) -> SAESplice:
    """Splice in again what `wrapper` (an `SAESplice`, or SAE-Lens's `_SAEWrapper`) held.

    Examples:
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> splice = add_sae(model, torch.nn.Identity(), True, hook_name="blocks.3.hook_ssm_out")
        >>> reset_saes(model)
        >>> re_add(model, splice).use_error_term
        True
        >>> reset_saes(model)
    """
    point = getattr(wrapper, "hook_point", None)
    name_out = point.name if isinstance(point, HookPoint) else None
    return add_sae(model, wrapper.sae, wrapper.use_error_term, getattr(wrapper, "exclude_special_tokens", False),
                   hook_name=getattr(wrapper, "hook_name", None), hook_name_out=name_out)


def _check_no_conflict(model: HookedRootModule, name: str, name_out: str) -> None:
    """A transcoder's input point must stay a hook point, and one SAE stands at each point."""
    for key, splice in attached_saes(model).items():
        if key == name:
            continue  # replaced by the new SAE
        if splice.is_transcoder and name_out == key:
            raise ValueError(f"{name_out} is the input of the transcoder read from {key} and written to "
                             f"{splice.hook_point.name}; reset_saes({key!r}) first.")
        if splice.hook_point.name == name_out:
            raise ValueError(f"An SAE read from {key} already stands at {name_out}; reset_saes({key!r}) first.")
        if name != name_out and splice.hook_point.name == name:
            raise ValueError(f"A transcoder reads {name}, where an SAE (read from {key}) stands; "
                             f"reset_saes({key!r}) first.")


def _acquire(point: HookPoint) -> None:
    if isinstance(point, TappedHookPoint):
        point.tap.acquire()  # an inner point is fed only while something needs it


def _release(point: HookPoint) -> None:
    if isinstance(point, TappedHookPoint):
        point.tap.release()


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attribute = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attribute, module)
