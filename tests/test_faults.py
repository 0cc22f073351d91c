"""Faults: bad inputs get a clear error (exact type, message naming the value) and leave nothing
behind; a model with a NaN weight scores nothing; a study survives kill -9 and Ctrl-C, refuses
changed settings, splits work between concurrent processes and names a corrupt store."""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

from hybrid_lens import HookedHybrid
from hybrid_lens.cli import main
from hybrid_lens.evals import loglikelihoods, perplexity
from hybrid_lens.evals.greedy import greedy_until
from hybrid_lens.evals.scoring import NonFiniteError
from hybrid_lens.evals.tasks import arc_challenge, gsm8k_cot, hellaswag, mmlu, truthfulqa_mc
from hybrid_lens.interventions import Sweep, zero
from hybrid_lens.study import runner
from hybrid_lens.study.runner import StudySpec, run_study
from hybrid_lens.study.store import CorruptStoreError, StudyStore
from hybrid_lens.study.stats import perplexity_table, score_drops

from .fixtures import build, spec_for, stored

TEXT = "In the beginning God created the heaven and the earth. " * 4


@pytest.fixture(scope="module")
def model():
    return build("qwen2")[1]


# --- the bad-input table ------------------------------------------------------------------------
SPEC = dict(model="hybrid-lens/tiny-qwen2.5")
SPEC_CASES = [  # StudySpec fields, message fragment (every case: pydantic.ValidationError, a ValueError)
    (dict(n=0), "n: Input should be greater than 0"),
    (dict(n=-3), "n: Input should be greater than 0"),
    (dict(tasks=()), "No tasks given"),
    (dict(tasks=("ppl", "winogrande")), "Unknown task(s) ['winogrande']"),
    (dict(tasks=("ppl", "ppl")), "Repeated task"),
    (dict(groups=("baseline", "sweep")), "choose from baseline"),
    (dict(dtype="float33"), "dtype: Input should be 'float32'"),
    (dict(method="erase"), "method: Input should be 'auto'"),
    (dict(trials=0), "trials: Input should be greater than or equal to 1"),
    (dict(seed=-1), "seed: Input should be greater than or equal to 0"),
    (dict(ppl_context=1), "ppl_context: Input should be greater than or equal to 2"),
    (dict(ppl_source="missing.txt"), "'missing.txt' is neither one of auto"),
    (dict(data="nowhere.jsonl"), "'nowhere.jsonl' is neither one of bundled, hub"),
    (dict(condition_batch=0), "condition_batch: Input should be greater than 0"),
    (dict(model=""), "model: String should have at least 1 character"),
    (dict(windows=3), "windows: Unexpected keyword argument"),
]


@pytest.mark.parametrize("fields, fragment", SPEC_CASES, ids=[str(f) for f, _ in SPEC_CASES])
def test_bad_study_settings_are_refused_naming_the_field(fields, fragment):
    with pytest.raises(ValueError) as caught:
        StudySpec(**{**SPEC, **fields})
    assert fragment in runner.spec_error(StudySpec, **{**SPEC, **fields}) or fragment in str(caught.value)


ARGPARSE_CASES = [  # study arguments argparse refuses (exit 2), stderr fragment
    (["--n", "0"], "argument --n: must be at least 1, got 0"),
    (["--n", "-3"], "argument --n: must be at least 1, got -3"),
    (["--n", "two"], "argument --n: 'two' is not an integer"),
    (["--tasks", ""], "argument --tasks: no task given"),
    (["--tasks", "ppl,nope"], "unknown task ['nope']"),
    (["--conditions", ","], "no condition group given"),
    (["--dtype", "float33"], "argument --dtype: invalid choice: 'float33'"),
    (["--method", "erase"], "argument --method: invalid choice: 'erase'"),
    (["--trials", "0"], "argument --trials: must be at least 1"),
    (["--ppl-context", "1"], "argument --ppl-context: must be at least 2"),
    (["--condition-batch", "0"], "argument --condition-batch: must be at least 1"),
]


