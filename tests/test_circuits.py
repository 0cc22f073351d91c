"""Circuits inside linear mixers, against independent computations: recurrent states (the
transformers generation cache and recurrences started from `initial_state`), implicit attention
(reconstructing the transformers recurrence outputs), edge knockout (masked scores in the plain
model, zeroed values) and attribution patching (gradients taken with plain torch hooks).

The bundled trained models are used so that every mixer matters: their recurrent outputs are of
order 1e-3 to 1, and each test asserts that the effect it checks is far above the tolerance.
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.models.falcon_h1 import modeling_falcon_h1 as falcon
from transformers.models.qwen3_5 import modeling_qwen3_5 as qwen

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import (
    Condition, EdgeKnockout, Selector, Sweep, attribution_patch, knockout, patch_state, run_conditions,
)
from hybrid_lens.mixers import cache_states, state_positions
from hybrid_lens.viz import SignedPattern
from hybrid_lens.zoo import checkpoint_path

from .fixtures import build

BUNDLED = {"linear_attn": "hybrid-lens/tiny-qwen3.5", "ssm": "hybrid-lens/tiny-falcon-h1"}
MODULE = {"linear_attn": "linear_attn", "ssm": "mamba", "attn": "self_attn"}
CLEAN = "In the beginning God created the heaven and the earth. And the earth was"
CORRUPT = "In the beginning God made the light and the darkness. And the water was"


@pytest.fixture(scope="module", params=list(BUNDLED))
def kind(request):
    return request.param


@pytest.fixture(scope="module")
def models(kind):
    """(hooked model, plain transformers model with the same weights) of the bundled hybrid with `kind`."""
    model = HookedHybrid.from_pretrained(BUNDLED[kind])
    return model, AutoModelForCausalLM.from_pretrained(checkpoint_path(BUNDLED[kind])).eval()


def layers_of(model, kind):
    return model.layout.layers_with(kind)


def bos(model) -> int:
    """How many tokens the model's default tokenization puts before the text (its BOS, where it prepends one)."""
    return model.to_tokens(CLEAN).shape[1] - model.to_tokens(CLEAN, prepend_bos=False).shape[1]


def nothing_left(model):
    return (all(not p.fwd_hooks and not p.bwd_hooks for p in model.hook_dict.values())
            and not any(tap.active for tap in model._wrapping.taps)
            and all(getattr(p, "positions", None) is None for p in model.hook_dict.values()))


def close(actual, expected, tol=1e-4):
    """Equal to `tol` relative to the largest entry of `expected`; returns that scale."""
    scale = float(expected.abs().max())
    torch.testing.assert_close(actual, expected, atol=tol * scale, rtol=0)
    return scale


# --- recurrent state ---------------------------------------------------------------------------
@torch.no_grad()
def test_state_after_the_last_token_is_the_generation_cache(models, kind):
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    cache = plain(tokens, use_cache=True).past_key_values
    _, ours = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(f"{kind}.hook_state"))
    for layer in layers_of(model, kind):
        expected = cache.get_recurrent_state(layer)
        assert expected.abs().max() > 1e-2
        close(ours[f"blocks.{layer}.{kind}.hook_state"], expected, tol=1e-5)


@torch.no_grad()
def test_states_after_chosen_positions_are_the_generation_caches_of_prefixes(models, kind):
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    layer = layers_of(model, kind)[1]
    name = f"blocks.{layer}.{kind}.hook_state"
    states = cache_states(model, tokens, [-1, 3, 9], names=[name])[name]
    assert states.shape[:2] == (1, 3)
    for i, position in enumerate([3, 9, tokens.shape[1] - 1]):
        expected = plain(tokens[:, : position + 1], use_cache=True).past_key_values.get_recurrent_state(layer)
        close(states[:, i], expected, tol=1e-5)
    assert nothing_left(model)


