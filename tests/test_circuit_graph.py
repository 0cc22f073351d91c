"""Circuit discovery (`hybrid_lens.circuits`): the graph of every reference family, exact edge patching checked
against independent hooks (a node fed the corrupted run's input through plain torch pre-hooks), EAP checked
against finite differences and EAP-IG against its completeness, and circuits evaluated by exact patching.

The models are tiny random models re-initialised with `visible_init`, so every mixer moves the logits."""

from __future__ import annotations

from operator import attrgetter

import pytest
import torch
from scipy.stats import spearmanr

from hybrid_lens import HookedHybrid
from hybrid_lens.circuits import (Graph, Node, acdc, circuit_metric, edge_attribution, edge_patch, faithfulness_curve,
                                  patched_logits, prune, source_outputs)
from hybrid_lens.interventions import logit_diff_metric

from .fixtures import FAMILIES, build, random_tokens

BUNDLED = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
LAYERS = {"qwen3_5": 4, "falcon_h1": 3, "qwen2": 3}
# Falcon-H1's published attention input multiplier is 1: another value makes a node's input its own recipe
OVERRIDES = {"falcon_h1": dict(attention_in_multiplier=1.7)}


def metric(logits):
    """Log-probability of token 7 minus token 9 at the last position, averaged over rows."""
    logprobs = logits[:, -1].log_softmax(-1)
    return (logprobs[:, 7] - logprobs[:, 9]).mean()


def runs(family: str, batch: int = 2, length: int = 8):
    """A visible tiny model of `family` and a clean / corrupted pair differing at a few positions."""
    _, model = build(family, visible=True, num_hidden_layers=LAYERS[family], **OVERRIDES.get(family, {}))
    clean = random_tokens(batch, length, seed=1)
    corrupt = clean.clone()
    corrupt[:, [1, 4, length - 1]] = random_tokens(batch, 3, seed=2)
    return model, Graph.of(model), clean, corrupt


def torch_hooks(model) -> list:
    """Every torch hook on the wrapped model's modules (wrapping installs some for good)."""
    return [(name, list(module._forward_pre_hooks.values()), list(module._forward_hooks.values()))
            for name, module in model.hf_model.named_modules()]


def module_of(model, node: Node) -> torch.nn.Module:
    """The `transformers` module computing `node` (its MLP's first module)."""
    layer = model.adapter.layers(model.hf_model)[node.layer]
    spec = model.adapter.block_of(model.layout[node.layer].block_key)
    if node.kind == "mlp":
        return attrgetter(spec.mlp.modules[0])(layer)
    return attrgetter(next(m.module for m in spec.mixers if m.kind == node.kind))(layer)


@torch.no_grad()
def fed_its_corrupted_input(model, node: Node, clean, corrupt):
    """Logits of `clean` with `node`'s module fed the input it gets in the `corrupt` run (plain torch hooks)."""
    module, seen = module_of(model, node), {}
    handle = module.register_forward_pre_hook(lambda m, args: seen.setdefault("input", args[0]))
    model(corrupt)
    handle.remove()
    handle = module.register_forward_pre_hook(lambda m, args: (seen["input"], *args[1:]))
    try:
        return model(clean)
    finally:
        handle.remove()


def test_graph_follows_the_layout_of_each_family():
    _, falcon = build("falcon_h1", num_hidden_layers=2)
    graph = Graph.of(falcon)
    names = [node.name for node in graph.sources]
    assert names == ["embed", "0_ssm", "0_attn", "0_mlp", "1_ssm", "1_attn", "1_mlp"]
    assert [node.name for node in graph.targets] == ["0_ssm", "0_attn", "0_mlp", "1_ssm", "1_attn", "1_mlp", "logits"]
    edges = {str(edge) for edge in graph.edges}
    assert "0_ssm->0_attn" not in edges and "0_attn->0_ssm" not in edges  # parallel: one shared input
    assert {"0_ssm->0_mlp", "0_attn->0_mlp", "0_mlp->1_attn", "embed->logits", "1_mlp->logits"} <= edges
    # every source feeds every target after it: 1 + 1 + 3 + 4 + 4 + 6 + 7 edges
    assert len(graph.edges) == 26 and graph.allowed.sum() == 26
    _, qwen = build("qwen3_5", num_hidden_layers=4)
    graph = Graph.of(qwen)
    assert [node.name for node in graph.targets[:3]] == ["0_linear_attn", "0_mlp", "1_linear_attn"]
    assert "0_linear_attn->3_attn" in {str(edge) for edge in graph.edges}
    assert len(graph.edges) == sum(range(1, 10))  # sequential: the k-th target reads k sources


