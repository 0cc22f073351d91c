"""The `hybrid-lens` command line: the one parser, its `hooks` and `models` commands, and the error
handling of every command; `study.commands` adds the `study` and `report` commands.

Parsing and argument checks import neither torch nor `transformers` (each command imports what it
needs when it runs), so `--help` and a rejected argument answer at once, and Ctrl-C at any moment,
imports included, ends with one line and exit status 130.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _hooks(args) -> None:
    from . import zoo

    zoo.resolve(args.model)  # a wrong name fails before torch loads
    from .console import transformers_output
    from .model import HookedHybrid

    with transformers_output():
        model = HookedHybrid.from_pretrained(args.model)
    print(f"{args.model}: {type(model.hf_model).__name__}, {model.n_layers} layers")
    print("layer types:", ", ".join(f"{i}:{t}" for i, t in enumerate(model.layer_types)))
    for name in model.hook_names(inner=args.inner):
        print(name)


def _models(args) -> None:
    from . import zoo

    if args.coverage:
        from .coverage import coverage_markdown

        print(coverage_markdown())
        return
    print("Bundled models (offline):")
    for name in zoo.ZOO_MODELS:
        print(f"  {name}")
    print("Bundled planted-mechanism models that recall in context (offline; zoo.recall, tutorial 07):")
    for name in zoo.PLANTED_MODELS:
        print(f"  {name}")
    print("Bundled language models trained further to recall in context (offline; zoo.recall):")
    for name in zoo.RECALL_LM_MODELS:
        print(f"  {name}")
    print("Optional real models (offline once installed):")
    for name, (description, is_installed, install) in zoo.REAL_MODELS.items():
        state = "installed" if is_installed() else f"not installed: {install}"
        print(f"  {name}: {description} [{state}]")
    families = json.loads(FAMILIES.read_text())  # the registry's `coverage.family_index()`, without importing torch
    print(f"Supported families ({len(families)}; any checkpoint of these loads with --model NAME_OR_PATH):")
    for family in families:
        print(f"  {family['family']}: {', '.join(family['architectures'])} [{', '.join(family['layer_kinds'])}]")


FAMILIES = Path(__file__).with_name("families.json")


def build_parser() -> argparse.ArgumentParser:
    """The `hybrid-lens` argument parser: `hooks`, `models`, `study` and `report`.

    Examples:
        >>> args = build_parser().parse_args(["hooks", "--model", "hybrid-lens/tiny-falcon-h1", "--no-inner"])
        >>> args.command, args.model, args.inner
        ('hooks', 'hybrid-lens/tiny-falcon-h1', False)
        >>> build_parser().parse_args(["report", "hybrid-lens-study"]).folder.as_posix()
        'hybrid-lens-study'
    """
    parser = argparse.ArgumentParser(prog="hybrid-lens", description="Mechanistic interpretability for hybrid LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    hooks = commands.add_parser("hooks", help="List the hook points of a model.")
    hooks.add_argument("--model", required=True, help="Hub name, local folder, or bundled name (hybrid-lens/...).")
    hooks.add_argument("--inner", action=argparse.BooleanOptionalAction, default=True,
                       help="Include inner mixer points (q/k/v, x/B/C/dt, ...; default: on).")
    hooks.set_defaults(run=_hooks)

    models = commands.add_parser("models", help="List the bundled models and the supported families.")
    models.add_argument("--coverage", action="store_true",
                        help="Print the coverage table (Markdown) instead: every family's layer kinds and hook points.")
    models.set_defaults(run=_models)

    from .study.commands import add_study_commands

    add_study_commands(commands)
    return parser


INTERRUPTED = {"study": "hybrid-lens: interrupted; finished pairs are saved, and rerunning the same command resumes."}


def main(argv: list[str] | None = None) -> int:
    """Run the `hybrid-lens` command with `argv` (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0; 2 after printing the error of a failed command to stderr (one line);
        130 after Ctrl-C at any moment, imports included (one line; a study resumes when rerun).

    Examples:
        >>> main(["hooks", "--model", "hybrid-lens/tiny-qwen2.5", "--no-inner"])
        hybrid-lens/tiny-qwen2.5: Qwen2ForCausalLM, 8 layers
        layer types: 0:attn, 1:attn, 2:attn, 3:attn, 4:attn, 5:attn, 6:attn, 7:attn
        hook_embed
        blocks.0.hook_resid_pre
        ...
        ln_final.hook_normalized
        hook_logits
        0

        The same from a shell: `hybrid-lens hooks --model hybrid-lens/tiny-qwen2.5 --no-inner`.
    """
    args = None
    try:
        args = build_parser().parse_args(argv)
        args.run(args)
    except KeyboardInterrupt:
        print(INTERRUPTED.get(getattr(args, "command", None), "hybrid-lens: interrupted."), file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, NotImplementedError, ImportError, FloatingPointError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hybrid-lens: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
