"""What a study is, checked without loading anything heavy: `StudySpec` (every setting of a study,
validated by pydantic), the names its settings take (tasks, condition groups, methods, dtypes) and
`check_out_folder` (where it may be written).

The `hybrid-lens study` options take their defaults, choices and bounds from `StudySpec`, and this
module imports neither torch nor `transformers`, so the command validates every argument before a
model loads. `study.tasks`, `study.plan` and `study.runner` use these names.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, field_validator
from pydantic.dataclasses import dataclass

from .files import study_folders, writable

TASKS = ("ppl", "mmlu", "arc", "hellaswag", "truthfulqa", "gsm8k")  # `study.tasks.TASKS` has one evaluator each
GROUPS = ("baseline", "group", "layer", "positional", "random", "transformer")
METHODS = ("auto", "skip", "zero", "mixer_off")
PPL_SOURCES = ("auto", "kjv-validation", "wikitext2")  # besides a .txt / .txt.gz file
DTYPES = ("float32", "bfloat16", "float16", "float64")
NOT_IDENTITY = ("condition_batch", "device_map", "threads")  # settings that change speed or placement, not numbers


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class StudySpec:
    """What to run. `n` caps examples per benchmark (and windows for perplexity).

    Up to `condition_batch` conditions share a forward pass (condition batching; None: the
    `Sweep`'s default, which plans how many to stack from its cost model of the device). Results
    are the same either way (to float rounding); memory grows with it.

    Attributes:
        model: hub name, local folder or bundled name of the model.
        tasks: study tasks (`TASKS`: ppl, mmlu, arc, hellaswag, truthfulqa, gsm8k).
        groups: condition groups (`GROUPS`).
        n: examples per benchmark, windows for perplexity.
        method: ablation method (`auto`, `skip`, `zero`, `mixer_off`).
        trials: random-control draws per targeted condition.
        seed: seed of random controls and few-shot sampling.
        dtype: torch dtype name the model is loaded in.
        ppl_source: perplexity text (see `study.tasks.ppl_text`).
        ppl_context: perplexity window length in tokens (None: see `ppl_windows`).
        ppl_stride: tokens between window starts (None: see `ppl_windows`).
        data: benchmark data: `bundled`, `hub`, or a local file.
        condition_batch: most conditions per forward pass for loglikelihood tasks (None: the `Sweep` default).
        threads: torch CPU threads while the study runs (None: 1 for the bundled models, whose
            forward passes are too small to gain from intra-op threads and whose CPU time grew
            tenfold with 2 threads on a busy 2-core machine; torch's own setting otherwise).

    Every field is validated when the spec is made (pydantic): a bad value raises a
    `pydantic.ValidationError` (a `ValueError`) naming the field, the value and what is allowed.

    Examples:
        >>> spec = StudySpec(model="hybrid-lens/tiny-qwen3.5", tasks=("ppl", "arc"), groups=("baseline", "group"),
        ...                  n=2, ppl_context=128)
        >>> spec.method, spec.condition_batch
        ('auto', None)
        >>> StudySpec(model="hybrid-lens/tiny-qwen3.5", tasks=("winogrande",))
        Traceback (most recent call last):
        ...
        pydantic_core._pydantic_core.ValidationError: 1 validation error for StudySpec
        tasks
          Value error, Unknown task(s) ['winogrande']; valid tasks: ppl, mmlu, arc, hellaswag, truthfulqa, gsm8k. ...
        >>> print(spec_error(StudySpec, model="hybrid-lens/tiny-qwen3.5", n=0, dtype="float33"))
        n: Input should be greater than 0 (got 0); dtype: Input should be 'float32', 'bfloat16', 'float16' or 'float64' (got 'float33')
    """

    model: str = Field(min_length=1)
    tasks: tuple[str, ...] = TASKS
    groups: tuple[str, ...] = GROUPS
    n: int = Field(200, gt=0)
    method: Literal[METHODS] = "auto"
    trials: int = Field(3, ge=1)
    seed: int = Field(0, ge=0)
    dtype: Literal[DTYPES] = "float32"
    ppl_source: str = "auto"
    ppl_context: int | None = Field(None, ge=2)
    ppl_stride: int | None = Field(None, ge=1)
    data: str = "bundled"
    condition_batch: int | None = Field(None, gt=0)
    device_map: str | None = None
    threads: int | None = Field(None, ge=1)

    @field_validator("tasks")
    @classmethod
    def _tasks(cls, tasks: tuple[str, ...]) -> tuple[str, ...]:
        if not tasks:
            raise ValueError(f"No tasks given; choose from {', '.join(TASKS)}.")
        if len(set(tasks)) < len(tasks):
            raise ValueError(f"Repeated task in {list(tasks)}.")
        check_tasks(tasks)
        return tasks

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(groups) - set(GROUPS)
        if unknown or not groups:
            raise ValueError(f"Unknown or no condition group(s) {sorted(unknown)}; choose from {', '.join(GROUPS)}.")
        return groups

    @field_validator("ppl_source", "data")
    @classmethod
    def _source(cls, source: str, info) -> str:
        named = PPL_SOURCES if info.field_name == "ppl_source" else ("bundled", "hub")
        if source not in named and not Path(source).is_file():
            raise ValueError(f"{source!r} is neither one of {', '.join(named)} nor an existing file.")
        return source

    def identity(self) -> dict:
        """The settings that change a number: what makes two runs one study (all but
        `condition_batch` and `device_map`).

        Examples:
            >>> sorted(StudySpec(model="hybrid-lens/tiny-qwen3.5").identity())[:4]
            ['data', 'dtype', 'groups', 'method']
        """
        return {key: value for key, value in asdict(self).items() if key not in NOT_IDENTITY}


def spec_error(spec_type, **fields) -> str | None:
    """One line naming every invalid field of `spec_type(**fields)` with its value (None if valid).

    Examples:
        >>> spec_error(StudySpec, model="hybrid-lens/tiny-qwen2.5", n=-3)
        'n: Input should be greater than 0 (got -3)'
    """
    from pydantic import ValidationError

    try:
        spec_type(**fields)
    except ValidationError as err:
        return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']} (got {e['input']!r})"
                         for e in err.errors())
    return None


def check_tasks(tasks: Sequence[str]) -> None:
    """Raise `ValueError` naming the valid tasks if any of `tasks` is not a study task.

    Examples:
        >>> check_tasks(["ppl", "arc"])
        >>> check_tasks(["ppl", "winogrande"])
        Traceback (most recent call last):
        ...
        ValueError: Unknown task(s) ['winogrande']; valid tasks: ppl, mmlu, arc, hellaswag, truthfulqa, gsm8k.
    """
    unknown = [t for t in tasks if t not in TASKS]
    if unknown:
        raise ValueError(f"Unknown task(s) {unknown}; valid tasks: {', '.join(TASKS)}.")


def check_out_folder(out: Path) -> None:
    """Raise `NotADirectoryError` if `out` or a folder above it is a regular file, `PermissionError`
    if it is read-only (before anything is written).

    Examples:
        >>> import tempfile
        >>> file = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> _ = file.write_text("x")
        >>> check_out_folder(file / "study")
        Traceback (most recent call last):
        ...
        NotADirectoryError: --out .../notes.txt/study: .../notes.txt is a file, not a folder.
    """
    for parent in [out, *out.parents]:
        if parent.exists() and not parent.is_dir():
            raise NotADirectoryError(f"--out {out}: {parent} is a file, not a folder.")
    if not writable(out):
        raise PermissionError(f"--out {out} is read-only: no study can run or resume there"
                              + ("; the study it holds can still be rendered elsewhere: `hybrid-lens report "
                                 f"{out} --out OTHER_FOLDER`." if out.is_dir() and study_folders(out) else "."))
