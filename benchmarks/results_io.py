"""Writing a benchmark's results: a Markdown table, and a JSON file beside it with the same rows."""

from __future__ import annotations

import json
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
