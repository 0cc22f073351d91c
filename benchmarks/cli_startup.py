"""How long the `hybrid-lens` command takes to answer: CPU seconds (user + system, of the process and
its children) of `--help`, `study --help`, rejected arguments and `models`, and whether torch was
imported on the way, for one or more checkouts of the code run in the same interpreter, interleaved.

    python benchmarks/cli_startup.py --checkout before=/path/to/main --checkout after=. \\
        --out benchmarks/results/cli_startup_cpu.md

Each command runs as `python -m hybrid_lens.cli ...` in the checkout's folder (first on `sys.path`).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from results_io import write_results

COMMANDS = {
    "--help": ["--help"],
    "study --help": ["study", "--help"],
    "rejected argument: study --n 0": ["study", "--n", "0"],
    "unusable folder: study --out /proc/x": ["study", "--out", "/proc/hybrid-lens-x", "--tasks", "ppl",
                                             "--conditions", "group", "--n", "1", "--no-report"],
    "models": ["models"],
}


def run(checkout: Path, arguments: list[str]) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, exit status) of one run of `hybrid-lens ARGUMENTS` from `checkout`."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    start = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "hybrid_lens.cli", *arguments], env=env, cwd=checkout,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return usage.ru_utime + usage.ru_stime, time.perf_counter() - start, process.returncode


def imports_torch(checkout: Path, arguments: list[str]) -> bool:
    """Whether `hybrid-lens ARGUMENTS` imports torch (from `python -X importtime`)."""
    env = {**os.environ, "PYTHONPATH": str(checkout), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "hybrid_lens.cli", *arguments], env=env,
                          cwd=checkout, capture_output=True, text=True)
    return bool(re.search(r"\|\s+torch$", done.stderr, flags=re.M))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkout", action="append", required=True, help="LABEL=PATH of a checkout to measure.")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/cli_startup_cpu.md"))
    args = parser.parse_args()
    checkouts = {label: Path(path).resolve() for label, path in (item.split("=", 1) for item in args.checkout)}
    samples = {(label, name): [] for label in checkouts for name in COMMANDS}
    for _ in range(args.repeats):  # interleaved, so that the machine's load falls on every checkout alike
        for name, arguments in COMMANDS.items():
            for label, path in checkouts.items():
                samples[label, name].append(run(path, arguments))
    rows = []
    for (label, name), runs in samples.items():
        cpu, wall = [r[0] for r in runs], [r[1] for r in runs]
        rows.append(dict(checkout=label, command=name, exit=runs[0][2], cpu_median=statistics.median(cpu),
                         cpu_min=min(cpu), cpu_max=max(cpu), wall_median=statistics.median(wall),
                         imports_torch=imports_torch(checkouts[label], COMMANDS[name])))
    load = os.getloadavg()
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
               f"{platform.python_version()}, load average {load[0]:.1f} at the end (shared machine)")
    lines = [f"# `hybrid-lens` startup: CPU seconds before it answers ({machine})", "",
             f"Medians of {args.repeats} interleaved runs of `python -m hybrid_lens.cli ...`; CPU = user + system "
             "time of the process. `python benchmarks/cli_startup.py " +
             " ".join(f"--checkout {item}" for item in args.checkout) + "`", "",
             "| checkout | command | exit | CPU s (median) | CPU s (min-max) | wall s (median) | imports torch |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['checkout']} | `{r['command']}` | {r['exit']} | {r['cpu_median']:.2f} | "
              f"{r['cpu_min']:.2f}-{r['cpu_max']:.2f} | {r['wall_median']:.2f} | {'yes' if r['imports_torch'] else 'no'} |"
              for r in rows]
    write_results(args.out, lines, machine, rows, vars(args))


if __name__ == "__main__":
    main()
