"""Recurrent-state positions count real tokens per row, as every other position does (issue #24).

`patch_state(..., position=-3)` on a right-padded batch used to patch a pad column of the shorter rows
and read the source state at a pad column; a left-padded source could not be given at all. Each test
compares a padded batch (right and left, source and patched run) with the rows run alone, unpadded, on
the bundled trained hybrids (whose recurrent mixers matter: each test asserts its effect is far above
the tolerance)."""

from __future__ import annotations

import pytest
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import Condition, patch_state
from hybrid_lens.mixers import cache_states, state_positions

from .fixtures import no_hooks_left

BUNDLED = {"linear_attn": "hybrid-lens/tiny-qwen3.5", "ssm": "hybrid-lens/tiny-falcon-h1"}
SOURCE = ["In the beginning God created the heaven and the earth", "And God said, Let there"]
TARGET = ["Now the serpent was more subtil than any beast of the", "And the LORD God said"]
TOL = 1e-4


@pytest.fixture(scope="module", params=sorted(BUNDLED))
def recurrent(request):
    model = HookedHybrid.from_pretrained(BUNDLED[request.param])
    return model, request.param, model.layout.layers_with(request.param)[:2]


def padded(model, texts, side):
    if side == "left" and not model.adapter.left_padding:
        pytest.skip(f"{type(model.hf_model).__name__} refuses left padding")
    return model.to_tokens_and_mask(texts, padding_side=side)


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("position", [-3, 2])
def test_a_state_patch_of_a_padded_batch_is_each_row_patched_alone(recurrent, side, position):
    model, kind, layers = recurrent
    source, source_mask = padded(model, SOURCE, side)
    target, target_mask = padded(model, TARGET, side)
    with patch_state(source, kind, position, layers, attention_mask=source_mask).apply(model):
        batched = model(target, attention_mask=target_mask)
    for row, (source_text, target_text) in enumerate(zip(SOURCE, TARGET)):
        with patch_state(source_text, kind, position, layers).apply(model):
            alone = model(target_text)
        error = float((batched[row, target_mask[row].bool()] - alone[0]).abs().max())
        effect = float((alone - model(target_text)).abs().max())
        assert error < TOL and effect > 100 * TOL, (row, error, effect)
    assert no_hooks_left(model)


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_states_of_a_padded_batch_are_each_rows_own(recurrent, side):
    model, kind, layers = recurrent
    tokens, mask = padded(model, SOURCE, side)
    names = [f"blocks.{layer}.{kind}.hook_state" for layer in layers]
    states = cache_states(model, tokens, [-1, 0, 4], names, attention_mask=mask)
    _, cache = model.run_with_cache(tokens, attention_mask=mask, names_filter=names)  # default: the last token
    for row, text in enumerate(SOURCE):
        alone = cache_states(model, text, [0, 4, -1], names)
        for name in names:
            assert states[name].shape[:2] == (2, 3)
            torch.testing.assert_close(states[name][row], alone[name][0], atol=1e-5, rtol=0)
            torch.testing.assert_close(cache[name][row], alone[name][0, -1], atol=1e-5, rtol=0)
    assert float((states[names[0]][0, -1] - states[names[0]][1, -1]).abs().max()) > 1e-2  # rows differ
    assert no_hooks_left(model)


@torch.no_grad()
def test_a_hook_on_the_state_acts_on_the_rows_at_its_position_only(recurrent):
    """A hook returning zeros for the whole batch changes each row at its own position only
    (`hook.rows`), as the rows run alone with the same hook."""
    model, kind, layers = recurrent
    name = f"blocks.{layers[0]}.{kind}.hook_state"
    zero = [(name, lambda state, hook: torch.zeros_like(state))]
    tokens, mask = model.to_tokens_and_mask(TARGET)
    seen = []
    with state_positions(model, -4):
        batched = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[
            *zero, (name, lambda state, hook: seen.append((hook.position, hook.column, hook.rows.tolist())))])
        alone = [model.run_with_hooks(text, fwd_hooks=zero) for text in TARGET]
    lengths = mask.sum(1).tolist()
    assert seen == sorted([(-4, lengths[1] - 4, [False, True]), (-4, lengths[0] - 4, [True, False])],
                          key=lambda fired: fired[1])
    for row, logits in enumerate(alone):
        torch.testing.assert_close(batched[row, : lengths[row]], logits[0], atol=TOL, rtol=0)


def test_a_position_beyond_a_row_is_refused_naming_the_row(recurrent):
    model, kind, layers = recurrent
    short = len(model.to_tokens(SOURCE[1])[0])
    with pytest.raises(ValueError, match=rf"State positions \[{-short - 1}\] out of range .* rows \[1\] of \[{short}\]"):
        with patch_state(SOURCE, kind, -short - 1, layers).apply(model):
            model(TARGET)
    assert no_hooks_left(model)
    with pytest.raises(ValueError, match="no token axis"):
        Condition.from_dict({"items": [{"selector": {"kind": kind, "point": "hook_state", "positions": [1]},
                                        "intervention": {"type": "zero"}}]})


@torch.no_grad()
def test_a_state_patch_with_a_source_mask_serialises(recurrent):
    model, kind, layers = recurrent
    source, source_mask = model.to_tokens_and_mask(SOURCE)
    condition = patch_state(source, kind, -3, layers, attention_mask=source_mask)
    again = Condition.from_json(condition.to_json())
    assert again.items[0][1].attention_mask == tuple(map(tuple, source_mask.tolist()))
    with condition.apply(model):
        first = model(TARGET)
    with again.apply(model):
        assert torch.equal(model(TARGET), first)
