"""Bad SAE splices get a clear error before anything is spliced in (issue #24): the exact error type and a
fragment naming the problem; no hook, tap or splice left; no weight of the model changed."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from hybrid_lens.sae import attached_saes

from .fixtures import build
from .test_sae import D_MODEL, sae_lens_sae, torch_hook_counts

POINT = "blocks.1.hook_attn_out"


class ReturnsTuple(nn.Module):
    def forward(self, x):
        return x, x.abs()


class DropsPositions(nn.Module):
    def forward(self, x):
        return x[:, :1]


def halve(x):
    return x / 2


@contextmanager
def leaves_model_as_it_was(model):
    """Everything the model had before is there after, unchanged: hook names and points, torch hooks, taps
    off, no splice, no hook function, the same weights."""
    names, hooks = dict(model.hook_dict), torch_hook_counts(model)
    weights = {name: value.clone() for name, value in model.state_dict().items()}
    yield
    assert model.hook_dict == names and torch_hook_counts(model) == hooks and not attached_saes(model)
    assert not any(point.fwd_hooks or point.bwd_hooks or point.stand_in for point in model.hook_dict.values())
    assert not any(tap.active for tap in model._wrapping.taps)
    assert all(torch.equal(value, weights[name]) for name, value in model.state_dict().items())


# (what the user passes to run_with_saes, the error type, a fragment of its message)
CASES = {
    "output of width 1": (dict(saes=nn.Linear(D_MODEL, 1), hook_names=POINT), ValueError,
                          r"returns shape \(1, 2, 1\) for an activation of shape \(1, 2, 64\); it must return the "
                          r"activation's shape \[batch, pos, 64\]"),
    "output of another width": (dict(saes=nn.Linear(D_MODEL, 32), hook_names=POINT), ValueError,
                                r"returns shape \(1, 2, 32\)"),
    "wrong d_in (a module)": (dict(saes=nn.Linear(32, 32), hook_names=POINT), ValueError,
                              rf"fails on an activation of {POINT} \[batch, pos, 64\]: RuntimeError"),
    "a tuple": (dict(saes=ReturnsTuple(), hook_names=POINT), TypeError, "returns tuple; a module spliced into the "
                                                                        "model must return one tensor"),
    "positions dropped": (dict(saes=DropsPositions(), hook_names=POINT), ValueError, r"returns shape \(1, 1, 64\)"),
    "a function": (dict(saes=halve, hook_names=POINT), TypeError,
                   "saes= takes an SAE-Lens SAE or a torch nn.Module; got the function halve"),
    "a list holding a function": (dict(saes=[nn.Identity(), halve], hook_names=[POINT, "blocks.0.hook_attn_out"]),
                                  TypeError, "got the function halve"),
    "one bad SAE among good ones": (dict(saes=[nn.Identity(), nn.Linear(D_MODEL, 1)],
                                         hook_names=["blocks.0.hook_resid_pre", POINT]), ValueError,
                                    r"returns shape \(1, 2, 1\)"),
    "a pattern": (dict(saes=nn.Identity(), hook_names="blocks.1.attn.hook_pattern"), ValueError,
                  r"cannot stand at blocks.1.attn.hook_pattern: it carries \[1, 4, 1, 1\] on 1 token"),
    "a point of nothing": (dict(saes=nn.Identity(), hook_names="blocks.1.hook_atn_out"), KeyError,
                           "Unknown hook point 'blocks.1.hook_atn_out'. Closest valid names: blocks.1.hook_attn_out"),
    "exclude_special_tokens of strings": (dict(saes=nn.Identity(), hook_names=POINT, exclude_special_tokens=["<s>"]),
                                          TypeError, "exclude_special_tokens takes True, False or a list of token ids"),
    "more names than SAEs": (dict(saes=[nn.Identity()], hook_names=[POINT, POINT]), ValueError,
                             "Got 1 SAEs but 2 hook names"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_bad_splice_raises_naming_the_problem_and_leaves_the_model_as_it_was(case, tokens):
    arguments, error, fragment = CASES[case]
    _, model = build("qwen2")
    with leaves_model_as_it_was(model), pytest.raises(error, match=fragment):
        model.run_with_saes(tokens, **arguments)


def test_an_sae_lens_sae_of_the_wrong_d_in_is_named_with_the_width_it_needs():
    _, model = build("qwen2")
    narrow = sae_lens_sae(POINT)
    narrow.cfg.d_in = 32
    with leaves_model_as_it_was(model), pytest.raises(ValueError, match=rf"d_in=32, but {POINT} carries \[batch, pos, "
                                                                         r"64\]: it needs d_in=64\."):
        model.add_sae(narrow)
    flat = sae_lens_sae("blocks.1.attn.hook_z")  # d_in 64 = 4 heads x 16, but no reshape_activations="hook_z"
    with leaves_model_as_it_was(model), pytest.raises(ValueError, match="it needs d_in=16 .*reshape_activations="):
        model.add_sae(flat)


def test_the_hook_name_as_third_positional_argument_is_named(tokens):
    """SAE-Lens's third argument is `exclude_special_tokens`; the old `add_sae(sae, use_error_term, hook_name)`
    call is refused with a message that says `hook_name` is a keyword."""
    _, model = build("qwen2")
    with leaves_model_as_it_was(model), pytest.raises(TypeError, match="The hook name is a keyword"):
        model.add_sae(nn.Identity(), False, POINT)


def test_points_of_a_spliced_sae_and_taken_points_are_refused(tokens):
    _, model = build("qwen2")
    model.add_sae(sae_lens_sae(POINT))
    state = (dict(model.hook_dict), torch_hook_counts(model))
    with pytest.raises(ValueError, match="hook point of a spliced SAE; SAEs splice into the model's own points"):
        model.add_sae(nn.Identity(), hook_name=f"{POINT}.hook_sae_acts_post")
    with pytest.raises(ValueError, match=f"An SAE read from {POINT} already stands at {POINT}"):
        model.add_sae(nn.Identity(), hook_name="blocks.1.hook_resid_pre", hook_name_out=POINT)
    assert (dict(model.hook_dict), torch_hook_counts(model)) == state and list(model.acts_to_saes) == [POINT]
    model.reset_saes()
    model.add_sae(nn.Identity(), hook_name="blocks.1.hook_resid_pre", hook_name_out=POINT)
    with pytest.raises(ValueError, match="blocks.1.hook_resid_pre is the input of the transcoder"):
        model.add_sae(nn.Identity(), hook_name="blocks.0.hook_resid_pre", hook_name_out="blocks.1.hook_resid_pre")
    model.reset_saes()
    model.add_sae(nn.Identity(), hook_name="blocks.0.hook_resid_pre", hook_name_out="blocks.1.hook_resid_pre")
    with pytest.raises(ValueError, match="A transcoder reads blocks.1.hook_resid_pre, where an SAE"):
        model.add_sae(nn.Identity(), hook_name="blocks.1.hook_resid_pre", hook_name_out=POINT)
    model.reset_saes()
