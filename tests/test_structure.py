"""The seams of the core: adapters validated at load, the per-forward state (entering, stopping,
recording, the hook switch, positions seen from outside the pass), and registries that refuse a name
twice."""

from __future__ import annotations

import sys
from dataclasses import replace

import pytest
import torch
from transformers import DynamicCache

from hybrid_lens import HookedHybrid, model as model_module
from hybrid_lens.adapters import FAMILIES, Block, Family
from hybrid_lens.adapters.base import is_hooked
from hybrid_lens.adapters.spec import attention
from hybrid_lens.forward_state import forward_settings
from hybrid_lens.interventions import scale, zero
from hybrid_lens.registry import discover

from .fixtures import build, random_tokens

BROKEN = {  # field of the qwen2 adapter -> (a wrong value, what the error names)
    "norm": (dict(norm="input_norm"), r"mixers\[0\] \(attn\)\.norm: 'input_norm' is not an attribute"),
    "module": (dict(module="attention"), r"mixers\[0\] \(attn\)\.module: 'attention' is not an attribute"),
    "out_scale": (dict(out_scale="attention_multiplier"),
                  r"mixers\[0\] \(attn\)\.out_scale: 'attention_multiplier' is not an attribute"),
    "args": (dict(args=("attention_mask=mamba_mask",)), r"mixers\[0\] \(attn\)\.args: \['mamba_mask'\] are not arguments"),
}


@pytest.mark.parametrize("field", sorted(BROKEN))
def test_an_adapter_that_does_not_fit_is_refused_at_load_naming_family_and_field(field, monkeypatch):
    fields, message = BROKEN[field]
    broken = replace(FAMILIES["qwen2"], blocks={"block": Block((attention(**fields),))})
    reference, _ = build("qwen2")
    monkeypatch.setattr(model_module, "adapter_for", lambda hf_model: broken)
    with pytest.raises(ValueError, match=f"qwen2 adapter, block 'block', {message}"):
        HookedHybrid.from_hf(reference)
    assert not any(is_hooked(layer) for layer in reference.model.layers)  # nothing was installed


def test_an_mlp_path_that_does_not_resolve_is_refused(monkeypatch):
    family = FAMILIES["qwen2"]
    block = family.blocks["block"]
    broken = replace(family, blocks={"block": replace(block, mlp=replace(block.mlp, modules=("ffn",)))})
    reference, _ = build("qwen2")
    monkeypatch.setattr(model_module, "adapter_for", lambda hf_model: broken)
    with pytest.raises(ValueError, match=r"qwen2 adapter, block 'block', mlp\.modules: 'ffn' is not an attribute"):
        HookedHybrid.from_hf(reference)


@torch.no_grad()
def test_entering_at_a_block_stopping_and_keeping_are_one_state():
    """A pass entering block 2 with the clean stream there gives the clean logits bit for bit; a pass
    stopping at block 3 returns its input and records the inputs it keeps; a pass nested in a hook is
    not touched by the settings of the outer one."""
    _, model = build("qwen3_5")
    tokens = random_tokens(2, 9)
    clean = model(tokens)
    with forward_settings(model, stop=3, keep=(1, 3)) as settings:
        resid = model(tokens)
    assert torch.equal(resid, settings.kept[3]) and sorted(settings.kept) == [1, 3]
    assert torch.equal(resid, model(tokens, stop_at_layer=3))
    with forward_settings(model, start=3, resid=resid):
        assert torch.equal(model(tokens), clean)
    nested = []

    def run_inside(value, hook):
        if not nested:
            nested.append(None)
            nested[0] = model(tokens)

    with forward_settings(model, stop=1):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_resid_post", run_inside)])
    assert torch.equal(nested[0], clean)
    with pytest.raises(ValueError, match="both start > 0 and the residual"):
        with forward_settings(model, start=2):
            pass


@torch.no_grad()
def test_hooks_can_be_switched_off_for_a_pass():
    _, model = build("qwen2")
    tokens = random_tokens(1, 6)

    def explode(value, hook):
        raise RuntimeError("a hook ran")

    with model.hooks(fwd_hooks=[("blocks.1.hook_attn_out", explode)]):
        with forward_settings(model, hooks=False):
            quiet = model(tokens)
        with pytest.raises(RuntimeError, match="a hook ran"):
            model(tokens)
    assert torch.equal(quiet, model(tokens))


@torch.no_grad()
def test_positions_continue_across_a_cache():
    """A pass that continues a cache counts positions after the cached real tokens, per row (left
    padding), so `positions=-1` acts on the new token as on the last token of the whole sequence."""
    _, model = build("qwen2")
    tokens, mask = model.to_tokens_and_mask(["In the beginning God", "And God"], padding_side="left")
    step = torch.tensor([[40], [41]])
    full_mask = torch.cat([mask, torch.ones(2, 1, dtype=mask.dtype)], 1)
    seen = []
    cache = DynamicCache(config=model.hf_model.config)
    model(tokens, attention_mask=mask, cache=cache, use_cache=True)
    model.run_with_hooks(step, attention_mask=full_mask, cache=cache, use_cache=True,
                         fwd_hooks=[("hook_embed", lambda value, hook: seen.append(model.real_positions))])
    assert seen[0].tolist() == [[20], [7]]
    condition = zero("attn", layers=1, positions=-1)
    with condition.apply(model):
        whole = model(torch.cat([tokens, step], 1), attention_mask=full_mask)[:, -1]
    cache = DynamicCache(config=model.hf_model.config)
    model(tokens, attention_mask=mask, cache=cache, use_cache=True)
    with condition.apply(model):
        continued = model(step, attention_mask=full_mask, cache=cache, use_cache=True)[:, -1]
    assert not torch.allclose(continued, model(torch.cat([tokens, step], 1), attention_mask=full_mask)[:, -1])
    torch.testing.assert_close(continued, whole, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_an_nnsight_editor_counts_real_tokens_per_row():
    """nnsight runs a trace's edits apart from the model's pass; the editor reads the traced call, so a
    positional condition on a right-padded batch acts where the hooked run acts."""
    _, model = build("qwen2")
    tokens, mask = model.to_tokens_and_mask(["In the beginning God", "And"], padding_side="right")
    condition = scale("mlp", 0.0, layers=0, positions=[-1])
    with condition.apply(model):
        hooked = model(tokens, attention_mask=mask)
    edit = condition.nnsight_editor(model)
    view = model.nnsight()
    with view.trace(tokens, attention_mask=mask):
        edit(view)
        traced = view.output.save()
    assert torch.equal(traced, hooked)
    assert not torch.equal(hooked, model(tokens, attention_mask=mask))


def test_discovery_refuses_two_entries_with_one_name(tmp_path, monkeypatch):
    package = tmp_path / "twins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for name in ("a", "b"):
        (package / f"{name}.py").write_text("from hybrid_lens.adapters import Family\n"
                                            f"FAMILY_{name.upper()} = Family(family='twin')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match=r"Two families are named 'twin': twins\.a\.FAMILY_A and twins\.b\.FAMILY_B"):
        discover("twins", Family, lambda family: family.family, "families")
    for name in [m for m in sys.modules if m.startswith("twins")]:
        monkeypatch.delitem(sys.modules, name)
