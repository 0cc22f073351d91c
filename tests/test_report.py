"""The study report checked as a reader would: every promised section has data, nothing is `nan`,
labels say the ablation actually applied, the page runs in a real browser, and the README's
bundled-model numbers come out of the code path it names. The statistics are read back from the
rendered report.md and report.html (the tables, and the points and labels each plotly figure draws)
and checked against independent computations on those points."""

from __future__ import annotations

import base64
import html
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

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
                 "Hidden-state metric vs layer-ablation impact", "Score drops with 95% bootstrap CIs",
                 "Per-token component contribution"]


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
            assert "|---" in part or "|:--" in part or "![" in part or "contributions.html](" in part, \
                f"empty part in {title!r}: {part[:200]}"
    assert not re.search(r"\bnan\b", markdown, flags=re.I)
    assert "('" not in markdown  # no raw tuple column names
    page = (report / "report.html").read_text()
    assert not re.search(r">\s*nan\s*<", page, flags=re.I)
    for key in ("summary", "table1", "table2", "table3", "table4", "table5", "table6", "layers", "hidden",
                "correlations", "drops", "contributions"):
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


# -- reading the rendered report back --------------------------------------------------------------
def md_tables(markdown: str) -> list[tuple[str, str, list[dict[str, str]]]]:
    """(`### ` heading, the line under it, rows) of every Markdown table, rows as header -> cell."""
    found = []
    for part in re.split(r"^### ", markdown, flags=re.M)[1:]:
        heading, body = part.split("\n", 1)
        lines = [line for line in body.splitlines() if line.startswith("|")]
        if len(lines) < 2:
            continue
        header, *rows = [[_rendered(cell) for cell in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
                         for line in lines[:1] + lines[2:]]
        rows = [dict(zip(header, row)) for row in rows]
        found.append((heading.strip(), body.strip().split("\n", 1)[0], rows))
    return found


def _rendered(cell: str) -> str:
    """A Markdown table cell as a reader sees it: backslash escapes and HTML entities resolved."""
    return html.unescape(re.sub(r"\\(.)", r"\1", cell.strip()))


def _array(value):
    """A plotly JSON array (plain list, or `{dtype, bdata}` typed array) as a numpy array."""
    if isinstance(value, dict) and "bdata" in value:
        array = np.frombuffer(base64.b64decode(value["bdata"]), dtype=value["dtype"])
        return array.reshape(value["shape"]) if "shape" in value else array
    return np.asarray(value, dtype=object if value and isinstance(value[0], str) else float)


def figures(page: str) -> dict[str, tuple[list[dict], dict]]:
    """div id -> (traces, layout) of every plotly figure in report.html."""
    decoder, found = json.JSONDecoder(), {}
    for match in re.finditer(r'Plotly\.newPlot\(\s*"([^"]+)",\s*', page):
        data, end = decoder.raw_decode(page, match.end())
        layout, _ = decoder.raw_decode(page, page.index("{", end))
        found[match[1]] = (data, layout)
    return found


def section_of(page: str, key: str) -> str:
    return page.split(f"<h2 id='{key}'>")[1].split("<h2 id=")[0]


def test_every_section_is_in_the_contents_bar_and_in_report_md(report):
    page, markdown = (report / "report.html").read_text(), (report / "report.md").read_text()
    keys = re.findall(r"<h2 id='([^']+)'>", page)
    nav = re.search(r"<nav>(.*?)</nav>", page, flags=re.S)[1]
    assert re.findall(r"href='#([^']+)'", nav) == keys
    contents = re.search(r"^Contents: (.*)$", markdown, flags=re.M)[1]
    assert re.findall(r"\]\(#([^)]+)\)", contents) == keys
    assert [title for title in sections(markdown)] == [html.unescape(t) for t in re.findall(r"<h2 id='[^']+'>([^<]+)</h2>", page)]
    assert "contributions" in keys


def test_layer_columns_and_heatmap_rows_say_what_was_removed_and_how(report):
    """Under a whole-layer skip no column or heatmap row is named after one component."""
    markdown = (report / "report.md").read_text()
    layers = sections(markdown)["Layer-wise ablation"]
    checked = 0
    for heading, setting, rows in md_tables("### " + layers.split("### ", 1)[1]):
        columns = [c for c in rows[0] if c != "layer"]
        if "method: sequential skip" in setting:
            assert all(c.startswith("whole layer skipped (") for c in columns), columns
        elif "method: parallel zeroing" in setting:
            assert all(c.endswith(" path zeroed") for c in columns), columns
        checked += 1
    assert checked >= 3
    page = (report / "report.html").read_text()
    for name, (traces, _) in figures(page).items():
        if name.startswith("layers_"):
            for trace in traces:
                assert all(re.search(r"(whole layer skipped \(.+ layer\)| path zeroed| zeroed \(MLP kept\))$", row)
                           for row in trace["y"]), trace["y"]


def test_each_correlation_has_one_point_per_distinct_removal_and_its_statistics_hold(report):
    """For every correlation row: the scatter beside it draws exactly n points, each a different
    (layer, component); Pearson r and Spearman rho recomputed from those points with scipy match the
    table; the leave-one-out range and the 'one point drives it' verdict hold on those points."""
    markdown, page = (report / "report.md").read_text(), (report / "report.html").read_text()
    drawn = figures(page)
    checked = 0
    for heading, _, rows in md_tables(sections(markdown)["Hidden-state metric vs layer-ablation impact"]):
        if "n (distinct points)" not in rows[0]:
            continue
        model = heading
        for row in rows:
            name = "correlations_" + re.sub(r"[^A-Za-z0-9.-]+", "_", f"{model}: {row['metric (of what)']} vs "
                                                                      f"{row['impact (what was removed, how)']}").strip("_")
            traces, layout = drawn[name]
            points = [t for t in traces if t.get("name") != "drives r"]
            x = np.concatenate([_array(t["x"]).astype(float) for t in points])
            y = np.concatenate([_array(t["y"]).astype(float) for t in points])
            labels = [label for t in points for label in t["hovertext"]]
            n = int(row["n (distinct points)"])
            assert len(x) == n == len(set(labels)), (name, n, labels)  # no removal counted twice
            assert f"n = {n} points" in layout["title"]["text"]
            assert float(row["Pearson r"]) == pytest.approx(stats.pearsonr(x, y).statistic, abs=6e-4, rel=6e-4)
            assert float(row["Spearman ρ"]) == pytest.approx(stats.spearmanr(x, y).statistic, abs=6e-4, rel=6e-4)
            verdict = row["one point drives it"]
            if n < 4:
                assert verdict.startswith("—"), verdict
                continue
            without = [stats.pearsonr(np.delete(x, i), np.delete(y, i)) for i in range(n)]
            low, high = (float(v) for v in row["Pearson r leaving one point out"].split(" to "))
            assert low == pytest.approx(min(w.statistic for w in without), abs=6e-4)
            assert high == pytest.approx(max(w.statistic for w in without), abs=6e-4)
            full = stats.pearsonr(x, y)
            fragile = [labels[i] for i, w in enumerate(without)
                       if full.pvalue < 0.05 and (w.pvalue >= 0.05 or np.sign(w.statistic) != np.sign(full.statistic))]
            assert verdict.startswith("yes: without ") == bool(fragile), (name, verdict, fragile)
            if fragile:
                assert verdict.split("without ")[1].split(",")[0] in fragile
            checked += 1
    assert checked >= 5


def test_block_metrics_of_a_parallel_hybrid_are_correlated_once_per_zeroed_path(report):
    """Falcon-H1's cosine, norm change and logit-lens KL (one value per layer) are each paired with one
    path's impacts (3 layers: 3 points), never with both paths' at once; a metric of each path (output
    ratio, ablation KL) pools both paths, one point per (layer, path)."""
    markdown = (report / "report.md").read_text()
    falcon = [rows for heading, _, rows in md_tables(sections(markdown)["Hidden-state metric vs layer-ablation impact"])
              if "tiny-falcon" in heading and rows and "n (distinct points)" in rows[0]][0]
    for row in falcon:
        removed = row["impact (what was removed, how)"].split(", ", 1)[1]
        if "(block)" in row["metric (of what)"] or "(residual after the block)" in row["metric (of what)"]:
            assert removed in {"SSM path zeroed", "attention path zeroed"} and row["n (distinct points)"] == "3", row
        else:
            assert removed == "each path zeroed (pooled)" and row["n (distinct points)"] == "6", row
    assert {row["metric (of what)"] for row in falcon} >= {"cosine (block)", "output ratio (the zeroed path)"}


def test_captions_promise_only_the_cis_their_tables_hold(report):
    markdown = (report / "report.md").read_text()
    for heading, setting, rows in md_tables(markdown):
        text = " ".join(" ".join(row.values()) for row in rows)
        if "95% CI" in setting:
            assert re.search(r"\[-?[\d.,e+-]+, -?[\d.,e+-]+\]", text), (heading, setting)
    table4 = sections(markdown)["Table 4 analogue: perplexity, targeted vs matched random"]
    assert all("targeted x baseline [95% CI]" in rows[0] for _, _, rows in md_tables(table4))
    table5 = sections(markdown)["Table 5 analogue: random layer removal, perplexity as a multiple of baseline"]
    assert all("no CI" in setting and "95% CI" not in setting for _, setting, _ in md_tables(table5))
    summary = sections(markdown)["Summary"]
    assert not [setting for _, setting, _ in md_tables(summary) if setting.startswith("Measured on")]


def test_bar_labels_are_precise_and_clear_of_drawable_error_bars(report):
    """Every perplexity bar's label is its table's multiple of baseline to 4 significant digits and sits
    above its error bar; every error bar on a log axis stays above 0."""
    page = (report / "report.html").read_text()
    markdown = (report / "report.md").read_text()
    ratios = {row["condition"]: row["x baseline"] for _, _, rows in md_tables(markdown) for row in rows
              if "x baseline" in row and "condition" in row}
    checked = 0
    for name, (traces, layout) in figures(page).items():
        for trace in traces:
            if trace["type"] != "bar" or "error_y" not in trace:
                continue
            heights = _array(trace["y"]).astype(float)
            error = trace["error_y"]
            minus = _array(error.get("arrayminus", error["array"])).astype(float)
            if layout.get("yaxis", {}).get("type") == "log":
                assert (heights - minus > 0).all(), name  # drawable on a log axis
            notes = {note["x"]: note for note in layout.get("annotations", []) if note.get("yanchor") == "bottom"}
            for condition, height, plus in zip(trace["x"], heights, _array(error["array"]).astype(float)):
                if condition in notes:
                    assert 10 ** notes[condition]["y"] >= (height + plus) * (1 - 1e-9), (name, condition)
                    if condition != "baseline" and name.startswith(("table2", "table6")):
                        assert notes[condition]["text"] == f"{ratios[condition]}x", (name, condition)
                        checked += 1
    assert checked >= 4


def test_heatmap_panels_have_their_own_scales_and_absent_cells_are_not_a_value():
    """A Qwen3.5-like sweep (attention only in layer 3) beside a model with 60x larger effects."""
    from hybrid_lens import viz

    sweep = {"hybrid": pd.DataFrame(dict(removed=["whole layer skipped (linear attention layer)"] * 3
                                         + ["whole layer skipped (attention layer)"], layer=[0, 1, 2, 3],
                                         delta=[0.10, 0.02, 0.01, 0.05])),
             "big": pd.DataFrame(dict(removed="attention path zeroed", layer=[0, 1, 2, 3], delta=[6.0, 0.1, 0.2, 0.3]))}
    fig = viz.layer_sweep_heatmaps(sweep, "ppl")
    scales = [fig.layout[trace.coloraxis] for trace in fig.data]
    assert [s.cmax for s in scales] == [pytest.approx(0.10), pytest.approx(6.0)]  # each model its own scale
    z = np.asarray(fig.data[0].z, dtype=float)
    assert np.isnan(z).sum() == 4  # absent cells stay absent, not 0
    assert fig.layout.plot_bgcolor not in {color for _, color in scales[0].colorscale}  # drawn in no value's colour


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_has_no_horizontal_overflow_at_1400_px(report, tmp_path):
    """A copy of report.html with a probe that, after loading, writes the page's scroll width and any
    element sticking out of the page (outside a scrolling box) into the title; read by headless Chromium."""
    probe = """<script>window.addEventListener('load', () => setTimeout(() => {
      const root = document.documentElement;
      const boxed = e => { for (let a = e.parentElement; a; a = a.parentElement)
        if (['auto', 'scroll', 'hidden'].includes(getComputedStyle(a).overflowX)) return true; return false; };
      const out = [...document.querySelectorAll('body *')]
        .filter(e => e.getBoundingClientRect().right > root.clientWidth + 1 && !boxed(e))
        .map(e => e.tagName + '.' + e.className).slice(0, 10);
      document.title = 'PROBE ' + JSON.stringify({scroll: root.scrollWidth, client: root.clientWidth, out});
    }, 2000));</script>"""
    copy = tmp_path / "report.html"
    copy.write_text((report / "report.html").read_text().replace("</body>", probe + "</body>"))
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                          "--window-size=1400,900", "--virtual-time-budget=15000", "--dump-dom", copy.as_uri()],
                         capture_output=True, text=True, timeout=180).stdout
    found = json.loads(html.unescape(re.search(r"<title>PROBE ([^<]*)</title>", dom)[1]))
    assert found["client"] == 1400 and found["scroll"] <= found["client"] and not found["out"], found


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
