"""Hook-path overhead: hooked forwards as a ratio to the plain `transformers` forward, same run.

Measures, per family and input shape: the hooked model with no hooks, with a cache of every
block-level point, with an intervention (scale 1.0) on every layer's MLP output, an nnsight trace
saving every block output, and TransformerLens's `TransformerBridge` with no hooks and with
`run_with_cache`. Timings are medians of interleaved repeats.

    python benchmarks/overhead.py --out benchmarks/results/overhead_cpu.md
"""

from __future__ import annotations

import argparse
import copy
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config, tiny_config

from results_io import write_results

ARCH = {"qwen2": "Qwen2ForCausalLM", "qwen3_5": "Qwen3_5ForCausalLM", "falcon_h1": "FalconH1ForCausalLM"}


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def cases(model: HookedHybrid, plain, bridge, tokens):
    view = model.nnsight()
    block_outputs = [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)]
    block_points = model.hook_names(inner=False)  # (no filter caches the inner points too: cache_cost.py)

    def nnsight_trace():
        with view.trace(tokens):
            for i in range(model.n_layers):
                view.blocks[i].hook_resid_post.output.save()

    every_layer = [(f"blocks.{i}.hook_mlp_out", lambda v, hook: v * 1.0) for i in range(model.n_layers)]
    found = {
        "plain transformers": lambda: plain(tokens, use_cache=False),
        "hooked, no hooks": lambda: model(tokens),
        "hooked, full cache": lambda: model.run_with_cache(tokens, names_filter=block_points),  # every block point
        "hooked, intervention every layer": lambda: model.run_with_hooks(tokens, fwd_hooks=every_layer),
        "nnsight, save every block": nnsight_trace,
        "hooked, cache block outputs": lambda: model.run_with_cache(tokens, names_filter=block_outputs),
    }
    if bridge is not None:
        found["TL bridge, no hooks"] = lambda: bridge(tokens)
        found["TL bridge, run_with_cache"] = lambda: bridge.run_with_cache(tokens)
    return found


@torch.no_grad()
def measure(family: str, size: str, batch: int, length: int, repeats: int, device: str, dtype) -> dict:
    config = tiny_config(family) if size == "tiny" else reference_config(family)
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval()
    model = HookedHybrid.from_hf(copy.deepcopy(plain))
    try:
        from transformer_lens.model_bridge.sources import build_bridge_from_module

        bridge = build_bridge_from_module(copy.deepcopy(plain), ARCH[family], hf_config=plain.config)
    except Exception as err:  # the peer is optional: record why it is missing
        print(f"TransformerLens bridge unavailable for {family}: {err}")
        bridge = None
    tokens = torch.randint(0, config.vocab_size, (batch, length), device=device)
    named = cases(model, plain, bridge, tokens)
    for fn in named.values():
        fn()
    timings = {name: [] for name in named}
    for _ in range(repeats):
        for name, fn in named.items():
            timings[name].append(median_seconds(fn, 1))
    base = statistics.median(timings["plain transformers"])
    return {
        "family": family, "size": size, "shape": f"B{batch}xT{length}",
        "plain_ms": 1000 * base,
        "ratios": {name: statistics.median(t) / base for name, t in timings.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--shapes", default="1x256,8x1024")
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/overhead.md"))
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    rows = [
        measure(family, args.size, *map(int, shape.split("x")), args.repeats, device, dtype)
        for family in ARCH for shape in args.shapes.split(",")
    ]
    machine = (torch.cuda.get_device_name() if device == "cuda" else f"{platform.processor() or platform.machine()} CPU, "
               f"{torch.get_num_threads()} threads")
    names = list(rows[0]["ratios"])
    lines = [f"# Hook overhead ({args.size} random-init models, {dtype}, {machine}, torch {torch.__version__})", "",
             "Ratios to the plain transformers forward measured in the same run (median of interleaved repeats).", "",
             "| family | shape | plain ms | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        ratios = " | ".join(f"{row['ratios'].get(n, float('nan')):.2f}x" for n in names)
        lines.append(f"| {row['family']} | {row['shape']} | {row['plain_ms']:.1f} | {ratios} |")
    write_results(args.out, lines, machine, rows)


if __name__ == "__main__":
    main()
