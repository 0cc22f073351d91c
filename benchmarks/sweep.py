"""Layer sweep cost: K conditions as K separate forwards vs one batched forward (`run_conditions`).

    python benchmarks/sweep.py --out benchmarks/results/sweep_cpu_tiny.md

Both paths give the same logits (checked here too); the ratio is measured in one run.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import tiny_config
from hybrid_lens.interventions import run_conditions, skip_layer, zero


def sweep_conditions(model: HookedHybrid, count: int):
    """`count` single-component ablations cycling over layers and mixer kinds."""
    pool = [zero(kind, layer) for layer, mixers in enumerate(model.layer_mixers) for kind in mixers]
    pool += [skip_layer(layer) for layer in range(model.n_layers)]
    return [pool[i % len(pool)] for i in range(count)]


@torch.no_grad()
def measure(family: str, layers: int, count: int, batch: int, length: int, repeats: int) -> dict:
    model = HookedHybrid.from_config(tiny_config(family, num_hidden_layers=layers))
    tokens = torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(0))
    conditions = sweep_conditions(model, count)

    def naive():
        outputs = []
        for condition in conditions:
            with condition.apply(model):
                outputs.append(model(tokens))
        return torch.stack(outputs)

    def batched():
        return run_conditions(model, tokens, conditions)

    torch.testing.assert_close(naive(), batched(), atol=1e-5, rtol=1e-5)
    times = {"naive": [], "batched": []}
    for _ in range(repeats):
        for name, fn in (("naive", naive), ("batched", batched)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    naive_s, batched_s = statistics.median(times["naive"]), statistics.median(times["batched"])
    return dict(family=family, layers=layers, conditions=count, shape=f"B{batch}xT{length}",
                naive_ms=1000 * naive_s, batched_ms=1000 * batched_s, speedup=naive_s / batched_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conditions", type=int, default=24)
    parser.add_argument("--shapes", default="1x64,1x256")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/sweep.md"))
    args = parser.parse_args()
    rows = [measure(family, 12 if family == "falcon_h1" else 24, args.conditions, *map(int, shape.split("x")), args.repeats)
            for family in ("qwen3_5", "falcon_h1", "qwen2") for shape in args.shapes.split(",")]
    lines = [f"# {args.conditions}-condition layer sweep: separate forwards vs one batched forward "
             f"(tiny random-init models, float32, CPU {torch.get_num_threads()} threads)", "",
             "| family | layers | shape | naive ms | batched ms | speedup |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['family']} | {r['layers']} | {r['shape']} | {r['naive_ms']:.0f} | {r['batched_ms']:.0f} | "
              f"{r['speedup']:.2f}x |" for r in rows]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
