"""Bad inputs to the model, hooks and conditions: a clear error each, no hook left, no weight changed."""

from __future__ import annotations

import pytest
import torch

from hybrid_lens.interventions import Condition, Selector, mean, zero

from .fixtures import build


@pytest.fixture(scope="module")
def model():
    return build("qwen3_5")[1]


def hook_returning(fn):
    return [("blocks.0.hook_linear_attn_out", lambda value, hook: fn(value))]


BAD_CALLS = {
    "float ids": (lambda m: m(torch.rand(1, 4)), TypeError, "must be integers"),
    "ragged ids": (lambda m: m([[5, 6, 7], [8]]), ValueError, "different lengths"),
    "3-D ids": (lambda m: m(torch.zeros(1, 2, 3, dtype=torch.long)), ValueError, r"\[batch, pos\]"),
    "empty ids": (lambda m: m(torch.zeros(1, 0, dtype=torch.long)), ValueError, "Empty input"),
    "empty text": (lambda m: m(""), ValueError, "has no tokens"),
    "empty list": (lambda m: m([]), ValueError, "Empty input|No text"),
    "id out of vocabulary": (lambda m: m([[5, 256]]), ValueError, "outside the vocabulary"),
    "negative id": (lambda m: m([[-1, 5]]), ValueError, "outside the vocabulary"),
    "mask shape": (lambda m: m([[5, 6, 7]], attention_mask=torch.ones(1, 2, dtype=torch.long)), ValueError,
                   "attention_mask has shape"),
    "mask values": (lambda m: m([[5, 6]], attention_mask=torch.tensor([[1, 2]])), ValueError, "0 .padding. and 1"),
    "mask without real token": (lambda m: m([[5, 6]], attention_mask=torch.tensor([[0, 0]])), ValueError,
                                "no real token"),
    "mask with text": (lambda m: m("abc", attention_mask=torch.ones(1, 3)), ValueError, "only with token ids"),
    "too long": (lambda m: m(torch.full((1, m.cfg.n_ctx + 1), 5)), ValueError, "maximum of"),
    "one-token loss": (lambda m: m([[5]], return_type="loss"), ValueError, "at least 2 tokens"),
    "return_type probs": (lambda m: m([[5, 6]], return_type="probs"), ValueError, "return_type"),
    "unknown kwarg": (lambda m: m([[5, 6]], layerz=1), TypeError, "neither hybrid-lens nor"),
    "remove_batch_dim on 2 rows": (lambda m: m.run_with_cache([[5, 6], [7, 8]], remove_batch_dim=True), ValueError,
                                   "batch of 1"),
    "hook returns [b, 1, d]": (lambda m: m.run_with_hooks([[5, 6, 7]], fwd_hooks=hook_returning(lambda v: v[:, :1])),
                               ValueError, r"returned a tensor of shape \(1, 1, "),
    "hook returns float64": (lambda m: m.run_with_hooks([[5, 6]], fwd_hooks=hook_returning(lambda v: v.double())),
                             ValueError, "torch.float64"),
    "hook returns a tuple": (lambda m: m.run_with_hooks([[5, 6]], fwd_hooks=hook_returning(lambda v: (v,))),
                             TypeError, "returned tuple"),
    "unknown hook": (lambda m: m.run_with_hooks([[5, 6]], fwd_hooks=[("blocks.0.hook_lin_attn_out", print)]),
                     KeyError, "blocks.0.hook_linear_attn_out"),
    "stop_at_layer float": (lambda m: m([[5, 6]], stop_at_layer=1.5), ValueError, "stop_at_layer"),
    "empty position slice": (lambda m: _run(m, zero("mlp", positions=slice(5, 5)), [[5, 6]]), ValueError,
                             "select no token"),
    "position beyond a row": (lambda m: _run(m, zero("mlp", positions=4), ["abcdef", "ab"]), ValueError, "out of range"),
    "mean reference shorter": (lambda m: _run(m, mean("mlp", ["ab"], per_position=True), "abcdef"), ValueError,
                               "at least as long"),
}


def _run(model, condition, text):
    with condition.apply(model):
        return model(text)


@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_input_gets_a_clear_error_and_leaves_nothing_behind(model, case):
    call, error, message = BAD_CALLS[case]
    weights = {name: p.clone() for name, p in model.named_parameters()}
    with pytest.raises(error, match=message):
        call(model)
    assert not any(point.fwd_hooks for point in model.hook_dict.values())
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert model.real_positions is None


BAD_SELECTORS = {
    "unknown key": ({"kind": "ssm", "layerz": [1]}, "unknown: \\['layerz'\\]"),
    "layers true": ({"kind": "ssm", "layers": True}, "not True"),
    "duplicate layers": ({"kind": "ssm", "layers": [2, 2]}, "more than once"),
    "float layers": ({"kind": "ssm", "layers": [1.0]}, "list of ints"),
    "empty layers": ({"kind": "ssm", "layers": []}, "non-empty"),
    "unknown kind": ({"kind": "ssn"}, "Unknown selector kind"),
    "bad slice": ({"kind": "ssm", "positions": {"slice": [0, "a", None]}}, "integer start"),
    "missing kind": ({"layers": 1}, "'kind' required"),
}


@pytest.mark.parametrize("case", list(BAD_SELECTORS))
def test_bad_condition_json_is_refused(case):
    selector, message = BAD_SELECTORS[case]
    with pytest.raises(ValueError, match=message):
        Condition.from_dict({"name": "x", "items": [{"selector": selector, "intervention": {"type": "zero"}}]})


@pytest.mark.parametrize("intervention, message", [
    ({"type": "scale", "alfa": 2}, "unknown \\['alfa'\\]"),
    ({"type": "scale", "alpha": "2"}, "finite number"),
    ({"type": "noise", "sigma": -1}, ">= 0"),
    ({"type": "zap"}, "Unknown intervention type"),
])
def test_bad_intervention_json_is_refused(intervention, message):
    with pytest.raises(ValueError, match=message):
        Condition.from_dict({"items": [{"selector": {"kind": "ssm"}, "intervention": intervention}]})


def test_selector_matching_nothing_names_the_layer_kinds(model):
    with pytest.raises(ValueError, match="matches nothing"):
        Condition.of(Selector("ssm"), zero("mlp").items[0][1]).fwd_hooks(model)


def test_a_mask_continuing_a_cache_must_cover_the_whole_run():
    from transformers import DynamicCache

    _, model = build("qwen2")
    cache = DynamicCache(config=model.hf_model.config)
    model([[5, 6, 7]], attention_mask=torch.ones(1, 3, dtype=torch.long), cache=cache, use_cache=True)
    step = torch.tensor([[8]])
    assert model(step, attention_mask=torch.ones(1, 4, dtype=torch.long), cache=cache, use_cache=True).shape[1] == 1
    with pytest.raises(ValueError, match="the run covers 5 positions"):
        model([[9]], attention_mask=torch.ones(2, 5, dtype=torch.long), cache=cache, use_cache=True)  # 2 rows, not 1
    with pytest.raises(ValueError, match="0 .padding. and 1"):
        model([[9]], attention_mask=torch.full((1, 5), 2), cache=cache, use_cache=True)
