"""Circuit discovery validated on models that recall in context: EAP-IG and ACDC against exact edge patching.

    nice -n 10 python benchmarks/circuit_validation.py --out benchmarks/results/circuit_validation_cpu.md

For each model (by default the bundled planted-mechanism models, trained on recall only; any model whose
vocabulary covers the recall ids 3-66 works),
corruption and graph granularity (components; heads as sources), a batch of MQAR prompts ending at one
query is patched from its corruption (`recall.contrast`: `value`, the queried key's stored value replaced
by an id the row does not use, which changes the copied token; `key`, the queried key swapped with another
pair's key, which changes where the lookup lands; metric: the mean logit difference between the clean
and the corrupted answer). Ground truth is
exact edge patching (`edge_patch`, every edge patched alone): the edges that matter are those whose exact
effect is at least `--share` (5%) of metric(clean) - metric(corrupt). Reported per model and graph:

- the group-ablation ground truth: MQAR accuracy (8 pairs) clean and with each mixer kind zeroed;
- EAP-IG (`edge_attribution`, `--steps` points) against exact patching: Spearman over all edges (EAP's
  beside it); precision and recall of the edges EAP-IG puts over the same threshold against the exact
  set; overlap of the top-k edges (k = the size of the exact set); the share of EAP-IG's |score| on edges
  that leave each mixer kind, beside exact patching's;
- faithfulness: the metric recovered (exact patching of every other edge) by EAP-IG's top-k circuit (k the
  exact set's size), and the fewest EAP-IG top edges that recover >= 80%;
- ACDC (`acdc`, threshold `--acdc` x the gap): edges kept, metric recovered, precision/recall against the
  exact set.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from hybrid_lens import HookedHybrid
from hybrid_lens.circuits import Graph, acdc, circuit_metric, edge_attribution, edge_patch, faithfulness_curve
from hybrid_lens.interventions import zero
from hybrid_lens.evals import recall as recall_eval
from hybrid_lens.zoo import PLANTED_MODELS, recall

from results_io import write_results

TARGET = 0.8  # the share of the metric a circuit must recover


def edge_set(table, threshold: float) -> set[str]:
    """The edges of a score table whose |score| is at least `threshold`, as `upstream->downstream`."""
    kept = table[table.score.abs() >= threshold]
    return {f"{row.upstream}->{row.downstream}" for row in kept.itertuples()}


def top(table, k: int) -> set[str]:
    """The `k` edges of largest |score|."""
    order = table.score.abs().sort_values(ascending=False, kind="stable").index[:k]
    return {f"{table.upstream[i]}->{table.downstream[i]}" for i in order}


def kind_shares(table, graph: Graph) -> dict[str, float]:
    """The share of the table's total |score| on edges leaving each source kind (embed, mixers, mlp)."""
    kinds = {node.name: node.kind for node in graph.sources}
    scores = table.score.abs()
    total = float(scores.sum()) or 1.0
    by_kind = scores.groupby(table.upstream.map(kinds)).sum() / total
    return {kind: float(share) for kind, share in by_kind.items()}


def ablation_truth(model, n: int, seed: int) -> dict[str, float]:
    """MQAR (8 pairs) accuracy, clean and with each mixer kind zeroed in every layer."""
    task = recall.mqar(n, 8, seed=seed)
    return {condition.name: float(recall_eval.accuracy(model, task, condition).correct.mean())
            for condition in recall_eval.group_ablations(model)}


def precision_recall(found: set[str], truth: set[str]) -> tuple[float, float]:
    """(precision, recall) of `found` against `truth` (1.0 for an empty set that should be empty)."""
    hits = len(found & truth)
    return (hits / len(found) if found else float(not truth)), (hits / len(truth) if truth else 1.0)


def measure(name: str, args) -> list[dict]:
    model = HookedHybrid.from_pretrained(name)
    truth_by_ablation = ablation_truth(model, args.rows, args.seed + 1)
    return [row for corrupt in args.corrupt for row in measure_contrast(model, name, corrupt, truth_by_ablation, args)]


