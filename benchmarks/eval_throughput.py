"""Eval scoring throughput: the evals task functions through the hooked model vs a naive loop.

The naive loop is what a user would write against `model.hf_model`: one unpadded forward per
(context, continuation) request, log-softmax over every position, the continuation's
log-probabilities summed. It builds the same prompts and tokenizes with the same rules as the evals
(`encode_pair`, left truncation to `max_position_embeddings`), so both paths must give the same
loglikelihoods and accuracy (checked here); only the forwards differ: the evals run each distinct
context once and its continuations from its cache (shared-context scoring, batches of contexts
sorted by length; each size in `--batch-sizes`; `default`: the evals' default, by device). The
padding column is the share of padded positions the evals' full-sequence path (their fallback,
and what they ran before shared contexts) would compute at that batch size. All paths are timed in
the same run, interleaved, after a warm-up. `eval_vs_lm_eval.py` compares the evals with lm-eval.

    python benchmarks/eval_throughput.py --threads 1 --out benchmarks/results/eval_throughput_cpu_bundled.md
    python benchmarks/eval_throughput.py --size full --out benchmarks/results/eval_throughput_cuda_full.md

`--size full` (CUDA only) uses random-init models of the published configs (`reference_config`)
with the bundled model's tokenizer.
"""

from __future__ import annotations

import argparse
import inspect
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config
from hybrid_lens.evals import arc_challenge, choice_metrics, encode_pair, hellaswag, mmlu
from hybrid_lens.evals.scoring import length_batches
from hybrid_lens.evals.tasks import arc_prompts, hellaswag_prompts, mmlu_prompts
from hybrid_lens.zoo import checkpoint_path

from results_io import write_results

BUNDLED = {"qwen3_5": "hybrid-lens/tiny-qwen3.5", "falcon_h1": "hybrid-lens/tiny-falcon-h1",
           "qwen2": "hybrid-lens/tiny-qwen2.5"}
TASKS = {"arc_challenge": (arc_challenge, arc_prompts), "hellaswag": (hellaswag, hellaswag_prompts),
         "mmlu": (mmlu, mmlu_prompts)}
SEED = 1234  # the tasks' default few-shot seed, passed to both paths
TOLERANCE = {"float32": dict(atol=1e-3, rtol=1e-4), "bfloat16": dict(atol=0.5, rtol=2e-2)}  # on summed loglikelihoods


def load(family: str, size: str, device: str, dtype: torch.dtype) -> HookedHybrid:
    if size == "bundled":
        return HookedHybrid.from_pretrained(BUNDLED[family], dtype=dtype).to(device)
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_path(BUNDLED[family]))
    return HookedHybrid.from_config(reference_config(family), dtype=dtype, tokenizer=tokenizer).to(device)


@torch.no_grad()
def naive_scores(model: HookedHybrid, prompts) -> tuple[list[list[float]], float]:
    """Per example the loglikelihood of each choice, one plain forward per request; and accuracy."""
    max_length = model.cfg.max_position_embeddings
    lls, correct = [], 0.0
    for doc, context in prompts:
        example = []
        for choice in doc.choices:
            context_ids, continuation_ids = encode_pair(model.tokenizer, context, " " + choice)
            whole = (context_ids + continuation_ids)[-(max_length + 1):]
            logits = model.hf_model(input_ids=torch.tensor([whole[:-1]], device=model.device), use_cache=False).logits
            targets = torch.tensor(continuation_ids, device=model.device)[:, None]
            example.append(float(logits[0, -len(continuation_ids):].float().log_softmax(-1).gather(-1, targets).sum()))
        lls.append(example)
        correct += choice_metrics(example, doc.choices, doc.gold)["acc"]
    return lls, correct / len(prompts)


def padding(model: HookedHybrid, prompts, batch_size: int | None) -> float:
    """Share of padded positions in the evals' right-padded batches of these prompts' distinct inputs."""
    max_length = model.cfg.max_position_embeddings
    inputs = {tuple((sum(encode_pair(model.tokenizer, context, " " + choice), []))[-(max_length + 1):-1])
              for doc, context in prompts for choice in doc.choices}
    lengths = [len(ids) for ids in inputs]
    batches = length_batches(lengths, batch_size, model.device)
    padded = sum(len(batch) * max(lengths[i] for i in batch) for batch in batches)
    return 1 - sum(lengths) / padded


