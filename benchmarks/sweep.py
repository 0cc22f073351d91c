"""A skip-every-layer Sweep against the naive loop and the prefix-reuse bound.

    python benchmarks/sweep.py --threads 1 --repeats 15 --out benchmarks/results/sweep_cpu_bundled.md

For each bundled model and each `--shapes` input `BATCHxTOKENS` (random token ids), the conditions
are `skip_layer(i)` for every layer i. Timed, interleaved, in one run: the naive loop (one forward
per condition under `condition.apply`), `Sweep(conditions)` with its defaults, and `Sweep(conditions,
batch=1)` (prefix reuse alone). The bound is what prefix reuse alone saves in block evaluations,
`L*L / (L + L(L+1)/2)` for L layers (a clean pass plus every suffix); a sweep that also stacks
conditions can beat it where per-call overhead dominates. Ratios are medians over `--repeats`.

Exactness, in the same run: the largest |logit difference| of each Sweep against the naive loop,
and of the plain `transformers` model run on 2-8 stacked copies of the input against its batch of one.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import Sweep, skip_layer

from results_io import write_results

MODELS = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")


def bound(layers: int) -> float:
    """Speedup of prefix reuse alone, in block evaluations, for a skip-every-layer sweep."""
    return layers * layers / (layers + layers * (layers + 1) / 2)


@torch.no_grad()
def measure(name: str, batch: int, pos: int, repeats: int) -> dict:
    model = HookedHybrid.from_pretrained(name)
    tokens = torch.randint(0, model.cfg.vocab_size, (batch, pos), generator=torch.Generator().manual_seed(0))
    conditions = [skip_layer(i) for i in range(model.n_layers)]

    def naive():
        out = []
        for condition in conditions:
            with condition.apply(model):
                out.append(model(tokens))
        return out

    paths = {"naive": naive, "default": lambda: Sweep(conditions).logits(model, tokens),
             "one per pass": lambda: Sweep(conditions, batch=1).logits(model, tokens)}
    outputs = {key: fn() for key, fn in paths.items()}  # warm-up (the default Sweep measures its cost model)
    times = {key: [] for key in paths}
    for _ in range(repeats):
        for key, fn in paths.items():
            start = time.perf_counter()
            fn()
            times[key].append(time.perf_counter() - start)
    seconds = {key: statistics.median(t) for key, t in times.items()}
    error = {key: max(float((a - b).abs().max()) for a, b in zip(outputs[key], outputs["naive"]))
             for key in ("default", "one per pass")}
    alone = model.hf_model(input_ids=tokens, use_cache=False).logits
    plain = max(float((model.hf_model(input_ids=tokens.repeat(k, 1), use_cache=False).logits
                       - alone.repeat(k, 1, 1)).abs().max()) for k in range(2, 9))
    layers = model.n_layers
    return dict(model=name, layers=layers, shape=f"{batch}x{pos}", naive_s=seconds["naive"],
                default_s=seconds["default"], one_per_pass_s=seconds["one per pass"],
                default_speedup=seconds["naive"] / seconds["default"],
                one_per_pass_speedup=seconds["naive"] / seconds["one per pass"], bound=bound(layers),
                default_of_bound=seconds["naive"] / seconds["default"] / bound(layers),
                default_max_abs_diff=error["default"], one_per_pass_max_abs_diff=error["one per pass"],
                plain_batch_max_abs_diff=plain)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x128", help="BATCHxTOKENS inputs, comma-separated.")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    shapes = [tuple(map(int, shape.split("x"))) for shape in args.shapes.split(",")]
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
               f"load average {os.getloadavg()[0]:.1f} at start, torch {torch.__version__}")
    rows = [measure(name, batch, pos, args.repeats) for name in args.models.split(",") for batch, pos in shapes]
    lines = ["# Skip-every-layer sweep: naive loop vs Sweep vs the prefix-reuse bound (bundled models, float32)", "",
             f"Machine: {machine}. Medians of {args.repeats} interleaved repeats; speedups are naive / Sweep.", "",
             "| model | layers | input | naive s | Sweep() s | Sweep() speedup | bound | Sweep() / bound | "
             "batch=1 speedup | max abs Δlogit Sweep() / batch=1 / plain model 2-8 copies |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['layers']} | {r['shape']} | {r['naive_s']:.3f} | {r['default_s']:.3f} | "
              f"{r['default_speedup']:.2f}x | {r['bound']:.2f}x | {100 * r['default_of_bound']:.0f}% | "
              f"{r['one_per_pass_speedup']:.2f}x | {r['default_max_abs_diff']:.1e} / "
              f"{r['one_per_pass_max_abs_diff']:.1e} / {r['plain_batch_max_abs_diff']:.1e} |" for r in rows]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
