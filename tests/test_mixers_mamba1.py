"""Mamba-1 inner points (Mamba, FalconMamba, Jamba) against independent computations: torch forward
hooks on the plain `transformers` submodules, the generation cache's states, and the transformers
single-step recurrence (`mamba_selective_state_update`) started from a patched state.

Tiny random models with the visible init of `test_families`, so every mixer moves its outputs.
"""

from __future__ import annotations

import sys

import pytest
import torch

from hybrid_lens.interventions import patch_state
from hybrid_lens.mixers import cache_states, state_positions

from .fixtures import build, random_tokens


@pytest.fixture(scope="module", params=["mamba", "falcon_mamba", "jamba"])
def models(request):
    """(HookedHybrid, plain transformers model with the same weights) of a tiny Mamba-1 family."""
    plain, model = build(request.param, visible=True)
    with torch.no_grad():
        for module in (*plain.modules(), *model.hf_model.modules()):
            if isinstance(module, torch.nn.Conv1d):  # nonzero conv output at padded positions (left padding)
                module.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    return model, plain


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 10)


def ssm_layers(model) -> list[int]:
    return model.layout.layers_with("ssm")


def plain_mixer(model, plain, layer: int):
    """The plain model's Mamba-1 mixer of `layer` (`mixer` in Mamba / FalconMamba, `mamba` in Jamba)."""
    attribute = model.adapter.block_of(model.blocks[layer].layer.block_key).mixers[0].module
    return getattr(model.adapter.layers(plain)[layer], attribute)


def generation_cache(plain, tokens):
    output = plain(tokens, use_cache=True)
    return output.cache if hasattr(output, "cache") else output.past_key_values


def captured_run(mixer, plain, tokens) -> dict[str, torch.Tensor]:
    """The plain mixer's intermediates, from torch forward hooks on its submodules."""
    seen = {}
    modules = {"in_proj": mixer.in_proj, "x_proj": mixer.x_proj, "out_proj": mixer.out_proj,
               **{name: getattr(mixer, name) for name in ("dt_layernorm", "b_layernorm", "c_layernorm")
                  if hasattr(mixer, name)}}

    def keep(name):
        def hook(_module, args, output):
            seen[name + ".in"], seen[name + ".out"] = args[0], output
        return hook

    handles = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    try:
        plain(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def test_inner_points_are_the_transformers_intermediates(models, tokens):
    model, plain = models
    _, cache = model.run_with_cache(tokens, names_filter=lambda n: ".ssm.hook_" in n and not n.endswith("state"))
    for layer in ssm_layers(model):
        mixer = plain_mixer(model, plain, layer)
        seen = captured_run(mixer, plain, tokens)
        size, rank = mixer.ssm_state_size, mixer.time_step_rank
        low_rank, B, C = seen["x_proj.out"].split([rank, size, size], dim=-1)
        if hasattr(mixer, "dt_layernorm"):  # FalconMamba, Jamba: the norms' own outputs
            low_rank, B, C = seen["dt_layernorm.out"], seen["b_layernorm.out"], seen["c_layernorm.out"]
        expected = {
            "hook_in_proj": seen["in_proj.out"],
            "hook_z": seen["in_proj.out"][..., mixer.intermediate_size :],
            "hook_conv": seen["x_proj.in"],
            "hook_dt": (mixer.dt_proj.weight @ low_rank.transpose(1, 2)).transpose(1, 2),
            "hook_B": B,
            "hook_C": C,
            "hook_y": seen["out_proj.in"],
        }
        for name, value in expected.items():
            ours = cache[f"blocks.{layer}.ssm.{name}"]
            assert ours.shape == value.shape, name
            assert torch.equal(ours, value), (layer, name)
            assert value.abs().max() > 1e-2, (layer, name)


@torch.no_grad()
def test_states_are_the_generation_caches_of_prefixes(models, tokens):
    model, plain = models
    names = [f"blocks.{layer}.ssm.hook_state" for layer in ssm_layers(model)]
    states = cache_states(model, tokens, [3, -1], names=names)
    for position, index in ((3, 0), (tokens.shape[1] - 1, 1)):
        cache = generation_cache(plain, tokens[:, : position + 1])
        for layer, name in zip(ssm_layers(model), names):
            expected = cache.get_recurrent_state(layer)
            assert expected.abs().max() > 1e-2
            torch.testing.assert_close(states[name][:, index], expected, atol=1e-5 * float(expected.abs().max()),
                                       rtol=0)


@torch.no_grad()
def test_a_scan_split_at_written_back_states_is_exact(models, tokens):
    """The recurrence resumed from a state written back equals the unsplit transformers scan bit for bit."""
    model, plain = models
    names = [f"blocks.{layer}.ssm.hook_state" for layer in ssm_layers(model)]
    with state_positions(model, [2, 6, -1]):
        written = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda s, hook: s.clone()) for name in names])
    assert torch.equal(written, plain(tokens).logits)


@torch.no_grad()
def test_state_patching_continues_from_the_source_state(models, tokens):
    """After token t, `hook_y` is the transformers single-step recurrence on the target's own inputs,
    started from the source prefix's generation-cache state; up to t it is unchanged."""
    model, plain = models
    source, target, t = tokens[:1], tokens[1:], 4
    layer = ssm_layers(model)[-1]
    prefix = f"blocks.{layer}.ssm."
    state = generation_cache(plain, source[:, : t + 1]).get_recurrent_state(layer).clone()
    inputs = ["hook_conv", "hook_dt", "hook_B", "hook_C", "hook_z"]
    _, clean = model.run_with_cache(target, names_filter=[prefix + n for n in [*inputs, "hook_y"]])
    with patch_state(source, "ssm", position=t, layers=layer).apply(model):
        _, patched = model.run_with_cache(target, names_filter=prefix + "hook_y")

    mixer = plain_mixer(model, plain, layer)
    step = sys.modules[type(mixer).__module__].mamba_selective_state_update
    x, dt, B, C, z = (clean[prefix + n] for n in inputs)
    expected = torch.stack([
        step(state, x[:, s], dt[:, s], -torch.exp(mixer.A_log.float()), B[:, s], C[:, s], mixer.D, z=z[:, s],
             dt_bias=mixer.dt_proj.bias.float(), dt_softplus=True)
        for s in range(t + 1, target.shape[1])], dim=1)
    ours = patched[prefix + "hook_y"]
    assert torch.equal(ours[:, : t + 1], clean[prefix + "hook_y"][:, : t + 1])
    scale = float(expected.abs().max())
    torch.testing.assert_close(ours[:, t + 1 :], expected, atol=1e-5 * scale, rtol=0)
    assert (ours[:, t + 1 :] - clean[prefix + "hook_y"][:, t + 1 :]).abs().max() > 1e-2 * scale


@torch.no_grad()
def test_padded_rows_keep_the_plain_logits_with_inner_points_hooked(models, tokens):
    model, plain = models
    mask = torch.ones_like(tokens)
    mask[0, :3] = 0  # left padding in row 0
    inner = [name for name in model.hook_dict if ".ssm.hook_" in name and not name.endswith("state")]
    logits, _ = model.run_with_cache(tokens, attention_mask=mask, names_filter=inner)
    assert torch.equal(logits, plain(tokens, attention_mask=mask).logits)


def test_eager_points_refuse_a_cache(models, tokens):
    model, _ = models
    name = f"blocks.{ssm_layers(model)[0]}.ssm.hook_dt"
    with pytest.raises(NotImplementedError, match="use_cache=False"):
        model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x)], use_cache=True)
