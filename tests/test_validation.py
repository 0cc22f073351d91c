"""Bad inputs, round two (issue #24, model side): conditions JSON, selectors, sweeps, patching and
attribution, a cache of a stopped run, damaged checkpoints. Each gets a clear error naming the argument
and what it accepts, before any forward pass where the check needs none, and leaves no hook attached
and no weight changed; numpy integers are accepted wherever an int is."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.evals import perplexity
from hybrid_lens.interventions import (
    Condition, Selector, Sweep, attribution_patch, knockout, noise, patch, patch_state, run_conditions, zero,
)
from hybrid_lens.mixers import cache_states, state_positions
from hybrid_lens.zoo import checkpoint_path

from .fixtures import build, no_hooks_left

CLEAN, CORRUPT = "And God said unto Moses", "And God said unto Aaron"  # one token per character
ITEM = {"selector": {"kind": "attn"}, "intervention": {"type": "zero"}}


@pytest.fixture(scope="module")
def model():
    return build("qwen3_5", visible=True)[1]


def condition_json(**changes) -> str:
    data = {"name": "x", "items": [dict(ITEM)]}
    item = data["items"][0]
    for key, value in changes.items():
        (data if key == "name" else item)[key] = value
    return json.dumps(data)


def last_logit(logits):
    return logits[:, -1, 5].mean()


BAD = {  # case -> (call, error type, message fragment, whether it must fail before any forward pass)
    "condition name 5": (lambda m: Condition.from_json(condition_json(name=5)), ValueError,
                         "name must be a string", True),
    "seed 10**30": (lambda m: Condition.from_dict({"items": [{"selector": {"kind": "attn"}, "intervention": {
        "type": "noise", "sigma": 0.1, "seed": 10**30}}]}), ValueError, r"seed must be an int in \[0, 2\*\*63\)", True),
    "intervention ['zero']": (lambda m: Condition.from_json(condition_json(intervention=["zero"])), ValueError,
                              r"An intervention dict is \{'type': \.\.\., \*\*parameters\}.*got \['zero'\]", True),
    "intervention 'zero'": (lambda m: Condition.from_json(condition_json(intervention="zero")), ValueError,
                            "An intervention dict is .* got 'zero'", True),
    "selector null": (lambda m: Condition.from_json(condition_json(selector=None)), ValueError,
                      r"A selector dict is .*'kind' required.*got None", True),
    "Sweep([]) in perplexity": (lambda m: perplexity(m, CLEAN * 4, condition=Sweep([])), ValueError,
                                "Sweep got no condition", True),
    "Sweep(['zero'])": (lambda m: Sweep(["zero"]), TypeError, "Sweep takes a list of Conditions.*item 0 is str 'zero'",
                        True),
    "Sweep([Sweep(...)])": (lambda m: Sweep([Sweep([zero("attn")])]), TypeError, "not Sweeps.*Sweep\\(\\[\\*first", True),
    "Sweep(batch='2')": (lambda m: Sweep([zero("attn")], batch="2"), ValueError, "Sweep.batch must be a positive int",
                         True),
    "Sweep(None)": (lambda m: Sweep(None), TypeError, "Sweep takes a list of Conditions.*not NoneType", True),
    "Sweep(reuse_prefix='no')": (lambda m: Sweep([zero("attn")], reuse_prefix="no"), ValueError,
                                 "reuse_prefix must be True or False", True),
    "run_conditions []": (lambda m: run_conditions(m, CLEAN, []), ValueError, "run_conditions got no condition", True),
    "run_conditions Sweep": (lambda m: run_conditions(m, CLEAN, Sweep([zero("attn")])), TypeError,
                             "not a Sweep: pass sweep.conditions", True),
    "run_conditions 'zero'": (lambda m: run_conditions(m, CLEAN, "zero"), TypeError,
                              "run_conditions takes a list of Conditions.*not str 'zero'", True),
    "run_conditions one condition": (lambda m: run_conditions(m, CLEAN, zero("attn")), TypeError,
                                     r"not one Condition: wrap it in a list", True),
    "attribution where=[]": (lambda m: attribution_patch(m, CLEAN, CORRUPT, where=[]), ValueError,
                             r"where=\[\] matches nothing", True),
    "patch where=[]": (lambda m: patch(m, CLEAN, CORRUPT, where=[], progress=False), ValueError,
                       r"where=\[\] matches nothing", True),
    "patch where='attn'": (lambda m: patch(m, CLEAN, CORRUPT, where="attn", progress=False), TypeError,
                           r"where must be a Selector or a non-empty list of Selectors", True),
    "attribution vector metric": (lambda m: attribution_patch(m, CLEAN, CORRUPT, where=Selector("attn"),
                                                              metric=lambda logits: logits[:, -1, :3].sum(0)),
                                  ValueError, r"metric must return one number .* shape \(3,\)", False),
    "attribution argmax metric": (lambda m: attribution_patch(
        m, CLEAN, CORRUPT, where=Selector("attn"), metric=lambda logits: logits[:, -1].argmax(-1).float().sum()),
        ValueError, "metric must be differentiable in the logits", False),
    "attribution float metric": (lambda m: attribution_patch(m, CLEAN, CORRUPT, where=Selector("attn"),
                                                             metric=lambda logits: 1.0),
                                 TypeError, "metric must return a 0-d tensor computed from the logits, not float", False),
    "patch vector metric": (lambda m: patch(m, CLEAN, CORRUPT, where=Selector("attn"), progress=False,
                                            metric=lambda logits: logits[:, -1, :3]), ValueError,
                            "metric must return one number", False),
    "attribution positions=[99]": (lambda m: attribution_patch(m, CLEAN, CORRUPT, where=Selector("attn"),
                                                               positions=[99]),
                                   ValueError, r"positions \[99\] out of range for inputs of 23 tokens", True),
    "attribution positions='all'": (lambda m: attribution_patch(m, CLEAN, CORRUPT, positions="all"), ValueError,
                                    "positions must be None .*'each' .* or an int or a non-empty list of ints", True),
    "attribution positions=[1.5]": (lambda m: attribution_patch(m, CLEAN, CORRUPT, positions=[1.5]), ValueError,
                                    r"positions must be None .* not \[1\.5\]", True),
    "patch positions=[99]": (lambda m: patch(m, CLEAN, CORRUPT, positions=[99], progress=False), ValueError,
                             r"positions \[99\] out of range", True),
    "cache after stop_at_layer=2": (lambda m: m.run_with_cache(CLEAN, stop_at_layer=2)[1]["blocks.5.hook_resid_pre"],
                                    KeyError, "blocks.5.hook_resid_pre is a hook point of this model but was not cached: "
                                    r"the run stopped at the input of block 2 \(stop_at_layer=2\)", False),
    "selector positions on a state": (lambda m: Selector("linear_attn", positions=1, point="hook_state"), ValueError,
                                      "no token axis", True),
    "state positions [1.5]": (lambda m: cache_states(m, CLEAN, [1.5]), ValueError,
                              r"State positions must be an int or a non-empty list of ints.*\[1\.5\]", True),
    "cache_states names=[]": (lambda m: cache_states(m, CLEAN, -1, names=[]), ValueError,
                              "names must be recurrent-state points", True),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_input_gets_a_clear_error_and_leaves_nothing_behind(model, case):
    call, error, message, before_forward = BAD[case]
    weights = {name: p.clone() for name, p in model.named_parameters()}
    forwards = []
    handle = model.hf_model.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with pytest.raises(error, match=message):
            call(model)
    finally:
        handle.remove()
    assert not (before_forward and forwards), f"{case}: {len(forwards)} forward passes ran before the error"
    assert no_hooks_left(model) and model.real_positions is None
    assert all(torch.equal(p, weights[name]) for name, p in model.named_parameters())
    assert all(p.grad is None for p in model.parameters())


@torch.no_grad()
def test_numpy_integers_are_ints_everywhere(model):
    tokens = model.to_tokens(CLEAN)
    same = {  # numpy form -> int form
        "layers": (zero("attn", layers=np.int64(3)), zero("attn", layers=3)),
        "layers array": (zero("linear_attn", layers=np.array([0, 1])), zero("linear_attn", layers=[0, 1])),
        "positions": (zero("mlp", positions=np.int64(1)), zero("mlp", positions=1)),
        "slice": (zero("mlp", positions=slice(np.int64(1), None)), zero("mlp", positions=slice(1, None))),
        "seed": (noise("mlp", 0.5, seed=np.int64(3)), noise("mlp", 0.5, seed=3)),
        "knockout keys": (knockout("attn", keys=np.int64(0)), knockout("attn", keys=0)),
        "state position": (patch_state(CORRUPT, "linear_attn", np.int64(4), 0), patch_state(CORRUPT, "linear_attn", 4, 0)),
    }
    clean = model(tokens)
    for case, (numpy_form, int_form) in same.items():
        assert numpy_form == int_form and numpy_form.to_json() == int_form.to_json(), case
        with numpy_form.apply(model):
            changed = model(tokens)
        assert not torch.equal(changed, clean), case  # the condition acts
    assert Sweep([zero("attn")], batch=np.int64(2)).batch == 2
    assert torch.equal(model(tokens, stop_at_layer=np.int64(2)), model(tokens, stop_at_layer=2))
    table = patch(model, CLEAN, CORRUPT, where=Selector("attn"), positions=np.int64(-1), progress=False)
    assert table.position.tolist() == [-1, -1]
    assert cache_states(model, CLEAN, np.int64(2))["blocks.0.linear_attn.hook_state"].shape[1] == 1
    with state_positions(model, [np.int64(2), -1]):
        pass
    assert no_hooks_left(model)


@torch.no_grad()
def test_a_reversed_position_slice_selects_as_python_slices(model):
    """`{"slice": [null, null, -1]}` is every position, `[-1, null, -2]` every other one from the end
    (it used to be accepted and fail inside torch)."""
    tokens = model.to_tokens(CLEAN)
    for sliced, listed in ((slice(None, None, -1), None), (slice(-1, None, -2), list(range(22, -1, -2)))):
        condition = Condition.from_json(condition_json(selector={"kind": "mlp", "positions": {"slice": [
            sliced.start, sliced.stop, sliced.step]}}))
        with condition.apply(model):
            ours = model(tokens)
        with zero("mlp", positions=listed).apply(model):
            assert torch.equal(ours, model(tokens))


@pytest.fixture
def checkpoint(tmp_path):
    folder = tmp_path / "tiny"
    shutil.copytree(checkpoint_path("hybrid-lens/tiny-qwen2.5"), folder)
    return folder


def test_a_cut_or_extended_safetensors_file_is_named_before_loading(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(OSError, match=rf"{weights} is damaged: it is {len(data) // 2} bytes, but its header describes "
                                      rf"{len(data)} \(cut short\)"):
        HookedHybrid.from_pretrained(str(checkpoint))
    weights.write_bytes(data + bytes(1000))
    with pytest.raises(OSError, match=r"model.safetensors is damaged: .* \(bytes after its last tensor\)"):
        HookedHybrid.from_pretrained(str(checkpoint))
    weights.write_bytes(bytes(8) + data[8:])  # the header length zeroed
    with pytest.raises(OSError, match="model.safetensors is damaged"):
        HookedHybrid.from_pretrained(str(checkpoint))


def test_zero_weight_matrices_warn_naming_them(checkpoint):
    weights = checkpoint / "model.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the intact checkpoint warns about nothing
        HookedHybrid.from_pretrained(str(checkpoint))
    data = bytearray(weights.read_bytes())
    data[-len(data) // 4:] = bytes(len(data) // 4)
    weights.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match=r"weight matrices of .* are entirely zero \(model\.layers\..*no checksum"):
        HookedHybrid.from_pretrained(str(checkpoint))


def test_a_checkpoint_without_tokenizer_files_loads_without_a_tokenizer(checkpoint):
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (checkpoint / name).unlink()
    model = HookedHybrid.from_pretrained(str(checkpoint))
    assert model.tokenizer is None
    with pytest.raises(ValueError, match=r"has no tokenizer .* tokenizer=AutoTokenizer.from_pretrained"):
        model("In the beginning")
    assert model([[5, 6, 7]]).shape == (1, 3, model.cfg.d_vocab)
