"""SAE-Lens's own `HookedSAETransformer` usage, run on `HookedHybrid`.

Written by us after the usage patterns of SAE-Lens's tests of `HookedSAETransformer`
(`tests/analysis/test_hooked_sae_transformer.py` in SAE-Lens 6): the same calls of SAE-Lens's API
(`add_sae`, `_acts_to_saes`, `_reset_sae`, `reset_saes`, `saes`, `run_with_saes`,
`run_with_cache_with_saes`, `run_with_hooks_with_saes`, `use_error_term`, `exclude_special_tokens`,
transcoders, SAE-Lens's `get_deep_attr` and `_SAEWrapper`), on our models. Every usage test also runs on
SAE-Lens's `HookedSAETransformer` itself (a tiny Llama), so the expectations are SAE-Lens's; the
`HookedHybrid` of the same Llama weights, tiny-qwen3.5 and tiny-falcon-h1 must meet them, with SAEs in
block-level points and in inner points (`attn.hook_z`, `linear_attn.hook_v`, `ssm.hook_y`). The last tests
compare values differentially: the same SAE on `HookedSAETransformer` and on `HookedHybrid` (same weights).

Where the classes differ on purpose (README, `hybrid_lens.sae`): the module standing at a point is our
`SAESplice`, not SAE-Lens's `_SAEWrapper` (both hold `.sae`, `.use_error_term`, `.exclude_special_tokens`),
and a bad name raises instead of logging a warning.
"""

from __future__ import annotations

import pytest
import torch
from transformer_lens.hook_points import HookPoint

sae_lens = pytest.importorskip("sae_lens")  # SAE-Lens 6 needs TransformerLens 3.x

from sae_lens import HookedSAETransformer, StandardSAE, StandardSAEConfig  # noqa: E402
from sae_lens.saes.sae import SAEMetadata  # noqa: E402
from sae_lens.analysis.hooked_sae_transformer import _SAEWrapper, get_deep_attr  # noqa: E402
from sae_lens.saes.transcoder import Transcoder, TranscoderConfig  # noqa: E402

from . import tl_pairs  # noqa: E402
from .fixtures import build  # noqa: E402

PROMPT = "Hello World!"
# where each model's SAEs go: attention z, a second point (inner where the model has one), MLP out, resid_pre
SITES = {
    "sae-lens": ["blocks.0.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre"],
    "llama": ["blocks.0.attn.hook_z", "blocks.1.hook_resid_mid", "blocks.0.hook_mlp_out", "blocks.0.hook_resid_pre"],
    "qwen3_5": ["blocks.3.attn.hook_z", "blocks.1.linear_attn.hook_v", "blocks.1.hook_mlp_out",
                "blocks.0.hook_resid_pre"],
    "falcon_h1": ["blocks.1.attn.hook_z", "blocks.1.ssm.hook_y", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_pre"],
}
SITE_IDS = ["z", "second", "mlp_out", "resid_pre"]


@pytest.fixture(scope="module")
def llama_pair(tmp_path_factory):
    """SAE-Lens's `HookedSAETransformer` and a `HookedHybrid`, both with the weights of one tiny Llama."""
    pair = tl_pairs.tiny_llama(tmp_path_factory.mktemp("sae-reference"))
    reference = HookedSAETransformer(pair.tl.cfg, pair.tl.tokenizer, move_to_device=False)
    reference.load_state_dict(pair.tl.state_dict())
    return reference.eval(), pair.hybrid


@pytest.fixture(scope="module", params=list(SITES))
def model(request, llama_pair):
    name = request.param
    built = {"sae-lens": llama_pair[0], "llama": llama_pair[1]}.get(name) or build(name, visible=True)[1]
    built.sites = SITES[name]
    yield built
    assert not built._acts_to_saes  # every test left the model as it found it


@pytest.fixture(scope="module")
def original_logits(model):
    return model(PROMPT)


SHAPES: dict[tuple[int, str], torch.Size] = {}


def get_hooked_sae(model, act_name: str, seed: int = 0):
    """An SAE-Lens `StandardSAE` for `act_name` (a `hook_z` one reads the heads flattened), with visible biases."""
    if (id(model), act_name) not in SHAPES:  # measured before any SAE stands at the point
        _, cache = model.run_with_cache(PROMPT, names_filter=act_name)
        SHAPES[id(model), act_name] = cache[act_name].shape[2:]
    shape = SHAPES[id(model), act_name]
    hook_z = act_name.endswith("hook_z")
    d_in = shape[-2] * shape[-1] if hook_z else shape[-1]
    torch.manual_seed(seed)
    sae = StandardSAE(StandardSAEConfig(d_in=d_in, d_sae=2 * d_in, dtype="float32", device="cpu",
                                        reshape_activations="hook_z" if hook_z else "none",
                                        metadata=SAEMetadata(hook_name=act_name, prepend_bos=True)))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_dec.normal_(0, 0.1)
    return sae


def get_transcoder(model, layer: int = 0):
    """A transcoder from `blocks.{layer}.hook_resid_mid` to `blocks.{layer}.hook_mlp_out`."""
    torch.manual_seed(layer)
    d_model = model.cfg.d_model
    return Transcoder(TranscoderConfig(d_in=d_model, d_sae=2 * d_model, d_out=d_model, apply_b_dec_to_input=False,
                                       metadata=SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_mid",
                                                            hook_name_out=f"blocks.{layer}.hook_mlp_out")))


