"""TransformerLens's hook vocabulary, per-head and per-neuron results and weight views on every registered family.

Checked against independent computations: plain torch hooks on the `transformers` modules (a norm's input and
output, an output projection's output), the norm formula, softmax, and a second route to the same edit (zeroing a
head's result equals zeroing its input to the output projection). `tests/test_tl_conformance.py` checks the same
points against TransformerLens itself on a Llama.
"""

from __future__ import annotations

import pytest
import torch

from hybrid_lens.adapters import FAMILIES
from hybrid_lens.vocabulary import UnitLabel, hook_name

from .fixtures import build, no_hooks_left, random_tokens

HEADLESS = {"ssm": ("mamba", "falcon_mamba", "jamba", "recurrent_gemma"), "conv": ("lfm2", "lfm2_moe")}
NEURON_LAYERS = {  # blocks whose MLP is one dense module (the tiny configs); the others have an MoE or no MLP
    "bamba": [0, 1, 2], "falcon_h1": [0, 1, 2, 3], "falcon_mamba": [], "granitemoehybrid": [], "jamba": [1, 2],
    "kimi_linear": [0], "lfm2": [0, 1, 2], "lfm2_moe": [0], "llama": [0, 1, 2], "mamba": [], "mamba2": [],
    "minimax": [], "nemotron_h": [3], "olmo_hybrid": [0, 1, 2, 3], "qwen2": [0, 1, 2, 3], "qwen3": [0, 1, 2],
    "qwen3_5": list(range(8)), "qwen3_next": [1], "recurrent_gemma": [0, 1, 2], "zamba2": [1, 3],
}
REL = 1e-5  # float32 rounding of a sum of per-unit terms, relative to the largest value compared


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request):
    reference, model = build(request.param, visible=True)
    return request.param, reference, model


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 12)


def close(ours: torch.Tensor, expected: torch.Tensor, what: str, rel: float = REL) -> float:
    error = ((ours.double() - expected.double()).abs().max() / expected.double().abs().max()).item()
    assert error <= rel, f"{what}: {error:.2e} of the largest value"
    return error


def projection_outputs(model, tokens, modules: dict) -> dict:
    """Output of each `transformers` module of `modules` (name -> module), read by plain torch hooks."""
    seen, handles = {}, []
    for name, module in modules.items():
        handles.append(module.register_forward_hook(lambda _m, _a, out, name=name: seen.__setitem__(name, out)))
    try:
        model(tokens)
    finally:
        for handle in handles:
            handle.remove()
    return seen


def test_the_points_exist_where_the_concept_does(built):
    """Every block with mixers has `ln1` unless it reads the raw stream (OLMo-Hybrid's attention: `ln1_post`); a block
    with an MLP has `ln2` (or `ln2_post`); every softmax attention has the eager points; every mixer whose projection
    reads heads has `hook_result`; dense MLPs, and only they, have neuron points."""
    family, _, model = built
    for block in model.blocks:
        spec = model.adapter.block_of(block.layer.block_key)
        parts = set(block._modules)
        if block.layer.mixers:
            assert ("ln1" in parts) == (spec.mixers[0].norm is not None) and ("ln1_post" in parts) == any(
                mixer.post_norm for mixer in spec.mixers), (family, block.index)
        if block.layer.has_mlp:
            assert {"ln2", "ln2_post"} & parts, (family, block.index)
        for kind in block.layer.mixers:
            points = set(getattr(block, kind)._modules)
            if kind == "attn":
                assert {"hook_rot_q", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_z"} <= points
            assert ("hook_result" in points) == (family not in HEADLESS.get(kind, ())), (family, block.index, kind)
        neurons = block.layer.has_mlp and "hook_post" in block.mlp._modules
        assert neurons == (block.index in NEURON_LAYERS[family]), (family, block.index)
    assert {"hook_scale", "hook_normalized"} <= set(model.ln_final._modules) and "hook_tokens" in model.hook_dict


@torch.no_grad()
def test_head_results_sum_to_the_mixer_output(built, tokens):
    """`hook_result.sum(heads) + multiplier * b_O` is the block output of the mixer (after the block's multiplier), or,
    after a post-norm, the output projection's own output read by a plain torch hook."""
    family, _, model = built
    names = [name for name in model.hook_dict if name.endswith(("hook_result", "_out"))]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    heads = {(block.index, kind): getattr(block, kind).heads for block in model.blocks for kind in block.layer.mixers
             if getattr(block, kind).heads is not None}
    raw = projection_outputs(model, tokens, {key: value.projection for key, value in heads.items() if not value.exact})
    for (layer, kind), value in heads.items():
        factor = value.factor() if value.exact else None
        total = cache[hook_name(layer, kind, "hook_result")].sum(-2) + value.b_O * (1.0 if factor is None else factor)
        close(total, cache[hook_name(layer, kind)] if value.exact else raw[layer, kind], f"{family} {layer} {kind}")
    assert no_hooks_left(model)


@torch.no_grad()
def test_a_written_head_result_is_what_the_heads_produce(built, tokens):
    """Zeroing head 1's result gives the logits of zeroing head 1's input to the output projection (`hook_z`, Mamba-2's
    `hook_y`): the write replaces that head's contribution and nothing else. Writing the results back unchanged (a new
    tensor) keeps the logits to float rounding."""
    family, _, model = built
    clean = model(tokens)
    for block in model.blocks:
        for kind in block.layer.mixers:
            heads = getattr(block, kind).heads
            if heads is None:
                continue
            name, source = hook_name(block.index, kind, "hook_result"), hook_name(block.index, kind, heads.source)
            zero_result = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x * (torch.arange(
                x.shape[-2]) != 1)[:, None])])
            zero_input = model.run_with_hooks(tokens, fwd_hooks=[(source, lambda x, hook: x * (torch.arange(
                x.shape[-2]) != 1)[:, None])])
            close(zero_result, zero_input, f"{family} {name}", rel=1e-4)
            assert (zero_result - clean).abs().max() > 1e-4 * clean.abs().max(), f"zeroing a head of {name} does nothing"
            close(model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x.clone())]), clean, name, rel=1e-4)


