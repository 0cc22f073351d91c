"""Writing a benchmark's results: a Markdown table, and a JSON file beside it with the same rows; and
timing a call (`timed`)."""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path


def write_results(out: Path, lines: list[str], machine: str, rows: list[dict], settings: dict | None = None) -> None:
    """Write the Markdown `lines` to `out` and `{machine, settings, rows}` to `out` with a `.json`
    suffix (settings as strings, e.g. `vars(args)`), then print the table."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    summary = {"machine": machine, "rows": rows}
    if settings is not None:
        summary["settings"] = {key: str(value) for key, value in settings.items()}
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print("\n".join(lines))


def timed(fn, repeats: int):
    """`fn()`'s result and the median of `repeats` wall-clock times of it, in seconds."""
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return result, statistics.median(times)
