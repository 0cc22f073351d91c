"""Sweeps (prefix reuse + planned condition batching) equal one run per condition: bit for bit with
one condition per pass, to float rounding (as the plain model across batch sizes) when stacked."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest
import torch

from hybrid_lens.evals import loglikelihoods, perplexity
from hybrid_lens.interventions import (
    Condition,
    Sweep,
    as_sweep,
    first_layer,
    mean,
    mixer_off,
    noise,
    patch_from,
    skip_layer,
    zero,
)
from hybrid_lens.interventions.sweep import PassCost, plan_passes
from hybrid_lens.study import runner
from hybrid_lens.study.runner import run_study

from .fixtures import build, spec_for, stored


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


# Stacked passes run a larger batch than separate runs, and float32 matrix kernels block other
# shapes differently: logits then differ by up to ~1.3e-5 on the bundled models (the plain
# `transformers` model, run on 2-8 copies of an input, differs from its batch of one just as
# much; `benchmarks/sweep.py` reports both). The tolerance is a few times that.
STACKED_ATOL = 5e-5


def no_hooks_left(model) -> bool:
    return not any(point._forward_hooks for point in model.hook_dict.values()) and all(
        "forward" in vars(layer) for layer in model.adapter.layers(model.hf_model))


@pytest.mark.parametrize("reuse_prefix", [True, False])
def test_one_condition_per_pass_is_bit_identical(family, tokens, reuse_prefix):
    _, model = build(family)
    conditions = conditions_for(model, tokens)
    expected = separate_runs(model, tokens, conditions)
    swept = Sweep(conditions, batch=1, reuse_prefix=reuse_prefix).logits(model, tokens)
    assert [torch.equal(a, b) for a, b in zip(swept, expected)] == [True] * len(conditions)
    assert no_hooks_left(model)


def test_a_lone_condition_is_a_single_sweep_run_as_one_hooked_pass(family, tokens):
    _, model = build(family)
    for condition in [None, *conditions_for(model, tokens)]:
        sweep = as_sweep(condition)
        expected = separate_runs(model, tokens, [condition or Condition()])
        assert sweep.single and torch.equal(sweep.unwrap(sweep.logits(model, tokens)), expected[0])
        assert sweep.map(lambda c, v: (c, v), 1.5) == (condition or Condition(), 1.5)
    many = Sweep(conditions_for(model, tokens)[:2])
    assert as_sweep(many) is many and many.unwrap([1, 2]) == [1, 2]
    with pytest.raises(TypeError, match="one condition at a time"):
        many.lone("Generation")
    with pytest.raises(TypeError, match="got str"):
        as_sweep("skip_layer")
    assert no_hooks_left(model)


@pytest.mark.parametrize(("batch", "reuse_prefix"), [(3, False), (4, True), (Sweep.batch, True)])
def test_stacked_passes_agree_to_float_rounding(family, tokens, batch, reuse_prefix):
    reference, model = build(family)
    conditions = conditions_for(model, tokens)
    expected = separate_runs(model, tokens, conditions)
    swept = Sweep(conditions, batch=batch, reuse_prefix=reuse_prefix).logits(model, tokens)
    error = max(float((a - b).abs().max()) for a, b in zip(swept, expected))
    with torch.no_grad():
        alone = reference(tokens).logits
        plain = max(float((reference(tokens.repeat(k, 1)).logits - alone.repeat(k, 1, 1)).abs().max())
                    for k in range(2, batch + 1))
    assert error <= STACKED_ATOL and plain <= STACKED_ATOL, (error, plain)
    assert no_hooks_left(model)


def plan_cost(groups, starts, n_layers, cost) -> float:
    """The cost `plan_passes` minimises, computed from its definition for any grouping."""
    first = [min(starts[i] for i in group) for group in groups]
    clean = (n_layers + 1 if n_layers in starts else max(first, default=0)) * cost(1)
    return clean + sum((n_layers - start + 1) * cost(len(group)) for start, group in zip(first, groups))


def partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for smaller in partitions(rest):
        yield [[first], *smaller]
        for k in range(len(smaller)):
            yield [*smaller[:k], [first, *smaller[k]], *smaller[k + 1:]]


@pytest.mark.parametrize("seed", range(12))
def test_plan_is_the_cheapest_grouping(seed):
    rng = random.Random(seed)
    n_layers, batch = rng.choice([4, 8, 12]), rng.randint(1, 4)
    starts = [rng.randint(0, n_layers) for _ in range(rng.randint(1, 6))]
    cost = PassCost(fixed=rng.choice([0.0, 0.05, 0.5, 3.0]), per_copy=rng.choice([0.01, 1.0]))
    passes = plan_passes(starts, n_layers, batch, cost)
    assert sorted(i for _, group in passes for i in group) == [i for i, s in enumerate(starts) if s < n_layers]
    assert all(len(group) <= batch and start == min(starts[i] for i in group) for start, group in passes)
    todo = [i for i, s in enumerate(starts) if s < n_layers]
    cheapest = min(plan_cost(p, starts, n_layers, cost) for p in partitions(todo) if all(len(g) <= batch for g in p))
    # every grouping is enumerated, contiguous or not (the planner only searches contiguous runs)
    assert plan_cost([group for _, group in passes], starts, n_layers, cost) == pytest.approx(cheapest)


def test_plan_groups_by_first_layer_and_merges_only_when_it_pays():
    starts = [2, 5, 2, 5, 0]
    overhead_free = plan_passes(starts, 8, batch=8, cost=PassCost(fixed=1e-3, per_copy=1.0))
    assert overhead_free == [(0, [4]), (2, [0, 2]), (5, [1, 3])]  # same first layer: no reuse lost
    assert plan_passes(starts, 8, batch=8, cost=PassCost(fixed=1.0, per_copy=1e-3)) == [(0, [4, 0, 2, 1, 3])]
    assert plan_passes(starts, 8, batch=2, cost=PassCost(fixed=1.0, per_copy=1e-3)) == [
        (0, [4]), (2, [0, 2]), (5, [1, 3])]  # batch bounds the stack


def test_clean_pass_stops_at_the_deepest_start(tokens):
    _, model = build("qwen2", num_hidden_layers=6)
    calls = {i: 0 for i in range(model.n_layers)}
    heads = []

    def count(value, hook):
        calls[int(hook.name.split(".")[1])] += 1

    handle = model.hf_model.lm_head.register_forward_hook(lambda *args: heads.append(1))
    try:
        with model.hooks(fwd_hooks=[(f"blocks.{i}.hook_resid_post", count) for i in calls]):
            Sweep([skip_layer(1), zero("mlp", [3])], batch=1).logits(model, tokens)
        # clean pass: blocks 0-2 only; passes from block 1 (blocks 1-5) and block 3 (blocks 3-5)
        assert calls == {0: 1, 1: 2, 2: 2, 3: 2, 4: 2, 5: 2}
        assert len(heads) == 2  # no unembedding of the clean pass: no condition needs its logits
        heads.clear()
        Sweep([skip_layer(1), Condition(name="clean")], batch=1).logits(model, tokens)
        assert len(heads) == 2  # the clean logits serve the condition without interventions
    finally:
        handle.remove()


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
    separate = [loglikelihoods(model, requests, c, progress=False) for c in conditions]
    assert loglikelihoods(model, requests, Sweep(conditions, batch=1), progress=False) == separate
    np.testing.assert_allclose(loglikelihoods(model, requests, Sweep(conditions), progress=False), separate,
                               rtol=0, atol=STACKED_ATOL * 10)  # a sum of up to 10 log-probabilities


@pytest.mark.parametrize("condition_batch", [None, 4])
def test_study_sweeps_equal_one_condition_at_a_time(checkpoint, tmp_path, monkeypatch, condition_batch):
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer"), condition_batch=condition_batch)
    swept = stored(run_study(spec, tmp_path / "swept", progress=False).parent, spec)
    monkeypatch.setattr(runner, "SWEEPABLE", frozenset())  # every pair on its own, no Sweep
    pd.testing.assert_frame_equal(swept, stored(run_study(spec, tmp_path / "single", progress=False).parent, spec))
