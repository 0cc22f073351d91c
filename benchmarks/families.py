"""The generic hooked block's cost on every registered family: hooked forwards as a ratio to the
plain `transformers` forward of the same weights, measured in the same run.

Per family (its tiny test config, `hybrid_lens.configs.tiny_config`): the hooked model with no hooks
and with a cache of every block-level point. Timings are medians of interleaved repeats.

    python benchmarks/families.py --out benchmarks/results/families_cpu_tiny.md
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
from hybrid_lens.adapters import ADAPTERS
from hybrid_lens.configs import tiny_config

from results_io import write_results


@torch.no_grad()
def measure(family: str, batch: int, length: int, repeats: int) -> dict:
    torch.manual_seed(0)
    plain = AutoModelForCausalLM.from_config(tiny_config(family)).eval()
    model = HookedHybrid.from_hf(copy.deepcopy(plain))
    tokens = torch.randint(3, 256, (batch, length), generator=torch.Generator().manual_seed(0))
    block_points = [name for name in model.hook_dict if name.count(".") == 2]
    runs = {
        "plain transformers": lambda: plain(tokens, use_cache=False).logits,
        "hooked, no hooks": lambda: model(tokens),
        "hooked, cache block points": lambda: model.run_with_cache(tokens, names_filter=block_points),
    }
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(values) for name, values in times.items()}
    base = medians["plain transformers"]
    return dict(family=family, shape=f"B{batch}xT{length}", plain_ms=base * 1e3,
                ratios={name: value / base for name, value in medians.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="1x128")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/families.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    batch, length = map(int, args.shape.split("x"))
    rows = [measure(adapter.family, batch, length, args.repeats) for adapter in ADAPTERS]
    machine = f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    names = list(rows[0]["ratios"])
    lines = [f"# Generic hooked block cost per family (tiny random-init models, float32, {machine}, torch "
             f"{torch.__version__})", "",
             "Ratios to the plain transformers forward measured in the same run (median of "
             f"{args.repeats} interleaved repeats, `python benchmarks/families.py`).", "",
             "| family | shape | plain ms | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]
    for row in rows:
        ratios = " | ".join(f"{row['ratios'][n]:.2f}x" for n in names)
        lines.append(f"| {row['family']} | {row['shape']} | {row['plain_ms']:.1f} | {ratios} |")
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