@torch.no_grad()
def test_neuron_results_sum_to_the_mlp_output(built, tokens):
    """`hook_post[..., n] * W_out[n]` (times the multiplier) plus the scaled `b_out` is `hook_mlp_out` (after a
    post-norm: the down projection's own output, read by a plain torch hook), and so are the cache's
    `get_neuron_results`; `stack_neuron_results` holds the MLPs whose neurons are shares of the residual stream."""
    family, _, model = built
    if not NEURON_LAYERS[family]:
        pytest.skip(f"{family} has no dense MLP")
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(
        ("mlp.hook_post", "hook_mlp_out", "hook_resid_post", "hook_embed")))
    raw = projection_outputs(model, tokens, {layer: model.blocks[layer].mlp.neurons.down for layer in NEURON_LAYERS[
        family] if not model.blocks[layer].mlp.neurons.exact})
    for layer in NEURON_LAYERS[family]:
        mlp = model.blocks[layer].mlp
        post, exact = cache[hook_name(layer, "mlp", "hook_post")], mlp.neurons.exact
        factor = mlp.neurons.factor() if exact else None
        output = cache[hook_name(layer, "mlp")] if exact else raw[layer]
        close((post @ mlp.W_out) * (1.0 if factor is None else factor) + mlp.neurons.b_out, output, f"{family} {layer}")
        results = cache.get_neuron_results(layer, pos_slice=-1)
        close(results.sum(-2) + mlp.neurons.b_out, output[:, -1], f"{family} {layer} neurons")
    stacked = [layer for layer in NEURON_LAYERS[family] if model.blocks[layer].mlp.neurons.exact
               and "mlp" in model.layout[layer].residual_terms]  # not OLMo-Hybrid's post-normed or Zamba2's shared MLP
    stack, labels = cache.stack_neuron_results(-1, return_labels=True)
    assert len(labels) == stack.shape[0] == sum(model.blocks[i].mlp.W_out.shape[0] for i in stacked)
    assert not stacked or labels[0] == UnitLabel(stacked[0], "mlp", 0)


