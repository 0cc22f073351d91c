"""Bundled small checkpoints, trained by `hybrid_lens.zoo.train` on the King James Bible.

Load with `HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")` (or `tiny-qwen3.5`,
`tiny-qwen2.5`); no network is needed.
"""

from __future__ import annotations

import gzip
from pathlib import Path

HERE = Path(__file__).parent
PREFIX = "hybrid-lens/"
ZOO_MODELS: dict[str, str] = {
    "hybrid-lens/tiny-qwen3.5": "tiny-qwen3.5",
    "hybrid-lens/tiny-falcon-h1": "tiny-falcon-h1",
    "hybrid-lens/tiny-qwen2.5": "tiny-qwen2.5",
}
VALIDATION_EVERY = 40


def is_zoo_name(name: str) -> bool:
    return str(name).startswith(PREFIX)


def checkpoint_path(name: str) -> Path:
    """The folder of a bundled model, by `hybrid-lens/<name>` or `<name>`."""
    folder = ZOO_MODELS.get(name) or ZOO_MODELS.get(PREFIX + name)
    path = HERE / "checkpoints" / folder if folder else None
    if path is None or not (path / "config.json").exists():
        raise KeyError(f"No bundled model {name!r}. Available: {', '.join(ZOO_MODELS)}.")
    return path


def verses() -> list[str]:
    """The training corpus, one verse a line, without the book:chapter:verse reference."""
    with gzip.open(HERE / "data" / "kjv_bible.txt.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").split(" ", 1)[1] for line in f if " " in line]


def split_verses() -> tuple[list[str], list[str]]:
    """(training verses, held-out validation verses): every 40th verse is held out."""
    lines = verses()
    train = [v for i, v in enumerate(lines) if i % VALIDATION_EVERY]
    validation = [v for i, v in enumerate(lines) if i % VALIDATION_EVERY == 0]
    return train, validation


def load_validation_text() -> str:
    """The held-out validation text (verses joined by newlines)."""
    return "\n".join(split_verses()[1])
