"""The inner points of every Mamba-2 mixer (`hybrid_lens.mixers.mamba2`), against independent computations.

Parameterized over the registered families whose blocks use the Mamba-2 points (Falcon-H1, Bamba,
Granite-4.0-H, Nemotron-H, Mamba-2, ...), on tiny random models re-initialised so that every
mixer contributes (`visible_init`). The references are the plain `transformers` model with the
same weights, read with torch forward hooks on `in_proj` / `out_proj`, torch's own conv1d and
softplus, and the transformers generation cache for the SSM states; 20 tokens span more than one
scan chunk in every tiny config but Falcon-H1's. Last, Granite-4.0-H's MLP when it has no experts.
"""

from __future__ import annotations

import copy
from operator import attrgetter

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM

from hybrid_lens import HookedHybrid
from hybrid_lens.adapters import FAMILIES
from hybrid_lens.configs import tiny_config
from hybrid_lens.mixers import cache_states, mamba2

from .fixtures import build, random_tokens, visible_init

MAMBA2_FAMILIES = sorted(name for name, family in FAMILIES.items()
                         if any(m.points is mamba2.add_points for b in family.blocks.values() for m in b.mixers))
EAGER = ["hook_z", "hook_dt", "hook_conv", "hook_x", "hook_B", "hook_C", "hook_pattern"]


@pytest.fixture(scope="module", params=MAMBA2_FAMILIES)
def built(request):
    """(family, plain transformers model, HookedHybrid with the same weights, {layer: plain Mamba-2 mixer})."""
    family = FAMILIES[request.param]
    plain, model = build(request.param, visible=True)
    mixers = {}
    for i, (layer, kind) in enumerate(zip(family.layers(plain), family.block_keys(plain.config))):
        mixers.update({i: attrgetter(m.module)(layer) for m in family.block_of(kind).mixers if m.kind == "ssm"})
    assert mixers
    return request.param, plain, model, mixers


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 20)


@torch.no_grad()
def reference(plain, mixers, tokens) -> tuple[torch.Tensor, dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """Logits of the plain model and, per Mamba-2 layer, its `in_proj` output and `out_proj` input."""
    projected, gated = {}, {}
    handles = []
    for i, mixer in mixers.items():
        handles.append(mixer.in_proj.register_forward_hook(lambda m, a, out, i=i: projected.__setitem__(i, out)))
        handles.append(mixer.out_proj.register_forward_pre_hook(lambda m, a, i=i: gated.__setitem__(i, a[0])))
    try:
        logits = plain(tokens).logits
    finally:
        for handle in handles:
            handle.remove()
    return logits, projected, gated


def close(actual, expected, tol=1e-5):
    """Equal to `tol` relative to the largest entry of `expected`, which must not be negligible."""
    scale = float(expected.abs().max())
    assert scale > 1e-3
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=0)


def point(layer: int, name: str) -> str:
    return f"blocks.{layer}.ssm.{name}"


@torch.no_grad()
def test_projection_points_are_the_projections_exactly(built, tokens):
    """`hook_in_proj` is the `in_proj` output and `hook_y` the `out_proj` input (per head), bit for bit."""
    _, plain, model, mixers = built
    logits, projected, gated = reference(plain, mixers, tokens)
    names = [point(i, n) for i in mixers for n in ("hook_in_proj", "hook_y")]
    ours, cache = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(ours, logits)
    for i, mixer in mixers.items():
        assert torch.equal(cache[point(i, "hook_in_proj")], projected[i])
        assert cache[point(i, "hook_y")].shape == (*tokens.shape, mixer.num_heads, mixer.head_dim)
        assert torch.equal(cache[point(i, "hook_y")].flatten(2), gated[i])