def test_heads_are_sources_whose_outputs_sum_to_their_mixer():
    model, graph, clean, _ = runs("falcon_h1")
    split = Graph.of(model, heads=True)
    outputs, _ = source_outputs(model, graph, clean)
    head_outputs, _ = source_outputs(model, split, clean)
    assert len(split.targets) == len(graph.targets)  # a mixer's heads share its input
    for index, source in enumerate(graph.sources):
        parts = [i for i, node in enumerate(split.sources) if (node.layer, node.kind) == (source.layer, source.kind)]
        heads = getattr(model.blocks[source.layer], source.kind).heads if source.layer is not None else None
        if heads is None:
            assert len(parts) == 1
            continue
        assert len(parts) == heads.n_heads
        bias = heads.b_O * (heads.factor() if heads.factor() is not None else 1.0)
        torch.testing.assert_close(head_outputs[parts].sum(0) + bias, outputs[index], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("family", ["qwen3_5", "falcon_h1"])
def test_patching_the_edges_of_every_head_is_patching_the_mixer_edge(family):
    model, graph, clean, corrupt = runs(family)
    split = Graph.of(model, heads=True)
    assert split.targets == graph.targets
    mixer = next(node for node in graph.sources if node.kind in ("attn", "linear_attn"))
    target = Node(None, "logits")
    whole = patched_logits(model, graph, clean, source_outputs(model, graph, corrupt)[0],
                           graph.mask([f"{mixer.name}->{target.name}"])[None])
    heads = [f"{node.name}->{target.name}" for node in split.sources if (node.layer, node.kind) == (mixer.layer, mixer.kind)]
    assert len(heads) > 1
    parts = patched_logits(model, split, clean, source_outputs(model, split, corrupt)[0], split.mask(heads)[None])
    torch.testing.assert_close(parts, whole, atol=2e-4, rtol=1e-4)
    _, clean_logits = source_outputs(model, graph, clean)
    assert (whole[0] - clean_logits).abs().max() > 1e-2


@pytest.mark.parametrize("family", ["minimax", "zamba2"])
def test_families_whose_stream_is_not_a_sum_of_nodes_are_refused(family):
    _, model = build(family)
    with pytest.raises(ValueError, match="renormalise|feed another mixer"):
        Graph.of(model)


@pytest.mark.parametrize("family", FAMILIES)
def test_sources_sum_to_the_stream_and_plain_runs_are_untouched(family):
    model, graph, clean, _ = runs(family)
    before = torch_hooks(model)
    with torch.no_grad():
        plain = model(clean)
    outputs, logits = source_outputs(model, graph, clean)
    assert torch.equal(logits, plain)
    _, cache = model.run_with_cache(clean, names_filter=f"blocks.{model.n_layers - 1}.hook_resid_post")
    torch.testing.assert_close(outputs.sum(0), cache[f"blocks.{model.n_layers - 1}.hook_resid_post"],
                               atol=1e-4, rtol=1e-5)
    nothing = torch.zeros(1, *graph.allowed.shape, dtype=torch.bool)
    assert torch.equal(patched_logits(model, graph, clean, outputs, nothing)[0], plain)
    assert torch_hooks(model) == before


@pytest.mark.parametrize("family", FAMILIES)
def test_patching_every_edge_into_a_node_is_feeding_it_the_corrupted_input(family):
    model, graph, clean, corrupt = runs(family)
    corrupt_outputs, corrupt_logits = source_outputs(model, graph, corrupt)
    last = model.n_layers - 1
    kinds = model.layout[last].mixers
    for target in (Node(1, model.layout[1].mixers[-1]), Node(last, kinds[0]), Node(1, "mlp", stage=1)):
        index = graph.targets.index(target)
        patched = torch.zeros(1, *graph.allowed.shape, dtype=torch.bool)
        patched[0, :, index] = graph.allowed[:, index]
        ours = patched_logits(model, graph, clean, corrupt_outputs, patched)[0]
        torch.testing.assert_close(ours, fed_its_corrupted_input(model, target, clean, corrupt), atol=2e-4, rtol=1e-4)
    logits = graph.targets.index(Node(None, "logits"))
    patched = torch.zeros(1, *graph.allowed.shape, dtype=torch.bool)
    patched[0, :, logits] = True
    # the logits read the final stream only: all their edges patched gives the corrupted final stream
    _, cache = model.run_with_cache(corrupt, names_filter=f"blocks.{last}.hook_resid_post")
    ours = patched_logits(model, graph, clean, corrupt_outputs, patched)[0]
    final = cache[f"blocks.{last}.hook_resid_post"]
    with torch.no_grad():
        expected = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{last}.hook_resid_post", lambda v, hook: final)])
    torch.testing.assert_close(ours, expected, atol=2e-4, rtol=1e-4)


def test_the_embedding_edge_into_block_0_is_block_0_fed_the_corrupted_embedding():
    model, graph, clean, corrupt = runs("falcon_h1")
    corrupt_outputs, _ = source_outputs(model, graph, corrupt)
    for kind in ("ssm", "attn"):  # one of two parallel mixers: the other keeps the clean input
        patched = graph.mask([f"embed->0_{kind}"])[None]
        torch.testing.assert_close(patched_logits(model, graph, clean, corrupt_outputs, patched)[0],
                                   fed_its_corrupted_input(model, Node(0, kind), clean, corrupt), atol=1e-5, rtol=1e-5)


def test_an_edge_identical_in_both_runs_changes_nothing_and_groups_stay_apart():
    model, graph, clean, corrupt = runs("qwen3_5")
    corrupt[0] = clean[0]  # row 0: every contribution is the same in both runs
    corrupt_outputs, _ = source_outputs(model, graph, corrupt)
    _, clean_logits = source_outputs(model, graph, clean)
    source, target = graph.edge_index.T
    patched = torch.zeros(len(source), *graph.allowed.shape, dtype=torch.bool)
    patched[torch.arange(len(source)), source, target] = True
    logits = patched_logits(model, graph, clean, corrupt_outputs, patched)
    torch.testing.assert_close(logits[:, 0], clean_logits[0].expand_as(logits[:, 0]), atol=1e-5, rtol=1e-5)
    moved = (logits[:, 1] - clean_logits[1]).abs().amax((1, 2))
    assert (moved > 1e-2).float().mean() > 0.5  # row 1 does change: the test can fail


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_patching_is_the_same_batched_or_one_edge_at_a_time(family):
    model, graph, clean, corrupt = runs(family, batch=1)
    one = edge_patch(model, clean, corrupt, metric, graph, batch_size=1)
    many = edge_patch(model, clean, corrupt, metric, graph, batch_size=64)
    assert list(one.columns) == ["upstream", "downstream", "score"] and len(one) == len(graph.edges)
    torch.testing.assert_close(torch.tensor(many.score.values), torch.tensor(one.score.values), atol=1e-4, rtol=1e-4)
    assert one.score.abs().max() > 1e-2
    # embed -> logits by hand: the final stream plus the corrupted minus the clean embedding
    row = one[(one.upstream == "embed") & (one.downstream == "logits")].score.item()
    _, clean_cache = model.run_with_cache(clean, names_filter="blocks.0.hook_resid_pre")
    _, corrupt_cache = model.run_with_cache(corrupt, names_filter="blocks.0.hook_resid_pre")
    change = corrupt_cache["blocks.0.hook_resid_pre"] - clean_cache["blocks.0.hook_resid_pre"]
    with torch.no_grad():
        patched = model.run_with_hooks(clean, fwd_hooks=[(f"blocks.{model.n_layers - 1}.hook_resid_post",
                                                          lambda v, hook: v + change)])
        assert row == pytest.approx(float(metric(patched) - metric(model(clean))), abs=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_eap_is_the_derivative_of_edge_patching(family):
    """EAP's score of an edge is d/d(eps) of the metric when the edge carries clean + eps (corrupt - clean):
    checked by central finite differences on every edge into three targets."""
    model, graph, clean, corrupt = runs(family, batch=1)
    table = edge_attribution(model, clean, corrupt, metric, graph, method="eap")
    clean_outputs, _ = source_outputs(model, graph, clean)
    corrupt_outputs, _ = source_outputs(model, graph, corrupt)
    eps = 1e-2
    chosen = [i for i, edge in enumerate(graph.edges) if edge.downstream.name in ("1_mlp", "logits")
              or edge.downstream == graph.targets[-2]]
    source, target = graph.edge_index[chosen].T
    patched = torch.zeros(len(chosen), *graph.allowed.shape, dtype=torch.bool)
    patched[torch.arange(len(chosen)), source, target] = True
    ahead = patched_logits(model, graph, clean, clean_outputs + eps * (corrupt_outputs - clean_outputs), patched)
    behind = patched_logits(model, graph, clean, clean_outputs - eps * (corrupt_outputs - clean_outputs), patched)
    slopes = torch.tensor([float(metric(a) - metric(b)) / (2 * eps) for a, b in zip(ahead, behind)])
    scores = torch.tensor(table.score.values[chosen], dtype=torch.float32)
    torch.testing.assert_close(scores, slopes, atol=2e-3 + 0.02 * float(slopes.abs().max()), rtol=0.02)


@pytest.mark.parametrize("name", BUNDLED)
def test_eap_ig_is_complete_on_the_embedding_and_ranks_edges_like_exact_patching(name):
    """The embedding's edges carry its whole effect: with the embedding interpolated, the sum of its EAP-IG
    edge scores is the integrated gradient of the embedding, metric(corrupt) - metric(clean). On the bundled
    (trained) models: along the path between two random-init embeddings the metric of a visible random
    Qwen3.5 swings several times, so a 16-point rule cannot integrate it."""
    model = HookedHybrid.from_pretrained(name)
    graph = Graph.of(model)
    answer = logit_diff_metric(model.to_single_token(" Egypt"), model.to_single_token(" the"))
    clean, corrupt = "went out of the land of", "went out of the city of"
    table = edge_attribution(model, clean, corrupt, answer, graph, method="eap-ig", steps=16)
    gap = table.attrs["corrupt"] - table.attrs["clean"]
    assert abs(gap) > 1
    assert table[table.upstream == "embed"].score.sum() == pytest.approx(gap, rel=0.01)
    exact = edge_patch(model, clean, corrupt, answer, graph, batch_size=64)
    assert spearmanr(exact.score, table.score).statistic > 0.8


def test_circuits_are_checked_by_exact_patching():
    model, graph, clean, corrupt = runs("falcon_h1")
    table = edge_attribution(model, clean, corrupt, metric, graph, steps=4)
    curve = faithfulness_curve(model, clean, corrupt, metric, table, graph, sizes=[0, 5, len(graph.edges)])
    assert curve.edges.tolist() == [0, 5, len(graph.edges)]
    assert curve.recovered.iloc[0] == pytest.approx(0.0, abs=1e-4)
    assert curve.recovered.iloc[-1] == pytest.approx(1.0, abs=1e-4)
    threshold = float(table.score.abs().median())
    kept = prune(graph, table, threshold=threshold)
    assert int(kept.sum()) == int((table.score.abs() >= threshold).sum())
    top = prune(graph, table, top=5)
    assert {f"{graph.sources[s].name}->{graph.targets[t].name}" for s, t in top.nonzero().tolist()} == set(
        table.assign(size=table.score.abs()).nlargest(5, "size").pipe(lambda t: t.upstream + "->" + t.downstream))
    by_hand = circuit_metric(model, clean, corrupt, metric, [top], graph)
    assert by_hand.metric.item() == pytest.approx(curve.metric.iloc[1], abs=1e-5)


def test_acdc_removes_the_edges_whose_exact_patch_moves_the_metric_less_than_the_threshold():
    model, graph, clean, corrupt = runs("qwen3_5")
    assert torch.equal(acdc(model, clean, corrupt, metric, 0.0, graph), graph.allowed)  # nothing moves by < 0
    assert not acdc(model, clean, corrupt, metric, 1e9, graph).any()
    kept = acdc(model, clean, corrupt, metric, 0.05, graph)
    removed = int(graph.allowed.sum() - kept.sum())
    assert 0 < removed < len(graph.edges)
    check = circuit_metric(model, clean, corrupt, metric, [kept], graph)
    assert abs(check.metric.item() - check.attrs["clean"]) <= 0.05 * removed


def test_the_circuit_figure_draws_the_strongest_edges_between_the_graph_nodes():
    from hybrid_lens.viz import circuit_figure

    model, graph, clean, corrupt = runs("falcon_h1")
    table = edge_patch(model, clean, corrupt, metric, graph)
    figure = circuit_figure(graph, table, top=6)
    edges, nodes = figure.data[:-1], figure.data[-1]
    strongest = table.loc[table.score.abs().nlargest(6).index]
    assert [trace.name for trace in edges] == [f"{r.upstream}->{r.downstream}" for r in strongest.itertuples()]
    assert [trace.line.color for trace in edges] == ["#2166ac" if r.score >= 0 else "#b2182b" for r in strongest.itertuples()]
    assert set(nodes.text) == {node.name for node in (*graph.sources, *graph.targets)}
    x = dict(zip(nodes.text, nodes.x))
    assert x["embed"] < x["0_ssm"] == x["0_attn"] < x["0_mlp"] < x["1_ssm"] < x["logits"]
    with pytest.raises(ValueError, match="not in the graph"):
        circuit_figure(graph, table.assign(upstream="9_ssm"))


def test_bad_arguments_are_refused_before_any_pass():
    model, graph, clean, corrupt = runs("qwen2")
    before = torch_hooks(model)
    with pytest.raises(ValueError, match="Unknown method 'acdc'"):
        edge_attribution(model, clean, corrupt, metric, graph, method="acdc")
    with pytest.raises(ValueError, match="steps must be a positive int"):
        edge_attribution(model, clean, corrupt, metric, graph, steps=0)
    with pytest.raises(ValueError, match="differentiable"):
        edge_attribution(model, clean, corrupt, lambda logits: logits.argmax(-1).float().mean(), graph)
    with pytest.raises(ValueError, match="same shape"):
        edge_patch(model, clean, corrupt[:, :5], metric, graph)
    with pytest.raises(ValueError, match="not an edge of this graph"):
        graph.mask(["0_mlp->0_attn"])
    with pytest.raises(ValueError, match="threshold must be a finite number >= 0.0"):
        acdc(model, clean, corrupt, metric, -1.0, graph)
    with pytest.raises(ValueError, match="exactly one of threshold"):
        prune(graph, edge_patch(model, clean, corrupt, metric, graph), threshold=0.1, top=3)
    with pytest.raises(ValueError, match="not edges of the graph"):
        outputs, _ = source_outputs(model, graph, corrupt)
        patched_logits(model, graph, clean, outputs, torch.ones(1, *graph.allowed.shape, dtype=torch.bool))
    assert torch_hooks(model) == before and not any(point._forward_hooks for point in model.hook_dict.values())
