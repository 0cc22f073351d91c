"""Analyses of cached runs: metrics vs hand computations, logit lens, DLA, per-token view, correlation."""

from __future__ import annotations

from html.parser import HTMLParser
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from hybrid_lens.analysis import (
    ablation_kl,
    contributions_html,
    direct_logit_attribution,
    frozen_final_norm,
    hidden_state_metrics,
    layer_metrics,
    logit_attribution,
    logit_lens_kl,
    logit_lens_logits,
    logit_lens_top_k,
    metric_impact_correlation,
    token_contributions,
)
from hybrid_lens.vocabulary import KINDS, ComponentLabel
from hybrid_lens.interventions import scale, zero

from .fixtures import FAMILIES, build

# A component zeroed in layer 1 of each family, and the path it is compared with there.
ZEROED = {"qwen3_5": ("linear_attn", "mlp"), "falcon_h1": ("ssm", "attn"), "qwen2": ("attn", "mlp")}


@pytest.fixture(scope="module", params=FAMILIES)
def setup(request):
    """(family, model) with a random, mixed-sign final-norm gain so that attribution through the norm
    is not the identity."""
    _, model = build(request.param)
    with torch.no_grad():
        model.adapter.final_norm(model.hf_model).weight.normal_(generator=torch.Generator().manual_seed(3))
    return request.param, model


def run(model, tokens):
    with torch.no_grad():
        return model.run_with_cache(tokens)


def test_hidden_state_metrics_equal_hand_computation(setup, tokens):
    _, model = setup
    _, cache = run(model, tokens)
    table = hidden_state_metrics(cache)
    assert list(table.columns) == ["layer", "layer_kind", "component", "metric", "value"]
    assert table.layer_kind.tolist() == [model.layer_types[layer] for layer in table.layer]

    def value(layer, component, metric):
        rows = table[(table.layer == layer) & (table.component == component) & (table.metric == metric)]
        assert len(rows) == 1
        return rows.value.item()

    for layer, mixers in enumerate(model.layer_mixers):
        pre = cache[f"blocks.{layer}.hook_resid_pre"].double().numpy()
        post = cache[f"blocks.{layer}.hook_resid_post"].double().numpy()
        pre_norm = np.linalg.norm(pre, axis=-1)
        norm_change = np.linalg.norm(post - pre, axis=-1) / pre_norm
        cosine = (pre * post).sum(-1) / (pre_norm * np.linalg.norm(post, axis=-1))
        assert value(layer, "block", "norm_change") == pytest.approx(norm_change.mean(), rel=1e-5)
        assert value(layer, "block", "cosine") == pytest.approx(cosine.mean(), rel=1e-5)
        assert set(table[(table.layer == layer) & (table.metric == "output_ratio")].component) == {*mixers, "mlp"}
        for component in (*mixers, "mlp"):
            out = cache[f"blocks.{layer}.hook_{component}_out"].double().numpy()
            ratio = np.linalg.norm(out, axis=-1) / pre_norm
            assert value(layer, component, "output_ratio") == pytest.approx(ratio.mean(), rel=1e-5)

    per_token = hidden_state_metrics(cache, reduction="none")
    assert len(per_token) == len(table) * tokens.numel()
    assert set(per_token.position) == set(range(tokens.shape[1])) and set(per_token.batch) == {0, 1}
    means = per_token.groupby(["layer", "component", "metric"]).value.mean()
    np.testing.assert_allclose(means.loc[list(zip(table.layer, table.component, table.metric))], table.value, rtol=1e-5)
    with pytest.raises(ValueError, match="reduction"):
        hidden_state_metrics(cache, reduction="sum")


def test_zeroed_component_has_zero_output_ratio_attribution_and_share(setup, tokens):
    family, model = setup
    kind, other = ZEROED[family]
    with zero(kind, layers=1).apply(model):
        logits, cache = run(model, tokens)
    table = hidden_state_metrics(cache)
    ratios = table[(table.layer == 1) & (table.metric == "output_ratio")].set_index("component").value
    assert ratios[kind] == 0 and ratios[other] > 0
    assert (table[(table.layer != 1) & (table.metric == "output_ratio")].value > 0).all()

    values, labels = logit_attribution(model, cache, 7)
    assert values[labels.index(ComponentLabel(1, kind))].abs().max() == 0

    per_token = token_contributions(model, cache, tokens)
    layer1 = per_token[per_token.layer == 1]
    expected_share = 0.0 if layer1.path.iloc[0] == kind else 1.0
    assert set(layer1.norm_share) == {expected_share} and set(layer1.dla_share) == {expected_share}


