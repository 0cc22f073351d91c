"""Every registered intervention, parameterized over the registry (a new one is tested with no test edit):
its example changes the logits, applies reversibly (also when the run raises), round-trips through
JSON, gives the same logits batched with other conditions as alone, and keeps its `cache_safe` claim.

The model is a tiny Falcon-H1 (an SSM, attention and an MLP in every block) re-initialised so that every
component moves the logits visibly (`visible_init`, the SSM output unscaled, slow state decays so that a
carried state matters), so an intervention that does nothing cannot pass.
"""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

import hybrid_lens.interventions as interventions
from hybrid_lens.interventions import Condition, Intervention, run_conditions, zero
from hybrid_lens.interventions.base import REGISTRY

from .fixtures import build, no_hooks_left, random_tokens

STACKED_ATOL = 5e-5  # stacked copies run a larger batch: float rounding (see interventions.sweep)


@pytest.fixture(scope="module")
def setup():
    _, model = build("falcon_h1", visible=True, ssm_out_multiplier=1.0)
    with torch.no_grad():
        for name, weight in model.hf_model.named_parameters():
            if name.endswith("A_log"):
                weight.fill_(-2.0)  # A = -e^-2: states carry across tokens
    tokens = random_tokens(2, 10, seed=4)
    with torch.no_grad():
        clean = model(tokens)
    return model, tokens, clean


def example(kind: str, tokens) -> Condition:
    selector, intervention = REGISTRY[kind].example(tokens)
    assert type(intervention) is REGISTRY[kind]
    return Condition.of(selector, intervention, name=kind)


def parameters(model) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.hf_model.state_dict().items()}


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@torch.no_grad()
def test_the_example_changes_the_logits_and_is_undone_on_exit(setup, kind):
    model, tokens, clean = setup
    before = parameters(model)
    with example(kind, tokens).apply(model):
        ablated = model(tokens)
    assert (ablated - clean).abs().max() > 1e-3 * clean.abs().max(), f"{kind}'s example does not change the run"
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)
    assert all(torch.equal(value, before[name]) for name, value in model.hf_model.state_dict().items())


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@torch.no_grad()
def test_hooks_are_removed_when_the_run_raises(setup, kind):
    model, tokens, clean = setup

    def explode(value, hook):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with example(kind, tokens).apply(model), model.hooks(fwd_hooks=[("hook_logits", explode)]):
            model(tokens)
    assert no_hooks_left(model)
    assert torch.equal(model(tokens), clean)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@torch.no_grad()
def test_json_round_trip_gives_the_same_run(setup, kind):
    model, tokens, _ = setup
    condition = example(kind, tokens)
    copy = Condition.from_json(condition.to_json())
    intervention = copy.items[0][1]
    assert type(intervention) is REGISTRY[kind] and intervention.to_dict() == condition.items[0][1].to_dict()
    assert Intervention.from_dict(intervention.to_dict()).to_dict() == intervention.to_dict()
    with condition.apply(model):
        expected = model(tokens)
    with copy.apply(model):
        assert torch.equal(model(tokens), expected)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@torch.no_grad()
def test_batched_with_other_conditions_equals_separate_runs(setup, kind):
    model, tokens, clean = setup
    conditions = [zero("attn", layers=0), example(kind, tokens), Condition()]
    separate = []
    for condition in conditions:
        with condition.apply(model):
            separate.append(model(tokens))
    batched = run_conditions(model, tokens, conditions)
    for one, alone in zip(batched, separate):
        torch.testing.assert_close(one, alone, atol=STACKED_ATOL, rtol=0)
    assert torch.equal(separate[-1], clean)


@pytest.mark.parametrize("kind", sorted(kind for kind in REGISTRY if example(kind, random_tokens(2, 10)).cache_safe))
@torch.no_grad()
def test_a_cache_safe_condition_continues_a_cache_as_the_full_run(setup, kind):
    """`cache_safe` is a claim: the last tokens run on the cache of the others give the logits of the
    whole sequence run at once under the condition."""
    model, tokens, _ = setup
    condition = example(kind, tokens)
    with condition.apply(model):
        whole = model(tokens)
        cache = DynamicCache(config=model.hf_model.config)
        model(tokens[:, :-2], cache=cache, use_cache=True)
        continued = model(tokens[:, -2:], cache=cache, use_cache=True)
    torch.testing.assert_close(continued, whole[:, -2:], atol=1e-4, rtol=1e-4)


def test_every_intervention_is_exported_and_declares_its_traits():
    for kind, cls in REGISTRY.items():
        assert getattr(interventions, cls.__name__) is cls and cls.__name__ in interventions.__all__
        assert cls.type == kind
        for trait in ("cache_safe", "needs_reference", "on_patterns"):
            assert isinstance(getattr(cls, trait), (bool, property)), f"{cls.__name__}.{trait}"


def test_a_second_intervention_with_a_taken_type_is_refused():
    with pytest.raises(ValueError, match="Two intervention types are named 'zero'"):
        type("Zero2", (Intervention,), {"type": "zero"})
    assert REGISTRY["zero"].__name__ == "Zero"
