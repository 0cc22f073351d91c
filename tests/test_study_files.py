"""The study's files: nothing outside a study folder is written or removed (decoy files in and
around `--out` survive `study` and `report`), model names make safe folder names, every write is
atomic, a full disk and a read-only folder end in one clear line, two processes opening a new
store with other settings never mix it, and a tampered study folder carries no script into the
report.

The full disk is tested twice: in process on every machine (a write that fails with ENOSPC half
way through; SQLite's own "database or disk is full" from a page limit), and on a real, small
tmpfs mounted in a private mount namespace where this machine allows one (`unshare`; as root, or
through a user namespace); the read-only folder is a tmpfs remounted read-only there."""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest

from hybrid_lens.cli import main
from hybrid_lens.evals.data import TaskDataError
from hybrid_lens.evals.tasks import arc_challenge, gsm8k_cot, hellaswag, truthfulqa_mc
from hybrid_lens.study import files, runner
from hybrid_lens.study.diagnostics import CONTRIBUTIONS_DATA, CONTRIBUTIONS_FILE
from hybrid_lens.study.files import STORE, TEMPORARY_SUFFIX, safe_folder_name
from hybrid_lens.study.report import HEADINGS
from hybrid_lens.study.runner import run_study
from hybrid_lens.study.store import StudyStore

from .fixtures import build, spec_for, stored
from .test_faults import finished  # noqa: F401  (a finished study: spec, folder)

OLD = 1_000_000_000.0  # mtime of the user's files: older than any age-based cleanup spares
DECOYS = ["notes.tmp", "drafts/chapter.tmp", "tmpab12cd.tmp", "report.tmp", "figures/my-plot.png",
          "figures/notes.tmp"]


def plant(root: Path, names) -> dict[Path, bytes]:
    """The user's own files at `names` under `root` (old, so an age-based cleanup would take them)."""
    planted = {}
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"the user's {name}".encode())
        os.utime(path, (OLD, OLD))
        planted[path] = path.read_bytes()
    return planted


def assert_untouched(planted: dict[Path, bytes]) -> None:
    for path, content in planted.items():
        assert path.is_file() and path.read_bytes() == content and path.stat().st_mtime == OLD, path


def every_file(root: Path) -> set[Path]:
    return {path for path in root.rglob("*") if path.is_file()}


def study_command(spec, out: Path, *options: str) -> list[str]:
    return ["study", "--model", spec.model, "--tasks", ",".join(spec.tasks), "--n", str(spec.n),
            "--conditions", ",".join(g for g in spec.groups if g != "baseline"), "--trials", str(spec.trials),
            "--ppl-text", spec.ppl_source, "--ppl-context", str(spec.ppl_context), "--out", str(out), "--quiet",
            *options]


