"""Scoring throughput against lm-evaluation-harness: lm-eval's `HFLM` and `hybrid_lens.evals` on the
same model, the same requests and the same batch size, timed interleaved.

For each model and task, the task function builds its requests once (`TaskResult.requests`: the
exact `(context, continuation)` strings it scores, lm-eval's prompts). Then each repeat times, in
turn, the three paths on those requests:

- `lm-eval`: `HFLM(pretrained=model.hf_model, tokenizer=..., batch_size=B).loglikelihood(...)`, the
  scoring step of `lm_eval.simple_evaluate` (B full sequences per forward pass);
- `evals`: `hybrid_lens.evals.loglikelihoods(model, requests, batch_size=B)` (shared-context
  scoring: B contexts per pass, their continuations in one more pass from the contexts' cache);
- `old`: the same call in the hybrid-lens of `--old-ref` (default: the commit before shared contexts,
  which scored full sequences), in a worker process that loads the same model and reads its
  requests from this one (so its time is interleaved with the others).

With `--sweep-k K`, the same again for K layer-wise conditions (`skip_layer` at K blocks evenly
spaced inside the model, e.g. blocks 3 and 5 of 8 for K=2): lm-eval runs K times (under `condition.apply(model)`, which hooks `model.hf_model`), evals
and old score one `Sweep` of the K. `bound` is the prefix-reuse bound of that sweep (K full passes
over the blocks computed once the clean passes are shared: what prefix reuse alone could save; evals
shares the clean context pass and the clean continuation pass, old shared nothing).
`bound x single` is that bound times the task's one-condition ratio: what a sweep of K against K
lm-eval runs should reach if prefix reuse saved all it could.

Every path's loglikelihoods are checked against lm-eval's (`--rtol`), and the per-example
predictions (argmax of the loglikelihoods, and of the loglikelihoods per character of the
continuation: lm-eval's `acc` and `acc_norm`) must be identical.

    nice -n 10 python benchmarks/eval_vs_lm_eval.py --threads 1 --n 4 --repeats 2 --sweep-k 4 \\
        --out benchmarks/results/eval_vs_lm_eval_cpu_bundled.md
    nice -n 10 python benchmarks/eval_vs_lm_eval.py --models smollm2-135m --tasks hellaswag,truthfulqa_mc --threads 1 \\
        --n 4 --repeats 2 --sweep-k 2 --old-ref '' --out benchmarks/results/eval_vs_lm_eval_cpu_smollm2.md

Examples/s count a task's examples (4-5 requests each for ARC and HellaSwag, mc1 + mc2 choices for
TruthfulQA) over the scoring time alone (not prompt building, which both share).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from results_io import write_results

BUNDLED = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
TASKS = ("arc_challenge", "hellaswag", "truthfulqa_mc")
OLD_REF = "fd8ba1d"  # main before shared-context scoring (full sequences, right-padded batches)
SEED = 1234


def load(name: str, threads: int):
    torch.set_num_threads(threads)
    from hybrid_lens import HookedHybrid

    return HookedHybrid.from_pretrained(name, dtype=torch.float32)


def sweep_conditions(model, k: int) -> list:
    from hybrid_lens.interventions import skip_layer

    layers = sorted({round((i + 1) * model.n_layers / (k + 1)) for i in range(k)})  # evenly spaced inside
    return [skip_layer(layer) for layer in layers]


def prefix_bound(model, conditions) -> float:
    """K full passes over the blocks computed when a sweep shares the clean passes up to each
    condition's first block (the clean passes reach the deepest; each condition runs from its own)."""
    from hybrid_lens.interventions.sweep import first_layer

    starts = [first_layer(c, model) for c in conditions]
    n = model.n_layers
    return len(starts) * n / (max(starts) + sum(n - s for s in starts))


def score(model, requests, batch_size: int, sweep_k: int = 0):
    """hybrid-lens's loglikelihoods of `requests` (one list, or one per condition of a K sweep)."""
    from hybrid_lens.evals import loglikelihoods
    from hybrid_lens.interventions import Sweep

    condition = Sweep(sweep_conditions(model, sweep_k)) if sweep_k else None
    return loglikelihoods(model, requests, condition, batch_size=batch_size, progress=False)


def lm_eval_scores(lm, model, requests, sweep_k: int = 0):
    """lm-eval's loglikelihoods of `requests` (once, or under each of the K conditions in turn)."""
    from lm_eval.api.instance import Instance

    instances = [Instance("loglikelihood", {}, (context, continuation), i) for i, (context, continuation)
                 in enumerate(requests)]
    if not sweep_k:
        return [ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)]
    out = []
    for condition in sweep_conditions(model, sweep_k):
        with condition.apply(model):
            out.append([ll for ll, _ in lm.loglikelihood(instances, disable_tqdm=True)])
    return out


