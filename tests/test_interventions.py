"""Interventions against independent computations with plain torch hooks on the transformers modules."""

from __future__ import annotations

import copy

import pytest
import torch

from hybrid_lens.interventions import (
    Condition, Selector, Zero, layer_thirds, mean, mixer_off, noise, patch, patch_from, resample, run_conditions,
    scale, skip_layer, zero,
)

from .fixtures import MODULE_OF_KIND, build, hf_run, on_output


def mixers(reference, kind, layers):
    return [getattr(reference.model.layers[i], MODULE_OF_KIND[kind]) for i in layers]


@torch.no_grad()
def test_zero_every_ssm_equals_zero_out_projection_weights(tokens):
    reference, model = build("falcon_h1")
    zeroed = copy.deepcopy(reference)
    for layer in zeroed.model.layers:
        layer.mamba.out_proj.weight.zero_()
    with zero("ssm").apply(model):
        ours = model(tokens)
    torch.testing.assert_close(ours, zeroed(tokens).logits, atol=1e-6, rtol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen3_5", "qwen2", "falcon_h1"])
def test_skip_layer_equals_removing_the_layer(family, tokens):
    reference, model = build(family)
    removed = copy.deepcopy(reference)
    del removed.model.layers[2]
    removed.config.num_hidden_layers -= 1
    if family == "qwen3_5":
        removed.config.layer_types = removed.config.layer_types[:2] + removed.config.layer_types[3:]
    with skip_layer(2).apply(model):
        ours = model(tokens)
    assert torch.equal(ours, removed(tokens, use_cache=False).logits)


@torch.no_grad()
def test_mixer_off_keeps_the_mlp(tokens):
    reference, model = build("qwen3_5")
    with mixer_off([0, 3]).apply(model):
        ours = model(tokens)
    expected = hf_run(reference, tokens, [(reference.model.layers[0].linear_attn, on_output(torch.zeros_like)),
                                          (reference.model.layers[3].self_attn, on_output(torch.zeros_like))])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_scale_noise_and_positions_match_hand_hooks(tokens):
    reference, model = build("qwen2")
    with scale("attn", 0.25, layers=[1, 2]).apply(model):
        ours = model(tokens)
    expected = hf_run(reference, tokens, [(m, on_output(lambda v: 0.25 * v)) for m in mixers(reference, "attn", [1, 2])])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)

    sigma, seed = 0.1, 7
    with noise("mlp", sigma, seed=seed, layers=0).apply(model):
        ours = model(tokens)
    drawn = sigma * torch.randn((2, 24, 64), generator=torch.Generator().manual_seed(seed))
    expected = hf_run(reference, tokens, [(reference.model.layers[0].mlp, on_output(lambda v: v + drawn))])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)

    def zero_positions(v):
        v = v.clone()
        v[:, [3, 10]] = 0
        return v

    with zero("attn", layers=1, positions=[3, 10]).apply(model):
        ours = model(tokens)
    expected = hf_run(reference, tokens, [(reference.model.layers[1].self_attn, on_output(zero_positions))])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)


@torch.no_grad()
def test_mean_and_resample_use_reference_activations(tokens):
    reference, model = build("falcon_h1")
    ref_tokens = torch.randint(3, 256, (5, 30), generator=torch.Generator().manual_seed(4))
    captured = []
    hf_run(reference, ref_tokens, [(reference.model.layers[1].mamba, on_output(lambda v: captured.append(v) or v))])
    ssm_ref = captured[0] * reference.model.layers[1].ssm_out_multiplier  # contribution = output x multiplier

    with mean("ssm", ref_tokens, layers=1).apply(model):
        ours = model(tokens)
    global_mean = ssm_ref.mean((0, 1))
    multiplier = reference.model.layers[1].ssm_out_multiplier
    expected = hf_run(reference, tokens, [(reference.model.layers[1].mamba,
                                           on_output(lambda v: (global_mean / multiplier).expand_as(v)))])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)

    with mean("ssm", ref_tokens, layers=1, per_position=True).apply(model):
        ours = model(tokens)
    per_pos = ssm_ref.mean(0)[:24]
    expected = hf_run(reference, tokens, [(reference.model.layers[1].mamba,
                                           on_output(lambda v: (per_pos / multiplier).expand_as(v)))])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)

    with resample("ssm", ref_tokens, seed=3, layers=1).apply(model):
        ours = model(tokens)
    rows = torch.randint(0, 5, (2,), generator=torch.Generator().manual_seed(3))
    expected = hf_run(reference, tokens, [(reference.model.layers[1].mamba,
                                           on_output(lambda v: captured[0][rows, :24]))])
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_ablation_composes_with_patching(tokens):
    """SSM off in layers 0-1 while clean attention output is patched into layer 3 (Falcon-H1)."""
    reference, model = build("falcon_h1")
    clean = torch.randint(3, 256, tokens.shape, generator=torch.Generator().manual_seed(9))
    condition = zero("ssm", layers=[0, 1]) + patch_from(clean, "attn", layers=3)
    with condition.apply(model):
        ours = model(tokens)
    clean_attn = []
    hf_run(reference, clean, [(reference.model.layers[3].self_attn, on_output(lambda v: clean_attn.append(v) or v))])
    expected = hf_run(reference, tokens, [
        *[(m, on_output(torch.zeros_like)) for m in mixers(reference, "ssm", [0, 1])],
        (reference.model.layers[3].self_attn, on_output(lambda v: clean_attn[0])),
    ])
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=1e-5)
    assert condition.name == "ssm_zero+attn_patch"


