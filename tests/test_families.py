"""The guarantees every registered family keeps, checked on a tiny random model of each.

Parameterized over `hybrid_lens.adapters.FAMILIES`: registering a family runs it through this
suite with no test edits. The models are re-initialised so that every component contributes
visibly (`visible_init`), and the fixture checks that zeroing each mixer kind moves the logits
far above float noise: an ablation test on a component that barely contributes could not fail.
"""

from __future__ import annotations

import copy
import inspect
import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from hybrid_lens import HookedHybrid
from hybrid_lens.adapters import FAMILIES
from hybrid_lens.analysis import hidden_state_metrics, logit_lens_kl, token_contributions
from hybrid_lens.configs import tiny_config
from hybrid_lens.conventions import hidden_states_point
from hybrid_lens.evals import perplexity
from hybrid_lens.interventions import Sweep, skip_layer, zero
from hybrid_lens.study.plan import study_conditions
from hybrid_lens.vocabulary import INPUT_POINTS, hook_name

from hybrid_lens.study import runner
from hybrid_lens.study.diagnostics import CONTRIBUTIONS_FILE
from hybrid_lens.study.runner import StudySpec, run_study

from .fixtures import build, random_tokens, stored

# The block- and model-level points: what the bit-exactness tests cache (a cache of every point switches the
# mixers to their eager paths, which round differently; tests/test_cache.py checks that one within rounding)
BLOCK_POINTS = lambda model: model.hook_names(inner=False)  # noqa: E731
VISIBLE = 1e-3  # least change of the logits, relative to their largest value, that zeroing any component
# kind must cause: float32 rounding is ~1e-7 of it, so an ablation that does nothing cannot pass


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def built(request):
    """(family, plain reference, HookedHybrid) with identical weights."""
    family = request.param
    reference, model = build(family, visible=True)
    tokens = random_tokens(2, 12)
    with torch.no_grad():
        clean = reference(tokens).logits
    for kind in {k for components in model.layer_components for k in components}:
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(lambda n, k=kind: n.endswith(f"hook_{k}_out"),
                                                           lambda x, hook: torch.zeros_like(x))])
        change = ((ablated - clean).abs().max() / clean.abs().max()).item()
        assert change > VISIBLE, f"{family}: zeroing {kind} moves the logits by only {change:.1e} of their scale"
    return family, reference, model


@pytest.fixture(scope="module")
def tokens():
    return random_tokens(2, 12)


@torch.no_grad()
def test_no_hooks_reproduces_transformers_logits_exactly(built, tokens):
    _, reference, model = built
    assert torch.equal(model(tokens), reference(tokens).logits)


@torch.no_grad()
def test_cache_equals_output_hidden_states(built, tokens):
    family, reference, model = built
    hidden = reference(tokens, output_hidden_states=True).hidden_states
    _, cache = model.run_with_cache(tokens, names_filter=BLOCK_POINTS(model))
    assert len(hidden) == model.n_layers + 1
    point = hidden_states_point(family)  # read from the installed release: Mamba omits the embeddings
    for layer in range(model.n_layers):
        assert torch.equal(cache[hook_name(layer, point)], hidden[layer])
    assert torch.equal(cache["ln_final.hook_normalized"], hidden[-1])


@torch.no_grad()
def test_unembed_of_the_final_norm_reproduces_the_logits_exactly(built, tokens):
    """`unembed` applies the family's logit multiplier or divisor as `transformers` does, bit for bit."""
    _, reference, model = built
    _, cache = model.run_with_cache(tokens, names_filter=BLOCK_POINTS(model))
    assert torch.equal(model.unembed(cache["ln_final.hook_normalized"]), reference(tokens).logits)