def test_ablation_kl_equals_separate_runs(setup, tokens):
    _, model = setup
    first = model.layer_mixers[0][0]
    table = ablation_kl(model, tokens, components=(first, "mlp"), batch_size=4, reduction="none")
    assert set(table.component) == {first, "mlp"} and (table.metric == "ablation_kl").all()
    assert (table.value > -1e-6).all()
    with torch.no_grad():
        clean = model(tokens).log_softmax(-1)
        for condition, layer, component in [(zero(first, layers=0), 0, first), (zero("mlp", layers=2), 2, "mlp")]:
            with condition.apply(model):
                ablated = model(tokens).log_softmax(-1)
            by_hand = F.kl_div(ablated, clean, log_target=True, reduction="none").sum(-1)
            rows = table[(table.layer == layer) & (table.component == component)].sort_values(["batch", "position"])
            np.testing.assert_allclose(rows.value, by_hand.flatten().numpy(), rtol=1e-4, atol=1e-6)

    skipped = ablation_kl(model, tokens, components=("block",), batch_size=64)
    assert skipped.layer.tolist() == list(range(model.n_layers)) and (skipped.value > 0).all()


def test_ablation_kl_applies_the_given_ablation(setup, tokens):
    _, model = setup

    def unchanged(component, layer):
        return scale(component, 1.0, layers=layer)

    identity = ablation_kl(model, tokens, ablate=unchanged, components=("mlp", "block"))
    assert set(identity.component) == {"mlp", "block"} and identity.value.abs().max() < 1e-6
    with pytest.raises(ValueError, match="No component"):
        ablation_kl(model, tokens, components=("nothing",))


def test_logit_lens_at_last_layer_is_the_model_output(setup, tokens):
    _, model = setup
    logits, cache = run(model, tokens)
    last = model.n_layers - 1
    torch.testing.assert_close(logit_lens_logits(model, cache, layers=[last])[0], logits, rtol=0, atol=1e-6)
    assert logit_lens_logits(model, cache).shape == (model.n_layers, *logits.shape)

    kl = logit_lens_kl(model, cache)
    assert kl.layer.tolist() == list(range(model.n_layers)) and set(kl.metric) == {"kl_to_final"}
    assert abs(kl.value.iloc[-1]) < 1e-6 and (kl.value.iloc[:-1] > 0).all()
    first = F.kl_div(logit_lens_logits(model, cache, layers=[0])[0].log_softmax(-1), logits.log_softmax(-1),
                     log_target=True, reduction="none").sum(-1)
    assert kl.value.iloc[0] == pytest.approx(first.mean().item(), rel=1e-4)

    top = logit_lens_top_k(model, cache, k=3, position=-1, batch=1)
    final = top[top.layer == last]
    expected = logits[1, -1].softmax(-1).topk(3)
    assert final.token_id.tolist() == expected.indices.tolist()
    np.testing.assert_allclose(final.prob, expected.values.numpy(), rtol=1e-5)
    assert final.token.tolist() == [model.to_string([i]) for i in expected.indices.tolist()]


