"""Edge attribution (EAP, EAP-IG) vs exact edge patching: graph sizes, speed, rank agreement, faithfulness.

    nice -n 10 python benchmarks/circuits.py --out benchmarks/results/circuits_cpu_bundled.md

For each bundled model, graph granularity (components; heads as sources, where the mixers have
per-head results) and clean/corrupt prompt pair (a King James sentence with one word corrupted, a
logit-difference metric), `edge_patch` (one patched copy of the batch per edge, 16 per forward pass),
`edge_attribution` with `eap` (one clean forward + backward) and `eap-ig` (`--steps` interpolation
points, one batched forward + backward) score every edge of `hybrid_lens.circuits.Graph`. Reported: nodes
and edges; wall-clock seconds (medians of `--repeats`, in one run) and the speed-up of EAP-IG over exact
patching; the Spearman rank correlation of each estimate with exact patching (scipy.stats); EAP-IG's
completeness (the sum of its scores on the embedding's edges over metric(corrupt) - metric(clean), 1 when
the path integral is exact); and, from the faithfulness curve of EAP-IG's ranking checked by exact
patching (every edge outside the circuit patched), the smallest circuit recovering >= 80% of the metric.
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from scipy.stats import spearmanr

from hybrid_lens import HookedHybrid
from hybrid_lens.circuits import Graph, edge_attribution, edge_patch, faithfulness_curve
from hybrid_lens.interventions import logit_diff_metric

from results_io import timed, write_results

MODELS = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
# (label, clean, corrupt, (correct, wrong) tokens of the logit-difference metric)
TASKS = (
    ("land of -> Egypt", "the children of Israel went out of the land of",
     "the children of Israel went out of the city of", (" Egypt", " the")),
    ("said unto -> Moses", "And the LORD spake unto Moses, saying, Speak unto the children of Israel, and say unto",
     "And the LORD spake unto Aaron, saying, Speak unto the children of Israel, and say unto", (" them", " Moses")),
)
TARGET = 0.8  # the share of the metric a circuit must recover


def smallest_circuit(curve) -> int | None:
    """The fewest edges whose circuit recovers at least `TARGET` of the metric (None: no size on the curve)."""
    reached = curve[curve.recovered >= TARGET]
    return int(reached.edges.min()) if len(reached) else None


def measure(name: str, steps: int, repeats: int) -> list[dict]:
    model = HookedHybrid.from_pretrained(name)
    rows = []
    for heads in (False, True):
        graph = Graph.of(model, heads=heads)
        sizes = sorted({*range(0, min(64, len(graph.edges)) + 1),
                        *(2 ** k for k in range(len(graph.edges).bit_length()) if 2 ** k < len(graph.edges)),
                        len(graph.edges)})
        for label, clean, corrupt, answer in TASKS:
            metric = logit_diff_metric(*(model.to_single_token(token) for token in answer))
            exact, exact_s = timed(lambda: edge_patch(model, clean, corrupt, metric, graph), repeats)
            eap, eap_s = timed(lambda: edge_attribution(model, clean, corrupt, metric, graph, method="eap"), repeats)
            ig, ig_s = timed(lambda: edge_attribution(model, clean, corrupt, metric, graph, steps=steps), repeats)
            curve = faithfulness_curve(model, clean, corrupt, metric, ig, graph, sizes=sizes)
            gap = ig.attrs["corrupt"] - ig.attrs["clean"]
            rows.append(dict(model=name.split("/")[-1], graph="heads" if heads else "components", task=label,
                             nodes=len({*graph.sources, *graph.targets}), edges=len(graph.edges),
                             exact_s=exact_s, eap_s=eap_s, eap_ig_s=ig_s, speedup=exact_s / ig_s,
                             spearman_eap=spearmanr(exact.score, eap.score).statistic,
                             spearman_eap_ig=spearmanr(exact.score, ig.score).statistic,
                             completeness=ig[ig.upstream == "embed"].score.sum() / gap,
                             circuit_80=smallest_circuit(curve), clean=ig.attrs["clean"], corrupt=ig.attrs["corrupt"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG interpolation points")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/circuits_cpu_bundled.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in MODELS for row in measure(name, args.steps, args.repeats)]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    lines = [f"# Edge attribution vs exact edge patching ({machine})", "",
             f"EAP-IG with {args.steps} steps; times are medians of {args.repeats}; `80% circuit`: the fewest "
             "EAP-IG top edges that recover >= 80% of metric(clean) - metric(corrupt) under exact patching.", "",
             "| model | graph | task | nodes | edges | exact s | EAP s | EAP-IG s | EAP-IG speed-up | Spearman EAP | "
             "Spearman EAP-IG | IG completeness | 80% circuit (edges) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['graph']} | {r['task']} | {r['nodes']} | {r['edges']} | {r['exact_s']:.2f} | "
              f"{r['eap_s']:.2f} | {r['eap_ig_s']:.2f} | {r['speedup']:.1f}x | {r['spearman_eap']:.2f} | "
              f"{r['spearman_eap_ig']:.2f} | {r['completeness']:.3f} | {r['circuit_80']} |" for r in rows]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
