"""The `study` and `report` subcommands, added to the package's one command line, `hybrid_lens.cli`
(which owns the parser, the `hooks` and `models` commands and the error handling).

The `study` options that set a `StudySpec` field take their default, choices and lower bound from
that field (`spec_option`), so each lives in one place: `StudySpec`. This module imports neither
torch nor `transformers`: every argument is parsed and checked before a model loads.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path

from .. import zoo
from .spec import StudySpec, check_out_folder, spec_error

SPEC_FIELDS = StudySpec.__pydantic_fields__


def _csv(valid: list[str], what: str):
    def parse(text: str) -> tuple[str, ...]:
        items = tuple(item.strip() for item in text.split(",") if item.strip())
        if not items:
            raise argparse.ArgumentTypeError(f"no {what} given; valid: {', '.join(valid)}")
        unknown = [item for item in items if item not in valid]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {what} {unknown}; valid: {', '.join(valid)}")
        return items

    return parse


def _at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


def spec_option(field: str) -> dict:
    """The `add_argument` keywords of an option setting `StudySpec.<field>`: its default, and
    `choices` (a `Literal` field) or an integer `type` with the field's lower bound.

    Examples:
        >>> spec_option("dtype")
        {'default': 'float32', 'choices': ('float32', 'bfloat16', 'float16', 'float64')}
        >>> option = spec_option("n")
        >>> option["default"], option["type"]("3")
        (200, 3)
        >>> option["type"]("0")
        Traceback (most recent call last):
        ...
        argparse.ArgumentTypeError: must be at least 1, got 0
    """
    info = SPEC_FIELDS[field]
    option = {"default": info.get_default()}
    if typing.get_origin(info.annotation) is typing.Literal:
        option["choices"] = typing.get_args(info.annotation)
    for bound in info.metadata:  # pydantic's Ge / Gt constraints of an integer field
        if getattr(bound, "ge", None) is not None:
            option["type"] = _at_least(bound.ge)
        elif getattr(bound, "gt", None) is not None:
            option["type"] = _at_least(bound.gt + 1)
    return option


TASKS = spec_option("tasks")["default"]  # every study task
CONDITION_GROUPS = tuple(g for g in spec_option("groups")["default"] if g != "baseline")  # --conditions
SPEC_OPTIONS = ("tasks", "n", "method", "trials", "seed", "dtype", "ppl_source", "ppl_context", "data",
                "condition_batch", "device_map")  # the StudySpec fields set by an option of the same name


def _study(args) -> None:
    specs = []
    for name in args.model or list(zoo.ZOO_MODELS):  # every model and setting checked before any work
        fields = dict(model=name, groups=("baseline", *args.conditions),
                      **{field: getattr(args, field) for field in SPEC_OPTIONS})
        error = spec_error(StudySpec, **fields)
        if error:
            raise ValueError(f"invalid study settings: {error}")
        zoo.resolve(name)
        specs.append(StudySpec(**fields))
    make_out_folder(args.out)
    from ..console import transformers_output
    from .report import render_report
    from .runner import run_study

    say = (lambda *_: None) if args.quiet else print
    with transformers_output(quiet=args.quiet):
        for spec in specs:
            folder = run_study(spec, args.out, overwrite=args.overwrite, progress=not args.quiet,
                               extend_n=args.extend_n)
            say(f"{spec.model}: results in {folder / 'results.sqlite'}")
        if args.report:
            say(f"report: {render_report(args.out, png=args.png)}")


def make_out_folder(out: Path) -> None:
    """Create the study folder `out` (and the folders above it) if missing, or raise an `OSError`
    saying why it cannot be written (`spec.check_out_folder`, then the creation itself), before any
    model loads.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp()) / "new" / "study"
        >>> make_out_folder(folder)
        >>> folder.is_dir()
        True
        >>> _ = (folder / "notes.txt").write_text("x")
        >>> make_out_folder(folder / "notes.txt" / "study")
        Traceback (most recent call last):
        ...
        NotADirectoryError: --out .../notes.txt/study: .../notes.txt is a file, not a folder.
    """
    check_out_folder(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OSError(f"--out {out}: cannot create this folder ({err.strerror}); pass another --out.") from None


def _report(args) -> None:
    from .report import render_report
    from .files import clean_stale_temporaries

    if not args.folder.is_dir():
        raise FileNotFoundError(f"No study folder {str(args.folder)!r} (run `hybrid-lens study --out FOLDER` first).")
    clean_stale_temporaries(args.folder)
    print(f"report: {render_report(args.folder, png=args.png, out=args.out)}")


def add_study_commands(commands) -> None:
    """Add the `study` and `report` subcommands to `commands` (an argparse subparsers object).

    Each parsed command has `run`, the function that carries it out with the parsed arguments.

    Examples:
        >>> parser = argparse.ArgumentParser(prog="hybrid-lens")
        >>> add_study_commands(parser.add_subparsers(dest="command", required=True))
        >>> args = parser.parse_args(["study", "--model", "hybrid-lens/tiny-qwen3.5", "--tasks", "ppl,arc",
        ...                           "--conditions", "group", "--n", "2", "--no-png"])
        >>> args.model, args.tasks, args.conditions, args.n, args.out.as_posix()
        (['hybrid-lens/tiny-qwen3.5'], ('ppl', 'arc'), ('group',), 2, 'hybrid-lens-study')
        >>> args.run(args)                               # runs the study, then the report  # doctest: +SKIP
        hybrid-lens/tiny-qwen3.5: results in hybrid-lens-study/hybrid-lens_tiny-qwen3.5/results.sqlite
        report: hybrid-lens-study/report.html
    """
    study = commands.add_parser(
        "study", help="Run the component-ablation protocol (resumable) and write its report.",
        description="Run the component-ablation study of arXiv 2603.22473 on one or more models. Results go to "
                    "OUT/<model>/results.sqlite, one row per (condition, task, example); rerunning resumes. "
                    "With no --model, runs the three bundled models offline.")
    study.add_argument("--model", action="append", help="Hub name, local folder or bundled name; repeat for several "
                       f"(default: {', '.join(zoo.ZOO_MODELS)}).")
    n, trials, ppl_source, data = (spec_option(f)["default"] for f in ("n", "trials", "ppl_source", "data"))
    study.add_argument("--tasks", type=_csv(list(TASKS), "task"), default=TASKS,
                       help=f"Comma-separated tasks (default: all of {', '.join(TASKS)}).")
    study.add_argument("--conditions", type=_csv(list(CONDITION_GROUPS), "condition group"),
                       default=CONDITION_GROUPS,
                       help="Condition groups besides the baseline: group (one component kind off everywhere), "
                            "layer (each component of each layer), positional (early/middle/late thirds, parallel "
                            "hybrids), random (matched random controls), transformer (random layer removal on a "
                            "pure transformer). Default: all.")
    study.add_argument("--n", **spec_option("n"),
                       help=f"Examples per benchmark; windows for perplexity (default {n}).")
    study.add_argument("--method", **spec_option("method"),
                       help="Ablation method: auto = skip whole layers on one-mixer-per-layer models and zero the "
                            "path on parallel hybrids (the paper's choice); skip, zero, or mixer_off (zero every "
                            "mixer, keep the MLP). Default: auto.")
    study.add_argument("--trials", **spec_option("trials"),
                       help=f"Random-control trials per targeted condition (default {trials}).")
    study.add_argument("--seed", **spec_option("seed"), help="Seed of random controls and bootstrap (default 0).")
    study.add_argument("--dtype", **spec_option("dtype"), help="torch dtype to load the model in (default float32).")
    study.add_argument("--device-map", **spec_option("device_map"),
                       help="Passed to from_pretrained as device_map (e.g. auto: accelerate places "
                            "the model over the available GPUs, CPU and disk). Default: none (one device).")
    study.add_argument("--ppl-text", dest="ppl_source", **spec_option("ppl_source"),
                       help=f"Perplexity text (default: {ppl_source}: bundled models' held-out split, others' "
                            "WikiText-2), wikitext2 (bundled test split), kjv-validation, or a .txt/.txt.gz path.")
    study.add_argument("--data", **spec_option("data"),
                       help=f"Benchmark data (default: {data}: offline subsets shipped with hybrid-lens), hub (cais/mmlu, "
                            "allenai/ai2_arc, Rowan/hellaswag, truthful_qa, gsm8k; needs network).")
    study.add_argument("--ppl-context", **spec_option("ppl_context"),
                       help="Perplexity window length in tokens (default: bundled models use their model card's "
                            "disjoint windows of the trained length, 256; other models 512, stride 256).")
    study.add_argument("--condition-batch", **spec_option("condition_batch"),
                       help="Most conditions per forward pass for loglikelihood tasks (condition batching; default: "
                            "the Sweep's, which plans the passes from a cost model measured on the device). "
                            "Results agree for any value (to float rounding); memory grows with it.")
    study.add_argument("--out", type=Path, default=Path("hybrid-lens-study"),
                       help="Output folder, created if missing; one subfolder per model (default: %(default)s).")
    study.add_argument("--overwrite", action="store_true",
                       help="Replace the study in OUT/<model> (a rerun with other settings is refused otherwise).")
    study.add_argument("--extend-n", action="store_true",
                       help="Grow --n of an existing study, keeping every other setting (its pairs are computed "
                            "again at the new n).")
    study.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                       help="Render the report: OUT/report.html, OUT/report.md (default: on).")
    study.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                       help="Also write PNG copies of the figures (matplotlib; default: on).")
    study.add_argument("--quiet", action="store_true",
                       help="Print errors only: no progress bars, no transformers messages, no result lines.")
    study.set_defaults(run=_study)

    report = commands.add_parser("report", help="Re-render the report of a finished (or partial) study.")
    report.add_argument("folder", type=Path, help="The study's output folder (its --out).")
    report.add_argument("--out", type=Path, help="Folder to write the report into (default: the study's folder; "
                        "use another one for a study in a read-only folder).")
    report.add_argument("--png", action=argparse.BooleanOptionalAction, default=True,
                        help="Also write PNG figures (default: on).")
    report.set_defaults(run=_report)