def worker(args) -> None:
    """`--worker`: load the model, then answer one JSON job per stdin line with (seconds, scores)."""
    model = load(args.models, args.threads)
    import hybrid_lens

    print(json.dumps({"ready": True, "hybrid_lens": hybrid_lens.__file__}), flush=True)
    for line in sys.stdin:
        job = json.loads(line)
        (seconds, cpu), scores = timed(lambda: score(model, [tuple(r) for r in job["requests"]], job["batch_size"],
                                                      job["sweep_k"]))
        print(json.dumps({"seconds": seconds, "cpu": cpu, "scores": scores}), flush=True)


class OldWorker:
    """A worker process running the hybrid-lens of `ref` (extracted with `git archive`) on one model."""

    def __init__(self, ref: str, model: str, threads: int):
        self.folder = tempfile.TemporaryDirectory(prefix="hybrid-lens-old-")
        archive = subprocess.run(["git", "archive", ref, "hybrid_lens"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=__import__("io").BytesIO(archive)) as tar:
            tar.extractall(self.folder.name, filter="data")
        env = {**os.environ, "PYTHONPATH": self.folder.name}
        self.process = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", "--models", model, "--threads",
                                         str(threads)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=env, cwd=self.folder.name)
        where = json.loads(self.process.stdout.readline())["hybrid_lens"]
        if not where.startswith(self.folder.name):
            raise RuntimeError(f"The old worker imports hybrid_lens from {where}, not from {ref}.")

    def __call__(self, requests, batch_size: int, sweep_k: int):
        self.process.stdin.write(json.dumps(dict(requests=requests, batch_size=batch_size, sweep_k=sweep_k)) + "\n")
        self.process.stdin.flush()
        reply = json.loads(self.process.stdout.readline())
        return (reply["seconds"], reply["cpu"]), reply["scores"]

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait()
        self.folder.cleanup()


def predictions(scores, requests, examples) -> list[tuple[int, int]]:
    """Per example, the index of its best request by loglikelihood and by loglikelihood per character."""
    out = []
    for rows in examples:
        lls = np.array([scores[i] for i in rows])
        chars = np.array([len(requests[i][1]) for i in rows])
        out.append((int(np.argmax(lls)), int(np.argmax(lls / chars))))
    return out


def timed(fn):
    """`((wall seconds, CPU seconds of this process), fn())`."""
    start, cpu = time.perf_counter(), time.process_time()
    output = fn()
    return (time.perf_counter() - start, time.process_time() - cpu), output


def measure(model, name: str, task: str, args, old: OldWorker | None, sweep_k: int) -> dict:
    from hybrid_lens.evals.tasks import TASKS as REGISTRY
    from lm_eval.models.huggingface import HFLM

    spec = REGISTRY[task]
    kwargs = dict(seed=SEED) if spec.seeded else {}
    if args.shots is not None and spec.shots:
        kwargs["shots"] = args.shots
    result = spec(model, n=args.n, source="bundled", progress=False, **kwargs)
    requests = list(zip(result.requests.context, result.requests.continuation))
    examples = [list(rows) for _, rows in result.requests.groupby("example", sort=False).groups.items()]
    lm = HFLM(pretrained=model.hf_model, tokenizer=model.tokenizer, batch_size=args.batch_size, device="cpu")
    paths = {"lm_eval": lambda: lm_eval_scores(lm, model, requests, sweep_k),
             "evals": lambda: score(model, requests, args.batch_size, sweep_k)}
    times, outputs = {key: [] for key in [*paths, *(["old"] if old else [])]}, {}
    for _ in range(args.repeats):
        for key, fn in paths.items():
            seconds, outputs[key] = timed(fn)
            times[key].append(seconds)
        if old:
            seconds, outputs["old"] = old([list(r) for r in requests], args.batch_size, sweep_k)
            times["old"].append(seconds)
    load = os.getloadavg()[0]
    if args.profile:
        profile_paths(args.profile, f"{name} {task}, {max(sweep_k, 1)} condition(s)", paths)
    theirs = np.array(outputs["lm_eval"], dtype=np.float64).reshape(-1, len(requests))
    row = dict(model=name, task=task, shots=result.settings.get("shots", 0), examples=len(examples),
               requests=len(requests), batch_size=args.batch_size, conditions=max(sweep_k, 1))
    for key in times:
        ours = np.array(outputs[key], dtype=np.float64).reshape(-1, len(requests))
        np.testing.assert_allclose(ours, theirs, rtol=args.rtol, atol=args.rtol, err_msg=f"{name} {task} {key}")
        same = all(predictions(a, requests, examples) == predictions(b, requests, examples) for a, b in zip(ours, theirs))
        if not same:
            raise AssertionError(f"{name} {task} {key}: predictions differ from lm-eval's")
        row[f"{key}_s"] = statistics.median(wall for wall, _ in times[key])
        row[f"{key}_cpu_s"] = statistics.median(cpu for _, cpu in times[key])
        row[f"{key}_eps"] = len(examples) * max(sweep_k, 1) / row[f"{key}_s"]
        row[f"{key}_max_abs_dll"] = float(np.abs(ours - theirs).max())
    row["evals_vs_lm_eval"] = row["lm_eval_s"] / row["evals_s"]
    row["evals_vs_lm_eval_cpu"] = row["lm_eval_cpu_s"] / row["evals_cpu_s"]
    row["load_at_end"] = load
    if old:
        row["evals_vs_old"] = row["old_s"] / row["evals_s"]
        row["evals_vs_old_cpu"] = row["old_cpu_s"] / row["evals_cpu_s"]
    if sweep_k:
        row["prefix_bound"] = prefix_bound(model, sweep_conditions(model, sweep_k))
    return row