@torch.no_grad()
def test_norm_points_are_the_norms_scale_and_output(built, tokens):
    """`hook_scale` is `sqrt(mean(x^2) + eps)` of the norm's input and `hook_normalized` its output, both read with
    plain torch hooks on the norm modules; the output is `x / scale * w` (so `w` is the gain, `1 + weight` where the
    norm stores it so); a write to `hook_scale` rescales the output as a write of the rescaled output does."""
    family, _, model = built
    norms = {f"blocks.{block.index}.{name}": getattr(block, name) for block in model.blocks
             for name in block._modules if name.startswith("ln")}
    norms["ln_final"] = model.ln_final
    seen, handles = {}, []
    for name, hooks in norms.items():
        handles.append(hooks.norm.register_forward_hook(
            lambda _m, args, out, name=name: seen.__setitem__(name, (args[0], out))))
    try:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith(("hook_scale", "hook_normalized")))
    finally:
        for handle in handles:
            handle.remove()
    for name, hooks in norms.items():
        x, out = seen[name]
        eps = getattr(hooks.norm, "variance_epsilon", getattr(hooks.norm, "eps", None))
        expected = (x.float().pow(2).mean(-1, keepdim=True) + eps).sqrt()
        assert torch.equal(cache[f"{name}.hook_scale"], expected), name
        assert torch.equal(cache[f"{name}.hook_normalized"], out), name
        close(x / expected * hooks.w, out, f"{family} {name}: x / scale * w", rel=1e-5)
    name = next(iter(norms))
    doubled = model.run_with_hooks(tokens, fwd_hooks=[(f"{name}.hook_scale", lambda x, hook: 2 * x)])
    halved = model.run_with_hooks(tokens, fwd_hooks=[(f"{name}.hook_normalized", lambda x, hook: x / 2)])
    close(doubled, halved, f"{family} {name} scale write", rel=1e-5)


@torch.no_grad()
def test_attention_scores_are_the_pattern_before_softmax(built, tokens):
    """`softmax(hook_attn_scores) == hook_pattern`, masked scores are -inf, and a written score reaches the logits."""
    family, _, model = built
    layers = model.layout.layers_with("attn")
    if not layers:
        pytest.skip(f"{family} has no softmax attention")
    names = [hook_name(layers[0], "attn", point) for point in ("hook_attn_scores", "hook_pattern", "hook_rot_q")]
    _, cache = model.run_with_cache(tokens, names_filter=names)
    scores, pattern = cache[names[0]], cache[names[1]]
    future = torch.ones(scores.shape[-2:], dtype=torch.bool).triu(1)
    assert bool(torch.isneginf(scores[..., future]).all()), "a future key is not masked with -inf"
    assert torch.equal(torch.isneginf(scores), pattern == 0) and not bool(torch.isposinf(scores).any())
    close(torch.softmax(scores, dim=-1), pattern, f"{family} softmax(scores)")
    assert cache[names[2]].shape[:3] == (*tokens.shape, pattern.shape[1])
    uniform = model.run_with_hooks(tokens, fwd_hooks=[(names[0], lambda x, hook: torch.where(torch.isinf(x), x, 0.0))])
    same = model.run_with_hooks(tokens, fwd_hooks=[(names[1], lambda x, hook: (
        (x > 0).to(x.dtype) / (x > 0).sum(-1, keepdim=True)))])  # uniform over the keys not masked
    close(uniform, same, f"{family} uniform scores = uniform pattern", rel=1e-4)


@torch.no_grad()
def test_a_score_write_on_a_left_padded_batch_keeps_each_row(built):
    """Rows padded on the left have queries whose every key is masked: a written score tensor keeps them finite (the
    mask's own minimum, as `transformers` does), so each text keeps its logits."""
    family, _, model = built
    layers = model.layout.layers_with("attn")
    if not layers or not model.adapter.left_padding:
        pytest.skip(f"{family}: no softmax attention, or left padding refused")
    tokens, mask = model.to_tokens_and_mask(["In the beginning God", "And the earth was without form"],
                                            padding_side="left")
    clean = model(tokens, attention_mask=mask)
    written = model.run_with_hooks(tokens, attention_mask=mask, fwd_hooks=[
        (hook_name(layers[0], "attn", "hook_attn_scores"), lambda x, hook: x * 1.0)])
    real = mask.bool()
    close(written[real], clean[real], f"{family} padded rows", rel=1e-4)
    assert bool(torch.isfinite(written).all())


