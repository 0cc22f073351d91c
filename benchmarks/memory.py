"""Peak memory of `run_with_cache`: a full cache vs names-filtered caches vs a plain forward.

Cases, per model and input shape: the plain `transformers` forward, a "full cache" of every block- and
model-level point (`names_filter=model.hook_names(inner=False)`, `hook_logits` included: it holds the
returned logits; with no filter `run_with_cache` also caches the inner points, `cache_cost.py`), a cache of
`hook_resid_post` of every layer, and a cache of one hook (the middle layer's `hook_resid_post`).
Each case runs in a fresh subprocess: the model is loaded, warmed up on 8 tokens, then the case
runs once and keeps its outputs.

Peak memory is measured above what is held after the model is loaded: on CUDA
`torch.cuda.max_memory_allocated()` minus `memory_allocated()`; on CPU (Linux) the peak RSS
`ru_maxrss` minus its value just before the case, with the kernel's high-water mark first reset to
the current RSS (`/proc/self/clear_refs`) so model loading cannot hide the case's peak, and glibc's
mmap threshold fixed at 64 KiB (`MALLOC_MMAP_THRESHOLD_`) so freed tensors go back to the OS at once
and RSS follows the live tensors rather than the allocator's reuse of freed memory. Also
reported: the exact bytes of the returned cache tensors, and of their distinct storages (hook
points that hand on the same tensor, e.g. `resid_post` of layer i and `resid_pre` of layer i+1,
share one).

    python benchmarks/memory.py --out benchmarks/results/memory_cpu.md
    python benchmarks/memory.py --size full --shapes 1x256,8x1024 --out benchmarks/results/memory_cuda_full.md
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config

from results_io import write_results

BUNDLED = {"qwen3_5": "hybrid-lens/tiny-qwen3.5", "falcon_h1": "hybrid-lens/tiny-falcon-h1",
           "qwen2": "hybrid-lens/tiny-qwen2.5"}
CASES = ("plain forward", "full cache", "resid_post every layer", "one hook")
MB = 2**20


def run_case(model: HookedHybrid, case: str, tokens: torch.Tensor):
    """The case's (logits, cache); the plain forward has an empty cache."""
    if case == "plain forward":
        return model.hf_model(input_ids=tokens, use_cache=False).logits, {}
    names = {"full cache": model.hook_names(inner=False),  # every block- and model-level point (cache_cost.py: all)
             "resid_post every layer": [f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)],
             "one hook": f"blocks.{model.n_layers // 2}.hook_resid_post"}[case]
    return model.run_with_cache(tokens, names_filter=names)


@torch.no_grad()
def measure_case(family: str, size: str, case: str, batch: int, length: int, dtype: str, threads: int | None) -> dict:
    """One case in this process (call it in a fresh one): MB above the loaded model, and cache bytes."""
    if threads:
        torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device, dtype = ("cuda" if cuda else "cpu"), getattr(torch, dtype)
    if size == "bundled":
        model = HookedHybrid.from_pretrained(BUNDLED[family], dtype=dtype).to(device)
    else:
        model = HookedHybrid.from_config(reference_config(family), dtype=dtype).to(device)
    tokens = torch.randint(3, model.cfg.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    tokens = tokens.to(device)
    run_case(model, case, tokens[:, :8])
    gc.collect()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # reset the peak-RSS mark to the current RSS
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    logits, cache = run_case(model, case, tokens)
    if cuda:
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in cache.values()}
    return dict(model=BUNDLED[family] if size == "bundled" else f"{family} (full, random init)",
                shape=f"B{batch}xT{length}", case=case, peak_mb=(peak - base) / MB, logits_mb=logits.nbytes / MB,
                cache_tensors=len(cache), cache_mb=sum(t.nbytes for t in cache.values()) / MB,
                cache_storage_mb=sum(storages.values()) / MB)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["bundled", "full"], default="bundled")
    parser.add_argument("--families", default=",".join(BUNDLED))
    parser.add_argument("--shapes", default="1x256,8x1024")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case given as JSON, print JSON
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/memory.md"))
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure_case(**json.loads(args.case))))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args.dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    rows = []
    for family in args.families.split(","):
        for shape in args.shapes.split(","):
            batch, length = map(int, shape.split("x"))
            for case in CASES:
                spec = dict(family=family, size=args.size, case=case, batch=batch, length=length, dtype=args.dtype,
                            threads=args.threads)
                child = subprocess.run([sys.executable, __file__, "--case", json.dumps(spec)], capture_output=True,
                                       text=True, env=dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536"))
                if child.returncode:
                    sys.exit(f"{spec} failed:\n{child.stderr}")
                rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    machine = (f"{torch.cuda.get_device_name()}, torch.cuda.max_memory_allocated" if device == "cuda" else
               f"{platform.processor() or platform.machine()} CPU, peak RSS (ru_maxrss)")
    lines = [f"# Peak memory of run_with_cache vs a plain forward ({args.size} models, {args.dtype}, {machine}, "
             f"torch {torch.__version__})", "",
             "Peak MB above the loaded model, one fresh process per case; cache MB are the exact bytes of the "
             "returned cache tensors (distinct storages: shared tensors counted once).", "",
             "| model | shape | case | peak MB | vs plain | logits MB | cache tensors | cache MB | "
             "cache MB (distinct storages) |", "|---|---|---|---|---|---|---|---|---|"]
    plain = {(r["model"], r["shape"]): r["peak_mb"] for r in rows if r["case"] == "plain forward"}
    for r in rows:
        ratio = r["peak_mb"] / plain[r["model"], r["shape"]]
        lines.append(f"| {r['model']} | {r['shape']} | {r['case']} | {r['peak_mb']:.1f} | {ratio:.2f}x | "
                     f"{r['logits_mb']:.1f} | {r['cache_tensors']} | {r['cache_mb']:.1f} | "
                     f"{r['cache_storage_mb']:.1f} |")
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