def test_direct_logit_attribution_sums_to_final_logit(setup, tokens):
    family, model = setup
    logits, cache = run(model, tokens)
    values, labels = logit_attribution(model, cache, 7)
    assert labels[0] == "embed" and values.shape == (len(labels), *tokens.shape)
    torch.testing.assert_close(values.sum(0), logits[..., 7], rtol=1e-4, atol=1e-4)
    pair, _ = logit_attribution(model, cache, (7, 9))
    torch.testing.assert_close(pair.sum(0), logits[..., 7] - logits[..., 9], rtol=1e-4, atol=1e-4)
    per_token, _ = logit_attribution(model, cache, tokens)
    torch.testing.assert_close(per_token.sum(0), logits.gather(-1, tokens[..., None])[..., 0], rtol=1e-4, atol=1e-4)

    # The embedding term by hand: RMSNorm with its scale frozen at the final residual.
    norm = model.adapter.final_norm(model.hf_model)
    gain = norm.weight + 1 if family == "qwen3_5" else norm.weight
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))
    final = cache[f"blocks.{model.n_layers - 1}.hook_resid_post"]
    frozen = torch.rsqrt(final.pow(2).mean(-1, keepdim=True) + eps)
    by_hand = (gain * cache["hook_embed"] * frozen) @ model.W_U[:, 7]
    torch.testing.assert_close(values[0], by_hand.detach(), rtol=1e-4, atol=1e-5)

    table = direct_logit_attribution(model, cache, (7, 9))
    assert table.iloc[0][["layer", "layer_kind", "component"]].tolist() == [-1, "embed", "embed"]
    assert len(table) == len(labels) and set(table.metric) == {"dla"}
    assert table.value.sum() == pytest.approx((logits[:, -1, 7] - logits[:, -1, 9]).mean().item(), abs=1e-4)
    rows = direct_logit_attribution(model, cache, 7, position=None, reduction="none")
    assert len(rows) == len(labels) * tokens.numel()
    at_3 = direct_logit_attribution(model, cache, 7, position=3, reduction="none")
    assert set(at_3.position) == {3} and at_3.groupby("batch").value.sum().tolist() == pytest.approx(
        logits[:, 3, 7].tolist(), abs=1e-4)


def test_frozen_norm_rejects_a_layer_norm():
    layer_norm = SimpleNamespace(device=torch.device("cpu"), apply_final_norm=lambda x: F.layer_norm(x, x.shape[-1:]))
    x = torch.randn(1, 4, 16) + 3
    with pytest.raises(ValueError, match="RMSNorm"):
        frozen_final_norm(layer_norm, x)


def test_token_contributions_shares(setup, tokens):
    family, model = setup
    logits, cache = run(model, tokens)
    table = token_contributions(model, cache, tokens, batch=1)
    assert len(table) == model.n_layers * tokens.shape[1]
    assert table.token.tolist()[: tokens.shape[1]] == [model.to_string([i]) for i in tokens[1].tolist()]
    paths = table.drop_duplicates("layer").set_index("layer")[["path", "other"]]
    for layer, mixers in enumerate(model.layer_mixers):
        expected = ("attn", "ssm") if family == "falcon_h1" else (mixers[0], "mlp")
        assert tuple(paths.loc[layer]) == expected

    values, labels = logit_attribution(model, cache, logits.argmax(-1))
    for layer in (0, model.n_layers - 1):
        rows = table[table.layer == layer]
        path, other = paths.loc[layer]
        a = cache[f"blocks.{layer}.hook_{path}_out"][1].norm(dim=-1)
        b = cache[f"blocks.{layer}.hook_{other}_out"][1].norm(dim=-1)
        np.testing.assert_allclose(rows.norm_share, (a / (a + b)).numpy(), rtol=1e-5)
        da = values[labels.index(ComponentLabel(layer, path)), 1].abs()
        db = values[labels.index(ComponentLabel(layer, other)), 1].abs()
        np.testing.assert_allclose(rows.dla_share, (da / (da + db)).numpy(), rtol=1e-4)
    assert table[["norm_share", "dla_share"]].stack().between(0, 1).all()


class SpanCollector(HTMLParser):
    """Per `hl-row` div: the background color and text of each `hl-tok` span."""

    def __init__(self):
        super().__init__()
        self.rows, self.span = [], None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div" and attrs.get("class") == "hl-row":
            self.rows.append([])
        elif tag == "span" and attrs.get("class") == "hl-tok":
            color = [part.split(":")[1].strip() for part in attrs["style"].split(";") if "background-color" in part]
            self.span = [color[0], ""]
            self.rows[-1].append(self.span)

    def handle_data(self, data):
        if self.span is not None:
            self.span[1] += data

    def handle_endtag(self, tag):
        if tag == "span":
            self.span = None


