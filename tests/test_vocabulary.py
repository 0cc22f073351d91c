"""The vocabulary (hook names, kinds, labels) against the hook points the models really have."""

from __future__ import annotations

import ast
import pickle
from pathlib import Path

import pytest
import torch

import hybrid_lens
from hybrid_lens.interventions import Selector, Target
from hybrid_lens.vocabulary import COMPONENT_KINDS, INPUT_POINTS, RESID_KINDS, ComponentLabel, hook_name

from .fixtures import build

CORE = ("model.py", "cache", "hook_points.py", "vocabulary.py", "resolver.py", "layout.py", "forward_state.py", "loading.py",
        "tokenizing.py", "readout.py", "nnsight_view.py", "registry.py", "adapters", "interventions", "mixers")


def test_hook_names_are_the_model_hook_points(family):
    """Every name `hook_name` builds for a layer's kinds is a hook point of the module tree, and
    together they are all the block-level points (checked against the modules' own names)."""
    _, model = build(family)
    points = set(model.hook_dict)
    for layer, mixers in enumerate(model.layer_mixers):
        built = {hook_name(layer, kind) for kind in (*mixers, "mlp", *RESID_KINDS)}
        assert built <= points
        block_level = {name for name in points if name.startswith(f"blocks.{layer}.hook_")}
        inputs = {f"blocks.{layer}.{name}" for name in INPUT_POINTS} & points  # TransformerLens's input points
        assert built | inputs == block_level
        inner = {name for name in points if name.startswith(f"blocks.{layer}.") and name not in block_level}
        assert inner == {hook_name(layer, *name.split(".")[2:]) for name in inner}


def test_unknown_kind_is_refused():
    with pytest.raises(ValueError, match="'mixer'.*choose one of"):
        hook_name(0, "mixer")


def test_component_and_target_name_the_same_point():
    _, model = build("falcon_h1")
    for kind in COMPONENT_KINDS:
        for component in model.components(kind):
            assert Target(component.layer, component.kind).hook_names == [component.hook_name]
    targets = Selector("mixer").targets(model.layout)
    assert {t.hook_names[0] for t in targets} == {c.hook_name for k in ("attn", "ssm") for c in model.components(k)}


def test_labels_are_data_that_print_as_transformer_lens_labels(tokens):
    """Labels print as TransformerLens labels `decompose_resid`'s components, by hook point (`0_attn_out`;
    before #26 they printed `0_attn`), and carry their layer and kind as data."""
    _, model = build("qwen3_5")
    _, cache = model.run_with_cache(tokens)
    parts, labels = cache.decompose_resid(return_labels=True)
    expected = ["embed"] + [f"{i}_{kind}_out" for i, mixers in enumerate(model.layer_mixers)
                            for kind in (*mixers, "mlp")]
    assert labels == expected and str(labels) == str(expected)
    for label, part in zip(labels[1:], parts[1:]):
        assert torch.equal(part, cache[hook_name(label.layer, label.kind)])
    assert (labels[0].layer, labels[0].kind) == (None, "embed")
    copy = pickle.loads(pickle.dumps(labels[1]))
    assert (copy, copy.layer, copy.kind) == ("0_linear_attn_out", 0, "linear_attn")
    with pytest.raises(AttributeError):
        labels[1].layer = 5
    assert ComponentLabel(3, "attn") != ComponentLabel(3, "mlp")


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            found |= {node.module or ""} | {f"{node.module or ''}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return found


def test_core_does_not_import_the_zoo():
    root = Path(hybrid_lens.__file__).parent
    files = [p for entry in CORE for p in ([root / entry] if entry.endswith(".py") else (root / entry).rglob("*.py"))]
    offending = [str(p.relative_to(root)) for p in files if any("zoo" in name.split(".") for name in _imports(p))]
    assert not offending


# The rooms of ARCHITECTURE.md, in import order: a module imports only its own room and the rooms above.
ROOMS = [("registry", "checks", "tokens", "forward_state", "norms"), ("hook_points", "mixers"), ("vocabulary", "layout"),
         ("adapters",), ("cache",),
         ("model", "loading", "load_options", "tokenizing", "caching", "readout", "generation", "decoding", "nnsight_view",
          "nnsight_envoy", "sae", "weights", "copying", "lens_config", "resolver", "switching"),
         ("zoo", "configs"), ("interventions",), ("circuits",),
         ("analysis", "evals", "study", "viz", "cli", "coverage", "console", "conventions")]


def _room(module: str) -> int:
    """The row of ROOMS holding `module` (`hybrid_lens.x.y`), by its longest listed prefix."""
    matches = [(len(name), row) for row, names in enumerate(ROOMS) for name in names
               if module == f"hybrid_lens.{name}" or module.startswith(f"hybrid_lens.{name}.")]
    assert matches, f"{module} is in no room of ARCHITECTURE.md"
    return max(matches)[1]


def _resolved_imports(path: Path, module: str) -> set[str]:
    """The `hybrid_lens` modules (or names in them) that the file of `module` imports, relative ones resolved."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {f"{target}.{alias.name}" if node.module is None else target for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {name for name in found if name.startswith("hybrid_lens.")}


def test_imports_run_down_the_architecture():
    root = Path(hybrid_lens.__file__).parent
    upward = []
    for path in root.rglob("*.py"):
        parts = path.relative_to(root.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        if module == "hybrid_lens":
            continue
        upward += [f"{module} -> {target}" for target in _resolved_imports(path, module) if _room(target) > _room(module)]
    assert not upward, upward
