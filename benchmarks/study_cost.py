"""The study's cost: seconds per (model, task, condition group) from the study's own timing records, a
cost model (seconds per forward token) fitted from them, and the paper-scale run projected on this CPU.

    nice -n 10 python benchmarks/study_cost.py                     # bundled models, n=1, minutes
    nice -n 10 python benchmarks/study_cost.py --size bundled --tasks ppl,mmlu,arc,hellaswag,truthfulqa,gsm8k \\
        --out benchmarks/results/study_cost_cpu_bundled.md
    nice -n 10 python benchmarks/study_cost.py --size reference --reference-ppl-context 64 \\
        --reference Qwen/Qwen3.5-0.8B --out benchmarks/results/study_cost_cpu_reference_qwen35.md   # (each config)
    python benchmarks/study_cost.py --combine benchmarks/results/study_cost_cpu_{bundled,reference_*}.json \\
        --out benchmarks/results/study_cost_cpu.md                 # one table and the projections

Each model runs `study.runner.run_study` (what `hybrid-lens study` runs) into a temporary study folder,
1 torch thread, and its `time_by_group` table is the measurement:
- bundled models (`--size bundled`): the default study (every task given, every condition group: the
  protocol's condition set) at `--n` examples per task, on the model card's perplexity windows;
- published configs (`--size reference`: Qwen3.5-0.8B, Falcon-H1-0.5B, Qwen2.5-0.5B, random init,
  float32, with the bundled tokenizer): perplexity under every condition group at `--reference-n`
  windows of `--reference-ppl-context` tokens, and each benchmark under the baseline only (a second
  study; its diagnostics run on 16 tokens and are left out).
Forward tokens per condition are counted from the prompts each task builds (`study.cost` says what
counts). The cost model is `study.cost`: a measured rate where there is one, else the task's baseline
rate times the group's perplexity factor (prefix reuse); on the bundled models, where every cell is
measured, the table checks that rule against the measurement; a task not run at full size (GSM8K) takes
its bundled analogue's rate x the two models' perplexity baseline ratio. Projections: the default study
(n=200) and the paper's protocol (`study.cost.PAPER_N`), linear in forward tokens at these rates.
The load is recorded (`uptime` before and after each model) and so is the CPU share the process got
(CPU seconds / wall seconds): the projection for an idle core is the loaded one times that share.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.configs import reference_config
from hybrid_lens.evals.perplexity import window_spans
from hybrid_lens.evals.tasks import (arc_prompts, gsm8k_prompts, hellaswag_prompts, mmlu_prompts,
                                     truthfulqa_prompts)
from hybrid_lens.study import cost
from hybrid_lens.study.diagnostics import HIDDEN_TASK
from hybrid_lens.study.plan import study_conditions
from hybrid_lens.study.runner import ppl_windows, run_study, settings, time_by_group
from hybrid_lens.study.spec import GROUPS, TASKS, StudySpec
from hybrid_lens.study.store import StudyStore
from hybrid_lens.study.tasks import SWEEPABLE, ppl_text

from results_io import write_results

BUNDLED = ("hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", "hybrid-lens/tiny-qwen2.5")
REFERENCE = {"Qwen/Qwen3.5-0.8B": ("qwen3_5", "hybrid-lens/tiny-qwen3.5"),
             "tiiuae/Falcon-H1-0.5B-Base": ("falcon_h1", "hybrid-lens/tiny-falcon-h1"),
             "Qwen/Qwen2.5-0.5B": ("qwen2", "hybrid-lens/tiny-qwen2.5")}
GSM8K_BUDGET = 256  # `gsm8k_cot`'s max_new_tokens, which the study uses
DEFAULT_N = 200  # `StudySpec.n`


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip().split("load average:")[-1].strip()


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def count(tokenizer, text: str, special: bool = True) -> int:
    return len(tokenizer(text, add_special_tokens=special).input_ids)


def task_workload(task: str, spec: StudySpec, tokenizer, n_ctx: int | None) -> tuple[int, int]:
    """(examples, forward tokens of one condition) of `task` as the study runs it under `spec`: a
    multiple-choice context once plus every continuation, a GSM8K prompt plus the generation budget
    (an upper bound: generation stops at the task's stop strings), perplexity windows' tokens, the
    diagnostic text's tokens."""
    if task == "ppl":
        context, stride = ppl_windows(spec)
        spans = window_spans(count(tokenizer, ppl_text(spec.model, spec.ppl_source)), context, stride)[:spec.n]
        return len(spans), sum(end - begin for begin, end, _ in spans)
    if task == HIDDEN_TASK:
        return 1, settings(spec)["diagnostic_tokens"]
    if task == "gsm8k":
        prompts = gsm8k_prompts(spec.n, source="bundled")
        return len(prompts), sum(count(tokenizer, prompt) + GSM8K_BUDGET for _, prompt in prompts)
    if task == "truthfulqa":
        pairs = [((mc1.choices + mc2.choices), prompt) for (mc1, mc2), prompt in truthfulqa_prompts(spec.n, "bundled")]
    else:
        prompts = {"mmlu": mmlu_prompts, "arc": arc_prompts, "hellaswag": hellaswag_prompts}[task]
        pairs = [(doc.choices, prompt) for doc, prompt in prompts(spec.n, seed=spec.seed, source="bundled")]
    cap = n_ctx or 10**9
    tokens = sum(min(cap, count(tokenizer, prompt)) + sum(count(tokenizer, " " + c, special=False) for c in choices)
                 for choices, prompt in pairs)
    return len(pairs), tokens


def timed_study(spec: StudySpec, model, label: str, tasks: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """Run `spec` in a temporary folder; its `time_by_group` rows for `tasks` (+ the diagnostics) and the load."""
    before, wall, cpu = uptime(), time.perf_counter(), cpu_seconds()
    with tempfile.TemporaryDirectory(prefix="study-cost-") as out:
        folder = run_study(spec, out, model=model, progress=False)
        store = StudyStore(folder / "results.sqlite")
        table = time_by_group(store, study_conditions(model.layout, spec.groups, spec.method, spec.trials, spec.seed),
                              label)
        store.close()
    load = dict(model=label, run=",".join(spec.tasks), load_before=before, load_after=uptime(),
                wall_s=round(time.perf_counter() - wall, 1), cpu_s=round(cpu_seconds() - cpu, 1))
    load["cpu_share"] = round(load["cpu_s"] / load["wall_s"], 2)
    print(f"{label} [{load['run']}]: {load['wall_s']} s wall, CPU share {load['cpu_share']}, load {load['load_after']}",
          flush=True)
    return table[table.task.isin([*tasks, HIDDEN_TASK])], load


def workload_rows(spec: StudySpec, model, label: str, tasks) -> list[dict]:
    """Forward tokens of the timed run per (model, task), and forward tokens per example over the
    first `TOKEN_SAMPLE` examples (what a projection multiplies by its n; one timed example is a small sample)."""
    rows = []
    sample = StudySpec(**{**asdict(spec), "n": max(spec.n, TOKEN_SAMPLE)})
    for task in tasks:
        examples, tokens = task_workload(task, spec, model.tokenizer, model.cfg.n_ctx)
        sampled, sampled_tokens = task_workload(task, sample, model.tokenizer, model.cfg.n_ctx)
        rows.append(dict(model=label, task=task, examples=examples, tokens=tokens,
                         tokens_per_example=sampled_tokens / sampled))
    return rows


TOKEN_SAMPLE = 20


def measure_bundled(name: str, tasks: tuple[str, ...], n: int):
    model = HookedHybrid.from_pretrained(name)
    spec = StudySpec(model=name, tasks=tasks, groups=GROUPS, n=n, threads=1)
    table, load = timed_study(spec, model, name, tasks)
    return table, workload_rows(spec, model, name, [*tasks, HIDDEN_TASK]), load, n_params(model)


def measure_reference(name: str, tasks: tuple[str, ...], n: int, ppl_context: int):
    family, tokenizer_of = REFERENCE[name]
    tokenizer = HookedHybrid.from_pretrained(tokenizer_of).tokenizer
    model = HookedHybrid.from_config(reference_config(family), seed=0, tokenizer=tokenizer)
    tables, workloads, loads = [], [], []
    if "ppl" in tasks:
        ppl = StudySpec(model=name, tasks=("ppl",), groups=GROUPS, n=n, ppl_context=ppl_context, threads=1)
        table, load = timed_study(ppl, model, name, ("ppl",))
        tables.append(table), loads.append(load)
        workloads.extend(workload_rows(ppl, model, name, ["ppl", HIDDEN_TASK]))
    benchmarks = tuple(t for t in tasks if t != "ppl")
    if benchmarks:  # baseline only; diagnostics on 16 tokens (left out: measured in the first study)
        spec = StudySpec(model=name, tasks=benchmarks, groups=("baseline",), n=n, ppl_context=16, threads=1)
        table, load = timed_study(spec, model, name, benchmarks)
        tables.append(table[table.task != HIDDEN_TASK]), loads.append(load)
        workloads.extend(workload_rows(spec, model, name, benchmarks))
    return pd.concat(tables), workloads, loads, n_params(model)


def n_params(model) -> float:
    return sum(p.numel() for p in model.hf_model.parameters()) / 1e6


def condition_counts(layout, trials: int = 3) -> dict[str, int]:
    return dict(Counter(c.group for c in study_conditions(layout, GROUPS, trials=trials)))


def default_examples(model: str, tokenizer) -> tuple[dict[str, int], int]:
    """Examples per task of a default study (`n`=200 on the bundled data, which has 100-114 rows per
    benchmark) and its perplexity window length."""
    spec = StudySpec(model=model)
    context, stride = ppl_windows(spec)
    windows = len(window_spans(count(tokenizer, ppl_text(model, spec.ppl_source)), context, stride))
    rows = {"mmlu": len(mmlu_prompts(source="bundled")), "arc": len(arc_prompts(source="bundled")),
            "hellaswag": len(hellaswag_prompts(source="bundled")),
            "truthfulqa": len(truthfulqa_prompts(None, "bundled")), "gsm8k": len(gsm8k_prompts(source="bundled")),
            "ppl": windows}
    return {task: min(DEFAULT_N, rows[task]) for task in TASKS}, context


def projections(rates: pd.DataFrame, measured: pd.DataFrame, layouts: dict, tokenizers: dict) -> pd.DataFrame:
    """The default study and the paper's protocol, per model, at the measured rates (`study.cost`)."""
    per_example = measured.drop_duplicates(["model", "task"])[["model", "task", "tokens_per_example"]]
    # a task not run at full size (GSM8K) takes its bundled analogue's rate x the perplexity size ratio, and its
    # tokens per example (the published configs run with the bundled tokenizer)
    analogues = {name: tiny for name, (_, tiny) in REFERENCE.items() if name in layouts and tiny in layouts}
    borrowed = [per_example[(per_example.model == tiny) & ~per_example.task.isin(
        per_example[per_example.model == name].task)].assign(model=name) for name, tiny in analogues.items()]
    per_example = pd.concat([per_example, *borrowed], ignore_index=True)
    found = []
    for model, layout in layouts.items():
        if not ((rates.model == model) & (rates.task == "ppl")).any():
            print(f"{model}: not projected (no perplexity rates, which the group factors come from)")
            continue
        counts = {model: condition_counts(layout)}
        mine = per_example[per_example.model == model]
        n_default, context = default_examples(model, tokenizers[model])
        five = condition_counts(layout, trials=cost.PAPER_TRIALS["ppl"]).get("random", 0)
        runs = {"default study": cost.plan(counts, mine, n_default, tokens_override={"ppl": context}),
                "paper protocol": cost.plan(
                    counts, mine, cost.PAPER_N, cost.PAPER_N_BY_GROUP,
                    tokens_override={"ppl": cost.PAPER_PPL_TOKENS, HIDDEN_TASK: cost.PAPER_DIAGNOSTIC_TOKENS},
                    extra_conditions={("ppl", "random"): five - counts[model].get("random", 0)})}
        for run, work in runs.items():
            found.append(cost.project(work, cost.complete_rates(rates, work, SWEEPABLE, analogues=analogues))
                         .assign(run=run))
    return pd.concat(found, ignore_index=True)


def rule_check(rates: pd.DataFrame) -> pd.DataFrame:
    """The cost model's rule (baseline rate x perplexity group factor; generation: the baseline rate)
    against every measured cell that is not itself a baseline or a perplexity cell."""
    basis = rates[(rates.group == "baseline") | (rates.task == "ppl")]
    held_out = rates[(rates.group != "baseline") & (rates.task != "ppl") & (rates.task != HIDDEN_TASK)]
    if held_out.empty:
        return held_out.assign(predicted=[], ratio=[])
    predicted = cost.complete_rates(basis, held_out, SWEEPABLE).rename(columns={"us_per_token": "predicted"})
    check = held_out.merge(predicted[[*cost.KEY, "predicted"]], on=cost.KEY)
    return check.assign(ratio=check.predicted / check.us_per_token)


def fmt(value: float, digits: int = 1) -> str:
    return "n/a" if pd.isna(value) else f"{value:,.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("bundled", "reference", "both"), default="bundled")
    parser.add_argument("--tasks", default="ppl,mmlu,arc,hellaswag,truthfulqa",
                        help="study tasks measured (gsm8k generates 256 tokens per example and condition: slow)")
    parser.add_argument("--n", type=int, default=1, help="examples per task on the bundled models")
    parser.add_argument("--reference-n", type=int, default=1, help="examples per task on the published configs")
    parser.add_argument("--reference-ppl-context", type=int, default=128)
    parser.add_argument("--bundled", default=",".join(BUNDLED))
    parser.add_argument("--reference", default=",".join(REFERENCE))
    parser.add_argument("--combine", type=Path, nargs="*", default=[],
                        help="instead of measuring: the JSON results of earlier runs (e.g. one per --size), "
                             "reported and projected together")
    parser.add_argument("--stores", type=Path, nargs="*", default=[],
                        help="also: study folders (holding results.sqlite) of runs stopped early, read as they are")
    parser.add_argument("--loads", type=Path, help="with --stores: JSON rows model, run, load_before, load_after, "
                                                   "wall_s, cpu_s, cpu_share of those runs")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/study_cost_cpu_quick.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.combine or args.stores:
        rows = [row for path in args.combine for row in json.loads(path.read_text())["rows"]]
        rates = pd.DataFrame([r for r in rows if r.pop("table") == "measured"])
        loads = pd.DataFrame([r for r in rows if "load_before" in r])
        if args.stores:
            n_ctx = {name: HookedHybrid.from_pretrained(name).cfg.n_ctx for name in BUNDLED}
            n_ctx.update({name: reference_config(family).max_position_embeddings
                          for name, (family, _) in REFERENCE.items()})
            rates = pd.concat([rates, from_stores(args.stores, n_ctx)], ignore_index=True)
            loads = pd.concat([loads, pd.read_json(args.loads)], ignore_index=True)
    else:
        rates, loads = measure_all(args)
    models = list(dict.fromkeys(rates.model))
    layouts = {name: layout_of(name) for name in models}
    tokenizers = {name: HookedHybrid.from_pretrained(REFERENCE.get(name, (None, name))[1]).tokenizer for name in models}
    share = loads.groupby("model").apply(lambda t: t.cpu_s.sum() / t.wall_s.sum(), include_groups=False)
    check = rule_check(rates[~rates.model.isin(REFERENCE)])
    projected = projections(rates, rates, layouts, tokenizers)
    projected["idle_seconds"] = projected.seconds * projected.model.map(share)
    report(args, rates, check, projected, loads)


def measure_all(args) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Measure every model of `args.size`: (rates with params_M, loads)."""
    tasks = tuple(args.tasks.split(","))
    tables, workloads, loads, params = [], [], [], {}
    names = []
    if args.size in ("reference", "both"):
        names += [(name, "reference") for name in args.reference.split(",")]
    if args.size in ("bundled", "both"):
        names += [(name, "bundled") for name in args.bundled.split(",")]
    for name, size in names:
        if size == "bundled":
            table, workload, load, millions = measure_bundled(name, tasks, args.n)
            load = [load]
        else:
            table, workload, load, millions = measure_reference(name, tasks, args.reference_n,
                                                                 args.reference_ppl_context)
        tables.append(table), workloads.extend(workload), loads.extend(load)
        params[name] = millions
    rates = cost.fit_rates(pd.concat(tables, ignore_index=True), pd.DataFrame(workloads))
    rates.insert(1, "params_M", rates.model.map(params).round(1))
    return rates, pd.DataFrame(loads)


def from_stores(folders: list[Path], n_ctx: dict[str, int | None]) -> pd.DataFrame:
    """Rates from the stores of study folders (`results.sqlite` of a run, finished or stopped: its
    finished pairs): the study's own timing records and settings, nothing re-run. A store's
    diagnostics count only where it ran perplexity (the published configs' benchmark study runs
    them on 16 tokens)."""
    tables, workloads, params = [], [], {}
    for folder in folders:
        store = StudyStore(folder / "results.sqlite")
        meta = store.meta
        spec = StudySpec(**{key: tuple(meta[key]) if key in ("tasks", "groups") else meta[key]
                            for key in StudySpec.__dataclass_fields__ if key in meta})
        conditions = [SimpleNamespace(name=c["name"], group=c["group"]) for c in store.conditions()]
        table = time_by_group(store, conditions, spec.model)
        store.close()
        table = table[table.task != HIDDEN_TASK] if "ppl" not in spec.tasks else table
        tokenizer = HookedHybrid.from_pretrained(REFERENCE.get(spec.model, (None, spec.model))[1]).tokenizer
        tables.append(table)
        workloads += [row for row in workload_rows(spec, SimpleNamespace(tokenizer=tokenizer, cfg=SimpleNamespace(
            n_ctx=n_ctx[spec.model])), spec.model, sorted(set(table.task)))]
        params[spec.model] = n_params_of(spec.model)
    rates = cost.fit_rates(pd.concat(tables, ignore_index=True), pd.DataFrame(workloads))
    rates.insert(1, "params_M", rates.model.map(params).round(1))
    return rates


def n_params_of(name: str) -> float:
    if name not in REFERENCE:
        return n_params(HookedHybrid.from_pretrained(name))
    with torch.device("meta"):
        return n_params(HookedHybrid.from_config(reference_config(REFERENCE[name][0])))


def layout_of(name: str):
    """The layer layout of a bundled model or a published config (built on the meta device: no weights)."""
    if name not in REFERENCE:
        return HookedHybrid.from_pretrained(name).layout
    with torch.device("meta"):
        return HookedHybrid.from_config(reference_config(REFERENCE[name][0])).layout


def report(args, rates, check, projected, loads) -> None:
    lines = ["# The study's cost on this CPU (measured, a cost model, and projections)", "",
             f"`python benchmarks/study_cost.py {' '.join(sys.argv[1:])}`",
             f"torch {torch.__version__}, 1 thread, float32; {platform.processor() or platform.machine()}, "
             f"{len(__import__('os').sched_getaffinity(0))} cores shared with other jobs.", "",
             "## Measured: the study's own timing records (`time_by_group`)", "",
             "| model | params (M) | task | group | conditions | examples | forward tokens / condition | seconds "
             "| s / condition | us / token |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rates.itertuples():
        lines.append(f"| {r.model} | {fmt(r.params_M)} | {r.task} | {r.group} | {r.conditions} | {r.examples} | "
                     f"{r.tokens:,} | {fmt(r.seconds)} | {fmt(r.seconds_per_condition, 2)} | {fmt(r.us_per_token)} |")
    lines += ["", "## Load", "", "| model | tasks | load average before | after | wall s | CPU s | CPU share |",
              "|---|---|---|---|---|---|---|"]
    for r in loads.itertuples():
        lines.append(f"| {r.model} | {r.run} | {r.load_before} | {r.load_after} | {r.wall_s} | {r.cpu_s} | "
                     f"{r.cpu_share} |")
    if len(check):
        lines += ["", "## The cost model's rule against the bundled measurements", "",
                  "Predicted (baseline rate x the group's perplexity factor; GSM8K: the baseline rate) / measured "
                  "us per token, every measured cell that is neither a baseline nor perplexity:", "",
                  "| model | task | median | min | max | cells |", "|---|---|---|---|---|---|"]
        for (model, task), t in check.groupby(["model", "task"]):
            lines.append(f"| {model} | {task} | {t.ratio.median():.2f} | {t.ratio.min():.2f} | "
                         f"{t.ratio.max():.2f} | {len(t)} |")
    lines += ["", "## Projections (linear in forward tokens at the measured rates; not measured)", "",
              "Hours on this machine at the measured load, and for an idle core (x the CPU share the run got). "
              "Default study: every task at n=200 capped by the bundled data (100-114 rows per benchmark), perplexity "
              "on the model's default windows. Paper protocol: MMLU 2000, GSM8K 100 (50 for the positional thirds), "
              "ARC 299, HellaSwag 2000, TruthfulQA 790, one 8192-token perplexity window, 5 perplexity random trials, "
              "a 512-token diagnostic text; every condition group of the study on every task. Estimated rates: the "
              "published configs' benchmarks under groups other than the baseline (the baseline rate x the group's "
              "perplexity factor) and tasks not run at full size (the bundled analogue's rate x the ratio of the two "
              "models' perplexity baseline rates; for GSM8K's token-by-token generation this ratio is rough). "
              "GPU: untested (no GPU lent); these are CPU numbers only.", "",
              "| run | model | conditions | forward tokens (M) | hours (loaded) | hours (idle core) "
              "| days (idle core) | of which GSM8K (idle-core hours) | share at estimated rates |",
              "|---|---|---|---|---|---|---|---|---|"]
    per_task = projected[projected.task != HIDDEN_TASK].groupby(["run", "model", "task"]).conditions.sum()
    conditions = per_task.groupby(["run", "model"]).max()  # the perplexity random trials add some in the paper
    for (run, model), t in projected.groupby(["run", "model"], sort=False):
        lines.append(f"| {run} | {model} | {conditions[(run, model)]} | {fmt(t.tokens.sum() / 1e6)} | "
                     f"{fmt(t.seconds.sum() / 3600)} | {fmt(t.idle_seconds.sum() / 3600)} | "
                     f"{fmt(t.idle_seconds.sum() / 86400, 2)} | "
                     f"{fmt(t.idle_seconds[t.task == 'gsm8k'].sum() / 3600)} | "
                     f"{t.idle_seconds[t.source != 'measured'].sum() / t.idle_seconds.sum():.0%} |")
    lines += ["", f"Tasks projected: {', '.join(sorted(set(projected.task)))} (a task not measured on a model or "
              "its bundled analogue is left out of that model's totals)."]
    by_task = projected.pivot_table(index=["run", "model"], columns="task", values="idle_seconds", aggfunc="sum") / 3600
    lines += ["", "Idle-core hours per task:", "", "| run | model | " + " | ".join(by_task.columns) + " |",
              "|---|---|" + "---|" * len(by_task.columns)]
    for (run, model), row in by_task.iterrows():
        lines.append(f"| {run} | {model} | " + " | ".join(fmt(v) for v in row) + " |")
    rows = ([dict(table="measured", **r) for r in rates.to_dict("records")]
            + [dict(table="rule_check", **r) for r in check.to_dict("records")]
            + [dict(table="projection", **r) for r in projected.to_dict("records")]
            + [dict(table="load", **r) for r in loads.to_dict("records")])
    write_results(args.out, lines, platform.platform(), rows, vars(args))


if __name__ == "__main__":
    main()