def test_contributions_html_has_one_colored_span_per_token_per_layer(setup):
    family, model = setup
    kind, other = ZEROED[family]
    text = "a<b & 'c' \"d\">"
    tokens = model.to_tokens(text, prepend_bos=False)  # the spans spell the text itself (no BOS)
    with zero(kind, layers=1).apply(model):
        _, cache = run(model, tokens)
    table = token_contributions(model, cache, tokens)
    for share in ("norm_share", "dla_share"):
        parser = SpanCollector()
        parser.feed(contributions_html(table, share=share))
        assert len(parser.rows) == model.n_layers
        for row in parser.rows:
            assert len(row) == tokens.shape[1]
            assert all(color.startswith("rgba(") for color, _ in row)
            assert "".join(t for _, t in row) == text
        red, green, blue = KINDS[other].colour
        assert {color for color, _ in parser.rows[1]} == {f"rgba({red}, {green}, {blue}, 1.000)"}


def test_contributions_html_shows_whitespace_tokens():
    table = pd.DataFrame(dict(layer=0, position=[0, 1, 2], token=["a", "\n", "\t"], path="attn", other="ssm",
                              norm_share=[0.5, 0.75, 0.0]))
    parser = SpanCollector()
    parser.feed(contributions_html(table))
    assert parser.rows == [[["rgba(214, 39, 40, 0.000)", "a"], ["rgba(214, 39, 40, 0.500)", "\u21b5"],
                            ["rgba(31, 119, 180, 1.000)", "\u21e5"]]]


def test_metric_impact_correlation():
    x = np.array([0.3, 1.2, 0.5, 2.0, 0.9, 1.5, 0.1, 0.7])
    layers = np.arange(len(x))
    metrics = pd.DataFrame(dict(layer=layers, layer_kind="ssm+attn", component="block", metric="norm_change", value=x))
    impact = pd.concat([pd.DataFrame(dict(layer=layers, component="ssm", drop=2 * x + 1)),
                        pd.DataFrame(dict(layer=layers, component="attn", drop=-np.exp(x)))])

    by_component = metric_impact_correlation(metrics, impact, "norm_change", on=("layer",), impact_column="drop",
                                             by="component").set_index("component")
    assert by_component.loc["ssm", "pearson_r"] == pytest.approx(1) and by_component.loc["ssm", "spearman_rho"] == 1
    assert by_component.loc["attn", "spearman_rho"] == -1 and by_component.loc["attn", "n"] == len(x)

    pooled = metric_impact_correlation(metrics, impact, "norm_change", on=("layer",), impact_column="drop").iloc[0]
    xs, ys = np.concatenate([x, x]), np.concatenate([2 * x + 1, -np.exp(x)])
    assert pooled.pearson_r == pytest.approx(stats.pearsonr(xs, ys).statistic)
    assert pooled.pearson_p == pytest.approx(stats.pearsonr(xs, ys).pvalue)
    assert pooled.spearman_p == pytest.approx(stats.spearmanr(xs, ys).pvalue) and pooled.n == 2 * len(x)

    with pytest.raises(ValueError, match="No rows of metric"):
        metric_impact_correlation(metrics, impact, "cosine", on=("layer",), impact_column="drop")
    with pytest.raises(pd.errors.MergeError):
        metric_impact_correlation(pd.concat([metrics, metrics]), impact, "norm_change", on=("layer",),
                                  impact_column="drop")


def test_layer_metrics_table(setup, tokens):
    _, model = setup
    table = layer_metrics(model, tokens, batch_size=64)
    assert list(table.columns) == ["layer", "layer_kind", "component", "metric", "value"]
    assert set(table.metric) == {"norm_change", "cosine", "output_ratio", "ablation_kl", "kl_to_final"}
    assert not table.duplicated(["layer", "component", "metric"]).any()
    ablated = table[table.metric == "ablation_kl"]
    expected = {(layer, c) for layer, mixers in enumerate(model.layer_mixers) for c in (*mixers, "mlp", "block")}
    assert set(zip(ablated.layer, ablated.component)) == expected
    result = metric_impact_correlation(table, table[table.metric == "ablation_kl"], "output_ratio")
    n_components = sum(len(mixers) + 1 for mixers in model.layer_mixers)
    assert result.n.item() == n_components and -1 <= result.pearson_r.item() <= 1