def one_line(err: str) -> str:
    """The one line a failed command printed (tqdm and transformers' loading bars aside)."""
    lines = [line for line in err.splitlines() if line.startswith("hybrid-lens:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def copy_of(finished, tmp_path: Path) -> Path:
    shutil.copytree(finished[1], tmp_path / "study")
    return tmp_path / "study"


# --- decoys in and around --out ---------------------------------------------------------------------
def test_study_and_report_touch_no_file_they_did_not_write(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    planted = plant(out, DECOYS) | plant(tmp_path, ["notes.tmp", "results.sqlite"])
    assert main(["report", str(out)]) == 2  # no study here yet
    assert "No study under" in one_line(capsys.readouterr().err)
    assert_untouched(planted)
    spec = spec_for(checkpoint, groups=("baseline", "group"), n=2)
    folder = runner.model_folder(out, spec.model)
    planted |= plant(folder, ["notes.tmp", "contributions.tmp", "results.tmp", "drafts/chapter.tmp"])
    ours = plant(out, [f".report.html.1a2b3c4d{TEMPORARY_SUFFIX}", f"figures/.x.png.5e6f7a8b{TEMPORARY_SUFFIX}"])
    assert main(study_command(spec, out)) == 0  # runs, then writes the report with its PNGs
    assert main(["report", str(out)]) == 0
    assert_untouched(planted)
    assert not any(path.exists() for path in ours)  # our stale temporaries are cleaned
    written = {path.relative_to(out).as_posix() for path in every_file(tmp_path) - set(planted)}
    figures = {name for name in written if name.startswith("figures/")}
    assert written - figures == {"report.html", "report.md", f"{folder.name}/{STORE}",
                                 f"{folder.name}/{CONTRIBUTIONS_FILE}", f"{folder.name}/{CONTRIBUTIONS_DATA}"}
    assert figures and all(f.split("/")[1].split("_")[0] in HEADINGS and f.endswith(".png") for f in figures)


@pytest.mark.parametrize("name", ["..", ".", "../..", "a/../../b", "/etc/passwd", "C:\\Users\\x", "~", "...",
                                  "./model", " ", "m" * 300, "hybrid-lens/tiny-qwen3.5"])
def test_a_model_name_is_one_folder_inside_out(name, tmp_path):
    folder = runner.model_folder(tmp_path, name)
    safe = folder.name
    assert folder.parent == tmp_path and safe not in (".", "..") and not safe.startswith(".")
    assert "/" not in safe and "\\" not in safe and 0 < len(safe.encode()) <= 120
    assert folder.resolve().parent == tmp_path.resolve()
    assert safe_folder_name(name) == safe  # the same name every time (a rerun resumes)


def test_model_dot_dot_runs_inside_out(checkpoint, tmp_path, monkeypatch, capsys):
    """`--model ..` (a local model one folder up) and `--model .` land in `out/__` and `out/_`, never
    in `out/..`; with --overwrite, `out/../results.sqlite` (the user's file) survives."""
    model = tmp_path / "model"
    shutil.copytree(checkpoint[0], model)
    (model / "sub").mkdir()
    out = tmp_path / "out"
    planted = plant(tmp_path, ["results.sqlite", "contributions.html", "notes.tmp"])
    spec = spec_for(checkpoint, groups=("baseline", "group"), n=1)
    for cwd, name, folder in [(model / "sub", "..", "__"), (model, ".", "_")]:
        monkeypatch.chdir(cwd)
        command = study_command(spec, out, "--overwrite", "--no-report")
        command[command.index(spec.model)] = name
        assert main(command) == 0, capsys.readouterr().err
        assert (out / folder / STORE).is_file()
    assert_untouched(planted)
    assert sorted(p.name for p in out.iterdir()) == ["_", "__"]


# --- obscure CLI cases ---------------------------------------------------------------------------------
def test_a_perplexity_window_longer_than_the_model_is_named(checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    planted = plant(out, DECOYS)
    spec = spec_for(checkpoint, groups=("baseline", "group"), n=1)
    command = study_command(spec, out, "--no-report")
    command[command.index("--ppl-context") + 1] = "100000"
    assert main(command) == 2
    line = one_line(capsys.readouterr().err)
    assert re.fullmatch(r"hybrid-lens: error: --ppl-context 100000 is longer than \S+ can read: at most \d+ positions "
                        r"\(max_position_embeddings\); pass --ppl-context \d+ or less\.", line), line
    assert_untouched(planted)
    assert every_file(tmp_path) == set(planted)  # no study folder started


def test_an_empty_task_file_is_named(checkpoint, tmp_path, capsys):
    empty = tmp_path / "arc.jsonl"
    empty.write_text("\n")
    spec = spec_for(checkpoint, groups=("baseline", "group"), n=1)
    command = study_command(spec, tmp_path / "out", "--no-report")
    command[command.index("--tasks") + 1] = "arc"
    assert main([*command, "--data", str(empty)]) == 2
    assert one_line(capsys.readouterr().err) == f"hybrid-lens: error: {empty} holds no examples: the task file is empty."
    model = build("qwen2")[1]
    for path in (empty, tmp_path / "arc.json", tmp_path / "arc.csv"):
        path.write_text({".jsonl": "", ".json": "[]", ".csv": "question,answer\n"}[path.suffix])
        for task in (arc_challenge, hellaswag, truthfulqa_mc, gsm8k_cot):
            with pytest.raises(TaskDataError, match=f"^{re.escape(str(path))} holds no examples"):
                task(model, n=1, source=str(path), progress=False)
    (tmp_path / "blank.json").write_text("")
    with pytest.raises(TaskDataError, match="blank.json: not valid JSON"):
        arc_challenge(model, n=1, source=str(tmp_path / "blank.json"), progress=False)


# --- the full disk, in process (every machine) ----------------------------------------------------------
def test_a_write_that_fills_the_disk_leaves_the_old_file_and_no_temporary(finished, tmp_path, monkeypatch, capsys):
    out = copy_of(finished, tmp_path)
    assert main(["report", str(out), "--no-png"]) == 0
    before = {path: path.read_bytes() for path in every_file(out)}
    real_open = open

    class HalfWritten:
        """A new file that takes half of what is written, then reports a full disk (ENOSPC)."""

        def __new__(cls, path, mode="r", *args, **kwargs):
            return super().__new__(cls) if "x" in mode or "w" in mode else real_open(path, mode, *args, **kwargs)

        def __init__(self, *args, **kwargs):
            self.file = real_open(*args, **kwargs)

        def write(self, data):
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    monkeypatch.setattr(files, "open", HalfWritten, raising=False)
    assert main(["report", str(out), "--no-png"]) == 2
    assert one_line(capsys.readouterr().err) == (f"hybrid-lens: error: disk full while writing {out / 'report.md'}; "
                                                 "nothing stored was lost; rerun to resume")
    assert {path: path.read_bytes() for path in every_file(out)} == before  # old report kept, no temporary
    monkeypatch.undo()
    assert main(["report", str(out), "--no-png"]) == 0


def test_a_store_that_fills_mid_study_stops_in_one_line_and_resumes(checkpoint, tmp_path, monkeypatch, capsys):
    """SQLite's own "database or disk is full" (a page limit on the store) half way through a study."""
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer", "positional"))
    full = stored(run_study(spec, tmp_path / "full", progress=False).parent, spec)
    with sqlite3.connect(runner.model_folder(tmp_path / "full", spec.model) / STORE) as db:
        (pages,) = db.execute("PRAGMA page_count").fetchone()
    opened = StudyStore._open

    def capped(self, read_only):
        opened(self, read_only)
        self._db.execute(f"PRAGMA max_page_count = {pages - 2}")  # the last pairs do not fit

    monkeypatch.setattr(StudyStore, "_open", capped)
    out = tmp_path / "out"
    assert main(study_command(spec, out, "--no-report")) == 2
    path = runner.model_folder(out, spec.model) / STORE
    assert one_line(capsys.readouterr().err) == (f"hybrid-lens: error: disk full while writing {path}; nothing "
                                                 "stored was lost; rerun to resume")
    partial = stored(out, spec)
    assert 0 < len(partial) < len(full)
    pd.testing.assert_frame_equal(partial, full.merge(partial[["condition", "task"]].drop_duplicates()))  # whole pairs
    monkeypatch.undo()
    assert main(study_command(spec, out, "--no-report")) == 0
    pd.testing.assert_frame_equal(stored(out, spec), full)


# --- the full disk and a read-only folder, for real ------------------------------------------------------
PRELUDE = """
import json, os, shutil, subprocess, sys, time
disk = sys.argv[1]
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", disk], check=True)

def fill(leave=0):
    with open(os.path.join(disk, "filler"), "ab", buffering=0) as file:
        while True:
            stat = os.statvfs(disk)
            room = stat.f_bavail * stat.f_frsize - leave
            try:
                if room <= 0 or not file.write(b"\\0" * min(room, 1 << 20)):
                    return
            except OSError:  # full
                return

def cli(*args, wait=True):
    process = subprocess.Popen([sys.executable, "-m", "hybrid_lens.cli", *args], stderr=subprocess.PIPE, text=True)
    return process if not wait else (process.wait(), process.communicate()[1])

def listing():
    return sorted(os.path.relpath(os.path.join(root, name), disk) for root, _, names in os.walk(disk) for name in names)
"""


def in_private_mount(script: str, disk: Path) -> dict:
    """Run Python `script` (after `PRELUDE`, which mounts a small tmpfs at `disk`) in a private mount
    namespace, which ends with it (so does the mount); returns the JSON it prints last."""
    prefix = ["unshare", "--mount"] + ([] if os.geteuid() == 0 else ["--user", "--map-root-user"])
    probe = subprocess.run([*prefix, "mount", "-t", "tmpfs", "tmpfs", str(disk)], capture_output=True, text=True)
    if shutil.which("unshare") is None or probe.returncode != 0:
        pytest.skip(f"this machine cannot mount a tmpfs in a private namespace ({probe.stderr.strip()[:200]})")
    environment = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1]), "OMP_NUM_THREADS": "1",
                   "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([*prefix, sys.executable, "-c", PRELUDE + script, str(disk)], env=environment,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.slow
def test_a_real_full_disk_while_writing_the_report_and_mid_study(finished, checkpoint, tmp_path):
    spec = spec_for(checkpoint, groups=("baseline", "group", "layer", "positional", "random"), n=3)
    full = stored(run_study(spec, tmp_path / "full", progress=False).parent, spec)
    disk = tmp_path / "disk"
    disk.mkdir()
    shutil.copytree(finished[1], tmp_path / "finished")
    script = f"""
store = {str(runner.model_folder(disk / "study", spec.model) / STORE)!r}
shutil.copytree({str(tmp_path / "finished")!r}, os.path.join(disk, "finished"))
fill(leave=64 * 1024)                                   # the report (megabytes) does not fit
report = cli("report", os.path.join(disk, "finished"))
report_listing = listing()
os.remove(os.path.join(disk, "filler"))
rerun_report = cli("report", os.path.join(disk, "finished"))[0]
shutil.rmtree(os.path.join(disk, "finished"))
study = cli(*{study_command(spec, disk / "study", "--no-report")!r}, wait=False)
import sqlite3
while study.poll() is None:                              # fill the disk once the first pairs are stored
    if os.path.exists(store):
        try:
            with sqlite3.connect(store, timeout=10) as db:
                if db.execute("SELECT COUNT(*) FROM done").fetchone()[0]:
                    break
        except sqlite3.OperationalError:
            pass
    time.sleep(0.01)
fill()
code, err = study.wait(), study.communicate()[1]
study_listing = listing()
os.remove(os.path.join(disk, "filler"))
shutil.copytree(os.path.join(disk, "study"), {str(tmp_path / "stopped")!r})
rerun = cli(*{study_command(spec, disk / "study", "--no-report")!r})
shutil.copytree(os.path.join(disk, "study"), {str(tmp_path / "resumed")!r})
print(json.dumps(dict(report=report, report_listing=report_listing, rerun_report=rerun_report, study=[code, err],
                      study_listing=study_listing, rerun=rerun)))
"""
    result = in_private_mount(script, disk)
    finished_files = sorted(p.relative_to(tmp_path).as_posix() for p in every_file(tmp_path / "finished"))
    code, err = result["report"]
    assert code == 2 and re.fullmatch(rf"hybrid-lens: error: disk full while writing {disk}/finished/\S+; nothing "
                                      "stored was lost; rerun to resume", one_line(err)), err
    assert not [name for name in result["report_listing"] if name.endswith(".tmp")]  # no partial temporary
    assert set(finished_files) - {"finished/report.html", "finished/report.md"} <= set(result["report_listing"])
    assert result["rerun_report"] == 0
    code, err = result["study"]
    assert code == 2 and one_line(err) == (f"hybrid-lens: error: disk full while writing {disk}/study/"
                                           f"{runner.model_folder(Path(), spec.model)}/{STORE}; nothing stored was "
                                           "lost; rerun to resume"), err
    assert not [name for name in result["study_listing"] if name.endswith(".tmp")]
    partial = stored(tmp_path / "stopped", spec)
    assert 0 < len(partial) < len(full)
    pd.testing.assert_frame_equal(partial, full.merge(partial[["condition", "task"]].drop_duplicates()))
    assert result["rerun"][0] == 0, result["rerun"][1]
    pd.testing.assert_frame_equal(stored(tmp_path / "resumed", spec), full)


@pytest.mark.slow
def test_a_read_only_folder_holding_a_finished_study(finished, tmp_path):
    spec, _ = finished
    disk = tmp_path / "disk"
    disk.mkdir()
    shutil.copytree(finished[1], tmp_path / "finished")
    elsewhere = tmp_path / "elsewhere"
    script = f"""
shutil.copytree({str(tmp_path / "finished")!r}, os.path.join(disk, "study"))
subprocess.run(["mount", "-o", "remount,ro", disk], check=True)
before = listing()
study = cli(*{study_command(spec, disk / "study")!r})
report = cli("report", os.path.join(disk, "study"))
elsewhere = cli("report", os.path.join(disk, "study"), "--out", {str(elsewhere)!r})
print(json.dumps(dict(before=before, after=listing(), study=study, report=report, elsewhere=elsewhere)))
"""
    result = in_private_mount(script, disk)
    code, err = result["study"]
    assert code == 2 and one_line(err) == (
        f"hybrid-lens: error: --out {disk}/study is read-only: no study can run or resume there; the study it holds can "
        f"still be rendered elsewhere: `hybrid-lens report {disk}/study --out OTHER_FOLDER`."), err
    code, err = result["report"]
    assert code == 2 and one_line(err) == (
        f"hybrid-lens: error: {disk}/study is read-only, so the report cannot be written there; render it into "
        f"another folder: `hybrid-lens report {disk}/study --out OTHER_FOLDER`."), err
    assert result["elsewhere"][0] == 0, result["elsewhere"][1]
    assert result["before"] == result["after"]
    page = (elsewhere / "report.html").read_text()
    assert "Table 2 analogue" in page and page.count('class="hl-tok"') >= 32  # read in place, rendered in full
    assert sorted(p.name for p in elsewhere.iterdir()) == ["figures", "report.html", "report.md"]


# --- one store, one identity, also under a race ------------------------------------------------------
def _open_and_write(n: int, paths: list[str], start, results) -> None:
    """One process of the race: for each new store in `paths`, open it for a study of `n` examples
    (when `start` lets all go) and, if accepted, store `n` examples of its condition."""
    for path in paths:
        start.wait(timeout=300)
        try:
            store = StudyStore(path, meta={"model": "m", "n": n})
        except FileExistsError:
            results.put((path, n, False))
            continue
        store.write(f"n{n}", "arc", pd.DataFrame(dict(example=range(n), metric="acc", value=1.0)), 0.1)
        store.close()
        results.put((path, n, True))


def test_two_processes_opening_a_new_store_with_other_settings_never_mix_it(tmp_path):
    rounds = 20
    paths = [str(tmp_path / f"round{i}" / STORE) for i in range(rounds)]
    context = multiprocessing.get_context("spawn")
    start, results = context.Barrier(3), context.Queue()
    workers = [context.Process(target=_open_and_write, args=(n, paths, start, results), daemon=True) for n in (2, 3)]
    for worker in workers:
        worker.start()
    mixed, accepted = 0, []
    for path in paths:
        StudyStore(path).close()  # a new store: no settings yet
        stop = threading.Event()

        def write(path=path):  # a third connection writing all along
            db = sqlite3.connect(path, timeout=60, isolation_level=None)
            while not stop.is_set():
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO claims VALUES ('x', 'ppl', 'host:1:a', 0)")
                db.execute("COMMIT")
                time.sleep(0.001)  # let the others in
            db.close()

        writer = threading.Thread(target=write)
        writer.start()
        start.wait(timeout=120)
        outcomes = [results.get(timeout=120) for _ in workers]
        stop.set()
        writer.join()
        store = StudyStore(path)
        n, counts = store.meta["n"], store.results().groupby("condition").example.nunique()
        store.close()
        accepted.append(sum(ok for _, _, ok in outcomes))
        mixed += accepted[-1] != 1 or set(counts) != {n} or [k for _, k, ok in outcomes if ok] != [n]
    for worker in workers:
        worker.join(timeout=60)
    assert mixed == 0 and accepted == [1] * rounds


# --- a tampered study folder ----------------------------------------------------------------------------
EVIL = "<script>alert('evil')</script>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.handlers, self._in_script = [], [], [], False

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False

    def handle_data(self, data):
        if self._in_script:
            self.scripts.append(data)


def tamper(out: Path) -> Path:
    """Script and Markdown in the names, labels and contributions of the study in `out`."""
    folder = next(path.parent for path in out.glob(f"*/{STORE}"))
    with sqlite3.connect(folder / STORE) as db:
        meta = dict(db.execute("SELECT key, value FROM meta"))
        settings = json.loads(meta["settings"])
        settings["ppl_text"] = f"**KJV** {EVIL}"
        db.execute("UPDATE meta SET value = ? WHERE key = 'model'", (json.dumps(f"<img src=x onerror=alert(1)>/{EVIL}"),))
        db.execute("UPDATE meta SET value = ? WHERE key = 'settings'", (json.dumps(settings),))
        name = f"ssm_off{EVIL}"
        for table in ("results", "done"):
            db.execute(f"UPDATE {table} SET condition = ? WHERE condition = 'ssm_off'", (name,))
        (spec,) = db.execute("SELECT spec FROM conditions WHERE name = 'ssm_off'").fetchone()
        spec = {**json.loads(spec), "name": name, "label": f"[click](javascript:alert(1)) | # {EVIL}"}
        db.execute("UPDATE conditions SET name = ?, spec = ? WHERE name = 'ssm_off'", (name, json.dumps(spec)))
    (folder / CONTRIBUTIONS_FILE).write_text(EVIL)
    data = json.loads((folder / CONTRIBUTIONS_DATA).read_text())
    data["rows"][0]["token"] = EVIL
    (folder / CONTRIBUTIONS_DATA).write_text(json.dumps(data))
    return folder


def test_a_tampered_study_folder_carries_no_script_into_the_report(finished, tmp_path):
    out = copy_of(finished, tmp_path)
    assert main(["report", str(out), "--no-png"]) == 0
    clean = _Tags()
    clean.feed((out / "report.html").read_text())
    folder = tamper(out)
    assert main(["report", str(out), "--no-png"]) == 0
    page, markdown = (out / "report.html").read_text(), (out / "report.md").read_text()
    parsed = _Tags()
    parsed.feed(page)
    assert sorted(parsed.tags) == sorted(clean.tags) and not parsed.handlers  # no tag added by the data
    assert len(parsed.scripts) == len(clean.scripts) and not any(EVIL in s for s in parsed.scripts)  # JSON-escaped
    assert "&lt;script&gt;alert(&#x27;evil&#x27;)&lt;/script&gt;" in page  # shown as text, in the view too
    assert "<script>" not in markdown and "<img" not in markdown
    assert not re.search(r"(?<!\\)\]\(javascript:", markdown)  # no link: its brackets are escaped
    assert "&lt;script&gt;" in markdown and "\\[click\\](javascript:alert(1)) \\| \\# " in markdown
    assert "\\*\\*KJV\\*\\*" in markdown and "ssm_off&lt;script&gt;alert('evil')" in markdown  # intraword _ stays
    data = json.loads((folder / CONTRIBUTIONS_DATA).read_text())
    data["rows"][1]["path"] = EVIL  # not a component kind: the view is not shown, and says why
    (folder / CONTRIBUTIONS_DATA).write_text(json.dumps(data))
    assert main(["report", str(out), "--no-png"]) == 0
    page = (out / "report.html").read_text()
    assert "row 1 has invalid path" in page and 'class="hl-tok"' not in page and EVIL not in page
    (folder / CONTRIBUTIONS_DATA).unlink()  # a study of an earlier version: its HTML file is linked, never inlined
    assert main(["report", str(out), "--no-png"]) == 0
    page = (out / "report.html").read_text()
    assert f'<a href="{folder.name}/{CONTRIBUTIONS_FILE}">' in page and EVIL not in page