@torch.no_grad()
def test_weight_views_alias_the_model_and_read_its_values(built, tokens):
    """`hook_embed` is `W_E[tokens]` bit for bit (with the family's embedding multiplier), and `W_E` / `W_U`
    are the `transformers` weights themselves (same storage) wherever the family scales neither."""
    family, _, model = built
    _, cache = model.run_with_cache(tokens, names_filter="hook_embed")
    assert torch.equal(cache["hook_embed"], model.W_E[tokens])
    embedding = model.hf_model.get_input_embeddings().weight
    unscaled = not isinstance(FAMILIES[family].embed_scale(model.hf_model), torch.Tensor) \
        and FAMILIES[family].embed_scale(model.hf_model) == 1
    assert (model.W_E.data_ptr() == embedding.data_ptr()) == unscaled
    if model.adapter.logit_transform is None:
        lm_head = model.hf_model.lm_head.weight
        same = model.adapter.logit_scale(model.hf_model) == 1 == model.adapter.logit_divisor(model.hf_model)
        assert (model.W_U.data_ptr() == lm_head.data_ptr()) == same
    with pytest.raises(AttributeError, match="no learned positional embedding"):
        model.W_pos


@torch.no_grad()
def test_start_at_layer_continues_the_pass_exactly(built, tokens):
    """Entering at block k with the residual stream that enters it gives the logits and the loss of the
    whole pass bit for bit (blocks before k and `hook_embed` do not run), with or without the ids."""
    _, _, model = built
    logits, loss = model(tokens, return_type="both")
    for start in (0, model.n_layers // 2, model.n_layers):
        resid = model(tokens, stop_at_layer=start)
        with model.hooks(fwd_hooks=[("hook_embed", lambda value, hook: 1 / 0)]):  # must not fire
            entered, entered_loss = model(resid, start_at_layer=start, tokens=tokens, return_type="both")
        assert torch.equal(entered, logits) and torch.equal(entered_loss, loss), start
        if start and model.adapter.blocks_read_embeddings:
            with pytest.raises(ValueError, match="needs tokens="):
                model(resid, start_at_layer=start)
        else:
            assert torch.equal(model(resid, start_at_layer=start), logits), start


@torch.no_grad()
def test_block_values_are_the_contributions_added_to_the_residual(built, tokens):
    """resid_post = resid_pre + the block's residual terms (mixers then MLP), to float rounding; each
    term added to what the family's skip path carries (the stream itself, except e.g. MiniMax's
    alpha * norm(stream))."""
    _, _, model = built
    _, cache = model.run_with_cache(tokens)
    family = model.adapter
    for block, layer in zip(model.blocks, family.layers(model.hf_model)):
        terms = family.block_of(block.layer.block_key).residual_terms
        total = cache[hook_name(block.index, "resid_pre")]
        for kind in terms:
            total = family.skip_path(block, layer, kind)(total).double() + cache[hook_name(block.index, kind)].double()
        post = cache[hook_name(block.index, "resid_post")].double()
        assert torch.allclose(total, post, atol=1e-5 * post.abs().max().item()), (block.index, terms)


@torch.no_grad()
def test_a_norm_applied_to_parts_of_the_stream_sums_to_its_output(built, tokens):
    """At every block input (mixers' and MLP's) and the final norm, `apply_ln_to_stack` of the parts of the stream
    (`decompose_resid`; MiniMax, whose stream is no sum: the stream itself) sums to what that norm output in the
    forward pass (read with plain torch hooks); refused where no norm reads the stream alone (Zamba2's hybrid
    blocks: their components feed the Mamba input)."""
    _, _, model = built
    inputs, handles = [], []
    for layer in range(model.n_layers + 1):
        for mlp_input in (False, True):
            try:
                norm = model.block_norm(layer, mlp_input)
            except ValueError as error:
                assert "has no MLP" in str(error) or "reads the residual stream alone" in str(error)
                continue
            if norm is not None and norm not in [entry[2] for entry in inputs]:
                inputs.append((layer, mlp_input, norm, []))
                handles.append(norm.register_forward_hook(lambda _m, _a, out, seen=inputs[-1][3]: seen.append(out)))
    try:
        _, cache = model.run_with_cache(tokens, names_filter=BLOCK_POINTS(model))
    finally:
        for handle in handles:
            handle.remove()
    assert inputs
    for layer, mlp_input, norm, outputs in inputs:
        if model.adapter.additive:
            parts = cache.decompose_resid(layer, mlp_input=mlp_input and layer < model.n_layers)
        else:
            parts = cache.accumulated_resid(layer, mlp_input=mlp_input and layer < model.n_layers)[-1:]
        normed = cache.apply_ln_to_stack(parts, layer, mlp_input=mlp_input).sum(0)
        expected = outputs[-1] if layer < model.n_layers else cache["ln_final.hook_normalized"]
        assert torch.allclose(normed, expected, rtol=1e-4, atol=1e-5 * expected.abs().max().item()), (layer, mlp_input)


@torch.no_grad()
def test_decompose_resid_sums_to_the_stream_or_refuses(built, tokens):
    """The embedding plus every residual term sums to the final resid_post (and the direct logit
    attribution is built on it); a family whose blocks renormalise the stream refuses instead."""
    _, _, model = built
    _, cache = model.run_with_cache(tokens)
    final = cache[hook_name(model.n_layers - 1, "resid_post")].double()
    if not model.adapter.additive:
        with pytest.raises(ValueError, match="renormalise"):
            cache.decompose_resid()
        return
    parts, labels = cache.decompose_resid(return_labels=True)
    assert len(labels) == 1 + sum(len(terms) for terms in (layer.residual_terms for layer in model.layout))
    assert torch.allclose(parts.double().sum(0), final, atol=1e-5 * final.abs().max().item())
    if model.adapter.logit_transform is not None:  # soft-capped logits: no linear attribution
        with pytest.raises(NotImplementedError, match="soft-caps"):
            token_contributions(model, cache, tokens)
    elif any(len(terms) > 1 for terms in (layer.residual_terms for layer in model.layout)):
        assert len(token_contributions(model, cache, tokens)) > 0
    else:
        with pytest.raises(ValueError, match="no two paths"):
            token_contributions(model, cache, tokens)


@torch.no_grad()
def test_residual_and_mixer_points_are_writable(built, tokens):
    """A write at each block point reaches the logits; writing back the same value changes nothing."""
    _, reference, model = built
    clean = reference(tokens).logits
    names = [name for name in model.hook_dict if name.startswith("blocks.") and name.count(".") == 2
             and name.rpartition(".")[2] not in INPUT_POINTS]  # TransformerLens's input points: tests/test_tl_switches.py
    for name in names:
        same = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x.clone())])
        assert torch.equal(same, clean), name
        moved = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: x + 1.0)])
        assert (moved - clean).abs().max() > VISIBLE * clean.abs().max(), f"a write to {name} does not reach the logits"


