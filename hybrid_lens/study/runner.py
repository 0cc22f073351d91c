"""The study runner: every (condition, task) pair of a study, evaluated once, stored durably.

Conditions come from the model's layer kinds (`study.conditions`); tasks from `study.tasks`.
Finished pairs are skipped on a rerun, so an interrupted study resumes where it stopped.
Conditions shard across processes: under `torchrun` / `accelerate launch` each rank takes every
`world`-th condition, and all ranks write to the same store.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .conditions import GROUPS, study_conditions
from .store import StudyStore
from .tasks import TASKS, check_tasks, evaluate


@dataclass(frozen=True)
class StudySpec:
    """What to run. `n` caps examples per benchmark (and windows for perplexity)."""

    model: str
    tasks: tuple[str, ...] = tuple(TASKS)
    groups: tuple[str, ...] = GROUPS
    n: int = 200
    method: str = "auto"
    trials: int = 3
    seed: int = 0
    dtype: str = "float32"
    ppl_source: str = "auto"
    ppl_context: int = 512
    data: str = "bundled"

    def __post_init__(self):
        check_tasks(self.tasks)
        unknown = set(self.groups) - set(GROUPS)
        if unknown:
            raise ValueError(f"Unknown condition group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}.")


def task_options(spec: StudySpec, task: str) -> dict:
    if task == "ppl":
        return dict(model_name=spec.model, ppl_source=spec.ppl_source, ppl_context=spec.ppl_context)
    return dict(data=spec.data)


def model_folder(out: Path, model: str) -> Path:
    """`out/<model name made filesystem-safe>`."""
    return Path(out) / re.sub(r"[^A-Za-z0-9_.-]+", "_", model)


def shard() -> tuple[int, int]:
    """(rank, world size) from the standard `RANK` / `WORLD_SIZE` variables that `torchrun` and
    `accelerate launch` set for each process; (0, 1) in a plain run."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_study(spec: StudySpec, out: str | Path, model=None, overwrite: bool = False, progress: bool = True,
              rank_world: tuple[int, int] | None = None) -> Path:
    """Run (or resume) a study; returns the folder holding its `results.sqlite`.

    Args:
        model: an already loaded `HookedHybrid` (default: `HookedHybrid.from_pretrained(spec.model)`).
        overwrite: replace a store of another model in the same folder.
        rank_world: explicit shard; default from the launcher's `RANK` / `WORLD_SIZE`.
    """
    import torch

    from ..model import HookedHybrid

    folder = model_folder(Path(out), spec.model)
    rank, world = rank_world or shard()
    if model is None:
        model = HookedHybrid.from_pretrained(spec.model, dtype=getattr(torch, spec.dtype))
    specs = study_conditions(model.layer_mixers, spec.groups, spec.method, spec.trials, spec.seed)
    store = StudyStore(folder / "results.sqlite", meta={**asdict(spec), "layer_mixers": model.layer_mixers},
                       overwrite=overwrite and rank == 0)
    store.save_conditions([s.to_dict() for s in specs])
    pairs = [(s, t) for i, s in enumerate(specs) if i % world == rank for t in spec.tasks]
    todo = [(s, t) for s, t in pairs if not store.is_done(s.name, t)]
    bar = tqdm(todo, desc=f"{spec.model} [{rank + 1}/{world}]", disable=not progress, unit="pair")
    with torch.no_grad():
        for study_condition, task in bar:
            bar.set_postfix_str(f"{study_condition.name} · {task}")
            start = time.perf_counter()
            rows = evaluate(task, model, study_condition.condition, spec.n, spec.seed, **task_options(spec, task))
            store.write(study_condition.name, task, rows, time.perf_counter() - start)
        if rank == 0 and not store.is_done("baseline", HIDDEN_TASK):
            start = time.perf_counter()
            tokens = diagnostic_tokens(model, spec)
            write_contributions(model, tokens[:, :CONTRIBUTION_TOKENS], folder / CONTRIBUTIONS_FILE)
            store.write("baseline", HIDDEN_TASK, hidden_metrics(model, tokens), time.perf_counter() - start)
    store.close()
    return folder


HIDDEN_TASK = "hidden"
DIAGNOSTIC_TOKENS = 512
CONTRIBUTION_TOKENS = 64
CONTRIBUTIONS_FILE = "contributions.html"


def diagnostic_tokens(model, spec: StudySpec):
    """The protocol's diagnostic text: the first 512 tokens of the perplexity text, `[1, pos]`."""
    from .tasks import ppl_text

    return model.to_tokens(ppl_text(spec.model, spec.ppl_source)[:20_000])[:, :DIAGNOSTIC_TOKENS]


def hidden_metrics(model, tokens) -> pd.DataFrame:
    """Per-layer hidden-state metrics of the clean model, as rows example=layer, metric=`{metric}|{component}`."""
    from ..analysis import layer_metrics

    table = layer_metrics(model, tokens)
    return pd.DataFrame(dict(example=table.layer, metric=table.metric + "|" + table.component, value=table.value))


def write_contributions(model, tokens, path: Path) -> None:
    """The per-token component-contribution view of the clean model, as an HTML fragment (atomic write)."""
    from ..analysis import contributions_html, token_contributions

    _, cache = model.run_with_cache(tokens)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(contributions_html(token_contributions(model, cache, tokens)), encoding="utf-8")
    temporary.replace(path)
