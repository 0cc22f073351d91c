"""Attribution patching vs exact activation patching: rank agreement and speed.

    python benchmarks/attribution.py --out benchmarks/results/attribution_cpu_bundled.md

For each bundled model and clean/corrupt prompt pair, `patch` (one forward pass per patched
component, batched 16 per pass) and `attribution_patch` (one clean forward, one corrupted
forward + backward) fill the same table over every mixer, MLP and `resid_pre` of every layer, per
component (`positions=None`) and per component x position (`"each"`). Reported: the Spearman rank
correlation of the two metric columns (scipy.stats), the Pearson correlation of the effects
(metric - corrupted metric), and the wall-clock times (medians of `--repeats`, in one run).
"""

from __future__ import annotations

import argparse
import platform
from pathlib import Path

import torch
from scipy.stats import pearsonr, spearmanr

from hybrid_lens import HookedHybrid
from hybrid_lens.interventions import attribution_patch, logit_diff_metric, patch

from results_io import timed, write_results

MODELS = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
# (label, clean, corrupt, (correct, wrong) tokens of a logit-difference metric, or None for KL at the last position)
TASKS = (
    ("land of -> Egypt (logit diff)", "the children of Israel went out of the land of",
     "the children of Israel went out of the city of", (" Egypt", " the")),
    ("Moses/Aaron (KL)", "And God said unto Moses", "And God said unto Aaron", None),
    ("heaven/light (KL)", "In the beginning God created the heaven and the",
     "In the beginning God created the light and the", None),
)


def measure(name: str, repeats: int) -> list[dict]:
    model = HookedHybrid.from_pretrained(name)
    rows = []
    for label, clean, corrupt, answer in TASKS:
        metric = None if answer is None else logit_diff_metric(*(model.to_single_token(t) for t in answer))
        for positions in (None, "each"):
            options = dict(positions=positions, metric=metric)
            exact, exact_s = timed(lambda: patch(model, clean, corrupt, progress=False, **options), repeats)
            estimate, estimate_s = timed(lambda: attribution_patch(model, clean, corrupt, **options), repeats)
            assert exact[["layer", "kind", "position"]].equals(estimate[["layer", "kind", "position"]])
            effect = exact.metric - exact.attrs["corrupt"], estimate.metric - estimate.attrs["corrupt"]
            rows.append(dict(model=name.split("/")[-1], task=label, granularity="component" if positions is None
                             else "component x position", rows=len(exact),
                             spearman=spearmanr(exact.metric, estimate.metric).statistic,
                             pearson=pearsonr(*effect).statistic, patch_s=exact_s, attribution_s=estimate_s,
                             speedup=exact_s / estimate_s))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attribution_cpu_bundled.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [row for name in MODELS for row in measure(name, args.repeats)]
    machine = f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s)"
    lines = [f"# Attribution patching vs activation patching ({machine})", "",
             "| model | task | granularity | rows | Spearman | Pearson (effects) | patch s | attribution s | speedup |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['granularity']} | {r['rows']} | {r['spearman']:.2f} | "
              f"{r['pearson']:.2f} | {r['patch_s']:.2f} | {r['attribution_s']:.2f} | {r['speedup']:.1f}x |" for r in rows]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
