"""The command line as a user meets it: it answers `--help`, argument errors and `models` before torch or
`transformers` load, shows every default, refuses an unusable `--out` before a model loads, ends on
Ctrl-C with one line at any moment (imports included), and `--quiet` prints nothing but errors.
(How fast it answers is measured in `benchmarks/cli_startup.py`, not asserted here.)"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hybrid_lens.cli import build_parser, main

ROOT = Path(__file__).parents[1]
HEAVY = ("torch", "transformers", "pandas", "scipy", "plotly")
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
PROBE = """
import json, sys
from hybrid_lens.cli import main
try:
    code = main(json.loads(sys.argv[1]))
except SystemExit as exit:
    code = exit.code
print("RESULT", json.dumps([code, sorted(m for m in {heavy} if m in sys.modules)]))
"""


def _run_fresh(arguments: list[str]) -> tuple[int, list[str], str]:
    """(exit status, heavy modules imported, stderr) of `hybrid-lens ARGUMENTS` in a fresh interpreter."""
    done = subprocess.run([sys.executable, "-c", PROBE.format(heavy=HEAVY), json.dumps(arguments)], env=ENV,
                          capture_output=True, text=True, timeout=120)
    code, heavy = json.loads(done.stdout.rsplit("RESULT ", 1)[1])
    return code, heavy, done.stderr


@pytest.mark.parametrize("arguments, code", [
    (["--help"], 0), (["study", "--help"], 0), (["report", "--help"], 0), (["models"], 0),
    (["study", "--n", "0"], 2), (["study", "--tasks", "ppl,winogrande"], 2), (["study", "--method", "drop"], 2),
    (["study", "--model", "tiny-qwen3.5"], 2), (["study", "--ppl-text", "nope.txt"], 2), (["hooks", "--model", "nope"], 2),
], ids=lambda value: " ".join(value) if isinstance(value, list) else None)
def test_answers_and_argument_errors_come_before_torch_loads(arguments, code, tmp_path):
    found, heavy, err = _run_fresh(arguments)
    assert found == code, err
    assert heavy == [], f"{arguments} imported {heavy} before answering"
    if code == 2:
        assert err.strip().count("\n") <= 11 and "Traceback" not in err and "error:" in err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc, where no folder can be created")
def test_an_out_folder_that_cannot_be_created_is_refused_before_a_model_loads():
    code, heavy, err = _run_fresh(["study", "--out", "/proc/hybrid-lens-study", "--tasks", "ppl"])
    assert code == 2 and heavy == [], err
    assert err.count("\n") == 1 and err.startswith("hybrid-lens: error: --out /proc/hybrid-lens-study")
    assert "cannot create this folder (No such file or directory)" in err or "is read-only" in err  # root or not


def test_study_help_shows_every_default():
    study = next(a for a in build_parser()._actions if a.dest == "command").choices["study"]
    for action in study._actions:
        if action.default not in (None, False) and action.dest != "help":
            assert "default" in (action.help or "").lower(), f"{action.option_strings}: no default in {action.help!r}"
    assert "(default: hybrid-lens-study)" in " ".join(study.format_help().split())


def test_models_lists_the_family_index_without_torch():
    """`hybrid-lens models` reads `families.json`, which is the adapter registry as it is today."""
    from hybrid_lens.coverage import INDEX, family_index

    assert json.loads(INDEX.read_text()) == family_index(), \
        "families.json is stale: rewrite it with `python -m hybrid_lens.coverage`"


def test_ctrl_c_while_torch_imports_prints_one_line_and_exits_130():
    """SIGINT sent while the command imports torch (seen in `-X importtime`'s report of a torch submodule)."""
    process = subprocess.Popen([sys.executable, "-X", "importtime", "-m", "hybrid_lens.cli", "hooks", "--model",
                                "hybrid-lens/tiny-qwen2.5"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    for line in process.stderr:
        if re.search(r"\|\s+torch\.\w", line):
            process.send_signal(signal.SIGINT)
            break
    out, err = process.communicate(timeout=120)
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert process.returncode == 130 and lines == ["hybrid-lens: interrupted."] and out == "", (lines, out)


@pytest.mark.slow
def test_quiet_study_prints_nothing_but_errors(tmp_path):
    """The main job's command with `--quiet` on a model whose kernels fall back and whose text is longer
    than the tokenizer's maximum (tokenized whole, run in 256-token windows): no output at all."""
    done = subprocess.run([sys.executable, "-m", "hybrid_lens.cli", "study", "--model", "hybrid-lens/tiny-qwen3.5",
                           "--tasks", "ppl", "--conditions", "group", "--n", "1", "--out", str(tmp_path / "study"),
                           "--quiet"], env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0 and (done.stdout, done.stderr) == ("", ""), done.stderr[-3000:]
    assert (tmp_path / "study" / "report.html").exists()


def test_one_line_of_ours_replaces_every_kernel_fallback_warning(capsys):
    from transformers.utils import logging as hf_logging

    from hybrid_lens.console import KERNEL_NOTICE, transformers_output

    kernels = hf_logging.get_logger("transformers.integrations.hub_kernels")
    records = []
    handler = _Collect(records)
    kernels.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # as a fresh process has it (other tests may have lowered it)
    try:
        for quiet, expected in ((False, KERNEL_NOTICE + "\n"), (True, "")):
            with transformers_output(quiet=quiet):
                assert not hf_logging.is_progress_bar_enabled()
                for kernel in ("causal_conv1d_fn", "chunk_gated_delta_rule", "mamba_chunk_scan_combined"):
                    kernels.warning(f"`{kernel}` is falling back to its reference PyTorch implementation because x")
                kernels.warning("another warning")
            assert capsys.readouterr().err == expected
            assert [r.getMessage() for r in records] == ["another warning"] * (not quiet)
            records.clear()
    finally:
        kernels.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)
    assert hf_logging.is_progress_bar_enabled()


def test_the_long_text_warning_stays_out_only_while_the_windows_fit():
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from hybrid_lens.console import long_texts_fit
    from hybrid_lens.zoo import checkpoint_path

    text = "In the beginning God created the heaven and the earth. " * 400
    records = []
    handler = _Collect(records)
    logger = hf_logging.get_logger("transformers.tokenization_utils_base")
    logger.addHandler(handler)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # as a fresh process has it (other tests may have lowered it)
    try:
        for longest, warns in ((256, False), (10**6, True)):
            tokenizer = AutoTokenizer.from_pretrained(checkpoint_path("tiny-qwen2.5"))
            with long_texts_fit(tokenizer, longest):
                assert len(tokenizer(text).input_ids) > tokenizer.model_max_length
            assert any("longer than the specified maximum" in r.getMessage() for r in records) == warns, longest
            records.clear()
    finally:
        logger.removeHandler(handler)
        hf_logging.set_verbosity(verbosity)


class _Collect(logging.Handler):
    """A logging handler that keeps the records it is given."""

    def __init__(self, records: list):
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
