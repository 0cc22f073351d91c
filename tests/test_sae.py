"""SAE splicing (hybrid_lens.sae) against plain torch hooks on the unwrapped `transformers` model.

The reference replaces the same activation with `sae(x)` through a torch forward hook on the
`transformers` submodule that produces it; SAE-Lens SAEs where `sae_lens` is installed, a plain
`nn.Linear` everywhere.
"""

from __future__ import annotations

import re

from contextlib import contextmanager

import pytest
import torch
from torch import nn

from hybrid_lens.forward_state import forward_settings
from hybrid_lens.hook_points import TappedHookPoint
from hybrid_lens.sae import SAESplice, attached_saes, point_samples

from .fixtures import FAMILIES, build

D_MODEL = 64  # tiny_config width

# (family, hook name, the transformers submodule that produces it, how its output maps to the value)
CASES = [
    ("qwen3_5", "blocks.1.hook_linear_attn_out", "model.layers.1.linear_attn", "plain"),
    ("qwen3_5", "blocks.3.hook_attn_out", "model.layers.3.self_attn", "first"),
    ("falcon_h1", "blocks.1.hook_ssm_out", "model.layers.1.mamba", "ssm"),
    ("falcon_h1", "blocks.2.hook_attn_out", "model.layers.2.self_attn", "first+attn"),
    ("qwen2", "blocks.1.hook_attn_out", "model.layers.1.self_attn", "first"),
    ("qwen2", "blocks.2.hook_resid_post", "model.layers.2", "plain"),
]
IDS = [f"{family}-{name}" for family, name, _, _ in CASES]


@contextmanager
def torch_replacement(reference, module_path: str, kind: str, fn):
    """A forward hook on `module_path` that replaces the value our hook point sees with `fn(value)`."""
    module = reference.get_submodule(module_path)
    layer = reference.get_submodule(module_path.rpartition(".")[0]) if kind != "plain" else None
    scale = {"ssm": "ssm_out_multiplier", "first+attn": "attn_out_multiplier"}

    def hook(_module, _args, output):
        value = output[0] if kind.startswith("first") else output
        factor = getattr(layer, scale[kind]) if kind in scale else 1.0
        new = fn(value * factor) / factor
        return (new, *output[1:]) if kind.startswith("first") else new

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def sae_lens_sae(hook_name: str, seed: int = 0):
    sae_lens = pytest.importorskip("sae_lens")
    torch.manual_seed(seed)
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=D_MODEL, d_sae=4 * D_MODEL))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)  # a random SAE whose reconstruction differs clearly from its input
        sae.b_dec.normal_(0, 0.1)
    sae.cfg.metadata.hook_name = hook_name
    return sae


def plain_sae(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(D_MODEL, D_MODEL)


def torch_hook_counts(model) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()]


@pytest.mark.parametrize("family,name,module_path,kind", CASES, ids=IDS)
@torch.no_grad()
def test_spliced_sae_equals_torch_hook_replacement(family, name, module_path, kind, tokens):
    reference, model = build(family)
    sae = sae_lens_sae(name)
    with torch_replacement(reference, module_path, kind, sae):
        expected = reference(tokens).logits
    clean = model(tokens)
    model.add_sae(sae)
    spliced = model(tokens)
    torch.testing.assert_close(spliced, expected, rtol=1e-5, atol=1e-5)
    assert (spliced - clean).abs().max() > 1e-2  # the SAE really changed the logits


@pytest.mark.parametrize("family,name,module_path,kind", CASES, ids=IDS)
@torch.no_grad()
def test_error_term_gives_clean_logits_and_reset_leaves_nothing(family, name, module_path, kind, tokens):
    _, model = build(family)
    sae = sae_lens_sae(name)
    names, points, hooks = dict(model.hook_dict), list(model.modules()), torch_hook_counts(model)
    clean = model(tokens)
    model.add_sae(sae, use_error_term=True)
    assert name not in model.hook_dict and f"{name}.hook_sae_acts_post" in model.hook_dict
    torch.testing.assert_close(model(tokens), clean, rtol=1e-5, atol=1e-5)
    model.reset_saes()
    assert torch.equal(model(tokens), clean)
    assert model.hook_dict == names and list(model.modules()) == points
    assert torch_hook_counts(model) == hooks and not attached_saes(model)
    assert not any(point.fwd_hooks or point.bwd_hooks for point in model.hook_dict.values())
    assert not any(tap.active for tap in model._wrapping.taps)
    assert sae.hook_sae_acts_post.name == "hook_sae_acts_post"  # the SAE's own names are back


