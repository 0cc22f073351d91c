"""The study report checked as a reader would: every promised section has data, nothing is `nan`,
labels say the ablation actually applied, the page runs in a real browser, and the README's
bundled-model numbers come out of the code path it names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.study.report import render_report
from hybrid_lens.study.runner import StudySpec, run_study
from hybrid_lens.study.store import StudyStore
from hybrid_lens.study.tables import StudyTables

from .fixtures import spec_for

ROOT = Path(__file__).parents[1]
QWEN2 = "hybrid-lens/tiny-qwen2.5"
EVERY_SECTION = ["Summary", "Table 1 analogue", "Table 2 analogue", "Table 3 analogue", "Table 4 analogue",
                 "Table 5 analogue", "Table 6 analogue", "Layer-wise ablation", "Hidden-state metrics",
                 "Hidden-state metric vs layer-ablation impact", "Score drops with 95% bootstrap CIs"]


@pytest.fixture(scope="module")
def report(checkpoint, tmp_path_factory) -> Path:
    """A two-model study: a tiny random Falcon-H1 (perplexity + TruthfulQA, every condition group)
    and the bundled tiny Qwen2.5 (perplexity; group, layer sweep, random layer removal)."""
    out = tmp_path_factory.mktemp("report")
    run_study(spec_for(checkpoint, tasks=("ppl", "truthfulqa"), n=4), out, progress=False)
    run_study(StudySpec(model=QWEN2, tasks=("ppl",), groups=("baseline", "group", "layer", "transformer"), n=2,
                        trials=2), out, progress=False)
    render_report(out)
    return out


def sections(markdown: str) -> dict[str, str]:
    """`## ` heading -> its text."""
    parts = re.split(r"^## ", markdown, flags=re.M)[1:]
    return {part.split("\n", 1)[0]: part.split("\n", 1)[1] for part in parts}


def test_every_promised_section_has_data_and_nothing_is_nan(report):
    markdown = (report / "report.md").read_text()
    found = sections(markdown)
    for title in EVERY_SECTION:
        matches = [body for heading, body in found.items() if heading.startswith(title)]
        assert matches, f"section {title!r} missing; have {list(found)}"
        for part in re.split(r"^### ", matches[0], flags=re.M)[1:]:
            assert "|---" in part or "|:--" in part or "![" in part, f"empty part in {title!r}: {part[:200]}"
    assert not re.search(r"\bnan\b", markdown, flags=re.I)
    assert "('" not in markdown  # no raw tuple column names
    page = (report / "report.html").read_text()
    assert not re.search(r">\s*nan\s*<", page, flags=re.I)
    for key in ("summary", "table1", "table2", "table3", "table4", "table5", "table6", "layers", "hidden",
                "correlations", "drops"):
        assert f"<h2 id='{key}'>" in page
    drops = page.split("<h2 id='drops'>")[1]
    assert drops.count("<table") >= 1 and re.search(r"\[-?\d[\d.e-]*, -?\d[\d.e-]*\]", drops)  # CIs under the heading
    figures = re.findall(r"!\[[^\]]*\]\((figures/[^)]+\.png)\)", markdown)
    assert len(figures) == len(re.findall(r'<div id="[^"]+" class="plotly-graph-div"', page)) >= 8
    for png in figures:
        assert (report / png).read_bytes()[:4] == b"\x89PNG"
    assert not re.search(r"<script[^>]*\bsrc=", page) and "plotly.js v" in page  # plotly.js inlined, nothing fetched


def test_layers_in_natural_order_and_absent_components_shown_as_absent(report):
    layers = sections((report / "report.md").read_text())["Hidden-state metrics of the clean model"]
    qwen = layers.split(f"### {QWEN2}")[1]
    assert re.findall(r"^\| (L\d+) ", qwen, flags=re.M) == [f"L{i}" for i in range(8)]
    falcon = layers.split(f"### {QWEN2}")[0]
    assert "linear attention" not in falcon  # no column for a component the model lacks


def test_labels_say_the_ablation_actually_applied(report):
    store = StudyStore(report / "hybrid-lens_tiny-qwen2.5" / "results.sqlite")
    specs = {spec["name"]: spec for spec in store.conditions()}
    store.close()
    model = HookedHybrid.from_pretrained(QWEN2)
    tokens = model.to_tokens("In the beginning God created the heaven and the earth.")
    from hybrid_lens.interventions import Condition

    skip = Condition.from_dict(specs["L0_attn_off"]["condition"])
    assert specs["L0_attn_off"]["label"] == "sequential skip: whole layer 0 removed (attention and MLP)"
    with skip.apply(model):
        _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], cache["blocks.0.hook_resid_pre"])  # MLP gone too
    mixer = Condition.from_dict(specs["attn_mixer_off"]["condition"])
    assert specs["attn_mixer_off"]["label"].startswith("mixer-only zeroing: attention output of layers 0-7")
    with mixer.apply(model):
        _, cache = model.run_with_cache(tokens)
    assert all(cache[f"blocks.{i}.hook_attn_out"].abs().max() == 0 for i in range(8))
    assert cache["blocks.0.hook_mlp_out"].abs().max() > 0  # the MLP stays
    markdown = (report / "report.md").read_text()
    assert "| attn_mixer_off | mixer-only zeroing" in markdown
    assert "method: sequential skip (whole layer)" in sections(markdown)["Layer-wise ablation"].split(f"### {QWEN2}")[1]
    falcon = StudyStore(next(p for p in report.glob("*/results.sqlite") if "falcon" in p.parent.name))
    labels = {spec["name"]: spec["label"] for spec in falcon.conditions()}
    falcon.close()
    assert labels["ssm_off"].startswith("parallel zeroing: SSM path of layers 0-2 zeroed")


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_runs_in_headless_chromium_without_javascript_errors(report, tmp_path):
    """Loads report.html in headless Chromium; fails on any console error; keeps a screenshot in tmp_path."""
    page = (report / "report.html").resolve().as_uri()
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               "--virtual-time-budget=15000", "--enable-logging=stderr", "--v=0"]
    shot = subprocess.run([*browser, f"--screenshot={tmp_path / 'report.png'}", "--window-size=1300,4000", page],
                          capture_output=True, text=True, timeout=180)
    console = [line for line in shot.stderr.splitlines() if ":CONSOLE" in line]
    assert not [line for line in console if "Uncaught" in line or "Error" in line], console
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
    dom = subprocess.run([*browser, "--dump-dom", page], capture_output=True, text=True, timeout=180).stdout
    divs = len(re.findall(r'class="plotly-graph-div', dom))
    assert divs >= 8 and dom.count('class="main-svg"') >= divs  # every figure drawn by plotly.js


def bundled_table() -> dict[str, tuple[float, dict[str, float]]]:
    """The README's bundled-model table: model -> (held-out perplexity, condition -> x baseline)."""
    rows = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        match = re.match(r"\| `(hybrid-lens/tiny-[^`]+)` \|.*\| ([\d.]+) \(unigram [\d.]+\) \| (.+) \|$", line)
        if match:
            ratios = dict(re.findall(r"`(\w+)` ([\d.]+)x", match[3]))
            rows[match[1]] = (float(match[2]), {k: float(v) for k, v in ratios.items()})
    return rows


@pytest.mark.slow
def test_readme_bundled_table_is_what_the_study_measures(tmp_path):
    """`hybrid-lens study --tasks ppl --conditions group --n 107` (all 107 held-out windows) gives the
    README's numbers, digit for digit."""
    table = bundled_table()
    assert set(table) == {"hybrid-lens/tiny-qwen3.5", "hybrid-lens/tiny-falcon-h1", QWEN2}
    for model, (ppl, ratios) in table.items():
        folder = run_study(StudySpec(model=model, tasks=("ppl",), groups=("baseline", "group"), n=107), tmp_path,
                           progress=False)
        store = StudyStore(folder / "results.sqlite")
        ours = StudyTables(store, n_resamples=10).ppl.set_index("condition")
        store.close()
        assert f"{ours.ppl['baseline']:.1f}" == f"{ppl:.1f}", model
        assert {c: f"{ours.ratio[c]:.2f}" for c in ratios} == {c: f"{r:.2f}" for c, r in ratios.items()}, model
        assert set(ours.index) == {"baseline", *ratios}, model  # every group ablation is in the README
