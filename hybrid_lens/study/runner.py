"""The study runner: every (condition, task) pair of a study, evaluated once, stored durably.

Conditions come from the model's layer kinds (`study.plan`); tasks from `study.tasks`; the
clean model's diagnostics, computed once per study, from `study.diagnostics`.
Finished pairs are skipped on a rerun, so an interrupted study resumes where it stopped; a
folder holds one study: a rerun with settings that change a number is refused (`StudySpec.identity`).
Conditions of a loglikelihood task are evaluated `SWEEP_GROUP` at a time as one `Sweep`: each
starts from the clean residual stream at its first layer (prefix reuse), and up to `condition_batch`
of them share a forward pass (condition batching, planned by the `Sweep`). Both give the numbers of
one run per condition (to float rounding where conditions share a pass).
Processes on one folder split the work: each claims its next group of pairs in the store (plain
processes, `torchrun` / `accelerate launch` ranks alike), and all write to the same store.
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from .. import zoo
from ..console import long_texts_fit
from .plan import study_conditions
from ..interventions import Sweep
from .diagnostics import (CONTRIBUTION_TOKENS, DIAGNOSTIC_TOKENS, HIDDEN_TASK, diagnostic_tokens,
                          hidden_metrics, to_store, write_contributions)
from .files import clean_stale_temporaries, safe_folder_name
from .store import StudyStore, delete_store, new_owner
from .spec import StudySpec, check_out_folder, spec_error  # the last two: also importable from here
from .tasks import SWEEPABLE, evaluate, ppl_text, ppl_text_label


def ppl_windows(spec: StudySpec) -> tuple[int, int]:
    """(context, stride) of the perplexity windows in tokens.

    Explicit values win. Otherwise a bundled model is scored as its model card scores it: disjoint
    windows of the length it was trained at (`zoo.trained_context`, 256); any other model gets
    512-token windows starting every 256 tokens (the stride defaults to half the context).

    Examples:
        >>> ppl_windows(StudySpec(model="Qwen/Qwen2.5-0.5B"))
        (512, 256)
        >>> ppl_windows(StudySpec(model="hybrid-lens/tiny-falcon-h1", ppl_context=128))
        (128, 64)
    """
    if spec.ppl_context is None and zoo.is_zoo_name(spec.model):
        context = zoo.trained_context(spec.model)
        return context, spec.ppl_stride or context
    context = spec.ppl_context or DEFAULT_PPL_CONTEXT
    return context, spec.ppl_stride or max(1, context // 2)


DEFAULT_PPL_CONTEXT = 512


def check_context(spec: StudySpec, n_ctx: int | None) -> None:
    """Raise `ValueError` if the perplexity windows of `spec` are longer than the model's `n_ctx`
    positions (None: no limit), naming `--ppl-context` and the longest it can be.

    Examples:
        >>> check_context(StudySpec(model="hybrid-lens/tiny-qwen2.5", ppl_context=100_000), n_ctx=2048)
        Traceback (most recent call last):
        ...
        ValueError: --ppl-context 100000 is longer than hybrid-lens/tiny-qwen2.5 can read: at most 2048 positions (max_position_embeddings); pass --ppl-context 2048 or less.
    """
    context, _ = ppl_windows(spec)
    if "ppl" in spec.tasks and n_ctx is not None and context > n_ctx:
        given = f"--ppl-context {context}" if spec.ppl_context else f"The default perplexity window of {context} tokens"
        raise ValueError(f"{given} is longer than {spec.model} can read: at most {n_ctx} positions "
                         f"(max_position_embeddings); pass --ppl-context {n_ctx} or less.")


def task_options(spec: StudySpec, task: str) -> dict:
    """The options `study.tasks.evaluate` gets for `task` from `spec`.

    Examples:
        >>> spec = StudySpec(model="hybrid-lens/tiny-qwen3.5", ppl_context=128)
        >>> task_options(spec, "ppl")
        {'model_name': 'hybrid-lens/tiny-qwen3.5', 'ppl_source': 'auto', 'ppl_context': 128, 'ppl_stride': 64}
        >>> task_options(spec, "mmlu")
        {'data': 'bundled'}
    """
    if task == "ppl":
        context, stride = ppl_windows(spec)
        return dict(model_name=spec.model, ppl_source=spec.ppl_source, ppl_context=context, ppl_stride=stride)
    return dict(data=spec.data)


def settings(spec: StudySpec) -> dict:
    """The evaluation settings a report states beside its numbers (stored in the study's meta).

    Examples:
        >>> settings(StudySpec(model="hybrid-lens/tiny-qwen3.5", tasks=("ppl",), n=8))
        {'ppl_text': 'held-out KJV', 'ppl_context': 256, 'ppl_stride': 256, 'diagnostic_tokens': 256}
    """
    context, stride = ppl_windows(spec)
    return dict(ppl_text=ppl_text_label(spec.model, spec.ppl_source), ppl_context=context, ppl_stride=stride,
                diagnostic_tokens=min(DIAGNOSTIC_TOKENS, context))


def model_folder(out: Path, model: str) -> Path:
    """`out/<model name as one safe folder name>` (`files.safe_folder_name`: no separators, `.` or `..`).

    Examples:
        >>> model_folder(Path("hybrid-lens-study"), "hybrid-lens/tiny-qwen3.5").as_posix()
        'hybrid-lens-study/hybrid-lens_tiny-qwen3.5'
        >>> model_folder(Path("hybrid-lens-study"), "..").as_posix()          # a local model one folder up
        'hybrid-lens-study/__'
    """
    return Path(out) / safe_folder_name(model)


def shard() -> tuple[int, int]:
    """(rank, world size) from the standard `RANK` / `WORLD_SIZE` variables that `torchrun` and
    `accelerate launch` set for each process; (0, 1) in a plain run.

    Examples:
        >>> shard()                                      # a plain run
        (0, 1)
    """
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def run_study(spec: StudySpec, out: str | Path, model=None, overwrite: bool = False, progress: bool = True,
              rank_world: tuple[int, int] | None = None, extend_n: bool = False) -> Path:
    """Run (or resume) a study; returns the folder holding its `results.sqlite`.

    The folder's store is checked before the model loads: a corrupt store is named, and a store
    of other settings (`StudySpec.identity`) is refused unless `overwrite`, or `extend_n` when
    only `n` grew. Processes on the same folder split the pairs between them (claims in the
    store); a killed process's pairs are taken over.

    Args:
        model: an already loaded `HookedHybrid` (default: `HookedHybrid.from_pretrained(spec.model)`).
        overwrite: replace the study in the folder (any settings).
        rank_world: (rank, world size); default from the launcher's `RANK` / `WORLD_SIZE`. Only
            rank 0 may overwrite; the ranks then split the work as any processes do.
        extend_n: grow `n` of an existing study (every pair is computed again at the new `n`).

    Examples:
        A small study (group ablations of the bundled Qwen3.5, perplexity and ARC on two examples;
        minutes on a CPU, most of it the baseline's hidden-state diagnostics):

        >>> spec = StudySpec(model="hybrid-lens/tiny-qwen3.5", tasks=("ppl", "arc"), groups=("baseline", "group"),
        ...                  n=2, ppl_context=128)
        >>> folder = run_study(spec, "hybrid-lens-study", progress=False)        # doctest: +SKIP
        >>> folder.as_posix()                                                    # doctest: +SKIP
        'hybrid-lens-study/hybrid-lens_tiny-qwen3.5'
        >>> sorted(p.name for p in folder.iterdir())                             # doctest: +SKIP
        ['contributions.html', 'contributions.json', 'results.sqlite']
    """
    import torch

    from ..model import HookedHybrid

    out = Path(out)
    folder = model_folder(out, spec.model)
    check_out_folder(out)
    rank, world = rank_world or shard()
    path, meta = folder / "results.sqlite", spec.identity()
    if overwrite and rank == 0:
        delete_store(path)
    elif path.exists():  # refuse other settings, or name a corrupt file, before loading the model
        StudyStore(path, meta=meta, extend_n=extend_n).close()
    clean_stale_temporaries(out)
    if model is None:
        options = {"device_map": spec.device_map} if spec.device_map else {}
        model = HookedHybrid.from_pretrained(spec.model, dtype=getattr(torch, spec.dtype), **options)
    check_context(spec, model.cfg.n_ctx)
    specs = study_conditions(model.layout, spec.groups, spec.method, spec.trials, spec.seed)
    store = StudyStore(path, meta={**meta, "layer_mixers": model.layer_mixers, "settings": settings(spec)},
                       extend_n=extend_n)
    store.save_conditions([s.to_dict() for s in specs])
    by_name = {s.name: s for s in specs}
    bar = tqdm(total=sum(len(store.pending(task, list(by_name))) for task in spec.tasks),
               desc=f"{spec.model} [{rank + 1}/{world}]",
               disable=not progress, unit="pair")
    batch = spec.condition_batch or Sweep.batch
    owner = new_owner()
    threads = spec.threads or (1 if zoo.is_zoo_name(spec.model) else None)
    try:
        with torch.no_grad(), store.keep_claims(owner), torch_threads(threads), \
                long_texts_fit(model.tokenizer, ppl_windows(spec)[0]):  # texts are tokenized whole, run in windows
            for task in spec.tasks:
                size = SWEEP_GROUP if task in SWEEPABLE else 1
                for names in claimed_groups(store, task, list(by_name), size, owner):
                    group = [by_name[name] for name in names]
                    bar.set_postfix_str(f"{task} · {names[0]}" + (f" +{len(names) - 1}" if len(names) > 1 else ""))
                    start = time.perf_counter()
                    options = task_options(spec, task)
                    if task in SWEEPABLE:
                        sweep = Sweep(tuple(s.condition for s in group), batch=batch)
                        results = evaluate(task, model, sweep, spec.n, spec.seed, **options)
                    else:
                        results = [evaluate(task, model, group[0].condition, spec.n, spec.seed, **options)]
                    seconds = (time.perf_counter() - start) / len(group)
                    for study_condition, rows in zip(group, results):
                        store.write(study_condition.name, task, rows, seconds)
                    bar.update(len(group))
            for _ in claimed_groups(store, HIDDEN_TASK, ["baseline"], 1, owner):
                start = time.perf_counter()
                text = ppl_text(spec.model, spec.ppl_source)
                tokens = diagnostic_tokens(model, text, settings(spec)["diagnostic_tokens"])
                write_contributions(model, tokens[:, :CONTRIBUTION_TOKENS], folder)
                store.write("baseline", HIDDEN_TASK, to_store(hidden_metrics(model, tokens)),
                            time.perf_counter() - start)
        if progress:
            print(f"Evaluation time of {spec.model} (this folder's store, every process):")
            print(time_by_group(store, specs, spec.model).to_string(index=False))
    finally:
        bar.close()
        store.close()
    return folder


def time_by_group(store: StudyStore, specs, model: str) -> pd.DataFrame:
    """Seconds the store's finished pairs took per (task, condition group) of `specs` (the
    `StudyCondition`s; a pair evaluated in a `Sweep` is charged its share of the sweep's time).

    Returns:
        Columns `model`, `task`, `group`, `conditions` (finished pairs) and `seconds`, by task and group.

    Examples:
        >>> import tempfile
        >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
        >>> rows = pd.DataFrame(dict(example=[0], metric="acc", value=[1.0]))
        >>> store.write("baseline", "arc", rows, 2.5); store.write("ssm_off", "arc", rows, 4.0)
        >>> specs = study_conditions(HookedHybrid.from_pretrained("hybrid-lens/tiny-falcon-h1").layout,
        ...                          ("baseline", "group"))
        >>> time_by_group(store, specs, "hybrid-lens/tiny-falcon-h1")
                               model task     group  conditions  seconds
        0  hybrid-lens/tiny-falcon-h1  arc  baseline           1      2.5
        1  hybrid-lens/tiny-falcon-h1  arc     group           1      4.0
        >>> store.close()
    """
    groups = {s.name: s.group for s in specs}
    timings = store.timings()
    timings = timings.assign(group=timings.condition.map(groups).fillna("other"), model=model)
    table = timings.groupby(["model", "task", "group"], as_index=False).agg(conditions=("condition", "size"),
                                                                             seconds=("seconds", "sum"))
    return table


def claimed_groups(store: StudyStore, task: str, conditions: list[str], size: int, owner: str,
                   poll: float = 0.5):
    """Yield groups of up to `size` condition names whose pairs with `task` `owner` has claimed,
    until every pair is done; while the rest is claimed by other live processes, wait for them
    (a pair they leave unfinished is claimed here in turn).

    Examples:
        >>> import tempfile
        >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
        >>> for names in claimed_groups(store, "ppl", ["baseline", "ssm_off", "attn_off"], 2, "host:1:a"):
        ...     print(names)
        ...     for name in names:
        ...         store.write(name, "ppl", pd.DataFrame(dict(example=[0], metric="tokens", value=[63.0])), 0.1)
        ['baseline', 'ssm_off']
        ['attn_off']
        >>> store.close()
    """
    while store.pending(task, conditions):
        names = store.claim(task, conditions, size, owner)
        if names:
            yield names
        else:
            time.sleep(poll)


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch CPU threads (None: unchanged); the previous count is restored.

    Examples:
        >>> import torch
        >>> before = torch.get_num_threads()
        >>> with torch_threads(1):
        ...     torch.get_num_threads()
        1
        >>> torch.get_num_threads() == before
        True
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


SWEEP_GROUP = 16  # conditions per Sweep and per claim (results are stored after each group)
