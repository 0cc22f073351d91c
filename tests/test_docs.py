"""Documentation checks: the public API is documented with examples, and every example in the package runs.

`DOCUMENTED` lists the modules whose public API must be fully documented: every public function,
class and method has a docstring with an `Examples:` section (properties need a docstring). A module
with `__all__` is checked on the names it exports, a module without one on the public names it
defines itself; objects from other libraries (e.g. TransformerLens' `HookPoint`) are skipped.

Every module of the package runs its examples as doctests (found by walking the package, so a new
module's examples run with no test edit). They run with `torch`, `HookedHybrid`, `next_token_loss`
and the public names of `hybrid_lens.analysis` and `hybrid_lens.interventions` in scope, besides the
module's own names (the convention stated in docs/index.md). `HookedHybrid.from_pretrained` of a
bundled model gives, as it does for a user, a freshly wrapped model with the checkpoint's weights;
here each wraps a copy of the one model loaded per name (loading once is the speed-up). The
examples of `study.report`, `study.report.sections` and `study.tables` read a finished study: they run
in a folder where the study their docstrings name has been run (`STUDY_COMMAND`).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import inspect
import io
import os
import pkgutil

import pytest

import hybrid_lens

MODULES = sorted(name for _, name, _ in pkgutil.walk_packages(hybrid_lens.__path__, "hybrid_lens."))
DOCUMENTED = [  # the public API: every function, class and method with a docstring and an example
    "hybrid_lens", "hybrid_lens.analysis", "hybrid_lens.interventions", "hybrid_lens.mixers", "hybrid_lens.evals",
    "hybrid_lens.viz", "hybrid_lens.model", "hybrid_lens.loading", "hybrid_lens.load_options",
    "hybrid_lens.tokenizing", "hybrid_lens.readout",
    "hybrid_lens.nnsight_view", "hybrid_lens.nnsight_envoy", "hybrid_lens.generation", "hybrid_lens.decoding",
    "hybrid_lens.forward_state", "hybrid_lens.layout", "hybrid_lens.registry",
    "hybrid_lens.tokens", "hybrid_lens.lens_config", "hybrid_lens.hook_points", "hybrid_lens.vocabulary",
    "hybrid_lens.resolver", "hybrid_lens.sae", "hybrid_lens.checks", "hybrid_lens.copying", "hybrid_lens.cache",
    "hybrid_lens.cache.mapping", "hybrid_lens.cache.residual", "hybrid_lens.cache.readout", "hybrid_lens.cache.batch",
    "hybrid_lens.cache.keys", "hybrid_lens.cache.positions", "hybrid_lens.caching", "hybrid_lens.norms",
    "hybrid_lens.configs", "hybrid_lens.coverage", "hybrid_lens.zoo", "hybrid_lens.cli", "hybrid_lens.console",
    "hybrid_lens.mixers.kinds", "hybrid_lens.mixers.state", "hybrid_lens.mixers.gated_deltanet",
    "hybrid_lens.mixers.mamba2", "hybrid_lens.mixers.lightning", "hybrid_lens.mixers.heads", "hybrid_lens.mixers.norm",
    "hybrid_lens.mixers.mlp", "hybrid_lens.mixers.weights", "hybrid_lens.weights", "hybrid_lens.cache.units",
    "hybrid_lens.cache.slicing",
    "hybrid_lens.circuits",
    *(name for name in MODULES if name.startswith(("hybrid_lens.interventions.", "hybrid_lens.evals.",
                                                   "hybrid_lens.study.", "hybrid_lens.circuits."))),
]
# what the examples of READS_A_STUDY read (run once, in the folder they run in)
STUDY_COMMAND = ["study", "--model", "hybrid-lens/tiny-qwen2.5", "--tasks", "ppl", "--conditions",
                 "group,layer,transformer", "--n", "2", "--out", "hybrid-lens-study", "--no-png"]
READS_A_STUDY = ("hybrid_lens.study.report", "hybrid_lens.study.report.sections", "hybrid_lens.study.tables")


def _own(obj, module) -> bool:
    return getattr(obj, "__module__", "").startswith("hybrid_lens") and (
        hasattr(module, "__all__") or obj.__module__ == module.__name__
    )


def public_api(module_name: str) -> list[tuple[str, object, bool]]:
    """`(qualified name, object, needs an example)` for every public function, class, method and
    property of `module_name` (properties need a docstring only)."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
    found = []
    for name in names:
        obj = getattr(module, name)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)) or not _own(obj, module):
            continue
        found.append((f"{module_name}.{name}", obj, True))
        if not inspect.isclass(obj):
            continue
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, (staticmethod, classmethod)):
                value = value.__func__
            if isinstance(value, property):
                found.append((f"{module_name}.{name}.{attr}", value, False))
            elif inspect.isfunction(value):
                found.append((f"{module_name}.{name}.{attr}", value, True))
    return found