def timed(fn):
    """(seconds, output) of one call, synchronizing CUDA around it."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    output = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, output


def measure(model: HookedHybrid, name: str, task: str, args, shots: int) -> list[dict]:
    """One row per evals batch size: examples/s of both paths, speedup, and the agreement check."""
    task_fn, prompts_fn = TASKS[task]
    paths = {"naive": lambda: naive_scores(model, prompts_fn(args.n, shots, SEED, "bundled"))}
    for size in args.batch_sizes:
        paths[size] = lambda size=size: task_fn(model, n=args.n, shots=shots, seed=SEED, source="bundled",
                                                batch_size=size, progress=False)
    times, outputs = {key: [] for key in paths}, {}
    for _ in range(args.repeats):
        for key, fn in paths.items():
            seconds, outputs[key] = timed(fn)
            times[key].append(seconds)
    naive_lls, naive_acc = outputs["naive"]
    flat_naive = torch.tensor([x for example in naive_lls for x in example], dtype=torch.float64)
    naive_s, examples = statistics.median(times["naive"]), len(naive_lls)
    rows = []
    for size in args.batch_sizes:
        result = outputs[size]
        flat = torch.tensor([x for example in result.examples["loglikelihoods"] for x in example], dtype=torch.float64)
        torch.testing.assert_close(flat, flat_naive, **TOLERANCE[args.dtype])
        if args.dtype == "float32" and result.metrics["acc"] != naive_acc:
            raise AssertionError(f"{name} {task}: accuracy {result.metrics['acc']} (evals) != {naive_acc} (naive)")
        hooked_s = statistics.median(times[size])
        rows.append(dict(model=name, task=task, shots=shots, examples=examples, requests=len(flat_naive),
                         batch_size=size, padding=padding(model, prompts_fn(args.n, shots, SEED, "bundled"), size),
                         naive_s=naive_s, hooked_s=hooked_s, naive_eps=examples / naive_s,
                         hooked_eps=examples / hooked_s, speedup=naive_s / hooked_s, naive_acc=naive_acc,
                         hooked_acc=result.metrics["acc"], max_abs_ll_diff=float((flat - flat_naive).abs().max())))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=["bundled", "full"], default="bundled")
    parser.add_argument("--families", default=",".join(BUNDLED))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--n", type=int, default=8, help="examples per task")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples (default: lm-eval's per task)")
    parser.add_argument("--batch-sizes", default="default,16",
                        help="batch sizes of the evals path (default: the evals' default, by device)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_throughput.md"))
    args = parser.parse_args()
    args.batch_sizes = [None if size == "default" else int(size) for size in args.batch_sizes.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.size == "full" and device != "cuda":
        parser.error("--size full needs CUDA")
    args.dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    machine = (torch.cuda.get_device_name() if device == "cuda" else
               f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, "
               f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for family in args.families.split(","):
        model = load(family, args.size, device, getattr(torch, args.dtype))
        name = BUNDLED[family] if args.size == "bundled" else f"{family} (full, random init)"
        with torch.no_grad():
            model.hf_model(input_ids=torch.ones(1, 8, dtype=torch.long, device=device), use_cache=False)
        for task in args.tasks.split(","):
            default_shots = inspect.signature(TASKS[task][0]).parameters["shots"].default
            rows += measure(model, name, task, args, default_shots if args.shots is None else args.shots)
            print(*rows[-len(args.batch_sizes):], sep="\n", flush=True)
    tolerance = ", ".join(f"{key} {value:g}" for key, value in TOLERANCE[args.dtype].items())
    lines = [f"# Eval scoring throughput: evals functions vs a naive per-request loop ({args.size} models, "
             f"{args.dtype}, {machine}, torch {torch.__version__})", "",
             f"n={args.n} per task, median of {args.repeats} interleaved run(s). "
             "Examples/s include prompt building and tokenization. The two paths' loglikelihoods are checked to "
             f"agree ({tolerance}; float32 runs also check equal accuracy).", "",
             "| model | task | shots | examples | requests | naive ex/s | evals batch | padding | evals ex/s | speedup | "
             "acc naive / evals | max abs Δll |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['task']} | {r['shots']} | {r['examples']} | {r['requests']} | "
              f"{r['naive_eps']:.2f} | {r['batch_size'] or 'default'} | {100 * r['padding']:.0f}% | "
              f"{r['hooked_eps']:.2f} | {r['speedup']:.2f}x | "
              f"{r['naive_acc']:.3f} / {r['hooked_acc']:.3f} | {r['max_abs_ll_diff']:.1e} |" for r in rows]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
