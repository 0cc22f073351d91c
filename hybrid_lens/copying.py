"""Copying a `HookedHybrid`: `copy.deepcopy` and `pickle` give an independent model whose hooks work.

A `HookedHybrid` wraps its `transformers` model in place (its decoder layers run forwards that close
over this wrapper's hook points), so a plain copy of the module tree would run the original's hook
points. A copy therefore takes the `transformers` model without what wrapping and nnsight added
(`adapters.copies.plain_copy`; the original is not touched), wraps that copy anew, and puts back what
the user attached: spliced SAEs (copied), hooks (the same functions, with their direction, permanence
and context level), the taps switched on for nnsight, `state_positions`, and any other attribute set on
the model (copied). Hooks added to either model afterwards fire on that model only.

`pickle` (and `torch.save`) carry the same, except hooks: hook functions are usually closures that
pickle cannot store, so a model with hooks attached is refused (remove them first). A shallow
`copy.copy` is refused: two wrappers cannot share one wrapped `transformers` model.
"""

from __future__ import annotations

from .adapters.copies import is_added, plain_copy
from .hook_points import attached_hooks
from .sae import add_sae, attached_saes

# attributes a fresh wrapper makes itself, or that must not follow a copy (the nnsight view of the original)
OWN = ("_envoy",)


class Copying:
    """`HookedHybrid.__deepcopy__`, `__reduce_ex__` (pickle) and `__copy__` (refused).

    Examples:
        >>> import copy
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")
        >>> twin = copy.deepcopy(model)
        >>> _, cache = twin.run_with_cache("In the beginning")
        >>> len(cache) == len(model.run_with_cache("In the beginning")[1])
        True
        >>> twin.hf_model is model.hf_model
        False
    """

    def __deepcopy__(self, memo: dict):
        hooks = attached_hooks(self.hook_dict)
        hf_model, parts = self._plain_parts(memo)
        new = _rebuild(type(self), hf_model, parts)
        for name, fn, dir, permanent, level in hooks:
            new.hook_dict[name].add_hook(fn, dir=dir, is_permanent=permanent, level=level)
        return new

    def __reduce_ex__(self, protocol):
        hooks = attached_hooks(self.hook_dict)
        if hooks:
            names = sorted({name for name, *_ in hooks})
            raise TypeError(f"Cannot pickle a HookedHybrid with hooks attached ({len(hooks)} on {names[:5]}): hook "
                            "functions are not stored. Remove them first (model.reset_hooks(including_permanent=True)) "
                            "and add them again after loading, or use copy.deepcopy(model), which keeps them.")
        return _rebuild, (type(self), *self._plain_parts({}))

    def _plain_parts(self, memo: dict) -> tuple:
        """Copies of the `transformers` model and of `_copy_parts`, without the wrapper's or nnsight's additions."""
        if self._wrapping is None:
            raise RuntimeError("This HookedHybrid was unwrapped; copy its transformers model (model.hf_model) instead.")
        return plain_copy((self.hf_model, self._copy_parts()), memo, (self._pattern_mode,), self.modules())

    def __copy__(self):
        raise TypeError("A HookedHybrid cannot be copied shallowly: its transformers model is wrapped in place and "
                        "cannot be shared by two wrappers. Use copy.deepcopy(model) for an independent copy.")

    def _copy_parts(self) -> dict:
        """What a copy takes besides the `transformers` model and the hooks (before being copied)."""
        attributes, modules = self._own
        return {
            "tokenizer": self.tokenizer,
            "saes": {name: (splice.sae, splice.use_error_term, splice.exclude_special_tokens, splice.hook_point.name)
                     for name, splice in attached_saes(self).items()},
            "taps": [tap.always_on for tap in (*self._wrapping.taps, self._pattern_mode)],
            "state_positions": {name: point.positions for name, point in self.hook_dict.items()
                                if getattr(point, "positions", None) is not None},
            "training": self.training,
            "switches": self.switches.copy(),
            "attributes": {key: value for key, value in vars(self).items()
                           if key not in attributes and key not in OWN and not is_added(value)},
            "modules": {key: module for key, module in self._modules.items() if key not in modules},
        }

    def _mark_own(self) -> None:
        """Remember the attributes and submodules the constructor made (the base of every copy); any
        other attribute (set later, or by a subclass) is copied as it is."""
        self._own = (frozenset((*vars(self), "_own")), frozenset(self._modules))


def _rebuild(cls, hf_model, parts: dict):
    """A `cls` wrapping `hf_model` (plain), with the copied `parts` of `Copying._copy_parts` put back."""
    from .model import HookedHybrid  # the constructor of the base class, whatever a subclass's takes

    model = cls.__new__(cls)
    HookedHybrid.__init__(model, hf_model, parts["tokenizer"])
    for key, value in parts["attributes"].items():
        setattr(model, key, value)
    for key, module in parts["modules"].items():
        model.add_module(key, module)
    for name, (sae, use_error_term, exclude, name_out) in parts["saes"].items():
        add_sae(model, sae, use_error_term, exclude, hook_name=name, hook_name_out=name_out)
    model.reset_hooks(including_permanent=True)  # a copied SAE's points held the original's hooks: added again
    for tap, on in zip((*model._wrapping.taps, model._pattern_mode), parts["taps"]):
        tap.set_always_on(on)
    for name, positions in parts["state_positions"].items():
        model.hook_dict[name].positions = positions
    vars(model.switches).update(vars(parts["switches"]))  # the blocks hold the model's own switches
    model.training = parts["training"]  # the wrapper's own flag; the transformers model's modes were copied
    return model
