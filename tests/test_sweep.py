"""Sweeps (condition batching + prefix reuse) equal one run per condition, bit for bit."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hybrid_lens.evals import loglikelihoods, perplexity
from hybrid_lens.interventions import (
    Condition,
    Sweep,
    first_layer,
    mean,
    mixer_off,
    noise,
    patch_from,
    skip_layer,
    zero,
)
from hybrid_lens.study import runner
from hybrid_lens.study.runner import run_study

from .conftest import build, spec_for, stored


def conditions_for(model, tokens) -> list[Condition]:
    last = model.n_layers - 1
    return [
        Condition(name="baseline"),
        *(skip_layer(i, name=f"skip{i}") for i in range(model.n_layers)),
        zero("mlp", [last], positions=[0, 3], name="mlp_positions"),
        mixer_off("late", name="late_mixers"),
        noise("mlp", 0.5, seed=3, layers=[1], name="noise"),
        mean("mlp", tokens.flip(0), layers=[last], name="mean"),
        patch_from(tokens.flip(1), "resid_pre", layers=[1], name="patch") + zero("mlp", [0]),
    ]


def separate_runs(model, tokens, conditions, **kwargs) -> list[torch.Tensor]:
    out = []
    for condition in conditions:
        with condition.apply(model):
            out.append(model(tokens, **kwargs))
    return out


@pytest.mark.parametrize(("batch", "reuse_prefix"), [(1, True), (3, False), (4, True)])
def test_sweep_logits_equal_separate_runs(family, tokens, batch, reuse_prefix):
    _, model = build(family)
    conditions = conditions_for(model, tokens)
    expected = separate_runs(model, tokens, conditions)
    swept = Sweep(conditions, batch=batch, reuse_prefix=reuse_prefix).logits(model, tokens)
    assert [torch.equal(a, b) for a, b in zip(swept, expected)] == [True] * len(conditions)
    assert not any(model.hook_dict[name]._forward_hooks for name in model.hook_dict)
    assert all("forward" in vars(layer) for layer in model.adapter.layers(model.hf_model))


def test_sweep_passes_stacked_keyword_tensors(tokens):
    _, model = build("falcon_h1")
    conditions = conditions_for(model, tokens)[:5]
    keep = torch.tensor([[20, 21, 22], [10, 11, 12]])
    swept = Sweep(conditions, batch=5).logits(model, tokens, logits_to_keep=keep)
    expected = separate_runs(model, tokens, conditions, logits_to_keep=keep)
    assert swept[0].shape == (2, 3, model.cfg.vocab_size)
    assert all(torch.equal(a, b) for a, b in zip(swept, expected))


def test_first_layer_is_where_a_condition_starts(tokens):
    _, model = build("qwen3_5", num_hidden_layers=8)
    assert first_layer(Condition(), model) == 8
    assert first_layer(skip_layer([5, 2]), model) == 2
    assert first_layer(zero("attn"), model) == 3  # the first full-attention layer of the 3:1 pattern
    assert first_layer(mixer_off("late"), model) == 6  # thirds of 8 layers: 0-2, 3-5, 6-7
    assert first_layer(mixer_off("late") + zero("mlp", [5]), model) == 5


def test_layers_are_restored_when_a_condition_fails(tokens):
    _, model = build("qwen2")
    forwards = [vars(layer)["forward"] for layer in model.adapter.layers(model.hf_model)]

    failing = patch_from(tokens[:, :5], "mlp", layers=[3], name="wrong_shape")  # source shorter than the input
    with pytest.raises(Exception):
        Sweep([skip_layer(2), failing], batch=2).logits(model, tokens)
    assert [vars(layer)["forward"] for layer in model.adapter.layers(model.hf_model)] == forwards
    assert not any(point._forward_hooks for point in model.hook_dict.values())
    assert torch.equal(Sweep([skip_layer(2)]).logits(model, tokens)[0], separate_runs(model, tokens, [skip_layer(2)])[0])


def test_evals_under_a_sweep_equal_one_evaluation_per_condition(family, tokens):
    _, model = build(family)
    conditions = conditions_for(model, tokens)[::2]
    text = "In the beginning God created the heaven and the earth. And the earth was without form. " * 3
    swept = perplexity(model, text, context_length=48, condition=Sweep(conditions, batch=3), progress=False)
    for condition, result in zip(conditions, swept):
        single = perplexity(model, text, context_length=48, condition=condition, progress=False)
        pd.testing.assert_frame_equal(result.windows, single.windows)
    requests = [("In the beginning", " God"), ("And the earth", " was"), ("And the earth", " is")]
    per_condition = loglikelihoods(model, requests, Sweep(conditions), progress=False)
    assert per_condition == [loglikelihoods(model, requests, c, progress=False) for c in conditions]


@pytest.mark.parametrize("condition_batch", [None, 4])
def test_study_sweeps_equal_one_condition_at_a_time(checkpoint, tmp_path, monkeypatch, condition_batch):
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer"), condition_batch=condition_batch)
    swept = stored(run_study(spec, tmp_path / "swept", progress=False).parent, spec)
    monkeypatch.setattr(runner, "SWEEPABLE", frozenset())  # every pair on its own, no Sweep
    pd.testing.assert_frame_equal(swept, stored(run_study(spec, tmp_path / "single", progress=False).parent, spec))