@pytest.mark.parametrize("family,name,module_path,kind", CASES[::2], ids=IDS[::2])
@torch.no_grad()
def test_plain_module_splice_equals_torch_hook_replacement(family, name, module_path, kind, tokens):
    reference, model = build(family)
    linear = plain_sae()
    with torch_replacement(reference, module_path, kind, linear):
        expected = reference(tokens).logits
    with model.saes(linear, hook_names=name):
        torch.testing.assert_close(model(tokens), expected, rtol=1e-5, atol=1e-5)
        _, cache = model.run_with_cache(tokens, names_filter=f"{name}.hook_sae_output")
    assert not attached_saes(model)
    _, clean_cache = model.run_with_cache(tokens, names_filter=name)
    torch.testing.assert_close(cache[f"{name}.hook_sae_output"], linear(clean_cache[name]))


@torch.no_grad()
def test_cached_features_equal_sae_encode_of_the_clean_activation(tokens):
    _, model = build("qwen3_5")
    name = "blocks.1.hook_linear_attn_out"
    sae = sae_lens_sae(name)
    _, clean = model.run_with_cache(tokens, names_filter=name)
    _, cache = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=lambda n: n.startswith(name))
    torch.testing.assert_close(cache[f"{name}.hook_sae_acts_post"], sae.encode(clean[name]))
    torch.testing.assert_close(cache[f"{name}.hook_sae_recons"], sae.decode(sae.encode(clean[name])))


@torch.no_grad()
def test_error_term_keeps_feature_edits(tokens):
    """As in SAE-Lens: with the error term, zeroing the features at `hook_sae_acts_post` still
    changes the output (the error is computed from the unedited SAE)."""
    reference, model = build("falcon_h1")
    name = "blocks.1.hook_ssm_out"
    sae = sae_lens_sae(name)

    def edited_value(x):
        return x - sae.decode(sae.encode(x)) + sae.decode(torch.zeros_like(sae.encode(x)))

    with torch_replacement(reference, "model.layers.1.mamba", "ssm", edited_value):
        expected = reference(tokens).logits
    zero = [(f"{name}.hook_sae_acts_post", lambda acts, hook: torch.zeros_like(acts))]
    edited = model.run_with_hooks_with_saes(tokens, saes=[sae], use_error_term=True, fwd_hooks=zero)
    torch.testing.assert_close(edited, expected, rtol=1e-5, atol=1e-5)
    assert (edited - model(tokens)).abs().max() > 1e-3


@torch.no_grad()
def test_saes_context_restores_the_previous_sae(tokens):
    _, model = build("qwen2")
    name = "blocks.1.hook_attn_out"
    first, second = plain_sae(0), plain_sae(1)
    model.add_sae(first, hook_name=name)
    with_first = model(tokens)
    with model.saes([second], hook_names=[name]):
        assert model.acts_to_saes[name] is second
        with_second = model(tokens)
    assert model.acts_to_saes[name] is first and torch.equal(model(tokens), with_first)
    assert not torch.equal(with_first, with_second)
    model.reset_saes(name)
    assert not attached_saes(model) and name in model.hook_dict


def test_bad_names_raise_and_attach_nothing():
    _, model = build("falcon_h1")
    names = dict(model.hook_dict)
    with pytest.raises(KeyError, match="blocks.1.hook_ssm_out"):
        model.add_sae(plain_sae(), hook_name="blocks.1.hook_sm_out")
    with pytest.raises(ValueError, match="names no hook point"):
        model.add_sae(plain_sae())
    with pytest.raises(KeyError, match="No SAE is spliced in"):
        model.reset_saes("blocks.1.hook_ssm_out")
    assert model.hook_dict == names and not any(isinstance(m, SAESplice) for m in model.modules())