@pytest.fixture(params=range(4), ids=SITE_IDS)
def hooked_sae(model, request):
    return get_hooked_sae(model, model.sites[request.param])


@pytest.fixture
def list_of_hooked_saes(model):
    return [get_hooked_sae(model, site) for site in model.sites]


def logits_of(output) -> torch.Tensor:
    return output[0] if isinstance(output, tuple) else output


def assert_close(a, b, atol=1e-5):
    torch.testing.assert_close(a, b, atol=atol, rtol=1e-5)


def assert_same_run(logits, clean):
    """Logits of a run with an error term vs the clean ones: `sae(x) + (x - sae(x))` rounds in float32, and
    the visible-init layers amplify it (measured: up to 1.5e-4 on tiny-qwen3.5 logits up to 3.7), so the
    tolerance is 1e-4 of the largest logit, at least 1e-4 (SAE-Lens's own)."""
    assert_close(logits, clean, atol=1e-4 * max(1.0, clean.detach().abs().max().item()))


def assert_not_close(a, b, atol=1e-5):
    assert not torch.allclose(a, b, atol=atol)


def assert_spliced(model, act_name, sae):
    wrapper = get_deep_attr(model, act_name)
    assert model._acts_to_saes[act_name].sae is sae and wrapper.sae is sae


def assert_hook_point(model, act_names):
    assert all(isinstance(get_deep_attr(model, name), HookPoint) for name in act_names)


class Counter:
    def __init__(self):
        self.count = 0

    def inc(self, *args, **kwargs):
        self.count += 1


def test_model_with_no_saes_matches_original_model(model, original_logits):
    assert len(model._acts_to_saes) == 0
    assert_close(model(PROMPT), original_logits)


def test_model_with_saes_does_not_match_original_model(model, hooked_sae, original_logits):
    model.add_sae(hooked_sae)
    assert len(model._acts_to_saes) == 1
    assert_not_close(original_logits, model(PROMPT))
    model.reset_saes()