@torch.no_grad()
def test_inner_points_cache_and_leave_the_logits_unchanged(built, tokens):
    """Hooking every inner point (eager mixer paths included; TransformerLens's norm, MLP, score and per-head result
    points too) keeps the logits to float rounding."""
    _, reference, model = built
    clean = reference(tokens).logits
    inner = [name for name in model.hook_dict if (name.count(".") == 3 or name == "ln_final.hook_scale")
             and not name.endswith("hook_state")]
    logits, cache = model.run_with_cache(tokens, names_filter=inner)
    assert set(cache.keys()) >= set(inner) - {n for n in inner if n.endswith("hook_pattern") and "attn." not in n}
    assert torch.allclose(logits, clean, atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_interventions_and_sweeps_run_unchanged(built, tokens):
    """Zeroing each component kind with a `Condition`, alone and in a `Sweep`, equals the same
    ablation written as a plain hook; skipping each layer in a sweep equals its own run."""
    _, _, model = built
    kinds = sorted({k for components in model.layer_components for k in components})
    conditions = [zero(kind) for kind in kinds]
    expected = [model.run_with_hooks(tokens, fwd_hooks=[(lambda n, k=kind: n.endswith(f"hook_{k}_out"),
                                                         lambda x, hook: torch.zeros_like(x))]) for kind in kinds]
    for condition, logits in zip(conditions, expected):
        with condition.apply(model):
            assert torch.equal(model(tokens), logits), condition.name
    for swept, logits in zip(Sweep(conditions, batch=1).logits(model, tokens), expected):
        assert torch.equal(swept, logits)
    skips = [skip_layer(i) for i in range(model.n_layers)]
    for condition, swept in zip(skips, Sweep(skips, batch=1).logits(model, tokens)):
        with condition.apply(model):
            assert torch.equal(swept, model(tokens)), condition.name


@torch.no_grad()
def test_evals_analysis_and_the_study_plan_run_unchanged(built):
    """Perplexity under every study condition (one Sweep) equals perplexity under each condition
    alone; the hidden-state metrics and the logit lens cover every block of the family."""
    _, _, model = built
    text = torch.randint(3, 256, (40,), generator=torch.Generator().manual_seed(2))
    conditions = [c.condition for c in study_conditions(model.layout, trials=1)][:6]
    swept = perplexity(model, text, 16, condition=Sweep(conditions, batch=1), progress=False)
    for condition, result in zip(conditions, swept):
        alone = perplexity(model, text, 16, condition=condition, progress=False)
        assert math.isfinite(result.ppl) and result.ppl == alone.ppl, condition.name
    _, cache = model.run_with_cache(text[None, :12])
    metrics = hidden_state_metrics(cache)
    assert sorted(metrics.layer.unique()) == list(range(model.n_layers))
    assert len(logit_lens_kl(model, cache)) > 0


def test_an_nnsight_trace_reads_and_writes_the_points(built, tokens):
    """Inside an nnsight trace, every block output reads as the cache has it, and zeroing the last
    block's first component gives the logits of the same edit made with a plain hook."""
    _, _, model = built
    last = model.n_layers - 1
    name = hook_name(last, model.layer_components[last][0])
    with torch.no_grad():
        _, cache = model.run_with_cache(tokens, names_filter=BLOCK_POINTS(model))
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda x, hook: torch.zeros_like(x))])
    view = model.nnsight()
    read = {}
    with torch.no_grad(), view.trace(tokens):
        for i in range(model.n_layers):
            read[i] = view.blocks[i].hook_resid_post.output.save()
    for i, value in read.items():
        assert torch.equal(value, cache[hook_name(i, "resid_post")]), i
    with torch.no_grad(), view.trace(tokens):
        point = getattr(view.blocks[last], name.split(".")[2])
        point.output = torch.zeros_like(point.output)
        logits = view.output.save()
    assert torch.equal(logits, edited)