def test_weight_views_share_the_transformers_storage(built):
    """Every weight view is a view of a parameter of the `transformers` module, except the values that cannot be:
    a missing bias (zeros), keys and values repeated over query heads, and a `1 + weight` gain."""
    family, _, model = built
    containers = [getattr(block, name) for block in model.blocks for name in block._modules
                  if getattr(getattr(block, name), "weights", None) is not None]
    assert containers or family in ("mamba", "falcon_mamba"), family
    for hooks in containers:
        storages = {parameter.untyped_storage().data_ptr() for parameter in hooks.weights.module.parameters()}
        storages |= {hooks.heads.projection.weight.untyped_storage().data_ptr()} if hooks.heads is not None else set()
        for name in hooks.weights.names:
            value = getattr(hooks, name)
            copy = name.lstrip("_").startswith("b_") or (name in ("W_K", "W_V") and hooks._W_K.shape[0] != hooks.W_Q.shape[0])
            assert copy or value.untyped_storage().data_ptr() in storages, (family, name)
    for block in model.blocks:
        for name in (n for n in block._modules if n.startswith("ln")):
            norm = getattr(block, name)
            assert (norm.w.untyped_storage().data_ptr() == norm.norm.weight.untyped_storage().data_ptr()) == \
                (norm.form.offset == 0), (family, block.index, name)


@torch.no_grad()
def test_full_resid_decomposition_sums_to_the_stream(built, tokens):
    """Heads, neurons, the other components, the embedding and the biases sum to the stream entering the last block
    and the final norm (MiniMax, whose blocks renormalise the stream, refuses); every head of an exact mixer appears."""
    family, _, model = built
    _, cache = model.run_with_cache(tokens, names_filter=lambda name: name.endswith(
        ("hook_z", "hook_y", "hook_post", "_out", "hook_embed", "hook_resid_pre", "hook_resid_post")))
    if not model.layout.additive:
        with pytest.raises(ValueError, match="renormalise"):
            cache.get_full_resid_decomposition()
        return
    for layer, stream in ((model.n_layers - 1, cache[hook_name(model.n_layers - 1, "resid_pre")]),
                          (None, cache[hook_name(model.n_layers - 1, "resid_post")])):
        parts, labels = cache.get_full_resid_decomposition(layer, return_labels=True)
        assert len(labels) == parts.shape[0] and labels[-2:] == ["embed", "bias"]
        close(parts.sum(0), stream, f"{family} decomposition of {layer}", rel=1e-4)
    heads, head_labels = cache.stack_head_results(return_labels=True, incl_remainder=True)
    close(heads.sum(0), cache[hook_name(model.n_layers - 1, "resid_post")], f"{family} heads + remainder", rel=1e-4)
    assert all(isinstance(label, UnitLabel) and label.kind != "mlp" for label in head_labels[:-1])


def test_hook_tokens_changes_the_run_and_the_loss():
    """A write to `hook_tokens` runs the model on the new ids, and the loss scores the new ids, as TransformerLens's."""
    _, model = build("qwen3_5")
    tokens = random_tokens(2, 10)
    swapped = tokens.clone()
    swapped[:, 4] = 7

    def swap(value, hook):
        value = value.clone()
        value[:, 4] = 7
        return value

    with torch.no_grad():
        assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[("hook_tokens", swap)]), model(swapped))
        assert torch.equal(model.run_with_hooks(tokens, return_type="loss", fwd_hooks=[("hook_tokens", swap)]),
                           model(swapped, return_type="loss"))
    _, cache = model.run_with_cache(tokens)
    assert "hook_tokens" not in cache  # an input, not an activation: cached only when named


@torch.no_grad()
def test_containers_run_as_transformer_lens_components(built, tokens):
    """`blocks[i].mlp(ln2.hook_normalized)` is the block's `hook_mlp_out` and `blocks[i].ln2(hook_resid_mid)` its
    `ln2.hook_normalized` (TransformerLens's components called as modules); a mixer's container refuses to run."""
    family, _, model = built
    names = lambda name: name.endswith(("ln2.hook_normalized", "hook_mlp_out", "hook_resid_mid", "hook_logits"))  # noqa: E731
    _, cache = model.run_with_cache(tokens, names_filter=names)
    for block in model.blocks:
        normalized = f"blocks.{block.index}.ln2.hook_normalized"
        if normalized in cache and block.mlp.runs is not None:
            close(block.mlp(cache[normalized]), cache[f"blocks.{block.index}.hook_mlp_out"], f"{family} {block.index}")
            if f"blocks.{block.index}.hook_resid_mid" in cache:
                assert torch.equal(block.ln2(cache[f"blocks.{block.index}.hook_resid_mid"]), cache[normalized])
        for kind in block.layer.mixers:
            with pytest.raises(TypeError, match="run the model with hooks instead"):
                getattr(block, kind)(cache[normalized] if normalized in cache else torch.zeros(1, 2, model.cfg.d_model))
    assert no_hooks_left(model)