@torch.no_grad()
def test_writing_the_state_back_changes_nothing(models, kind):
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    names = [f"blocks.{i}.{kind}.hook_state" for i in layers_of(model, kind)]
    with state_positions(model, [2, 7, -1]):
        read = model.run_with_hooks(tokens, fwd_hooks=[(n, lambda s, hook: None) for n in names])
        written = model.run_with_hooks(tokens, fwd_hooks=[(n, lambda s, hook: s.clone()) for n in names])
    assert torch.equal(read, written)
    close(written, plain(tokens).logits, tol=1e-5)  # split recurrences differ from one scan by rounding only


@torch.no_grad()
def test_state_patching_continues_from_the_source_state(models, kind):
    """After token t, the mixer output is the transformers recurrence on the target's own inputs,
    started from the source prefix's generation-cache state; before t it is unchanged."""
    model, plain = models
    source, target = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    layer, t = layers_of(model, kind)[0], 4 + bos(model)
    state = plain(source[:, : t + 1], use_cache=True).past_key_values.get_recurrent_state(layer)
    prefix = f"blocks.{layer}.{kind}."
    if kind == "linear_attn":
        inputs, out = ["hook_q", "hook_k", "hook_v", "hook_log_decay", "hook_beta"], "hook_recurrence_out"
    else:
        inputs, out = ["hook_x", "hook_dt", "hook_B", "hook_C", "hook_z"], "hook_y"
    _, clean = model.run_with_cache(target, names_filter=[prefix + n for n in [*inputs, out]])
    with patch_state(source, kind, position=t, layers=layer).apply(model):
        _, patched = model.run_with_cache(target, names_filter=prefix + out)
    assert nothing_left(model)

    later = {n: clean[prefix + n][:, t + 1 :] for n in inputs}
    if kind == "linear_attn":
        expected, _ = qwen.torch_recurrent_gated_delta_rule(
            later["hook_q"], later["hook_k"], later["hook_v"], g=later["hook_log_decay"], beta=later["hook_beta"],
            initial_state=state, use_qk_l2norm_in_kernel=True)
    else:
        mamba = plain.model.layers[layer].mamba
        scan = falcon.mamba2_chunk_scan(
            later["hook_x"], later["hook_dt"], -torch.exp(mamba.A_log.float()), later["hook_B"], later["hook_C"],
            chunk_size=mamba.chunk_size, D=mamba.D, dt_bias=mamba.dt_bias, initial_states=state, dt_softplus=True,
            dt_limit=mamba.time_step_limit)
        assert not mamba.mamba_rms_norm
        expected = (scan.flatten(2) * torch.nn.functional.silu(later["hook_z"])).view_as(scan)
    ours = patched[prefix + out]
    scale = close(ours[:, t + 1 :], expected, tol=1e-4)
    close(ours[:, : t + 1], clean[prefix + out][:, : t + 1], tol=1e-5)
    assert (ours[:, t + 1 :] - clean[prefix + out][:, t + 1 :]).abs().max() > 5e-3 * scale  # 50x the tolerance


@torch.no_grad()
def test_state_patching_batches_and_serialises(models, kind):
    model, _ = models
    layers = tuple(layers_of(model, kind)[:2])
    conditions = [patch_state(CLEAN, kind, position=p + bos(model), layers=layers)
                  for p in (5, 8)]  # the texts differ from token 4 on (after any BOS)
    batched = run_conditions(model, CORRUPT, conditions)
    for condition, logits in zip(conditions, batched):
        with condition.apply(model):
            separate = model(CORRUPT)
        close(logits, separate, tol=1e-5)
        assert Condition.from_json(condition.to_json()) == condition
    assert (batched[0] - model(CORRUPT)).abs().max() > 1e-2  # float noise is ~1e-6


