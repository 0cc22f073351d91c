"""Conventions of `transformers` that differ between its releases, read from the installed release's
behaviour at run time instead of assumed from one release (a tiny model of the family is run, so
this module sits with the tools above the core: it needs the configs).

`hidden_states_point`: which residual point `output_hidden_states[i]` is. Most families return the
embeddings first (entry `i` is the input of block `i`, `hook_resid_pre`); Mamba and FalconMamba, and
Mamba-2 before `transformers` 5.25, omit them (entry `i` is the output of block `i`, `hook_resid_post`).
"""

from __future__ import annotations

import functools
from typing import Literal

import torch

Point = Literal["resid_pre", "resid_post"]


@functools.cache
def hidden_states_point(family: str) -> Point:
    """The hook point whose cached values equal `output_hidden_states[i]` (`i < n_layers`) for models of
    `family` under the installed `transformers`: `resid_pre` when the first entry is the embeddings,
    `resid_post` when the model omits them.

    Decided once per family and process by running a tiny random model of the family (`configs.tiny_config`)
    on three tokens and comparing `hidden_states[0]` with the input and the output of its first block; the
    caller's model, hooks and random state are untouched.

    Raises:
        RuntimeError: `hidden_states[0]` is neither (a convention this adapter does not know).

    Examples:
        >>> hidden_states_point("qwen3_5"), hidden_states_point("mamba")
        ('resid_pre', 'resid_post')
    """
    from transformers import AutoModelForCausalLM

    from .adapters import FAMILIES
    from .configs import tiny_config

    seen: dict[str, torch.Tensor] = {}

    def block_input(module, args, kwargs):
        seen["resid_pre"] = (args[0] if args else kwargs["hidden_states"]).detach().clone()

    def block_output(module, args, output):
        seen["resid_post"] = (output[0] if isinstance(output, tuple) else output).detach().clone()

    with torch.random.fork_rng(devices=[]), torch.no_grad():
        hf_model = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
        first = FAMILIES[family].layers(hf_model)[0]
        handles = [first.register_forward_pre_hook(block_input, with_kwargs=True),
                   first.register_forward_hook(block_output)]
        try:
            hidden = hf_model(torch.tensor([[3, 4, 5]]), output_hidden_states=True).hidden_states[0]
        finally:
            for handle in handles:
                handle.remove()
    for point in ("resid_pre", "resid_post"):
        if torch.equal(hidden, seen[point]):
            return point
    raise RuntimeError(f"{family}: output_hidden_states[0] of transformers is neither the input nor the output of "
                       "the first block; hybrid-lens does not know this release's convention.")