@pytest.mark.parametrize("arguments, fragment", ARGPARSE_CASES, ids=[" ".join(a) for a, _ in ARGPARSE_CASES])
def test_bad_study_arguments_exit_2_with_the_argument_named(arguments, fragment, tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        main(["study", "--out", str(tmp_path / "out"), *arguments])
    assert caught.value.code == 2 and fragment in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def _cli_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    return [  # commands that run and fail with one clear line (exit 2), stderr fragment
        (["study", "--model", "tiny-qwen3.5"], "did you mean 'hybrid-lens/tiny-qwen3.5'?"),
        (["study", "--model", "hybrid-lens/tiny-qwen9"], "No bundled model 'hybrid-lens/tiny-qwen9'. Available:"),
        (["study", "--model", "./no/such/model"], "No local model folder './no/such/model'"),
        (["study", "--model", str(tmp_path / "empty")], "is a folder without config.json"),
        (["study", "--model", "someone/not-cached-model"], "hub is offline (HF_HUB_OFFLINE=1)"),
        (["study", "--ppl-text", "nope.txt"], "ppl_source: Value error, 'nope.txt' is neither"),
        (["study", "--out", str(tmp_path / "file.txt" / "study")], "file.txt is a file, not a folder"),
        (["hooks", "--model", "tiny-falcon-h1"], "did you mean 'hybrid-lens/tiny-falcon-h1'?"),
        (["report", str(tmp_path / "never-run")], "No study folder"),
    ]


def test_bad_commands_fail_fast_in_one_line_leaving_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    for command, fragment in _cli_cases(tmp_path):
        start = time.perf_counter()
        assert main([*command, "--no-report"] if command[0] == "study" else command) == 2, command
        err = capsys.readouterr().err
        assert fragment in err and err.count("\n") == 1, (command, err)
        assert time.perf_counter() - start < 5, command  # no hub retries
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "file.txt"]  # no folder left behind


def _eval_cases(model):
    ids = torch.arange(3, 40)
    return [  # call, error type, message fragment
        (lambda: perplexity(model, ids, 16, max_windows=-1, progress=False), ValueError,
         "max_windows must be a positive integer, got -1"),
        (lambda: perplexity(model, ids, 16, max_windows=0, progress=False), ValueError, "max_windows must be"),
        (lambda: perplexity(model, ids, 1, progress=False), ValueError, "context_length >= 2 (got 1)"),
        (lambda: perplexity(model, ids, 16, 0, progress=False), ValueError, "stride must be a positive integer"),
        (lambda: perplexity(model, "I", 16, progress=False), ValueError, "at least 2 tokens (got (1,) token ids)"),
        (lambda: perplexity(model, "", 16, progress=False), ValueError, "at least 2 tokens (got (0,) token ids)"),
        (lambda: perplexity(model, ids, 16, batch_size=0, progress=False), ValueError, "batch_size must be"),
        (lambda: arc_challenge(model, n=0, source="bundled"), ValueError, "n must be a positive integer, got 0"),
        (lambda: hellaswag(model, n=-2, source="bundled"), ValueError, "n must be a positive integer, got -2"),
        (lambda: mmlu(model, n=0, source="bundled"), ValueError, "n must be a positive integer, got 0"),
        (lambda: truthfulqa_mc(model, rows=[3, 500], source="bundled"), ValueError,
         "rows [500] do not exist; valid rows: 0-99"),
        (lambda: gsm8k_cot(model, rows=[1, 1], source="bundled"), ValueError, "rows [1] are repeated"),
        (lambda: arc_challenge(model, n=2, rows=[0], source="bundled"), ValueError, "Pass n or rows, not both"),
        (lambda: hellaswag(model, rows=[], source="bundled"), ValueError, "rows must be a non-empty list"),
        (lambda: mmlu(model, rows=[0.5], source="bundled"), ValueError, "rows must be a non-empty list"),
        (lambda: arc_challenge(model, 2, 0, 1234, None), TypeError, "positional argument"),
        (lambda: gsm8k_cot(model, n=1, max_new_tokens=0, source="bundled"), ValueError,
         "max_new_tokens must be a positive integer, got 0"),
        (lambda: loglikelihoods(model, [("a", " b")], batch_size=0), ValueError, "batch_size must be"),
        (lambda: greedy_until(model, ["a"], batch_size=-1), ValueError, "batch_size must be"),
    ]


