"""TransformerLens's input points and switches (`hook_attn_in`, `hook_q_input` / `hook_k_input` / `hook_v_input`,
`hook_mlp_in`, `set_use_*`) on every registered family that has the concept, checked against plain torch hooks on
the `transformers` modules of an identical model: an edit of an input point must equal feeding the attention (or
the MLP's norm) the edited stream, and nothing else. `tests/test_tl_conformance.py` compares the same points with
TransformerLens itself on a Llama.
"""

from __future__ import annotations

import copy
from operator import attrgetter

import pytest
import torch

from .fixtures import build, no_hooks_left, random_tokens
from .test_tl_points import built, close, tokens  # noqa: F401 (fixtures: every family, visible weights)


def attention_block(model):
    """The first block whose softmax attention has per-head inputs and reads the block's input stream (the first
    mixer, or mixers side by side), with its `Mixer` spec; None if there is none."""
    for block in model.blocks:
        spec = model.adapter.block_of(block.layer.block_key)
        if "hook_attn_in" in block._modules and (spec.parallel or spec.mixers[0].kind == "attn"):
            return block, next(mixer for mixer in spec.mixers if mixer.kind == "attn")
    return None


def delta_of(tokens, d_model, seed=3):
    return 0.5 * torch.randn(*tokens.shape, d_model, generator=torch.Generator().manual_seed(seed))


def run_with_plain_hooks(reference, tokens, hooks):
    """`reference(tokens)` logits with plain torch hooks: `hooks` is a list of (module, kind, fn, with_kwargs)."""
    handles = []
    try:
        for module, kind, fn, with_kwargs in hooks:
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            handles.append(register(fn, with_kwargs=with_kwargs))
        return reference(tokens).logits
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def test_input_points_where_the_concept_exists(built, tokens):
    """Softmax attention with q/k/v projections has the four per-head inputs, a block with an MLP `hook_mlp_in`;
    elsewhere asking for them says where they are. Unedited, they leave the logits bit for bit as they were."""
    family, _, model = built
    plain = model(tokens)
    names = [name for name in model.hook_dict if name.endswith(("_input", "hook_attn_in", "hook_mlp_in"))
             and ".hook_" in name and name.count(".") == 2]
    for block in model.blocks:
        reads_stream = not model.adapter.block_of(block.layer.block_key).feeds_mixer  # not Zamba2's shared block
        has_attention = reads_stream and "attn" in block.layer.mixers and getattr(block, "attn").qkv is not None
        assert ("hook_q_input" in block._modules) == has_attention, (family, block.index)
        assert ("hook_mlp_in" in block._modules) == (reads_stream and block.layer.has_mlp), (family, block.index)
        if not has_attention:
            with pytest.raises(KeyError, match="no softmax attention with q/k/v projections reading"):
                model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{block.index}.hook_attn_in", lambda v, hook: v)])
    if not names:
        return
    logits, cache = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(logits, plain), family
    for name in names:  # writing the same values back changes nothing, bit for bit
        assert torch.equal(model.run_with_hooks(tokens, fwd_hooks=[(name, lambda value, hook: value.clone())]), plain)
    d_model, n_kv = model.cfg.d_model, None
    for name in names:
        value = cache[name]
        if name.endswith("hook_mlp_in"):
            assert value.shape == (*tokens.shape, d_model)
            continue
        qkv = model.blocks[int(name.split(".")[1])].attn.qkv
        heads = qkv.n_kv if name.endswith(("hook_k_input", "hook_v_input")) else qkv.n_heads
        assert value.shape == (*tokens.shape, heads, d_model), name
    assert no_hooks_left(model)