@torch.no_grad()
def test_eager_points_match_the_projection_and_torch_conv(built, tokens):
    """z / dt / conv / x / B / C recomputed from the `in_proj` output with torch's conv1d and the
    activation, and `hook_y` of the eager forward equals the plain model's `out_proj` input."""
    _, plain, model, mixers = built
    logits, projected, gated = reference(plain, mixers, tokens)
    names = [point(i, n) for i in mixers for n in [*EAGER[:-1], "hook_y"]]
    ours, cache = model.run_with_cache(tokens, names_filter=names)
    torch.testing.assert_close(ours, logits, atol=1e-4 * float(logits.abs().max()), rtol=0)
    batch, seq = tokens.shape
    for i, mixer in mixers.items():
        raw = projected[i] * getattr(mixer, "mup_vector", 1.0)  # Falcon-H1's muP vector
        z, xbc, dt = raw.split([mixer.intermediate_size, mixer.conv_dim, mixer.num_heads], dim=-1)
        conv = mixer.act(F.conv1d(xbc.transpose(1, 2), mixer.conv1d.weight, mixer.conv1d.bias,
                                  padding=mixer.conv1d.kernel_size[0] - 1, groups=mixer.conv_dim)[..., :seq]).transpose(1, 2)
        group = mixer.n_groups * mixer.ssm_state_size
        x, B, C = conv.split([mixer.intermediate_size, group, group], dim=-1)
        close(cache[point(i, "hook_z")], z)
        close(cache[point(i, "hook_dt")], dt)
        close(cache[point(i, "hook_conv")], conv)
        close(cache[point(i, "hook_x")], x.view(batch, seq, mixer.num_heads, mixer.head_dim))
        close(cache[point(i, "hook_B")], B.view(batch, seq, mixer.n_groups, mixer.ssm_state_size))
        close(cache[point(i, "hook_C")], C.view(batch, seq, mixer.n_groups, mixer.ssm_state_size))
        close(cache[point(i, "hook_y")].flatten(2), gated[i], tol=1e-4)


@torch.no_grad()
def test_pattern_times_x_gives_the_mixer_output(built, tokens):
    """`M x + D x`, through the mixer's gate and norm, is the plain model's `out_proj` input, with M
    built by the SSD formula (`dt` after bias, softplus and the mixer's `time_step_limit` clamp)."""
    _, plain, model, mixers = built
    _, _, gated = reference(plain, mixers, tokens)
    names = [point(i, n) for i in mixers for n in ("hook_pattern", "hook_x", "hook_z", "hook_dt", "hook_B", "hook_C")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for i, mixer in mixers.items():
        M, x = cache[point(i, "hook_pattern")], cache[point(i, "hook_x")]
        assert M.shape == (tokens.shape[0], mixer.num_heads, tokens.shape[1], tokens.shape[1])
        assert torch.equal(M, M.tril())
        step = F.softplus(cache[point(i, "hook_dt")] + mixer.dt_bias).clamp(*mixer.time_step_limit)
        expected = mamba2.implicit_attention(step, -torch.exp(mixer.A_log.float()), cache[point(i, "hook_B")],
                                             cache[point(i, "hook_C")])
        close(M, expected)
        y = (torch.einsum("bhts,bshp->bthp", M, x) + mixer.D[:, None] * x).flatten(2)
        z = cache[point(i, "hook_z")]
        y = mixer.norm(y, z) if getattr(mixer, "mamba_rms_norm", True) else y * F.silu(z)
        close(y, gated[i], tol=1e-4)


@torch.no_grad()
def test_state_is_the_generation_cache(built, tokens):
    """`hook_state` after the last token is the transformers cache's SSM state of a forward with
    use_cache; after earlier positions, the caches of the prefixes."""
    _, plain, model, mixers = built
    cache = plain(tokens, use_cache=True).cache
    _, ours = model.run_with_cache(tokens, names_filter=[point(i, "hook_state") for i in mixers])
    for i, mixer in mixers.items():
        state = ours[point(i, "hook_state")]
        assert state.shape == (tokens.shape[0], mixer.num_heads, mixer.head_dim, mixer.ssm_state_size)
        close(state, cache.get_recurrent_state(i))
    layer = max(mixers)
    states = cache_states(model, tokens, [5, 11], names=[point(layer, "hook_state")])[point(layer, "hook_state")]
    for column, position in enumerate([5, 11]):
        prefix = plain(tokens[:, : position + 1], use_cache=True).cache
        close(states[:, column], prefix.get_recurrent_state(layer))


@torch.no_grad()
def test_granite_without_experts_runs_the_shared_mlp_alone(tokens):
    """Granite-4.0-H with `num_local_experts=0` (no `block_sparse_moe`): logits bit-identical, and
    `hook_mlp_out` is the shared MLP's output times `residual_multiplier`."""
    hf = AutoModelForCausalLM.from_config(tiny_config("granitemoehybrid", num_local_experts=0)).eval()
    visible_init(hf, seed=0)
    plain = copy.deepcopy(hf)
    model = HookedHybrid.from_hf(hf)
    logits, cache = model.run_with_cache(tokens, names_filter=model.hook_names(inner=False))  # no eager paths
    assert torch.equal(logits, plain(tokens).logits)
    layer = plain.model.layers[0]
    assert layer.block_sparse_moe is None
    shared = layer.shared_mlp(layer.post_attention_layernorm(cache["blocks.0.hook_resid_mid"])) * layer.residual_multiplier
    assert torch.equal(cache["blocks.0.hook_mlp_out"], shared)