def test_add_sae_and_overwrite(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    assert len(model._acts_to_saes) == 1
    assert_spliced(model, act_name, hooked_sae)
    second = get_hooked_sae(model, act_name, seed=1)
    model.add_sae(second)
    assert len(model._acts_to_saes) == 1
    assert_spliced(model, act_name, second)
    model.reset_saes()
    assert_hook_point(model, [act_name])


def test_reset_sae_removes_or_replaces(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae)
    model._reset_sae(act_name)
    assert len(model._acts_to_saes) == 0
    assert_hook_point(model, [act_name])
    model.reset_saes()  # SAE-Lens's _reset_sae leaves hook_dict stale; reset_saes rebuilds it
    second = get_hooked_sae(model, act_name, seed=1)
    model.add_sae(hooked_sae)
    model._reset_sae(act_name, _SAEWrapper(second))  # SAE-Lens's own wrapper class, passed to our model
    assert len(model._acts_to_saes) == 1
    assert_spliced(model, act_name, second)
    model.reset_saes()


def test_reset_saes_all_or_by_name(model, list_of_hooked_saes):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    assert len(model._acts_to_saes) == len(act_names)
    for act_name, sae in zip(act_names, list_of_hooked_saes):
        assert_spliced(model, act_name, sae)
    model.reset_saes(act_names[0])
    assert act_names[0] not in model._acts_to_saes and set(model._acts_to_saes) == set(act_names[1:])
    assert_hook_point(model, act_names[:1])
    model.reset_saes()
    assert len(model._acts_to_saes) == 0
    assert_hook_point(model, act_names)


def test_saes_context_manager_removes_saes_after(model, list_of_hooked_saes):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    with model.saes(saes=list_of_hooked_saes):
        for act_name, sae in zip(act_names, list_of_hooked_saes):
            assert_spliced(model, act_name, sae)
        model.forward(PROMPT)
        model.run_with_cache(PROMPT)
    assert len(model._acts_to_saes) == 0
    assert_hook_point(model, act_names)


def test_saes_context_manager_restores_previous_sae_state(model, list_of_hooked_saes):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    temporary = [get_hooked_sae(model, act_name, seed=1) for act_name in act_names]
    with model.saes(saes=temporary):
        for act_name, sae in zip(act_names, temporary):
            assert_spliced(model, act_name, sae)
        model.forward(PROMPT)
    assert len(model._acts_to_saes) == len(act_names)
    for act_name, sae in zip(act_names, list_of_hooked_saes):
        assert_spliced(model, act_name, sae)
    model.reset_saes()


def test_nested_saes_contexts_restore_each_level(model, list_of_hooked_saes, original_logits):
    outer, other = list_of_hooked_saes[0], list_of_hooked_saes[1]
    act_name = outer.cfg.metadata.hook_name
    inner = get_hooked_sae(model, act_name, seed=1)
    with model.saes(saes=[outer]):
        with_outer = model(PROMPT)
        with model.saes(saes=[inner, other]):
            assert_spliced(model, act_name, inner)
            assert set(model._acts_to_saes) == {act_name, other.cfg.metadata.hook_name}
            assert_not_close(model(PROMPT), with_outer)
        assert list(model._acts_to_saes) == [act_name]
        assert_spliced(model, act_name, outer)
        assert_close(model(PROMPT), with_outer)
    assert len(model._acts_to_saes) == 0
    assert_close(model(PROMPT), original_logits)


def test_run_with_saes_and_run_with_cache_with_saes(model, list_of_hooked_saes, original_logits):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    assert_not_close(model.run_with_saes(PROMPT, saes=list_of_hooked_saes), original_logits)
    assert len(model._acts_to_saes) == 0
    logits, cache = model.run_with_cache_with_saes(PROMPT, saes=list_of_hooked_saes)
    assert_not_close(logits, original_logits)
    assert all(f"{act_name}.hook_sae_acts_post" in cache for act_name in act_names)
    assert len(model._acts_to_saes) == 0
    assert_hook_point(model, act_names)


def test_run_with_cache_caches_the_sae_points(model, list_of_hooked_saes, original_logits):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    logits, cache = model.run_with_cache(PROMPT)  # no filter: SAE points are cached too
    assert_not_close(logits, original_logits)
    for act_name in act_names:
        assert {f"{act_name}.hook_sae_acts_post", f"{act_name}.hook_sae_output"} <= set(cache.keys())
        assert act_name not in cache
    model.reset_saes()


def test_hooks_on_sae_points_fire_once_each(model, list_of_hooked_saes, original_logits):
    act_names = [sae.cfg.metadata.hook_name for sae in list_of_hooked_saes]
    counter = Counter()
    for sae in list_of_hooked_saes:
        model.add_sae(sae)
    logits = model.run_with_hooks(PROMPT, fwd_hooks=[(f"{name}.hook_sae_acts_post", counter.inc) for name in act_names])
    assert_not_close(logits, original_logits)
    assert counter.count == len(act_names) and len(model._acts_to_saes) == len(act_names)
    model.reset_saes()
    counter = Counter()
    logits = model.run_with_hooks_with_saes(PROMPT, saes=list_of_hooked_saes,
                                            fwd_hooks=[(f"{name}.hook_sae_acts_post", counter.inc) for name in act_names])
    assert_not_close(logits, original_logits)
    assert counter.count == len(act_names) and len(model._acts_to_saes) == 0
    assert_hook_point(model, act_names)


def test_use_error_term_gives_back_the_model(model, hooked_sae, original_logits):
    act_name = hooked_sae.cfg.metadata.hook_name
    model.add_sae(hooked_sae, use_error_term=True)
    assert_same_run(model(PROMPT), original_logits)
    model.reset_saes()
    assert_same_run(logits_of(model.run_with_saes(PROMPT, saes=[hooked_sae], use_error_term=True)), original_logits)
    clean, clean_cache = model.run_with_cache(PROMPT, names_filter=act_name)
    logits, cache = model.run_with_cache_with_saes(PROMPT, saes=[hooked_sae], use_error_term=True)
    assert_same_run(logits, clean)
    assert f"{act_name}.hook_sae_acts_post" in cache
    assert_close(cache[f"{act_name}.hook_sae_output"], clean_cache[act_name], atol=1e-5)
    logits, cache = model.run_with_cache_with_saes(PROMPT, saes=[hooked_sae], use_error_term=False)
    assert_not_close(logits, clean, atol=1e-4)
    assert_not_close(cache[f"{act_name}.hook_sae_output"], clean_cache[act_name])


def test_use_error_term_settings(model, hooked_sae):
    act_name = hooked_sae.cfg.metadata.hook_name
    for value, expected in ((True, True), (False, False), (None, False)):
        model.add_sae(hooked_sae, use_error_term=value)
        assert get_deep_attr(model, act_name).use_error_term is expected
    model.reset_saes()
    hooked_sae._use_error_term = True  # the SAE's own setting counts when None is passed
    model.add_sae(hooked_sae, use_error_term=None)
    assert get_deep_attr(model, act_name).use_error_term is True
    model.add_sae(hooked_sae, use_error_term=False)
    assert get_deep_attr(model, act_name).use_error_term is False
    model.reset_saes()
    hooked_sae._use_error_term = False
    with model.saes(saes=[hooked_sae], use_error_term=True):
        assert get_deep_attr(model, act_name).use_error_term is True
    assert hooked_sae.use_error_term is False and len(model._acts_to_saes) == 0
    with pytest.raises(RuntimeError, match="inside"):
        with model.saes(saes=[hooked_sae], use_error_term=True):
            raise RuntimeError("inside")
    assert hooked_sae.use_error_term is False and len(model._acts_to_saes) == 0


def test_hook_z_sae_output_keeps_the_heads(model):
    act_name = model.sites[0]
    sae = get_hooked_sae(model, act_name)
    _, clean = model.run_with_cache(PROMPT, names_filter=act_name)
    logits, cache = model.run_with_cache_with_saes(PROMPT, saes=[sae], use_error_term=False)
    assert cache[f"{act_name}.hook_sae_output"].shape == clean[act_name].shape  # [batch, pos, head, d_head]
    assert cache[f"{act_name}.hook_sae_acts_post"].shape[-1] == 2 * clean[act_name][0, 0].numel()
    assert_not_close(logits, model(PROMPT), atol=1e-4)


def test_transcoders(model, original_logits):
    transcoder = get_transcoder(model)
    act_name, output_hook = transcoder.cfg.metadata.hook_name, transcoder.cfg.metadata.hook_name_out
    model.add_sae(transcoder)
    assert list(model._acts_to_saes) == [act_name]
    assert_not_close(original_logits, model(PROMPT))
    model.reset_saes()
    assert_hook_point(model, [act_name, output_hook])
    model.add_sae(transcoder, use_error_term=True)
    assert_same_run(model(PROMPT), original_logits)
    model.reset_saes()
    with model.saes(saes=[transcoder]):
        assert list(model._acts_to_saes) == [act_name]
        assert_not_close(original_logits, model(PROMPT))
    assert len(model._acts_to_saes) == 0
    logits, cache = model.run_with_cache_with_saes(PROMPT, saes=[transcoder])
    assert_not_close(original_logits, logits)
    assert f"{output_hook}.hook_sae_acts_post" in cache and len(model._acts_to_saes) == 0
    sae = get_hooked_sae(model, model.sites[-1])
    model.add_sae(sae)
    model.add_sae(transcoder)
    assert set(model._acts_to_saes) == {act_name, sae.cfg.metadata.hook_name}
    assert_not_close(original_logits, model(PROMPT))
    model.reset_saes()


def test_gradients_reach_every_spliced_sae_and_transcoder(model, list_of_hooked_saes):
    transcoder = get_transcoder(model, layer=2)  # its points hold none of the SAEs
    modules = [*list_of_hooked_saes, transcoder]
    for module in modules:
        model.add_sae(module)
    model(PROMPT).sum().backward()
    for module in modules:
        assert module.W_enc.grad is not None and module.W_enc.grad.abs().sum() > 0
        assert module.W_dec.grad is not None and module.W_dec.grad.abs().sum() > 0
        module.zero_grad()
    model.zero_grad()
    model.reset_saes()


def test_exclude_special_tokens_bypasses_bos(model):
    act_name = model.sites[-1]
    sae = get_hooked_sae(model, act_name)
    tokens = torch.tensor([[model.tokenizer.bos_token_id, 40, 41, 42]])
    _, clean = model.run_with_cache(tokens, names_filter=act_name)
    for exclude in (True, [model.tokenizer.bos_token_id]):
        _, cache = model.run_with_cache_with_saes(tokens, saes=[sae], exclude_special_tokens=exclude)
        output = cache[f"{act_name}.hook_sae_output"]
        assert torch.equal(output[:, 0], clean[act_name][:, 0])
        assert_not_close(output[:, 1:], clean[act_name][:, 1:])


# --- differentially: the same SAE on HookedSAETransformer and on HookedHybrid with the same weights ----------

DIFFERENTIAL = [dict(), dict(use_error_term=True), dict(exclude_special_tokens=True)]


@pytest.mark.parametrize("site", SITES["llama"], ids=SITE_IDS)
@pytest.mark.parametrize("options", DIFFERENTIAL, ids=["plain", "error_term", "exclude_special_tokens"])
@torch.no_grad()
def test_same_sae_same_results_as_hooked_sae_transformer(llama_pair, site, options):
    reference, hybrid = llama_pair
    tokens = reference.to_tokens(["Hello World!", "The cat sat."], prepend_bos=True)[:, :8]  # BOS first
    sae = get_hooked_sae(reference, site)
    results = [model.run_with_cache_with_saes(tokens, saes=[sae], **options) for model in (reference, hybrid)]
    (expected, expected_cache), (logits, cache) = results
    scale = expected.abs().max()
    assert (logits - expected).abs().max() <= 1e-5 * scale
    for point in ("hook_sae_acts_post", "hook_sae_output"):
        torch.testing.assert_close(cache[f"{site}.{point}"], expected_cache[f"{site}.{point}"], rtol=1e-5, atol=1e-5)
    assert (expected - reference(tokens)).abs().max() > 1e-3 or options  # the SAE matters without error term


@torch.no_grad()
def test_same_transcoder_same_results_as_hooked_sae_transformer(llama_pair):
    reference, hybrid = llama_pair
    tokens = reference.to_tokens("Hello World!")
    transcoder = get_transcoder(reference)
    expected = reference.run_with_saes(tokens, saes=[transcoder])
    assert (hybrid.run_with_saes(tokens, saes=[transcoder]) - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (expected - reference(tokens)).abs().max() > 1e-3

