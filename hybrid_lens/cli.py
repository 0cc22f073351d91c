"""The `hybrid-lens` command line: studies, reports, hook listings and the model zoo."""

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

    print("Bundled models (offline):")
    for name in zoo.ZOO_MODELS:
        print(f"  {name}")
    print("Supported architectures (any checkpoint of these loads with --model NAME_OR_PATH):")
    for adapter in ADAPTERS:
        print(f"  {adapter.family}: {', '.join(adapter.architectures)}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybrid-lens", description="Mechanistic interpretability for hybrid LMs.")
    commands = parser.add_subparsers(dest="command", required=True)

    hooks = commands.add_parser("hooks", help="List the hook points of a model.")
    hooks.add_argument("--model", required=True, help="Hub name, local folder, or bundled name (hybrid-lens/...).")
    hooks.add_argument("--inner", action=argparse.BooleanOptionalAction, default=True,
                       help="Include inner mixer points (q/k/v, x/B/C/dt, ...).")
    hooks.set_defaults(run=_hooks)

    models = commands.add_parser("models", help="List the bundled models and the supported architectures.")
    models.set_defaults(run=_models)

    from .study.cli import add_study_commands

    add_study_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (ValueError, KeyError, FileExistsError, NotImplementedError) as err:
        print(f"hybrid-lens: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