@pytest.mark.parametrize("module_name", DOCUMENTED)
def test_public_api_has_examples(module_name):
    api = public_api(module_name)
    assert api, f"{module_name} exports nothing to check; remove it from DOCUMENTED"
    no_docstring = [name for name, obj, _ in api if not (obj.__doc__ or "").strip()]
    no_example = [name for name, obj, needs in api if needs and (obj.__doc__ or "").strip()
                  and "Example" not in obj.__doc__]
    assert not no_docstring and not no_example, (
        f"Public API of {module_name} lacking documentation.\n"
        f"No docstring: {', '.join(no_docstring) or '-'}\n"
        f"No `Examples:` section: {', '.join(no_example) or '-'}"
    )


def _doctest_globals() -> dict:
    import torch

    import hybrid_lens.analysis
    import hybrid_lens.interventions
    from hybrid_lens import next_token_loss

    names = {"torch": torch, "HookedHybrid": _loaded_once(), "next_token_loss": next_token_loss}
    for package in (hybrid_lens.analysis, hybrid_lens.interventions):
        names.update({name: getattr(package, name) for name in package.__all__})
    return names


_LOADED: dict = {}  # bundled name -> (plain transformers model, tokenizer), loaded once per test session


def _loaded_once() -> type:
    """`HookedHybrid` whose `from_pretrained` of a bundled model (no other arguments) wraps a fresh copy
    of that model, loaded once."""
    from hybrid_lens import HookedHybrid

    class Loaded(HookedHybrid):
        @classmethod
        def from_pretrained(cls, name_or_path, tokenizer=None, **hf_kwargs):
            if tokenizer is not None or hf_kwargs or not str(name_or_path).startswith("hybrid-lens/tiny-"):
                return super().from_pretrained(name_or_path, tokenizer, **hf_kwargs)
            if name_or_path not in _LOADED:
                model = HookedHybrid.from_pretrained(name_or_path)
                _LOADED[name_or_path] = (model.unwrap(), model.tokenizer)
            hf_model, loaded_tokenizer = _LOADED[name_or_path]
            return cls(copy.deepcopy(hf_model), copy.deepcopy(loaded_tokenizer))

    Loaded.__name__ = Loaded.__qualname__ = "HookedHybrid"
    return Loaded


def run_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report = io.StringIO()
    tests = doctest.DocTestFinder().find(module, module_name, globs={**vars(module), **_doctest_globals()})
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.write)
    result = runner.summarize(verbose=False)
    assert not result.failed, f"{result.failed} failing example(s) in {module_name}:\n{report.getvalue()}"


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A folder holding the study that the examples of `READS_A_STUDY` read."""
    from hybrid_lens.cli import main

    folder = tmp_path_factory.mktemp("docs")
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        assert main(STUDY_COMMAND) in (0, None)
    finally:
        os.chdir(cwd)
    return folder


@pytest.mark.parametrize("module_name", [name for name in MODULES if name not in READS_A_STUDY])
def test_examples_run(module_name):
    run_examples(module_name)


@pytest.mark.slow
@pytest.mark.parametrize("module_name", READS_A_STUDY)
def test_examples_reading_a_study_run(module_name, finished_study, monkeypatch):
    monkeypatch.chdir(finished_study)
    run_examples(module_name)