def test_the_study_runner_runs_unchanged(built, tmp_path):
    """The study runner (perplexity under the baseline, group and layer-wise conditions) on a saved
    checkpoint of the family: every planned condition has a finite perplexity, and the per-token view
    is written (or says why it does not apply)."""
    family, reference, model = built
    folder = tmp_path / family
    reference.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    text = tmp_path / "text.txt"
    text.write_text("In the beginning God created the heaven and the earth. " * 6)
    spec = StudySpec(model=str(folder), tasks=("ppl",), groups=("baseline", "group", "layer"), n=2,
                     ppl_source=str(text), ppl_context=32)
    folder = run_study(spec, tmp_path / "study", progress=False).parent
    results = stored(folder, spec)
    assert (runner.model_folder(folder, spec.model) / CONTRIBUTIONS_FILE).read_text().startswith("<div")
    planned = {c.name for c in study_conditions(model.layout, spec.groups, spec.method)}
    assert set(results.condition) == planned
    assert results.value.map(math.isfinite).all()


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batches_give_each_text_its_own_values(built, side):
    """A batch of texts of unequal length, padded on either side with its attention mask, gives every
    text the logits and block outputs of its own unbatched run at its real positions; a family whose
    `transformers` model leaks left padding into the next tokens refuses it."""
    _, _, model = built
    texts = ["In the beginning God created", "And the earth was without form, and void"]
    tokens, mask = model.to_tokens_and_mask(texts, padding_side=side)
    if side == "left" and not model.adapter.left_padding:
        with pytest.raises(ValueError, match="pad on the right"):
            model(tokens, attention_mask=mask)
        return
    logits, cache = model.run_with_cache(tokens, attention_mask=mask)
    for row, text in enumerate(texts):
        solo_logits, solo = model.run_with_cache(text)
        real = mask[row].bool()
        scale = solo_logits.abs().max().item()
        torch.testing.assert_close(logits[row, real], solo_logits[0], atol=1e-4 * scale, rtol=1e-4)
        last = hook_name(model.n_layers - 1, model.layer_components[-1][0])
        torch.testing.assert_close(cache[last][row, real], solo[last][0], atol=1e-4 * solo[last].abs().max().item(),
                                   rtol=1e-4)