@torch.no_grad()
def test_bad_state_input_is_refused_and_leaves_nothing_attached(models, kind):
    model, _ = models
    name = f"blocks.{layers_of(model, kind)[0]}.{kind}.hook_state"
    with pytest.raises(ValueError, match=r"State positions \[40\] out of range"):
        with state_positions(model, [2, 40]):
            model.run_with_hooks(CLEAN, fwd_hooks=[(name, lambda s, hook: None)])
    assert nothing_left(model)
    with pytest.raises(ValueError, match="returned a tensor of shape"):
        model.run_with_hooks(CLEAN, fwd_hooks=[(name, lambda s, hook: s[:, :1])])
    assert nothing_left(model)
    with pytest.raises(ValueError, match="must be an int"):
        with state_positions(model, [1.5]):
            pass
    with pytest.raises(ValueError, match="the source state is"):
        with patch_state([CLEAN, CLEAN], kind, layers=layers_of(model, kind)[0]).apply(model):
            model(CORRUPT)
    with pytest.raises(ValueError, match="recurrent mixer kind"):
        patch_state(CLEAN, "attn")
    assert nothing_left(model)
    _, qwen2 = build("qwen2")
    with pytest.raises(ValueError, match="no recurrent mixer"):
        with state_positions(qwen2, 0):
            pass


