"""Bundled small checkpoints, trained by `hybrid_lens.zoo.train` on the King James Bible.

Load with `HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")` (or `tiny-qwen3.5`,
`tiny-qwen2.5`), or with plain `transformers` from `checkpoint_path(name)`; no network is needed.
Each checkpoint folder holds the weights (safetensors), the tokenizer, a model card (README.md)
and `metrics.json` (validation perplexity, unigram baseline, ablation ratios, training record).
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
    """True for names of bundled models (`hybrid-lens/...`), known or not."""
    return str(name).startswith(PREFIX)


def checkpoint_path(name: str) -> Path:
    """The folder of a bundled model, by `hybrid-lens/<name>` or `<name>`.

    Raises `KeyError` (listing the bundled names) for an unknown name, and `FileNotFoundError`
    when the folder has not been built (`python -m hybrid_lens.zoo.train --all`).
    """
    folder = ZOO_MODELS.get(name) or ZOO_MODELS.get(PREFIX + str(name))
    if folder is None:
        raise KeyError(f"No bundled model {name!r}. Available: {', '.join(ZOO_MODELS)}.")
    path = HERE / "checkpoints" / folder
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is missing; build it with `python -m hybrid_lens.zoo.train --all`.")
    return path


def verses() -> list[str]:
    """The corpus, one verse a line, without the book:chapter:verse reference."""
    with gzip.open(HERE / "data" / "kjv_bible.txt.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").split(" ", 1)[1] for line in f if " " in line]


def split_verses() -> tuple[list[str], list[str]]:
    """(training verses, held-out validation verses): every 40th verse (index % 40 == 0) is held out."""
    lines = verses()
    train = [v for i, v in enumerate(lines) if i % VALIDATION_EVERY]
    validation = [v for i, v in enumerate(lines) if i % VALIDATION_EVERY == 0]
    return train, validation


def load_validation_text() -> str:
    """The held-out validation text: the validation verses joined by newlines."""
    return "\n".join(split_verses()[1])