@torch.no_grad()
def test_bfloat16_logits_and_cache_are_exact(built, tokens):
    """In bfloat16 too (where a norm's input cast or a float32 residual matters), the logits and the
    cached residuals equal the plain model's exactly."""
    family, _, _ = built
    torch.manual_seed(0)
    hf = AutoModelForCausalLM.from_config(tiny_config(family), dtype=torch.bfloat16).eval()
    reference = copy.deepcopy(hf)
    model = HookedHybrid.from_hf(hf)
    plain = reference(tokens, output_hidden_states=True)
    logits, cache = model.run_with_cache(tokens, names_filter=BLOCK_POINTS(model))
    assert torch.equal(logits, plain.logits)
    point = hidden_states_point(family)
    for layer in range(model.n_layers):
        assert torch.equal(cache[hook_name(layer, point)], plain.hidden_states[layer]), layer


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_bos_default_is_transformer_lens_s(family):
    """`cfg.default_prepend_bos` is what TransformerLens decides for the architecture: its architecture
    adapter's `default_prepend_bos` (TransformerLens 3.9+ and 4.x carry one per architecture), or its
    default, True, for an architecture it has no adapter for."""
    factory = pytest.importorskip("transformer_lens.factories.architecture_adapter_factory")
    builder = pytest.importorskip("transformer_lens.model_bridge.sources._bridge_builder")
    architecture = FAMILIES[family].architectures[0]
    expected = True
    if architecture in factory.SUPPORTED_ARCHITECTURES:
        config = builder.build_bridge_config_from_hf(tiny_config(family), architecture, family, torch.float32)
        expected = factory.ArchitectureAdapterFactory.select_architecture_adapter(config).cfg.default_prepend_bos
    assert FAMILIES[family].prepend_bos == expected
    model = HookedHybrid.from_config(tiny_config(family))
    assert model.cfg.default_prepend_bos == expected


def test_hybrid_lens_models_lists_every_family(capsys):
    """`hybrid-lens models` names every registered family with its transformers classes and layer kinds."""
    from hybrid_lens.cli import main

    assert main(["models"]) == 0
    listed = capsys.readouterr().out
    assert f"Supported families ({len(FAMILIES)};" in listed
    for name, family in FAMILIES.items():
        line = next(line for line in listed.splitlines() if line.strip().startswith(f"{name}:"))
        assert all(arch in line for arch in family.architectures), line
        assert all("+".join(block.components) in line for block in family.blocks.values()), line


def test_the_layout_is_the_hook_points_and_the_config(built):
    """Every layer's layout (block key, components, MLP, midpoint) is what the config and the module
    tree say: the block key read from the config, and exactly the block-level hook points it implies."""
    _, _, model = built
    assert [layer.block_key for layer in model.layout] == list(model.adapter.block_keys(model.hf_model.config))
    for layer in model.layout:
        points = {name.split(".")[2] for name in model.hook_dict
                  if name.startswith(f"blocks.{layer.index}.hook_") and name.count(".") == 2}
        expected = {f"hook_{kind}_out" for kind in layer.components} | {"hook_resid_pre", "hook_resid_post"}
        expected |= {"hook_resid_mid"} if layer.has_resid_mid else set()
        expected |= {"hook_shared_out"} if layer.components != layer.residual_terms else set()  # Zamba2's shared block
        reads_stream = layer.components == layer.residual_terms  # TransformerLens's input points (not Zamba2's shared)
        expected |= {"hook_mlp_in"} if layer.has_mlp and reads_stream else set()
        if "attn" in layer.mixers and reads_stream and model.blocks[layer.index].attn.qkv is not None:
            expected |= {"hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input"}
        assert points == expected, layer
        assert layer.has_mlp == ("mlp" in layer.components) and layer.index in model.layout.layers_with("block")