def profile_paths(path: Path, title: str, paths: dict) -> None:
    """Append to `path` the torch profiler's top operators (by self CPU time) in one call of each path."""
    from torch.profiler import ProfilerActivity, profile

    with open(path, "a") as out:
        for key, fn in paths.items():
            with profile(activities=[ProfilerActivity.CPU]) as profiled:
                (wall, cpu), _ = timed(fn)
            table = profiled.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)
            out.write(f"## {title}: {key} ({wall:.2f} s wall, {cpu:.2f} s CPU, profiled)\n\n{table}\n\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(BUNDLED), help="comma-separated model names")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--n", type=int, default=8, help="examples per task")
    parser.add_argument("--batch-size", type=int, default=8, help="lm-eval: requests per pass; evals: contexts")
    parser.add_argument("--sweep-k", type=int, default=4, help="conditions of the sweep comparison (0: none)")
    parser.add_argument("--sweep-tasks", default="hellaswag", help="tasks that also run the sweep comparison")
    parser.add_argument("--shots", type=int, default=None, help="few-shot examples (default: each task's)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--old-ref", default=OLD_REF, help="git revision of the old hybrid-lens ('' to skip)")
    parser.add_argument("--rtol", type=float, default=1e-4, help="loglikelihoods agree with lm-eval's to this")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also profile one call of lm-eval and of evals per row; operator tables appended here")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/eval_vs_lm_eval.md"))
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    torch.set_num_threads(args.threads)
    machine = (f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads, "
               f"load average {os.getloadavg()[0]:.1f} at start")
    rows = []
    for name in args.models.split(","):
        model = load(name, args.threads)
        old = OldWorker(args.old_ref, name, args.threads) if args.old_ref else None
        try:
            for task in args.tasks.split(","):
                for sweep_k in sorted({0, args.sweep_k if task in args.sweep_tasks.split(",") else 0}):
                    rows.append(measure(model, name, task, args, old, sweep_k))
                    write_table(args, machine, rows)  # after every row, so a cut run keeps what it measured
        finally:
            if old:
                old.close()


def write_table(args, machine: str, rows: list[dict]) -> None:
    import lm_eval

    lines = [f"# Scoring throughput: hybrid_lens.evals vs lm-eval's HFLM ({machine}, torch {torch.__version__}, "
             f"lm-eval {lm_eval.__version__}, float32)", "",
             f"n={args.n} examples per task at {'each task' + chr(39) + 's default' if args.shots is None else args.shots} "
             f"shots, batch size {args.batch_size} on both sides, "
             f"median of {args.repeats} interleaved repeats; `old` is hybrid-lens at {args.old_ref or '(skipped)'} "
             "(full-sequence scoring). Conditions: 1 = no condition; K = a Sweep of K skip_layer conditions (lm-eval: "
             "K runs). Every path's loglikelihoods agree with lm-eval's (rtol "
             f"{args.rtol:g}) and give the same per-example predictions (acc and acc_norm).", "",
             "Ratios by wall time, and by CPU time of each path's process (1 thread: what a path computes, less "
             "sensitive to other jobs on a loaded machine); `load` is the 1-minute load average after the row.", "",
             "| model | task | shots | examples | conditions | lm-eval ex/s | evals ex/s | evals / lm-eval | "
             "evals / lm-eval (CPU) | old ex/s | evals / old | evals / old (CPU) | prefix bound | bound x single | bound x single (CPU) | "
             "max abs Δll | load |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    nan = float("nan")
    single = {(r["model"], r["task"], key): r[key] for r in rows if r["conditions"] == 1
              for key in ("evals_vs_lm_eval", "evals_vs_lm_eval_cpu")}
    for r in rows:
        lines.append(f"| {r['model']} | {r['task']} | {r['shots']} | {r['examples']} | {r['conditions']} | "
                     f"{r['lm_eval_eps']:.2f} | {r['evals_eps']:.2f} | {r['evals_vs_lm_eval']:.2f}x | "
                     f"{r['evals_vs_lm_eval_cpu']:.2f}x | "
                     f"{r.get('old_eps', nan):.2f} | {r.get('evals_vs_old', nan):.2f}x | {r.get('evals_vs_old_cpu', nan):.2f}x | "
                     f"{r.get('prefix_bound', 1.0):.2f} | "
                     f"{r.get('prefix_bound', 1.0) * single.get((r['model'], r['task'], 'evals_vs_lm_eval'), nan):.2f}x | "
                     f"{r.get('prefix_bound', 1.0) * single.get((r['model'], r['task'], 'evals_vs_lm_eval_cpu'), nan):.2f}x | "
                     f"{r['evals_max_abs_dll']:.1e} | {r['load_at_end']:.1f} |")
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