@torch.no_grad()
def test_condition_batching_equals_separate_runs(family, tokens):
    _, model = build(family)
    conditions = [skip_layer(i) for i in range(model.n_layers)] + [
        zero(c.kind, c.layer) for c in model.components(model.layer_mixers[0][0])
    ] + [mixer_off("late", positions=slice(5, 12)), Condition()]
    batched = run_conditions(model, tokens, conditions)
    for k, condition in enumerate(conditions):
        with condition.apply(model):
            torch.testing.assert_close(batched[k], model(tokens), atol=1e-5, rtol=1e-5, msg=condition.name)


@torch.no_grad()
def test_patching_identities(family, tokens):
    _, model = build(family)
    corrupt = torch.randint(3, 256, tokens.shape, generator=torch.Generator().manual_seed(5))
    same = patch(model, tokens, tokens, progress=False)
    assert (same.metric.abs() < 1e-6).all()
    restored = patch(model, tokens, corrupt, where=Selector("resid_pre", 0), progress=False)
    assert restored.metric.abs().max() < 1e-6 and restored.attrs["corrupt"] > 0
    table = patch(model, tokens, corrupt, where=Selector("mixer", [0, 1]), positions=[0, 5], progress=False)
    assert len(table) == 2 * sum(len(model.layer_mixers[i]) for i in (0, 1))


@torch.no_grad()
def test_every_ablation_is_reversible_also_when_a_hook_raises(family, tokens):
    _, model = build(family)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    clean = model(tokens)
    kind = model.layer_mixers[0][0]
    conditions = [zero(kind), skip_layer([0, 1]), mixer_off(), scale("mlp", 2.0), noise(kind, 0.5),
                  mean(kind, tokens), resample(kind, tokens, seed=1), patch_from(tokens, "resid_mid", layers=1)]
    for condition in conditions:
        with condition.apply(model):
            model(tokens)
        with pytest.raises(RuntimeError, match="inside"):
            with condition.apply(model):
                raise RuntimeError("inside")
        assert all(not point.fwd_hooks and not point._forward_hooks for point in model.hook_dict.values())
        assert torch.equal(model(tokens), clean)
    failing = Condition.of(Selector("mlp", 0, positions=[999]), Zero())
    with pytest.raises(ValueError, match="out of range"):
        with failing.apply(model):
            model(tokens)
    assert all(not point.fwd_hooks for point in model.hook_dict.values())
    assert all(torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_selectors_resolve_the_same_way_on_every_family():
    _, falcon = build("falcon_h1", num_hidden_layers=6)
    _, qwen = build("qwen3_5")
    assert [t.layer for t in Selector("ssm").targets(falcon.layout)] == list(range(6))
    assert [t.layer for t in Selector("attn", layers="early").targets(falcon.layout)] == [0, 1]
    assert layer_thirds(8) == {"early": [0, 1, 2], "middle": [3, 4, 5], "late": [6, 7]}
    assert [t.layer for t in Selector("attn").targets(qwen.layout)] == [3, 7]
    assert [(t.layer, t.kind) for t in Selector("mixer", [2, 3]).targets(qwen.layout)] == [(2, "linear_attn"), (3, "attn")]
    with pytest.raises(ValueError, match="matches nothing"):
        Selector("ssm").targets(qwen.layout)
    with pytest.raises(ValueError, match="matches nothing"):
        Selector("linear_attn", layers=3).targets(qwen.layout)
    with pytest.raises(ValueError, match="choose one of"):
        Selector("mamba")


def test_conditions_round_trip_through_json(tokens):
    condition = (zero("ssm", layers="late", positions=slice(2, 8)) + skip_layer([1, 2]) + mean("attn", tokens[:1])
                 + noise("mlp", 0.1, seed=4))
    restored = Condition.from_json(condition.to_json())
    assert restored.to_dict() == condition.to_dict()
    _, model = build("falcon_h1")
    with torch.no_grad():
        with condition.apply(model):
            a = model(tokens)
        with restored.apply(model):
            b = model(tokens)
    assert torch.equal(a, b)


@torch.no_grad()
def test_conditions_inside_an_nnsight_trace_match_the_hook_path(family, tokens):
    _, model = build(family)
    kind = model.layer_mixers[-1][-1]
    condition = zero(kind, layers="late") + skip_layer(1) + scale("mlp", 0.5, layers=0, positions=[1, 2])
    with condition.apply(model):
        hooked = model(tokens)
    edit = condition.nnsight_editor(model)
    view = model.nnsight()
    with view.trace(tokens):
        edit(view)
        traced = view.output.save()
    assert torch.equal(traced, hooked)
