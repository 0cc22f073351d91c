"""A full layer sweep of one eval set: naive loop vs condition batching vs prefix reuse vs both.

    python benchmarks/sweep.py --shapes 1x128,4x256 --out benchmarks/results/sweep_cpu_bundled.md

The eval set is perplexity over the first windows of the bundled models' held-out text, at each
`--shapes` entry `WINDOWSxCONTEXT` (the windows run as one batch); the conditions are the study's layer-wise sweep (`hybrid-lens study --conditions layer`:
every component of every layer, ablated the paper's way). Every strategy must give exactly the
per-window NLLs of the naive loop (checked here); times are medians of `--repeats` in one run.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

from hybrid_lens import HookedHybrid, zoo
from hybrid_lens.evals import perplexity
from hybrid_lens.interventions import Sweep
from hybrid_lens.study.conditions import study_conditions

from results_io import write_results

MODELS = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")


def strategies(k: int) -> dict[str, str | None]:
    """The compared ways to evaluate the sweep (None: one `perplexity` call per condition)."""
    return {"naive loop": None, f"condition batching ({k} per pass)": "batching",
            "prefix reuse": "prefix", f"both ({k} per pass)": "both"}


@torch.no_grad()
def measure(name: str, windows: int, context: int, k: int, repeats: int) -> list[dict]:
    model = HookedHybrid.from_pretrained(name)
    conditions = [c.condition for c in study_conditions(model.layer_mixers, ("layer",))[1:]]
    text = zoo.load_validation_text()
    options = dict(context_length=context, max_windows=windows, progress=False)
    sweeps = {"batching": Sweep(conditions, batch=k, reuse_prefix=False), "prefix": Sweep(conditions, batch=1),
              "both": Sweep(conditions, batch=k)}

    def run(strategy):
        if strategy is None:
            return [perplexity(model, text, condition=c, **options) for c in conditions]
        return perplexity(model, text, condition=sweeps[strategy], **options)

    reference = [r.windows for r in run(None)]
    times: dict[str, list[float]] = {label: [] for label in strategies(k)}
    for _ in range(repeats):
        for label, strategy in strategies(k).items():
            start = time.perf_counter()
            results = run(strategy)
            times[label].append(time.perf_counter() - start)
            for got, expected in zip(results, reference):
                pd.testing.assert_frame_equal(got.windows, expected)  # exact, not approximate
    naive = statistics.median(times["naive loop"])
    return [dict(model=name, layers=model.n_layers, conditions=len(conditions), shape=f"{windows}x{context}",
                 strategy=label,
                 seconds=statistics.median(t), speedup=naive / statistics.median(t)) for label, t in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x128,4x256", help="WINDOWSxCONTEXT eval sets, comma-separated.")
    parser.add_argument("--batch", type=int, default=4, help="Conditions per forward pass.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(map(int, shape.split("x"))) for shape in args.shapes.split(",")]
    rows = [row for name in MODELS for windows, context in shapes
            for row in measure(name, windows, context, args.batch, args.repeats)]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"
    lines = ["# Layer sweep of one eval set (perplexity windows x tokens per window, bundled models, float32)", "",
             f"Machine: {machine}. Identical per-window NLLs checked for every strategy.", "",
             "| model | layers | conditions | eval set | strategy | seconds | speedup vs naive |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layers']} | {r['conditions']} | {r['shape']} | {r['strategy']} | "
              f"{r['seconds']:.2f} | {r['speedup']:.2f}x |" for r in rows]
    write_results(args.out, lines, machine, rows)


if __name__ == "__main__":
    main()
