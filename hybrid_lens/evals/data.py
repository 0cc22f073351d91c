"""Evaluation text: bundled offline copies, local files, or hub datasets when online."""

from __future__ import annotations

import gzip
from pathlib import Path

DATA = Path(__file__).parent / "data"
WIKITEXT_HUB = ("wikitext", "wikitext-2-raw-v1")


def wikitext2(source: str | Path | None = None, split: str = "test") -> str:
    """WikiText-2 raw text, non-empty rows joined by newlines.

    Args:
        source: None for the bundled test split; a local `.txt`/`.txt.gz` file; or
            `"wikitext"` to load the hub dataset `wikitext-2-raw-v1` (needs network).
    """
    if source is None:
        source = DATA / "wikitext2_test.txt.gz"
    if str(source) == WIKITEXT_HUB[0]:
        from datasets import load_dataset

        rows = load_dataset(*WIKITEXT_HUB, split=split)["text"]
        return "\n".join(row for row in rows if row.strip())
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"No text file at {path}; pass a .txt/.txt.gz file, None (bundled), or 'wikitext'.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()