class Affine(nn.Module):
    """`x * scale + shift` over trailing axes `shape`: a module that fits any point carrying `[batch, pos, *shape]`."""

    def __init__(self, shape: tuple[int, ...], seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.scale = nn.Parameter(1 + 0.5 * torch.randn(shape, generator=generator))
        self.shift = nn.Parameter(0.1 * torch.randn(shape, generator=generator))

    def forward(self, x):
        return x * self.scale + self.shift


def first_of_each_inner_point(model) -> list[str]:
    """Every inner point name (`attn.hook_z`, `ssm.hook_x`, ...) in the first block that has it."""
    inner = [name for name, point in model.hook_dict.items() if isinstance(point, TappedHookPoint)]
    return list({re.sub(r"^blocks\.\d+\.", "", name): name for name in reversed(inner)}.values())


def nothing_left(model, names: dict, hooks: list[int]) -> None:
    assert model.hook_dict == names and not attached_saes(model) and torch_hook_counts(model) == hooks
    assert not any(point.fwd_hooks or point.bwd_hooks or point.stand_in for point in model.hook_dict.values())
    assert not any(tap.active for tap in model._wrapping.taps)


@pytest.mark.parametrize("family", FAMILIES)
@torch.no_grad()
def test_every_inner_point_takes_an_sae_as_a_hook_replacing_its_value_would(family, tokens):
    """The taps feeding inner points call whatever stands at the point: a module spliced in at any of them
    gives the logits of a hook returning `module(value)` there, bit for bit. Only points that carry no
    `[batch, pos, ...]` activation (attention scores and patterns, implicit ones included, recurrent states) are
    refused."""
    _, model = build(family, visible=True)
    names, hooks, clean = dict(model.hook_dict), torch_hook_counts(model), model(tokens)
    refused = []
    for name in first_of_each_inner_point(model):
        if name.endswith("hook_attn_in") and model.cfg.n_key_value_heads != model.cfg.n_heads:
            continue  # grouped-query attention: edits must treat a group alike (tests/test_tl_switches.py)
        try:
            sample = point_samples(model, [name])[name]
        except ValueError as error:
            assert "cannot stand at" in str(error)
            refused.append(name.rpartition(".")[2])
            continue
        module = Affine(sample.rest)
        hooked = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda value, hook: module(value))])
        with model.saes(module, hook_names=name):
            assert torch.equal(model(tokens), hooked), name
            _, cache = model.run_with_cache(tokens, names_filter=f"{name}.hook_sae_output")
        assert cache[f"{name}.hook_sae_output"].shape[:2] == tokens.shape
        assert not torch.equal(hooked, clean), name  # so an SAE that did not run would fail the torch.equal above
    without_state = {"hook_state"} if family == "qwen2" else set()
    assert set(refused) == {"hook_pattern", "hook_attn_scores", "hook_state"} - without_state
    nothing_left(model, names, hooks)


HOOK_Z = [("qwen2", 1, "self_attn"), ("qwen3_5", 3, "self_attn"), ("falcon_h1", 2, "self_attn")]


@pytest.mark.parametrize("family,layer,attention", HOOK_Z, ids=[family for family, _, _ in HOOK_Z])
@torch.no_grad()
def test_hook_z_sae_equals_torch_replacement_of_the_o_proj_input(family, layer, attention, tokens):
    """An SAE-Lens `hook_z` SAE (`reshape_activations="hook_z"`: heads flattened) at `blocks.{i}.attn.hook_z`
    replaces the input of `o_proj`, as a torch pre-hook there that applies it does."""
    sae_lens = pytest.importorskip("sae_lens")
    reference, model = build(family, visible=True)
    o_proj = reference.get_submodule(f"model.layers.{layer}.{attention}.o_proj")
    name, heads = f"blocks.{layer}.attn.hook_z", o_proj.in_features // model.cfg.d_head
    torch.manual_seed(0)
    sae = sae_lens.StandardSAE(sae_lens.StandardSAEConfig(d_in=o_proj.in_features, d_sae=2 * o_proj.in_features,
                                                          reshape_activations="hook_z"))
    sae.b_enc.data.normal_(0, 0.1)
    sae.cfg.metadata.hook_name = name
    handle = o_proj.register_forward_pre_hook(
        lambda _m, args: (sae.decode(sae.encode(args[0].unflatten(-1, (heads, -1)))).flatten(-2),))
    expected = reference(tokens).logits
    handle.remove()
    logits, cache = model.run_with_cache_with_saes(tokens, saes=[sae], names_filter=lambda n: n.startswith(name))
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert cache[f"{name}.hook_sae_output"].shape == (*tokens.shape, heads, model.cfg.d_head)
    assert (logits - model(tokens)).abs().max() > 1e-2


