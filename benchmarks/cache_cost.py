"""The cost of `run_with_cache()` with no filter (every hook point, as TransformerLens caches) against a cache of
the block- and model-level points (`names_filter=model.hook_names(inner=False)`), measured in the same run.

Per bundled model and input shape: the plain `transformers` forward, the hooked model with no hooks, the
block-level cache and the default cache, with `set_use_attn_result(True)` (the per-head results cached as well,
as TransformerLens caches them once switched on). The default cache hooks every inner point, which switches the mixers to
their eager paths (softmax attention computes its pattern; Gated DeltaNet and Mamba-2 run their eager scans and
build their `[batch, head, pos, pos]` implicit patterns). Timings are medians of interleaved repeats; the cache
sizes are the bytes of the returned tensors, shared storages counted once.

    python benchmarks/cache_cost.py --threads 1 --out benchmarks/results/cache_cost_cpu_bundled.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import torch

from hybrid_lens import HookedHybrid

from results_io import write_results

BUNDLED = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")


def cache_megabytes(cache) -> float:
    storages = {value.untyped_storage().data_ptr(): value.untyped_storage().nbytes() for value in cache.values()}
    return sum(storages.values()) / 2**20


@torch.no_grad()
def measure(name: str, batch: int, length: int, repeats: int) -> dict:
    model = HookedHybrid.from_pretrained(name)
    model.set_use_attn_result(True)  # the per-head results in the default cache too (TransformerLens's switch)
    tokens = torch.randint(3, model.cfg.d_vocab, (batch, length), generator=torch.Generator().manual_seed(0))
    blocks = model.hook_names(inner=False)
    runs = {
        "plain transformers": lambda: model.hf_model(input_ids=tokens, use_cache=False).logits,
        "hooked, no hooks": lambda: model(tokens),
        "block-level cache": lambda: model.run_with_cache(tokens, names_filter=blocks),
        "default cache (every point)": lambda: model.run_with_cache(tokens),
    }
    outputs = {case: run() for case, run in runs.items()}  # warm-up, and the caches' sizes
    times = {case: [] for case in runs}
    for _ in range(repeats):
        for case, run in runs.items():
            start = time.perf_counter()
            run()
            times[case].append(time.perf_counter() - start)
    medians = {case: statistics.median(values) for case, values in times.items()}
    base = medians["plain transformers"]
    block_cache, full_cache = outputs["block-level cache"][1], outputs["default cache (every point)"][1]
    return dict(model=name.split("/")[-1], shape=f"B{batch}xT{length}", plain_ms=1e3 * base,
                ratios={case: value / base for case, value in medians.items()},
                default_over_block=medians["default cache (every point)"] / medians["block-level cache"],
                points=(len(block_cache), len(full_cache)),
                megabytes=(cache_megabytes(block_cache), cache_megabytes(full_cache)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="1x128,4x256")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cache_cost.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(name, *map(int, shape.split("x")), args.repeats) for name in BUNDLED
            for shape in args.shapes.split(",")]
    machine = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    cases = list(rows[0]["ratios"])
    lines = [f"# Default cache vs block-level cache (bundled models, float32, {machine}, "
             f"torch {torch.__version__})", "",
             f"Medians of {args.repeats} interleaved repeats, ratios measured in the same run "
             "(`python benchmarks/cache_cost.py`).", "",
             "| model | shape | plain ms | " + " | ".join(f"{case} / plain" for case in cases[1:])
             + " | **default / block-level** | points (block / default) | cache MB (block / default) |",
             "|---|---|---|" + "---|" * (len(cases) - 1) + "---|---|---|"]
    for row in rows:
        ratios = " | ".join(f"{row['ratios'][case]:.2f}x" for case in cases[1:])
        lines.append(f"| {row['model']} | {row['shape']} | {row['plain_ms']:.1f} | {ratios} | "
                     f"**{row['default_over_block']:.2f}x** | {row['points'][0]} / {row['points'][1]} | "
                     f"{row['megabytes'][0]:.1f} / {row['megabytes'][1]:.1f} |")
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