def test_bad_eval_arguments_are_refused_naming_the_value(model):
    for call, error, fragment in _eval_cases(model):
        with pytest.raises(error) as caught:
            call()
        assert fragment in str(caught.value), (fragment, str(caught.value))


def test_store_faults_are_named(tmp_path):
    (tmp_path / "garbage.sqlite").write_bytes(b"not a database " * 300)
    (tmp_path / "folder.sqlite").mkdir()
    cases = [
        (lambda: StudyStore(tmp_path / "garbage.sqlite"), CorruptStoreError, "garbage.sqlite is not a readable"),
        (lambda: StudyStore(tmp_path / "folder.sqlite"), CorruptStoreError, "folder.sqlite is a folder"),
        (lambda: StudyStore(tmp_path / "ok.sqlite").write(
            "baseline", "ppl", pd.DataFrame(dict(example=[0, 1], metric="nll_sum", value=[1.0, float("nan")])), 0.1),
         ValueError, "non-finite values at [{'example': 1, 'metric': 'nll_sum'}]"),
        (lambda: score_drops(pd.DataFrame(dict(condition=["baseline"], task="arc", example=0, metric="acc",
                                               value=[float("inf")])), {"arc": "acc"}),
         ValueError, "'condition': 'baseline', 'task': 'arc', 'example': 0"),
        (lambda: perplexity_table(pd.DataFrame(dict(condition=["baseline"], task="ppl", example=0,
                                                    metric="nll_sum", value=[float("nan")]))),
         ValueError, "Non-finite study values"),
    ]
    for call, error, fragment in cases:
        with pytest.raises(error) as caught:
            call()
        assert fragment in str(caught.value), (fragment, str(caught.value))


# --- non-finite model outputs ---------------------------------------------------------------------
def _nan_model(model):
    model.hf_model.lm_head.weight.data[5, 0] = float("nan")  # one logit is NaN for every input
    return model


@torch.no_grad()
def test_a_nan_weight_scores_nothing_in_any_task():
    model = _nan_model(build("qwen2")[1])
    condition = zero("attn", layers=[0])
    tasks = [  # task name, call, rows it scores
        ("perplexity", lambda c: perplexity(model, TEXT, 64, condition=c, progress=False), list(range(6))),
        ("mmlu", lambda c: mmlu(model, rows=[4, 9], shots=0, source="bundled", condition=c, progress=False), [4, 9]),
        ("arc_challenge", lambda c: arc_challenge(model, rows=[7], shots=0, source="bundled", condition=c,
                                                  progress=False), [7]),
        ("hellaswag", lambda c: hellaswag(model, n=2, shots=0, source="bundled", condition=c, progress=False), [0, 1]),
        ("truthfulqa_mc", lambda c: truthfulqa_mc(model, rows=[3], source="bundled", condition=c, progress=False), [3]),
        ("gsm8k_cot", lambda c: gsm8k_cot(model, rows=[2, 5], shots=0, max_new_tokens=3, source="bundled",
                                          condition=c, progress=False), [2, 5]),
    ]
    for task, call, rows in tasks:
        for active in (None, condition):
            with pytest.raises(NonFiniteError) as caught:
                call(active)
            name = "none" if active is None else "attn_zero"
            assert caught.value.indices == rows and caught.value.condition == name, task
            assert str(caught.value).startswith(task) and f"under condition {name!r}" in str(caught.value), task
    with pytest.raises(NonFiniteError, match="under condition 'mlp_zero'"):  # the sweep's first condition
        arc_challenge(model, n=2, shots=0, source="bundled", condition=Sweep([zero("mlp", layers=[1]), condition]), progress=False)
    with pytest.raises(NonFiniteError, match="loglikelihood of requests"):
        loglikelihoods(model, [("In the", " beginning")], progress=False)