@torch.no_grad()
def test_a_transcoder_reads_one_point_and_writes_another(tokens):
    """A transcoder (`hook_name_out`) stands at its output point and encodes what its input point carried in
    the same pass (here an inner point feeding a block-level one): as a hook that captures the input and one
    that replaces the output; with the error term the run is clean; reset leaves nothing; an input point that
    runs after the output point is refused."""
    _, model = build("falcon_h1", visible=True)
    names, hooks, clean = dict(model.hook_dict), torch_hook_counts(model), model(tokens)
    reads, writes = "blocks.1.attn.hook_z", "blocks.1.hook_mlp_out"
    torch.manual_seed(0)
    transcoder = nn.Sequential(nn.Flatten(-2), nn.Linear(64, D_MODEL))
    seen = {}
    expected = model.run_with_hooks(tokens, fwd_hooks=[(reads, lambda value, hook: seen.update(z=value)),
                                                       (writes, lambda value, hook: transcoder(seen["z"]))])
    splice = model.add_sae(transcoder, hook_name=reads, hook_name_out=writes)
    assert splice.is_transcoder and list(model.acts_to_saes) == [reads] and reads in model.hook_dict
    assert torch.equal(model(tokens), expected) and (expected - clean).abs().max() > 1e-2
    model.reset_saes()
    nothing_left(model, names, hooks)
    model.add_sae(transcoder, use_error_term=True, hook_name=reads, hook_name_out=writes)
    torch.testing.assert_close(model(tokens), clean, rtol=1e-5, atol=1e-5)
    model.reset_saes(reads)
    nothing_left(model, names, hooks)
    with pytest.raises(ValueError, match="blocks.2.hook_resid_pre runs after blocks.1.hook_mlp_out"):
        model.add_sae(nn.Linear(D_MODEL, D_MODEL), hook_name="blocks.2.hook_resid_pre", hook_name_out=writes)
    nothing_left(model, names, hooks)


@torch.no_grad()
def test_exclude_special_tokens_passes_special_positions_through():
    """`exclude_special_tokens=True` leaves the activation unchanged at BOS/EOS/PAD positions (the error term
    is 0 there); a list of ids excludes those only; elsewhere the SAE's output flows on."""
    _, model = build("qwen3_5", visible=True)
    name = "blocks.1.hook_resid_post"
    tokens = torch.tensor([[1, 40, 41, 42, 2, 0], [1, 50, 51, 52, 53, 54]])  # <s> ... </s> <pad>
    linear = plain_sae()
    _, clean = model.run_with_cache(tokens, names_filter=name)
    special = torch.isin(tokens, torch.tensor([0, 1, 2]))[..., None]
    for exclude, excluded in ((True, special), ([1], (tokens == 1)[..., None])):
        _, cache = model.run_with_cache_with_saes(tokens, saes=linear, hook_names=name, exclude_special_tokens=exclude,
                                                  names_filter=lambda n: n.startswith(name))
        expected = torch.where(excluded, clean[name], linear(clean[name]))
        torch.testing.assert_close(cache[f"{name}.hook_sae_output"], expected)
        _, cache = model.run_with_cache_with_saes(tokens, saes=linear, hook_names=name, exclude_special_tokens=exclude,
                                                  use_error_term=True, names_filter=lambda n: n.startswith(name))
        assert torch.equal(cache[f"{name}.hook_sae_error"] == 0, excluded.expand_as(clean[name]))
        torch.testing.assert_close(cache[f"{name}.hook_sae_output"], clean[name], rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_unwrap_removes_spliced_saes_and_their_taps(tokens):
    """An SAE at an inner point keeps its tap installed on the `transformers` module; `unwrap` resets it, so
    the plain model runs its own forward again (bit for bit the reference's logits)."""
    reference, model = build("falcon_h1", visible=True)
    model.add_sae(Affine((4, 16)), hook_name="blocks.1.ssm.hook_x")
    model.add_sae(nn.Flatten(-2), hook_name="blocks.2.attn.hook_z", hook_name_out="blocks.2.hook_attn_out")
    plain = model.unwrap()
    assert not attached_saes(model) and model._wrapping is None
    assert torch.equal(plain(tokens).logits, reference(tokens).logits)


@torch.no_grad()
def test_a_transcoder_never_reads_an_input_of_another_pass(tokens):
    """A pass that stops after the transcoder's input point leaves its value behind; a later pass entering
    at a block after that point must not encode it (it raises instead)."""
    _, model = build("qwen2")
    model.add_sae(nn.Identity(), hook_name="blocks.0.hook_resid_post", hook_name_out="blocks.2.hook_mlp_out")
    with forward_settings(model, stop=1):
        resid = model(tokens)                                  # block 0 ran: its output was captured
    with pytest.raises(RuntimeError, match="read nothing at its input point blocks.0.hook_resid_post in this pass"):
        with forward_settings(model, start=1, resid=resid):
            model(tokens)
    model.reset_saes()