def measure_contrast(model, name: str, corrupt: str, truth_by_ablation: dict, args) -> list[dict]:
    pair = recall.contrast(args.rows, args.pairs, args.gap, seed=args.seed, corrupt=corrupt)
    metric = pair.metric()
    rows = []
    for heads in (False, True):
        graph = Graph.of(model, heads=heads)
        start = time.perf_counter()
        exact = edge_patch(model, pair.clean, pair.corrupt, metric, graph)
        exact_s = time.perf_counter() - start
        start = time.perf_counter()
        ig = edge_attribution(model, pair.clean, pair.corrupt, metric, graph, steps=args.steps)
        ig_s = time.perf_counter() - start
        eap = edge_attribution(model, pair.clean, pair.corrupt, metric, graph, method="eap")
        gap = exact.attrs["corrupt"] - exact.attrs["clean"]
        threshold = args.share * abs(gap)
        truth = edge_set(exact, threshold)
        k = max(1, len(truth))
        precision, recall_ = precision_recall(edge_set(ig, threshold), truth)
        sizes = sorted({*range(0, min(32, len(graph.edges)) + 1), k, len(graph.edges),
                        *(2 ** e for e in range(len(graph.edges).bit_length()) if 2 ** e < len(graph.edges))})
        curve = faithfulness_curve(model, pair.clean, pair.corrupt, metric, ig, graph, sizes=sizes)
        reached = curve[curve.recovered >= TARGET]
        kept = acdc(model, pair.clean, pair.corrupt, metric, args.acdc * abs(gap), graph)
        acdc_edges = {f"{graph.sources[s].name}->{graph.targets[t].name}" for s, t in kept.nonzero().tolist()}
        acdc_recovered = float(circuit_metric(model, pair.clean, pair.corrupt, metric, [kept], graph).recovered[0])
        acdc_precision, acdc_recall = precision_recall(acdc_edges, truth)
        rows.append(dict(
            model=name.split("/")[-1], corruption=corrupt, graph="heads" if heads else "components", edges=len(graph.edges),
            clean=exact.attrs["clean"], corrupt=exact.attrs["corrupt"], ablation_accuracy=truth_by_ablation,
            exact_set=len(truth), spearman_eap_ig=spearmanr(exact.score, ig.score).statistic,
            spearman_eap=spearmanr(exact.score, eap.score).statistic, precision=precision, recall=recall_,
            top_k_overlap=len(top(ig, k) & top(exact, k)) / k,
            recovered_top_k=float(curve[curve.edges == k].recovered.iloc[0]),
            circuit_80=int(reached.edges.min()) if len(reached) else None,
            acdc_edges=len(acdc_edges), acdc_recovered=acdc_recovered, acdc_precision=acdc_precision,
            acdc_recall=acdc_recall, shares_exact=kind_shares(exact, graph), shares_eap_ig=kind_shares(ig, graph),
            exact_s=exact_s, eap_ig_s=ig_s, top_exact=sorted(top(exact, min(5, k)))))
    return rows


def _shares(shares: dict[str, float]) -> str:
    return ", ".join(f"{kind} {share:.2f}" for kind, share in sorted(shares.items(), key=lambda item: -item[1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(PLANTED_MODELS))
    parser.add_argument("--rows", type=int, default=16, help="MQAR prompts per batch")
    parser.add_argument("--pairs", type=int, default=8, help="key-value pairs before the query")
    parser.add_argument("--gap", type=int, default=0)
    parser.add_argument("--corrupt", nargs="+", default=list(recall.CORRUPTIONS), choices=recall.CORRUPTIONS,
                        help="value: the stored answer replaced; key: the queried key swapped with another pair's")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation points")
    parser.add_argument("--share", type=float, default=0.05, help="an edge matters when its exact effect is at "
                        "least this share of the clean-corrupt gap")
    parser.add_argument("--acdc", type=float, default=0.02, help="ACDC threshold, as a share of the gap")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/circuit_validation_cpu.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in args.models for row in measure(name, args)]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    lines = [f"# Circuit discovery vs exact edge patching on recall ({machine})", "",
             f"{args.rows} MQAR prompts ({args.pairs} pairs, gap {args.gap}, seed {args.seed}) ending at one query "
             "(`recall.contrast`), corrupted by replacing the queried key's stored value (`value`) or by swapping the "
             "queried key with another pair's key (`key`); metric: mean logit(clean answer) - logit(corrupt answer). "
             f"Exact set: edges whose exact patching effect is >= {args.share:.0%} of the gap. EAP-IG with "
             f"{args.steps} steps; its set: the edges over the same threshold. Top-k: k = the exact set's size. "
             f"ACDC threshold {args.acdc:.0%} of the gap. `80% circuit`: the fewest EAP-IG top edges recovering "
             ">= 80% of the metric under exact patching.", "",
             "| model | corruption | graph | edges | clean / corrupt metric | MQAR-8 accuracy (ablations) | exact set | "
             "Spearman EAP-IG (EAP) | EAP-IG precision / recall | top-k overlap | top-k recovered | 80% circuit | "
             "ACDC edges / recovered / precision / recall | |score| by source kind, exact | EAP-IG |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['corruption']} | {r['graph']} | {r['edges']} | {r['clean']:.2f} / {r['corrupt']:.2f} | "
              f"{', '.join(f'{c} {a:.2f}' for c, a in r['ablation_accuracy'].items())} | {r['exact_set']} | "
              f"{r['spearman_eap_ig']:.2f} ({r['spearman_eap']:.2f}) | {r['precision']:.2f} / {r['recall']:.2f} | "
              f"{r['top_k_overlap']:.2f} | {r['recovered_top_k']:.2f} | {r['circuit_80']} | "
              f"{r['acdc_edges']} / {r['acdc_recovered']:.2f} / {r['acdc_precision']:.2f} / {r['acdc_recall']:.2f} | "
              f"{_shares(r['shares_exact'])} | {_shares(r['shares_eap_ig'])} |" for r in rows]
    lines += ["", "Top exact edges: " + "; ".join(f"{r['model']} ({r['corruption']}, {r['graph']}): "
                                                 f"{', '.join(r['top_exact'])}" for r in rows)]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