def test_a_nan_model_stores_no_study_result(checkpoint, tmp_path):
    spec = spec_for(checkpoint, groups=("baseline", "group"))
    nan_model = _nan_model(HookedHybrid.from_pretrained(spec.model))
    with pytest.raises(NonFiniteError, match="^perplexity: non-finite NLL in windows \\[0, 1, 2\\] under condition"):
        run_study(spec, tmp_path, model=nan_model, progress=False)
    assert stored(tmp_path, spec).empty
    with sqlite3.connect(runner.model_folder(tmp_path, spec.model) / "results.sqlite") as db:
        assert db.execute("SELECT COUNT(*) FROM claims").fetchone() == (0,)  # released after the error


# --- one study folder, one identity ------------------------------------------------------------------
@pytest.fixture(scope="module")
def finished(checkpoint, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    spec = spec_for(checkpoint, groups=("baseline", "group"), n=2)
    run_study(spec, out, progress=False)
    return spec, out


CHANGES = [(dict(n=3), "n: 2 stored, 3 now", "--extend-n"), (dict(n=1), "n: 2 stored, 1 now", "--overwrite"),
           (dict(method="mixer_off"), "method: 'auto' stored, 'mixer_off' now", "another --out folder"),
           (dict(dtype="bfloat16"), "dtype: 'float32' stored, 'bfloat16' now", "--overwrite"),
           (dict(ppl_context=32), "ppl_context: 64 stored, 32 now", "--overwrite"),
           (dict(seed=1), "seed: 0 stored, 1 now", "--overwrite"),
           (dict(trials=3), "trials: 2 stored, 3 now", "--overwrite"),
           (dict(tasks=("ppl", "arc")), "tasks: ['ppl'] stored, ['ppl', 'arc'] now", "--overwrite"),
           (dict(groups=("baseline",)), "groups: ['baseline', 'group'] stored, ['baseline'] now", "--overwrite")]


@pytest.mark.parametrize("change, difference, hint", CHANGES, ids=[str(c) for c, _, _ in CHANGES])
def test_a_rerun_with_other_settings_is_refused_before_loading(finished, change, difference, hint, monkeypatch):
    spec, out = finished
    before = stored(out, spec)
    monkeypatch.setattr(HookedHybrid, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(FileExistsError) as caught:
        run_study(StudySpec(**{**spec.__dict__, **change}), out, progress=False)
    assert difference in str(caught.value) and hint in str(caught.value)
    pd.testing.assert_frame_equal(stored(out, spec), before)


def test_extend_n_grows_a_study_to_what_a_fresh_run_gives(finished, tmp_path):
    spec, out = finished
    import shutil

    shutil.copytree(out, tmp_path / "grown")
    bigger = StudySpec(**{**spec.__dict__, "n": 3})
    run_study(bigger, tmp_path / "grown", progress=False, extend_n=True)
    run_study(bigger, tmp_path / "fresh", progress=False)
    pd.testing.assert_frame_equal(stored(tmp_path / "grown", bigger), stored(tmp_path / "fresh", bigger))
    assert stored(tmp_path / "grown", bigger).example.max() == 2


def test_a_corrupt_store_is_named_before_the_model_loads(finished, tmp_path, monkeypatch):
    spec, out = finished
    path = runner.model_folder(out, spec.model) / "results.sqlite"
    monkeypatch.setattr(HookedHybrid, "from_pretrained", lambda *a, **k: pytest.fail("loaded the model"))
    for name, damage in [("garbage", lambda data: b"\x00garbage" * 2000),
                         ("truncated", lambda data: data[: len(data) // 3])]:
        folder = runner.model_folder(tmp_path / name, spec.model)
        folder.mkdir(parents=True)
        with sqlite3.connect(path) as db:  # fold the WAL into the file first
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        (folder / "results.sqlite").write_bytes(damage(path.read_bytes()))
        with pytest.raises(CorruptStoreError, match=f"{re.escape(str(folder / 'results.sqlite'))} is not a readable"):
            run_study(spec, tmp_path / name, progress=False)


def test_stale_temporary_files_are_removed(finished, tmp_path):
    """Only our own temporaries (`.<name>.<random>.hybrid-lens.tmp`) are removed: a `*.tmp` of
    any other name may be the user's, however old."""
    spec, out = finished
    stale, fresh = out / ".report.html.k3j9x1a2.hybrid-lens.tmp", out / ".report.md.0wr1t1ng.hybrid-lens.tmp"
    users = out / "tmpk3j9x.tmp"
    for path in (stale, fresh, users):
        path.touch()
    os.utime(stale, (time.time() - 3600, time.time() - 3600))
    os.utime(users, (time.time() - 3600, time.time() - 3600))
    run_study(spec, out, progress=False)  # nothing left to compute
    assert not stale.exists() and fresh.exists() and users.exists()


# --- processes: kill -9, Ctrl-C, two at once ----------------------------------------------------------
def _command(spec, out: Path) -> list[str]:
    return [sys.executable, "-m", "hybrid_lens.cli", "study", "--model", spec.model, "--tasks", ",".join(spec.tasks),
            "--n", str(spec.n), "--conditions", ",".join(g for g in spec.groups if g != "baseline"),
            "--trials", str(spec.trials), "--ppl-text", spec.ppl_source, "--ppl-context", str(spec.ppl_context),
            "--out", str(out), "--no-report"]


def _environment() -> dict:
    return {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _done_pairs(progress: str) -> int:
    """Pairs a process computed, from its study progress bar's last `done/total` count (the bar whose
    unit is `pair`; transformers' own `Loading weights` bar also prints counts)."""
    counts = re.findall(r"(\d+)/(\d+) \[[^\]]*pair", progress)
    return int(counts[-1][0]) if counts else 0


def _started(spec, out: Path) -> subprocess.Popen:
    """A study process, returned once it has loaded the model and opened its store."""
    process = subprocess.Popen(_command(spec, out), env=_environment(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    store = runner.model_folder(out, spec.model) / "results.sqlite"
    while not store.exists() and process.poll() is None:
        time.sleep(0.05)
    return process


@pytest.mark.slow
def test_kill_9_and_ctrl_c_at_random_moments_then_resume_give_the_uninterrupted_store(checkpoint, tmp_path):
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer", "positional"))
    process = _started(spec, tmp_path / "full")
    started = time.perf_counter()
    process.stdout.readline()  # "<model>: results in ...": the work is done, the interpreter exits
    working = time.perf_counter() - started
    assert process.wait(timeout=300) == 0
    full = stored(tmp_path / "full", spec)
    rng = random.Random(0)
    for trial, sent in enumerate([signal.SIGKILL, signal.SIGKILL, signal.SIGKILL, signal.SIGINT]):
        out = tmp_path / f"trial{trial}"
        process = _started(spec, out)
        time.sleep(rng.uniform(0.0, 0.9) * working)  # a random moment of the work
        process.send_signal(sent)
        err = process.communicate(timeout=120)[1]
        print(f"trial {trial}: signal {sent.name}, exit {process.returncode}, "
              f"{len(stored(out, spec))}/{len(full)} rows stored before the resume")
        if sent == signal.SIGINT:
            assert process.returncode == 130 and "Traceback" not in err
            assert err.strip().splitlines()[-1].startswith("hybrid-lens: interrupted;")
        resumed = subprocess.run(_command(spec, out), env=_environment(), capture_output=True, text=True, timeout=300)
        assert resumed.returncode == 0, resumed.stderr[-2000:]
        result = stored(out, spec)
        assert not result.duplicated(["condition", "task", "example", "metric"]).any()
        pd.testing.assert_frame_equal(result, full)


@pytest.mark.slow
def test_two_processes_on_one_folder_split_the_work(checkpoint, tmp_path):
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer", "positional"))
    single = stored(run_study(spec, tmp_path / "one", progress=False).parent, spec)
    processes = [subprocess.Popen(_command(spec, tmp_path / "two"), env=_environment(), stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
    errors = [process.communicate(timeout=300)[1] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], errors
    pd.testing.assert_frame_equal(stored(tmp_path / "two", spec), single)
    pairs = single[["condition", "task"]].drop_duplicates()
    assert sum(map(_done_pairs, errors)) == len(pairs[pairs.task == "ppl"])  # no pair computed twice


def test_an_unreachable_hub_fails_at_once(monkeypatch):
    from huggingface_hub import constants

    from hybrid_lens import zoo

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError, match="hub.invalid cannot be reached .*`hybrid-lens models`"):
        zoo.resolve("someone/some-model")
    assert time.perf_counter() - start < 5
