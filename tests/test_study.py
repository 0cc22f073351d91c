"""The study runner end to end on tiny saved checkpoints: resume, sharding, report, bad input."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from html.parser import HTMLParser

import pandas as pd
import pytest

from hybrid_lens.study import tasks
from hybrid_lens.study.report import render_report
from hybrid_lens.study.runner import StudySpec, run_study
from hybrid_lens.study.store import StudyStore

from .fixtures import spec_for, stored


def test_interrupted_study_resumes_with_every_example_once(checkpoint, tmp_path, monkeypatch):
    spec = spec_for(checkpoint)
    full = stored(run_study(spec, tmp_path / "full", progress=False).parent, spec)

    calls = {"n": 0}
    original = tasks.TASKS["ppl"]

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # after the first group of conditions is stored
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setitem(tasks.TASKS, "ppl", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_study(spec, tmp_path / "resumed", progress=False)
    partial = stored(tmp_path / "resumed", spec)
    assert 0 < partial.condition.nunique() < full.condition.nunique()
    monkeypatch.setitem(tasks.TASKS, "ppl", original)
    run_study(spec, tmp_path / "resumed", progress=False)
    resumed = stored(tmp_path / "resumed", spec)
    assert not resumed.duplicated(["condition", "task", "example", "metric"]).any()
    pd.testing.assert_frame_equal(resumed, full)


def free_port() -> int:
    """A loopback port nobody listens on now (a fixed one clashes with a concurrent run of this test)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_study_prints_its_time_per_task_and_condition_group(checkpoint, tmp_path, capsys):
    spec = spec_for(checkpoint, tasks=("ppl", "arc"), groups=("baseline", "group"), n=2)
    folder = run_study(spec, tmp_path, progress=True)
    printed = capsys.readouterr().out
    store = StudyStore(folder / "results.sqlite")
    timings = store.timings()
    store.close()
    table = printed.split("Evaluation time of")[1].splitlines()[2:]  # after the title and the header
    rows = {(row.split()[1], row.split()[2]): float(row.split()[-1]) for row in table if row.strip()}
    assert {task for task, _ in rows} == {"ppl", "arc", "hidden"} and {g for _, g in rows} >= {"baseline", "group"}
    grouped = sum(rows.values())
    assert grouped == pytest.approx(timings.seconds.sum(), rel=1e-3, abs=0.01)
    assert rows[("arc", "group")] == pytest.approx(timings[(timings.task == "arc") & (timings.condition != "baseline")]
                                                   .seconds.sum(), rel=1e-3, abs=0.01)


def test_two_process_sharded_run_equals_one_process(checkpoint, tmp_path):
    """`torchrun` with two CPU processes: each takes its share, results merge in one store."""
    spec = spec_for(checkpoint, groups=("baseline", "layer"))
    single = stored(run_study(spec, tmp_path / "one", progress=False).parent, spec)
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master-addr", "127.0.0.1",
               "--master-port", str(free_port()), "-m", "hybrid_lens.cli", "--", "study", "--model", spec.model, "--tasks", "ppl", "--n", str(spec.n),
               "--conditions", "layer", "--ppl-text", spec.ppl_source, "--ppl-context", str(spec.ppl_context),
               "--out", str(tmp_path / "two"), "--no-report"]
    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert "[1/2]" in finished.stderr and "[2/2]" in finished.stderr  # both ranks ran their share
    pd.testing.assert_frame_equal(stored(tmp_path / "two", spec), single)


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.divs = []

    def handle_starttag(self, tag, attrs):
        if tag == "div" and dict(attrs).get("id"):
            self.divs.append(dict(attrs)["id"])


def test_report_renders_from_the_store_with_data_in_every_figure(checkpoint, tmp_path):
    spec = spec_for(checkpoint)
    run_study(spec, tmp_path, progress=False)
    page = render_report(tmp_path, png=False)
    html = page.read_text()
    parser = _Collector()
    parser.feed(html)
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", spec.model).strip("_")
    assert {f"table2_{slug}", f"table4_{slug}", "layers_All_models_log_perplexity_ratio",
            f"correlations_{slug}_output_ratio_the_zeroed_path_vs_log_perplexity_ratio_each_path_zeroed_pooled"
            } <= set(parser.divs)
    # a per-layer metric of a parallel hybrid is correlated with each zeroed path's impact apart
    assert [div for div in parser.divs if re.fullmatch(
        f"correlations_{re.escape(slug)}_norm_change_block_vs_log_perplexity_ratio_(SSM|attention)_path_zeroed", div)]
    markdown = (tmp_path / "report.md").read_text()
    assert "Hidden-state metric vs layer-ablation impact" in markdown
    assert "per-token component contribution" in html.lower() and html.count("<span") >= 3 * 32
    assert "Table 2 analogue" in markdown and "Table 4 analogue" in markdown
    assert "ssm_off" in markdown and "attn_off_early" in markdown


def test_bad_input_is_refused_clearly(checkpoint, tmp_path):
    with pytest.raises(ValueError, match="valid tasks: ppl"):
        spec_for(checkpoint, tasks=("ppl", "mmlu_pro"))
    with pytest.raises(ValueError, match="choose from"):
        spec_for(checkpoint, groups=("baseline", "sweep"))
    spec = spec_for(checkpoint, groups=("baseline",))
    folder = run_study(spec, tmp_path, progress=False)
    other = StudySpec(**{**spec.__dict__, "model": "hybrid-lens/tiny-qwen2.5"})
    store_path = folder / "results.sqlite"
    with pytest.raises(FileExistsError, match="--overwrite"):
        StudyStore(store_path, meta={"model": other.model})
    from hybrid_lens.cli import main

    command = ["study", "--model", spec.model, "--tasks", "ppl", "--n", "1", "--conditions", "group", "--ppl-text",
               spec.ppl_source, "--ppl-context", "64", "--no-report", "--quiet"]
    assert main([*command, "--out", str(tmp_path)]) == 2  # other settings than the study in that folder
    assert main([*command, "--out", str(tmp_path / "other")]) == 0
    with pytest.raises(SystemExit):
        main(["study", "--tasks", "ppl,nope"])