@torch.no_grad()
def test_cfg_tells_the_truth(built, tokens):
    """`model.cfg` against the model itself: heads and head width as the attention hook points are
    shaped (None without attention), rotary iff the logits depend on the position ids, RMS iff the
    final norm is not shift-invariant (a LayerNorm subtracts the mean), no `d_mlp` without an MLP."""
    _, reference, model = built
    cfg = model.cfg
    attention = model.layout.layers_with("attn")
    if attention:
        name = hook_name(attention[0], "attn", "hook_q")
        _, cache = model.run_with_cache(tokens, names_filter=name)
        assert cache[name].shape[-2:] == (cfg.n_heads, cfg.d_head)
        assert cfg.n_heads == model.hf_model.config.num_attention_heads
    else:
        assert cfg.n_heads is None and cfg.d_head is None and not hasattr(model.hf_model.config, "num_attention_heads")
    assert (cfg.d_mlp is None) == (not model.layout.layers_with("mlp"))
    assert repr(cfg).startswith("LensConfig(")
    stretched = torch.arange(tokens.shape[1]).expand_as(tokens) * 3
    if "position_ids" in inspect.signature(type(reference).forward).parameters:
        moved = not torch.equal(reference(tokens, position_ids=stretched).logits, reference(tokens).logits)
    else:
        moved = False
    assert (cfg.positional_embedding_type == "rotary") == moved, cfg.positional_embedding_type
    assert cfg.positional_embedding_type in ("rotary", None)
    norm = model.adapter.final_norm(reference)
    x = torch.randn(3, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    shift_invariant = torch.allclose(norm(x + 5.0), norm(x), atol=1e-4)
    assert cfg.normalization_type == ("LN" if shift_invariant else "RMS")


@torch.no_grad()
def test_unwrap_gives_back_the_plain_model(built, tokens):
    """Unwrapping a hooked copy (even with hooks attached and every tap on) restores the plain model:
    its own forwards, no torch hooks, logits bit-identical; it wraps again, and the unwrapped view refuses
    to run."""
    _, reference, _ = built
    hf = copy.deepcopy(reference)
    def own_state():  # replaced forwards and torch hooks (transformers may keep its own output-recording hooks)
        return {name: ("forward" in vars(module), len(module._forward_hooks), len(module._forward_pre_hooks))
                for name, module in hf.named_modules()}

    before = own_state()
    model = HookedHybrid.from_hf(hf)
    model.add_hook("hook_embed", lambda value, hook: value, is_permanent=True)
    model.add_hook(lambda name: name.endswith("hook_pattern"), lambda value, hook: value)
    for tap in model._wrapping.taps:
        tap.set_always_on(True)
    model(tokens)
    assert model.unwrap() is hf
    assert own_state() == before
    assert torch.equal(hf(tokens).logits, reference(tokens).logits)
    with pytest.raises(RuntimeError, match="unwrapped"):
        model(tokens)
    assert torch.equal(HookedHybrid.from_hf(hf)(tokens), reference(tokens).logits)


def test_hidden_states_convention_is_probed_without_touching_the_callers_random_state():
    """`conventions.hidden_states_point` runs a tiny model of the family under the installed `transformers`
    (Mamba-2 changed convention in 5.25); the probe leaves torch's global random state as it was."""
    hidden_states_point.cache_clear()
    state = torch.random.get_rng_state()
    assert {hidden_states_point(name) for name in ("mamba", "mamba2", "qwen2")} <= {"resid_pre", "resid_post"}
    assert torch.equal(torch.random.get_rng_state(), state)