@torch.no_grad()
def test_an_edited_attention_input_is_what_the_attention_reads(built, tokens):
    """`hook_attn_in + delta` (every head alike) = the attention module fed `in_scale * norm(resid + delta)` by a plain
    pre-hook, the other mixers (Falcon-H1's SSM beside it) and the skip path untouched."""
    family, reference, model = built
    found = attention_block(model)
    if found is None:
        pytest.skip(f"{family}: no softmax attention reading the block's input stream")
    block, mixer = found
    layer = model.adapter.layers(reference)[block.index]
    delta = delta_of(tokens, model.cfg.d_model)
    seen = {}

    def remember(_module, args, kwargs):
        seen["resid"] = args[0] if args else kwargs["hidden_states"]

    def feed(module, args, kwargs):
        resid = seen["resid"] + delta
        normed = resid if mixer.norm is None else attrgetter(mixer.norm)(layer)(resid)
        scale = mixer.in_scale
        normed = normed if scale is None else normed * (getattr(layer, scale) if isinstance(scale, str) else scale)
        if args:
            return (normed, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": normed}

    attention = attrgetter(mixer.module)(layer)
    expected = run_with_plain_hooks(reference, tokens, [(layer, "pre", remember, True), (attention, "pre", feed, True)])
    name = f"blocks.{block.index}.hook_attn_in"
    ours = model.run_with_hooks(tokens, fwd_hooks=[(name, lambda value, hook: value + delta[:, :, None])])
    close(ours, expected, family)
    assert not torch.allclose(ours, model(tokens), atol=1e-4), f"{family}: editing {name} changes nothing"
    split = model.run_with_hooks(tokens, fwd_hooks=[  # the same edit through the split inputs
        (f"blocks.{block.index}.hook_{part}_input", lambda value, hook: value + delta[:, :, None]) for part in "qkv"])
    close(split, expected, f"{family} split")
    assert no_hooks_left(model)


@torch.no_grad()
def test_an_edited_query_input_changes_only_that_head(built, tokens):
    family, _, model = built
    found = attention_block(model)
    if found is None:
        pytest.skip(f"{family}: no softmax attention reading the block's input stream")
    block, _ = found
    names = [f"blocks.{block.index}.attn.hook_q", f"blocks.{block.index}.attn.hook_k"]
    _, before = model.run_with_cache(tokens, names_filter=names)

    def edit(value, hook):
        value[:, 3:, 1] += torch.linspace(-1.0, 1.0, value.shape[-1])  # not a rescaling: a norm would undo it
        return value

    with model.hooks(fwd_hooks=[(f"blocks.{block.index}.hook_q_input", edit)]):
        _, after = model.run_with_cache(tokens, names_filter=names)
    changed = (before[names[0]] != after[names[0]]).any(-1)  # [batch, pos, head]
    assert changed[:, 3:, 1].any() and not changed[:, :3].any() and not changed[:, :, [0, *range(2, changed.shape[-1])]].any()
    assert torch.equal(before[names[1]], after[names[1]]), "the keys read the unedited stream"


@torch.no_grad()
def test_an_edited_mlp_input_is_what_the_mlp_norm_reads(built, tokens):
    """`hook_mlp_in + delta` = a plain pre-hook adding delta to the input of the MLP's norm (the skip path keeps the
    stream)."""
    family, reference, model = built
    block = next((block for block in model.blocks if "hook_mlp_in" in block._modules), None)
    spec = None if block is None else model.adapter.block_of(block.layer.block_key)
    if block is None or spec.mlp.norm is None or spec.mlp.normed_skip is not None:
        pytest.skip(f"{family}: no MLP with a pre-norm beside a plain skip path")
    layer = model.adapter.layers(reference)[block.index]
    delta = delta_of(tokens, model.cfg.d_model, seed=4)
    norm = attrgetter(spec.mlp.norm)(layer)
    expected = run_with_plain_hooks(reference, tokens, [(norm, "pre", lambda _m, args: (args[0] + delta,), False)])
    if any(norm is attrgetter(mixer.norm)(layer) for mixer in spec.mixers if mixer.norm):
        pytest.skip(f"{family}: the MLP's norm is the mixers' norm too")
    ours = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{block.index}.hook_mlp_in", lambda v, hook: v + delta)])
    close(ours, expected, family)
    assert not torch.allclose(ours, model(tokens), atol=1e-4)


def test_switches():
    """None (unset): fed when named, out of the every-point cache; True: cached by default; False: refused with
    TransformerLens's AssertionError, and an attached hook is no longer fed."""
    _, model = build("qwen3_5")
    tokens = random_tokens(1, 6)
    attention = model.components("attn")[0].layer
    names = {"use_attn_result": f"blocks.{attention}.attn.hook_result",
             "use_split_qkv_input": f"blocks.{attention}.hook_q_input",
             "use_attn_in": f"blocks.{attention}.hook_attn_in", "use_hook_mlp_in": "blocks.0.hook_mlp_in"}
    _, cache = model.run_with_cache(tokens)
    assert not any(name in cache for name in names.values()) and "blocks.0.linear_attn.hook_result" not in cache
    for switch, name in names.items():
        assert getattr(model.cfg, switch) is None
        _, cache = model.run_with_cache(tokens, names_filter=name)
        assert list(cache) == [name]
        getattr(model, f"set_{switch}")(True)
        _, cache = model.run_with_cache(tokens)
        assert name in cache and model.cfg.__getattribute__(switch) is True
        seen = []
        model.add_hook(name, lambda value, hook: seen.append(hook.name))
        getattr(model, f"set_{switch}")(False)
        model(tokens)
        assert seen == [], f"{name} fed while {switch} is off"
        with pytest.raises(AssertionError, match=f"set_{switch}\\(True\\)"):
            model.add_hook(name, lambda value, hook: value)
        with pytest.raises(AssertionError, match=switch):
            model.run_with_cache(tokens, names_filter=name)
        model.reset_hooks()
        setattr(model.cfg, switch, None)
        assert getattr(model.switches, switch) is None
    with pytest.raises(TypeError, match="True, False or None"):
        model.set_use_attn_in("yes")
    assert no_hooks_left(model)


def test_a_copy_keeps_its_own_switches():
    _, model = build("llama")
    model.set_use_split_qkv_input(True)
    copied = copy.deepcopy(model)
    assert copied.cfg.use_split_qkv_input is True and all(block.switches is copied.switches for block in copied.blocks)
    copied.set_use_split_qkv_input(False)
    assert model.cfg.use_split_qkv_input is True
    with pytest.raises(AssertionError):
        copied.add_hook("blocks.0.hook_q_input", lambda value, hook: value)
    model.add_hook("blocks.0.hook_q_input", lambda value, hook: value)
    model.reset_hooks()


@torch.no_grad()
def test_grouped_query_attention_refuses_heads_of_a_group_read_apart():
    """Under grouped-query attention a group's heads share keys and values: an edit of `hook_attn_in` that gives them
    different inputs is refused (saying what to do) and leaves nothing attached; an edit alike within groups runs and
    equals the same edit through the split inputs."""
    _, model = build("llama")  # 4 query heads, 2 key-value heads
    tokens = random_tokens(1, 8)
    apart = lambda value, hook: value * torch.arange(1.0, 5.0)[:, None]  # noqa: E731
    with pytest.raises(ValueError, match="set_use_split_qkv_input"):
        model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_in", apart)])
    assert no_hooks_left(model)
    alike = lambda value, hook: value * torch.tensor([1.0, 1.0, 2.0, 2.0])[:, None]  # noqa: E731
    ours = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.hook_attn_in", alike)])
    split = model.run_with_hooks(tokens, fwd_hooks=[
        ("blocks.0.hook_q_input", alike),
        *((f"blocks.0.hook_{part}_input", lambda value, hook: value * torch.tensor([1.0, 2.0])[:, None]) for part in "kv")])
    assert torch.equal(ours, split) and not torch.equal(ours, model(tokens))