# --- implicit attention ------------------------------------------------------------------------
@torch.no_grad()
def test_implicit_attention_reconstructs_the_recurrence(models, kind):
    """`pattern @ values` is the transformers recurrence output; the text is shorter than d_head,
    so the values have full row rank and the reconstruction pins the matrix down."""
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    values = "hook_v" if kind == "linear_attn" else "hook_x"
    names = ["hook_pattern", values, "hook_recurrence_out"] if kind == "linear_attn" else \
        ["hook_pattern", values, "hook_dt", "hook_B", "hook_C"]
    logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n.split(".")[-1] in names and f".{kind}." in n)
    assert torch.equal(logits, plain(tokens).logits)  # reading the pattern changes nothing
    for layer in layers_of(model, kind):
        get = {n: cache[f"blocks.{layer}.{kind}.{n}"] for n in names}
        pattern, v = get["hook_pattern"], get[values].float()
        assert tokens.shape[1] < v.shape[-1] and pattern.shape == (1, v.shape[2], tokens.shape[1], tokens.shape[1])
        assert bool(pattern.triu(1).eq(0).all())
        reconstructed = torch.einsum("bhts,bshd->bthd", pattern, v)
        if kind == "linear_attn":
            expected = get["hook_recurrence_out"]
        else:
            mamba = plain.model.layers[layer].mamba
            expected = falcon.mamba2_chunk_scan(
                v, get["hook_dt"], -torch.exp(mamba.A_log.float()), get["hook_B"], get["hook_C"],
                chunk_size=mamba.chunk_size, D=mamba.D, dt_bias=mamba.dt_bias, dt_softplus=True,
                dt_limit=mamba.time_step_limit)
            reconstructed = reconstructed + mamba.D[:, None] * v
        assert expected.abs().max() > 1e-3
        close(reconstructed, expected, tol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_implicit_attention_with_grouped_heads_of_random_models(family):
    """Random tiny models: Gated DeltaNet with 2 key heads serving 4 value heads, Mamba-2 with
    chunks shorter than the sequence (the reconstruction crosses chunk boundaries)."""
    _, model = build(family)
    tokens = torch.randint(3, 256, (2, 20), generator=torch.Generator().manual_seed(0))
    kind, values, out = ("linear_attn", "hook_v", "hook_recurrence_out") if family == "qwen3_5" else \
        ("ssm", "hook_x", "hook_y")
    layer = layers_of(model, kind)[0]
    if family == "falcon_h1":  # at random init M x is ~1e-4 of D x: larger steps and B, C make the matrix matter
        mamba = model.hf_model.model.layers[layer].mamba
        mamba.dt_bias.fill_(2.0)
        mamba.conv1d.weight.mul_(100.0)
    names = [f"blocks.{layer}.{kind}.{n}" for n in ("hook_pattern", values, out, "hook_z")]
    _, cache = model.run_with_cache(tokens, names_filter=[n for n in names if n in model.hook_dict])
    reconstructed = torch.einsum("bhts,bshd->bthd", cache[names[0]], cache[names[1]])
    if family == "falcon_h1":
        mamba = model.hf_model.model.layers[layer].mamba
        assert mamba.chunk_size < tokens.shape[1]
        skip = mamba.D[:, None] * cache[names[1]]
        assert reconstructed.abs().max() > 0.1 * skip.abs().max()  # the matrix part matters
        scan = reconstructed + skip
        gate = cache[names[3]].view_as(scan)
        reconstructed = mamba.norm(scan.flatten(2), gate.flatten(2)).view_as(scan) if mamba.mamba_rms_norm \
            else scan * torch.nn.functional.silu(gate)
    else:
        assert model.hf_model.model.layers[layer].linear_attn.num_k_heads < cache[names[1]].shape[2]
    close(reconstructed, cache[names[2]], tol=1e-4)


@torch.no_grad()
def test_implicit_attention_renders_with_circuitsvis(models, kind):
    circuitsvis = pytest.importorskip("circuitsvis")
    model, _ = models
    name = f"blocks.{layers_of(model, kind)[0]}.{kind}.hook_pattern"
    _, cache = model.run_with_cache(CLEAN, names_filter=name)
    html = circuitsvis.attention.attention_patterns(tokens=model.to_str_tokens(CLEAN), attention=cache[name][0])
    assert "attention" in str(html).lower()


def rendered_props(html) -> dict:
    """The props circuitsvis passes to its component (`render(id, Component, {props})` in the HTML)."""
    return json.loads(re.search(r"AttentionHeads,\s*(\{.*\})\s*\)", str(html), re.DOTALL).group(1))


@torch.no_grad()
def test_signed_patterns_render_scaled_per_head_with_their_sign(models, kind):
    """`SignedPattern.html` puts each head's pattern divided by its largest |entry| off the diagonal (at least
    1/100 of its largest entry) into circuitsvis's props, on a [-1, 1] scale: off the diagonal the values
    times the divisor are the pattern,
    signs kept; the diagonal is clipped to [-1, 1]; `split` carries each sign as its own [0, 1] head."""
    pytest.importorskip("circuitsvis")
    model, _ = models
    layer = layers_of(model, kind)[0]
    _, cache = model.run_with_cache(CLEAN, names_filter=f"blocks.{layer}.{kind}.hook_pattern")
    pattern = cache[f"blocks.{layer}.{kind}.hook_pattern"][0]                # [head, query, key]
    signed = SignedPattern.of(pattern, layer=layer)
    props = rendered_props(signed.html(model.to_str_tokens(CLEAN)))
    shown = torch.tensor(props["attention"])
    assert (props["minValue"], props["maxValue"], props["attentionHeadNames"]) == (-1, 1, signed.names)
    off = ~torch.eye(pattern.shape[-1], dtype=torch.bool)
    close(shown[:, off] * signed.scales[:, None], pattern[:, off], tol=1e-6)
    everything, routes = pattern.abs().amax(dim=(1, 2)), pattern[:, off].abs().amax(1)
    assert torch.equal(signed.scales, torch.maximum(routes, everything / 100))  # the documented divisor
    assert (shown[:, off].abs().amax(1) == 1).sum() >= len(pattern) // 2     # most heads fill the scale
    assert torch.equal(shown[:, ~off], (pattern[:, ~off] / signed.scales[:, None]).clamp(-1, 1))
    assert torch.equal(shown < 0, pattern < 0) and (pattern < 0).any()    # the sign is shown
    assert pattern.abs().max() > 1 or pattern.abs().max() < 0.1           # unscaled, circuitsvis saturates or fades
    split = rendered_props(signed.html(model.to_str_tokens(CLEAN), split=True))
    parts = torch.tensor(split["attention"]).unflatten(0, (-1, 2))
    assert torch.equal(parts[:, 0] - parts[:, 1], shown) and split["minValue"] == 0
    assert split["attentionHeadNames"] == signed.split_names


def test_signed_patterns_refuse_a_batch_and_a_wrong_token_count():
    pytest.importorskip("circuitsvis")
    with pytest.raises(ValueError, match=r"one batch row \[head, query, key\] is needed; got shape \(2, 4, 3, 3\)"):
        SignedPattern.of(torch.zeros(2, 4, 3, 3))
    with pytest.raises(ValueError, match="Got 2 tokens for a pattern of 3 positions"):
        SignedPattern.of(torch.ones(4, 3, 3)).html(["a", "b"])


# --- edge knockout -----------------------------------------------------------------------------
@torch.no_grad()
def test_knocking_out_nothing_is_the_clean_run(models, kind):
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    clean = plain(tokens).logits
    for mixer in ("mixer", kind, "attn"):
        with knockout(mixer, keys=[]).apply(model):
            close(model(tokens), clean, tol=1e-5)
        with knockout(mixer, keys=[0, 1, 2]).apply(model):
            assert (model(tokens) - clean).abs().max() > 0.1
    assert nothing_left(model)


@torch.no_grad()
def test_linear_mixer_knockout_of_keys_is_zeroing_their_values(models, kind):
    """Zeroing the key columns of the implicit matrix for every query equals zeroing those values
    before the transformers recurrence (Mamba-2: except the D skip at the key positions themselves)."""
    model, _ = models
    tokens = model.to_tokens(CLEAN)
    layer, keys = layers_of(model, kind)[2], [2, 5, 6]
    values, out = ("hook_v", "hook_recurrence_out") if kind == "linear_attn" else ("hook_x", "hook_y")
    name = f"blocks.{layer}.{kind}.{out}"

    def zero_values(value, hook):
        value = value.clone()
        value[:, keys] = 0
        return value

    with knockout(kind, keys=keys, layers=layer).apply(model):
        _, cut = model.run_with_cache(tokens, names_filter=name)
    with model.hooks(fwd_hooks=[(f"blocks.{layer}.{kind}.{values}", zero_values)]):
        _, zeroed = model.run_with_cache(tokens, names_filter=name)
    _, clean = model.run_with_cache(tokens, names_filter=name)
    compared = [p for p in range(tokens.shape[1]) if kind == "linear_attn" or p not in keys]
    scale = close(cut[name][:, compared], zeroed[name][:, compared], tol=1e-4)
    assert (cut[name] - clean[name]).abs().max() > 0.01 * scale
    assert nothing_left(model)


@torch.no_grad()
def test_knockout_restricted_to_queries_and_heads_leaves_the_rest(models, kind):
    model, _ = models
    tokens = model.to_tokens(CLEAN)
    layer, T = layers_of(model, kind)[1], tokens.shape[1]
    name = f"blocks.{layer}.{kind}.hook_pattern"
    _, clean = model.run_with_cache(tokens, names_filter=name)
    queries, keys = [T - 3, T - 1], [T - 6, T - 5]
    head = int(clean[name][0][:, queries][..., keys].abs().sum((1, 2)).argmax())  # the head that reads them most
    edit = knockout(kind, keys=[-6, -5], queries=[-3, -1], heads=head, layers=layer)
    with edit.apply(model):
        _, cut = model.run_with_cache(tokens, names_filter=name)  # the cache hook runs after the knockout's
    assert bool(cut[name][:, head, queries][..., keys].eq(0).all())
    restored = cut[name].clone()
    restored[:, head, queries, T - 6 : T - 4] = clean[name][:, head, queries, T - 6 : T - 4]
    assert torch.equal(restored, clean[name]) and not torch.equal(cut[name], clean[name])
    out = "hook_recurrence_out" if kind == "linear_attn" else "hook_y"
    name = f"blocks.{layer}.{kind}.{out}"
    _, base = model.run_with_cache(tokens, names_filter=name)
    with edit.apply(model):
        _, cut = model.run_with_cache(tokens, names_filter=name)
    changed = (cut[name] - base[name]).abs().amax(-1)[0]  # [pos, head]
    scale = float(base[name].abs().max())
    assert changed[queries, head].max() > 1e-4 * scale, "the cut must matter"
    changed[queries, head] = 0
    assert changed.max() < 1e-6 * scale


@torch.no_grad()
def test_softmax_knockout_equals_masking_scores_before_the_softmax():
    model = HookedHybrid.from_pretrained(BUNDLED["ssm"])
    plain = AutoModelForCausalLM.from_pretrained(checkpoint_path(BUNDLED["ssm"])).eval()
    tokens = model.to_tokens(CLEAN)
    T, layer, keys = tokens.shape[1], 4, [0, 1, 3]
    queries = [T - 2, -1]
    mask = torch.full((T, T), float("-inf")).triu(1)
    for q in queries:
        mask[q % T, keys] = float("-inf")

    def masked(_module, args, kwargs):
        kwargs["attention_mask"] = mask[None, None]
        return args, kwargs

    handle = plain.model.layers[layer].self_attn.register_forward_pre_hook(masked, with_kwargs=True)
    try:
        expected = plain(tokens).logits
    finally:
        handle.remove()
    with knockout("attn", keys=keys, queries=queries, layers=layer).apply(model):
        ours = model(tokens)
    close(ours, expected, tol=1e-5)
    assert (expected - plain(tokens).logits).abs().max() > 1e-2  # float noise is ~1e-6

    def zero_values(_module, _args, output):  # no renormalisation: the cut keys' values never arrive
        output = output.clone()
        output[:, keys] = 0
        return output

    handle = plain.model.layers[layer].self_attn.v_proj.register_forward_hook(zero_values)
    try:
        expected = plain(tokens).logits
    finally:
        handle.remove()
    with knockout("attn", keys=keys, layers=layer, renormalize=False).apply(model):
        close(model(tokens), expected, tol=1e-5)


@torch.no_grad()
def test_knockout_batches_serialises_and_refuses_bad_input(models, kind):
    model, _ = models
    conditions = [knockout("mixer", keys=[0, 1], layers=tuple(layers_of(model, kind)[:2])),
                  knockout(kind, keys=[2], queries=[-1], heads=[0, 2], renormalize=False),
                  patch_state(CORRUPT, kind, position=6)]  # state patching and knockout in one batch
    batched = run_conditions(model, CLEAN, conditions)
    swept = Sweep(conditions, batch=2).logits(model, model.to_tokens(CLEAN))  # batching + prefix reuse
    for condition, logits, sweep_logits in zip(conditions, batched, swept):
        with condition.apply(model):
            separate = model(CLEAN)
        close(logits, separate, tol=1e-5)
        close(sweep_logits, separate, tol=1e-5)
        assert Condition.from_json(condition.to_json()) == condition
    with pytest.raises(ValueError, match=r"keys \[40\] out of range"):
        with knockout(kind, keys=[40]).apply(model):
            model(CLEAN)
    with pytest.raises(ValueError, match="matches nothing"):
        knockout("attn", keys=[0], layers=0).fwd_hooks(model) if kind == "linear_attn" else \
            knockout("linear_attn", keys=[0]).fwd_hooks(model)
    with pytest.raises(ValueError, match="heads"):
        with knockout(kind, keys=[0], heads=[9]).apply(model):
            model(CLEAN)
    with pytest.raises(ValueError, match="must be an int"):
        EdgeKnockout(keys="0")
    both = knockout(kind, keys=[0]) + patch_state(CORRUPT, kind, position=3)
    with pytest.raises(ValueError, match="edit one of them per row"):  # the matrix form starts from a zero state
        with both.apply(model):
            model(CLEAN)
    assert nothing_left(model)


# --- attribution patching ----------------------------------------------------------------------
@pytest.mark.parametrize("name,kind", [(BUNDLED["linear_attn"], "linear_attn"), (BUNDLED["ssm"], "ssm"),
                                       ("hybrid-lens/tiny-qwen2.5", "attn")])
def test_attribution_patching_is_the_first_order_term_of_plain_torch_gradients(name, kind):
    """Each estimate is metric(corrupt) + (a_clean - a_corrupt) . d metric / d a at the corrupted
    run, with the gradients taken here by tensor hooks on the plain transformers modules (every
    family; Falcon-H1's output multipliers cancel in the product)."""
    model = HookedHybrid.from_pretrained(name)
    plain = AutoModelForCausalLM.from_pretrained(checkpoint_path(name)).eval()
    clean, corrupt = model.to_tokens(CLEAN), model.to_tokens(CORRUPT)
    answer = int(clean[0, -1])

    def metric(logits):
        return logits[:, -2].log_softmax(-1)[:, answer].mean()

    layer = layers_of(model, kind)[1]
    mixer = getattr(plain.model.layers[layer], MODULE[kind])
    acts = {}

    def run(tokens, keep_grad):
        def on_mixer(_module, _args, output):
            acts["mixer"] = output[0] if isinstance(output, tuple) else output  # attention: (out, weights)
            if keep_grad:
                acts["mixer"].retain_grad()

        def on_layer_kwargs(_module, args, kwargs):
            hidden = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
            if keep_grad:
                hidden.retain_grad()
            acts["resid_pre"] = hidden

        handles = [mixer.register_forward_hook(on_mixer),
                   plain.model.layers[layer].register_forward_pre_hook(on_layer_kwargs, with_kwargs=True)]
        try:
            with torch.set_grad_enabled(keep_grad):
                value = metric(plain(tokens).logits)
            if keep_grad:
                value.backward()
            return value.detach(), dict(acts)
        finally:
            for handle in handles:
                handle.remove()
            plain.zero_grad(set_to_none=True)

    _, clean_acts = run(clean, keep_grad=False)
    corrupt_value, corrupt_acts = run(corrupt, keep_grad=True)
    where = [Selector(kind, layers=layer), Selector("resid_pre", layers=layer)]
    table = attribution_patch(model, clean, corrupt, where=where,
                              positions="each", metric=metric)
    assert table.attrs["corrupt"] == pytest.approx(float(corrupt_value), abs=1e-5)
    assert all(p.grad is None for p in model.parameters())
    for component in ("mixer", "resid_pre"):
        act = corrupt_acts[component]
        expected = ((clean_acts[component] - act.detach()) * act.grad).sum((0, 2))
        rows = table[table.kind == (kind if component == "mixer" else "resid_pre")].sort_values("position")
        estimate = torch.tensor(rows.metric.to_numpy(), dtype=torch.float32) - float(corrupt_value)
        assert expected.abs().max() > 1e-3
        close(estimate, expected, tol=1e-3)
    assert nothing_left(model)


def test_attribution_patching_has_the_table_of_patch_and_refuses_bad_input(models, kind):
    model, _ = models
    table = attribution_patch(model, CLEAN, CORRUPT)
    assert table.columns.tolist() == ["layer", "kind", "hook", "position", "metric"]
    assert len(table) == len(model.layer_types) * 2 + sum(len(m) for m in model.layer_mixers)
    assert table.attrs["clean"] == 0.0 and table.attrs["corrupt"] > 0
    same = attribution_patch(model, CLEAN, CLEAN, where=Selector("mlp"))
    assert (same.metric == same.attrs["corrupt"]).all()  # nothing to patch: every estimate is the corrupted metric
    with pytest.raises(ValueError, match="are not"):
        attribution_patch(model, CLEAN, CORRUPT, where=Selector(kind, point="hook_state"))
    with pytest.raises(ValueError, match="same shape"):
        attribution_patch(model, CLEAN, "In the beginning")
    assert nothing_left(model) and all(p.grad is None for p in model.parameters())


@torch.no_grad()
def test_an_nnsight_trace_reads_the_state(models, kind):
    model, plain = models
    tokens = model.to_tokens(CLEAN)
    layer = layers_of(model, kind)[0]
    view = model.nnsight(inner_points=True)
    try:
        with state_positions(model, -1), view.trace(tokens):
            state = getattr(view.blocks[layer], kind).hook_state.output.save()
    finally:
        model.nnsight(inner_points=False)
    close(state, plain(tokens, use_cache=True).past_key_values.get_recurrent_state(layer), tol=1e-5)
    assert nothing_left(model)


@torch.no_grad()
def test_an_nnsight_trace_reads_the_implicit_attention(models, kind):
    model, _ = models
    name = f"blocks.{layers_of(model, kind)[0]}.{kind}.hook_pattern"
    _, cache = model.run_with_cache(CLEAN, names_filter=name)
    view = model.nnsight(inner_points=True, patterns=True)
    try:
        with view.trace(model.to_tokens(CLEAN)):
            pattern = getattr(view.blocks[layers_of(model, kind)[0]], kind).hook_pattern.output.save()
    finally:
        model.nnsight(inner_points=False, patterns=False)
    assert torch.equal(pattern, cache[name]) and nothing_left(model)
