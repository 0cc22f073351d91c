"""A durable, resumable store of per-example study results (one SQLite file per study).

Each (condition, task) pair is written in one transaction together with its completion marker,
so an interrupted study loses at most the pairs in flight (one `Sweep` group of a task) and never
stores an example twice. Several processes may work on the same store: each claims the pairs it
computes in a transaction, with a lease that a heartbeat renews, so they split the work; the
claims of a killed process are retaken once its lease runs out (at once on the same host).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np
import pandas as pd

from .files import DiskFullError, is_disk_full, writable

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conditions (name TEXT PRIMARY KEY, position INTEGER, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    condition TEXT NOT NULL, task TEXT NOT NULL, example INTEGER NOT NULL, metric TEXT NOT NULL,
    value REAL, PRIMARY KEY (condition, task, example, metric));
CREATE TABLE IF NOT EXISTS done (condition TEXT NOT NULL, task TEXT NOT NULL, seconds REAL,
    PRIMARY KEY (condition, task));
CREATE TABLE IF NOT EXISTS claims (condition TEXT NOT NULL, task TEXT NOT NULL, owner TEXT NOT NULL,
    expires REAL NOT NULL, PRIMARY KEY (condition, task));
"""
LEASE_SECONDS = 60.0  # a claim not renewed for this long is retaken by another process


class ReadOnlyStoreError(PermissionError):
    """A store in a read-only folder (or a read-only file) opened to run, resume or change a study;
    the message says that `hybrid-lens report` can still render it into another folder. Reading it
    (`StudyStore(path)`, as the report does) works.

    Examples:
        >>> str(ReadOnlyStoreError("out/m/results.sqlite is read-only ..."))
        'out/m/results.sqlite is read-only ...'
    """


class CorruptStoreError(ValueError):
    """The file is not a readable study store (the message names it).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.sqlite"
        >>> _ = path.write_bytes(b"not a database, just bytes" * 100)
        >>> StudyStore(path)
        Traceback (most recent call last):
        ...
        hybrid_lens.study.store.CorruptStoreError: ... is not a readable study store (file is not a database). ...
    """


def new_owner() -> str:
    """A claim owner id, `host:pid:random`, unique per run.

    Examples:
        >>> owner = new_owner()
        >>> owner.split(":")[1] == str(os.getpid())
        True
    """
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def _owner_is_dead(owner: str) -> bool:
    """Whether `owner` ran on this host in a process that no longer exists."""
    host, pid, _ = owner.rsplit(":", 2)
    if host != socket.gethostname():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, ValueError):
        return False
    return False


def delete_store(path: str | Path) -> None:
    """Delete a store file with its SQLite journal files (nothing happens if there is none).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "results.sqlite"
        >>> StudyStore(path).close()
        >>> delete_store(path)
        >>> path.exists()
        False
    """
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


class StudyStore:
    """Per-example results of one study of one model.

    Args:
        path: the SQLite file (created with its folder).
        meta: the study's identity: every setting that changes a number (model, tasks, n, seed,
            ...). Opening a store whose stored settings differ raises `FileExistsError` naming each
            difference, unless `overwrite` (deletes the old store first) or, when only `n` grows,
            `extend_n` (pairs computed at the old `n` are then pending again).
        extend_n: allow a larger `n` than the stored one.

    Raises:
        CorruptStoreError: the file is not a readable SQLite study store (the message names it).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "tiny-qwen3.5" / "results.sqlite"
        >>> store = StudyStore(path, meta={"model": "hybrid-lens/tiny-qwen3.5", "n": 2})
        >>> rows = pd.DataFrame(dict(example=[0, 1], metric="acc", value=[1.0, 0.0]))
        >>> store.write("baseline", "arc", rows, seconds=1.5)
        >>> store.results()
          condition task  example metric  value
        0  baseline  arc        0    acc    1.0
        1  baseline  arc        1    acc    0.0
        >>> StudyStore(path, meta={"model": "hybrid-lens/tiny-qwen3.5", "n": 3})
        Traceback (most recent call last):
        ...
        FileExistsError: ... holds a study with other settings: n: 2 stored, 3 now. ...
        >>> store.close()
    """

    def __init__(self, path: str | Path, meta: dict | None = None, overwrite: bool = False, extend_n: bool = False):
        self.path = Path(path)
        if self.path.is_dir():
            raise CorruptStoreError(f"{self.path} is a folder, not a study store.")
        read_only = self.path.exists() and not (os.access(self.path, os.W_OK) and writable(self.path.parent))
        if read_only and (meta is not None or overwrite):
            raise ReadOnlyStoreError(self._read_only())
        if not read_only:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite:
            delete_store(self.path)
        deadline = time.monotonic() + 60
        while True:
            try:
                self._open(read_only)
                break
            except sqlite3.DatabaseError as err:
                if getattr(self, "_db", None) is not None:
                    self._db.close()
                if is_disk_full(err, self.path.parent):
                    raise DiskFullError(self.path) from None
                busy = isinstance(err, sqlite3.OperationalError) and ("locked" in str(err) or "busy" in str(err))
                if not busy or time.monotonic() > deadline:  # another process holds the file: wait, it is not corrupt
                    raise CorruptStoreError(f"{self.path} is not a readable study store ({err}). Move it away to "
                                            "keep it, or pass --overwrite to start this study again.") from None
                time.sleep(0.2)
        if meta is not None:
            self._check_meta(meta, extend_n)

    def _open(self, read_only: bool) -> None:
        """Connect, check the file and create missing tables (a read-only store: read it as it is)."""
        if read_only:
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size:
                raise ReadOnlyStoreError(f"{self.path} is read-only and has writes not yet folded into it ({wal.name})"
                                         ", which SQLite cannot read there: copy the study folder somewhere writable "
                                         "and read it there.")
            self._db = sqlite3.connect(f"{self.path.absolute().as_uri()}?immutable=1", uri=True, isolation_level=None)
        else:
            self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
        (status,) = self._db.execute("PRAGMA quick_check").fetchone()
        if status != "ok":
            raise sqlite3.DatabaseError(status)
        if not read_only:
            self._db.executescript(SCHEMA)
        self._db.execute("SELECT key FROM meta LIMIT 1")  # a file without the study's tables is not a study store

    def _read_only(self) -> str:
        """The message of a read-only store opened to run or change a study."""
        return (f"{self.path} is read-only (a read-only folder or file): the study there can be read but not resumed "
                f"or changed. `hybrid-lens report {self.path.parent.parent} --out OTHER_FOLDER` still renders its "
                "report into a writable folder; copy the study folder somewhere writable to resume it.")

    @contextmanager
    def _transaction(self):
        """Context manager: one write transaction (`BEGIN IMMEDIATE` ... `COMMIT`, rolled back on any
        error); a full disk raises `DiskFullError`, a read-only store `ReadOnlyStoreError`."""
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                yield
        except sqlite3.OperationalError as err:
            if is_disk_full(err, self.path.parent):
                raise DiskFullError(self.path) from None
            if getattr(err, "sqlite_errorname", "") == "SQLITE_READONLY" or "readonly database" in str(err):
                raise ReadOnlyStoreError(self._read_only()) from None
            raise

    def _check_meta(self, meta: dict, extend_n: bool) -> None:
        """Compare `meta` with the stored settings and store it, in one transaction (so two processes
        opening a new store with other settings at once cannot both be accepted)."""
        meta = json.loads(json.dumps(meta))  # as stored: tuples become lists
        with self._transaction():
            stored = self.meta
            differ = {key: (stored[key], value) for key, value in meta.items() if key in stored and stored[key] != value}
            extending = extend_n and set(differ) == {"n"} and differ["n"][1] > differ["n"][0]
            if differ and not extending:
                changes = "; ".join(f"{key}: {old!r} stored, {new!r} now" for key, (old, new) in differ.items())
                raise FileExistsError(
                    f"{self.path} holds a study with other settings: {changes}. Results of different settings are "
                    "never mixed: choose another --out folder for these settings, pass --overwrite to replace this "
                    "study" + (", or --extend-n to grow n keeping everything else."
                               if "n" in differ and differ["n"][1] > differ["n"][0] else ".")
                )
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in meta.items()])
            if extending:  # every pair is computed again at the new n (a sample of n rows is not a prefix)
                self._db.execute("DELETE FROM results")
                self._db.execute("DELETE FROM done")

    @property
    def meta(self) -> dict:
        """The study's identification as stored (empty for a new store)."""
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def save_conditions(self, specs: Iterable[dict]) -> None:
        """Store the study's condition specs (`StudyCondition.to_dict()`), in order.

        Examples:
            >>> import tempfile
            >>> from hybrid_lens.study.plan import baseline
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.save_conditions([baseline().to_dict(), {"name": "L3_off", "group": "layer"}])
            >>> [spec["name"] for spec in store.conditions()]
            ['baseline', 'L3_off']
            >>> store.close()
        """
        with self._transaction():
            self._db.executemany("INSERT OR REPLACE INTO conditions VALUES (?, ?, ?)",
                                 [(s["name"], i, json.dumps(s)) for i, s in enumerate(specs)])

    def conditions(self) -> list[dict]:
        """The saved condition specs, in the order they were saved.

        Examples:
            >>> import tempfile
            >>> from hybrid_lens.study.plan import group_ablations
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.save_conditions(c.to_dict() for c in group_ablations(model.layout))
            >>> [(spec["name"], spec["layers"]) for spec in store.conditions()]
            [('linear_attn_off', [0, 1, 2, 4, 5, 6]), ('attn_off', [3, 7])]
            >>> store.close()
        """
        return [json.loads(spec) for (spec,) in self._db.execute("SELECT spec FROM conditions ORDER BY position")]

    def is_done(self, condition: str, task: str) -> bool:
        """Whether the (condition, task) pair has been written (the runner skips it on resume).

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.is_done("baseline", "ppl")
            False
            >>> store.write("baseline", "ppl", pd.DataFrame(dict(example=[0], metric="tokens", value=[511.0])), 0.2)
            >>> store.is_done("baseline", "ppl")
            True
            >>> store.close()
        """
        row = self._db.execute("SELECT 1 FROM done WHERE condition = ? AND task = ?", (condition, task)).fetchone()
        return row is not None

    def write(self, condition: str, task: str, rows: pd.DataFrame, seconds: float) -> None:
        """Store one (condition, task) pair: `rows` has columns example, metric, value.

        The rows and the completion marker are written in one transaction, and the pair's claim
        is released; a pair already done is left as it is (so a rerun or a second process never
        stores an example twice). Non-finite values are refused (`ValueError` naming the rows).

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> rows = pd.DataFrame(dict(example=[0, 1], metric="acc", value=[1.0, 0.0]))
            >>> store.write("ssm_off", "mmlu", rows, seconds=3.2)
            >>> store.write("ssm_off", "mmlu", rows, seconds=3.2)      # already done: no change
            >>> len(store.results())
            2
            >>> store.close()
        """
        values = rows["value"].to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            bad = rows[~np.isfinite(values)][["example", "metric"]].drop_duplicates().head(5).to_dict("records")
            raise ValueError(f"Not storing ({condition}, {task}): non-finite values at {bad}; a study stores no "
                             "result computed from inf/NaN.")
        records = [(condition, task, int(e), str(m), float(v)) for e, m, v in rows[["example", "metric", "value"]].itertuples(index=False)]
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE condition = ? AND task = ?", (condition, task))
            if self.is_done(condition, task):
                return
            self._db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", records)
            self._db.execute("INSERT INTO done VALUES (?, ?, ?)", (condition, task, seconds))

    def claim(self, task: str, conditions: Sequence[str], size: int, owner: str) -> list[str]:
        """Claim up to `size` of the `conditions` whose pair with `task` is neither done nor
        claimed by a live owner, in one transaction; returns them in the order given.

        Claims expire `LEASE_SECONDS` after their last renewal (`keep_claims`), and at once when
        their owner was a process on this host that has ended (killed, for instance).

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.claim("ppl", ["baseline", "ssm_off", "attn_off"], 2, owner="host:1:a")
            ['baseline', 'ssm_off']
            >>> store.claim("ppl", ["baseline", "ssm_off", "attn_off"], 2, owner="host:2:b")
            ['attn_off']
            >>> store.pending("ppl", ["baseline", "ssm_off", "attn_off"])   # claimed is not done
            ['baseline', 'ssm_off', 'attn_off']
            >>> store.close()
        """
        with self._transaction():
            now = time.time()
            claims = self._db.execute("SELECT condition, owner, expires FROM claims WHERE task = ?", (task,)).fetchall()
            stale = [(c, task) for c, o, expires in claims if expires < now or _owner_is_dead(o)]
            self._db.executemany("DELETE FROM claims WHERE condition = ? AND task = ?", stale)
            taken = {c for c, _, _ in claims} - {c for c, _ in stale}
            done = {c for (c,) in self._db.execute("SELECT condition FROM done WHERE task = ?", (task,))}
            chosen = [c for c in conditions if c not in taken and c not in done][:size]
            self._db.executemany("INSERT INTO claims VALUES (?, ?, ?, ?)",
                                 [(c, task, owner, now + LEASE_SECONDS) for c in chosen])
        return chosen

    def pending(self, task: str, conditions: Sequence[str]) -> list[str]:
        """Those of `conditions` whose pair with `task` is not done (claimed or not).

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.write("baseline", "ppl", pd.DataFrame(dict(example=[0], metric="tokens", value=[63.0])), 0.1)
            >>> store.pending("ppl", ["baseline", "ssm_off"])
            ['ssm_off']
            >>> store.close()
        """
        done = {c for (c,) in self._db.execute("SELECT condition FROM done WHERE task = ?", (task,))}
        return [c for c in conditions if c not in done]

    def release(self, owner: str) -> None:
        """Drop every claim of `owner` (its unfinished pairs become free for others at once).

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.claim("ppl", ["baseline"], 1, owner="host:1:a")
            ['baseline']
            >>> store.release("host:1:a")
            >>> store.claim("ppl", ["baseline"], 1, owner="host:2:b")
            ['baseline']
            >>> store.close()
        """
        with self._transaction():
            self._db.execute("DELETE FROM claims WHERE owner = ?", (owner,))

    @contextmanager
    def keep_claims(self, owner: str, every: float = LEASE_SECONDS / 4):
        """Context manager: a background thread renews `owner`'s claims every `every` seconds
        (so long computations keep them), and they are released on exit, also after an error or
        Ctrl-C.

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> with store.keep_claims("host:1:a"):
            ...     store.claim("ppl", ["baseline"], 1, owner="host:1:a")
            ['baseline']
            >>> store.claim("ppl", ["baseline"], 1, owner="host:2:b")       # released on exit
            ['baseline']
            >>> store.close()
        """
        stop = threading.Event()

        def renew() -> None:
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            while not stop.wait(every):
                try:
                    db.execute("UPDATE claims SET expires = ? WHERE owner = ?", (time.time() + LEASE_SECONDS, owner))
                except sqlite3.OperationalError:  # a full disk, say: the work's own writes report it
                    continue
            db.close()

        thread = threading.Thread(target=renew, name="claim-heartbeat", daemon=True)
        thread.start()
        try:
            yield
        except BaseException:
            stop.set()
            thread.join()
            with suppress(OSError, sqlite3.Error):  # a full disk, say; the claims of an ended process lapse anyway
                self.release(owner)
            raise
        stop.set()
        thread.join()
        self.release(owner)

    def results(self) -> pd.DataFrame:
        """Every stored value: columns condition, task, example, metric, value.

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.write("baseline", "ppl", pd.DataFrame(dict(example=0, metric=["nll_sum", "tokens"],
            ...                                                   value=[1530.2, 511.0])), 0.4)
            >>> store.results()
              condition task  example   metric   value
            0  baseline  ppl        0  nll_sum  1530.2
            1  baseline  ppl        0   tokens   511.0
            >>> store.close()
        """
        return pd.read_sql_query("SELECT condition, task, example, metric, value FROM results", self._db)

    def timings(self) -> pd.DataFrame:
        """Seconds spent per (condition, task) pair: columns condition, task, seconds.

        Examples:
            >>> import tempfile
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.write("baseline", "arc", pd.DataFrame(dict(example=[0], metric="acc", value=[1.0])), 2.5)
            >>> store.timings()
              condition task  seconds
            0  baseline  arc      2.5
            >>> store.close()
        """
        return pd.read_sql_query("SELECT condition, task, seconds FROM done", self._db)

    def close(self) -> None:
        """Close the database connection (the file stays; reopen it with `StudyStore(path)`).

        Examples:
            >>> import tempfile
            >>> path = Path(tempfile.mkdtemp()) / "results.sqlite"
            >>> StudyStore(path, meta={"model": "hybrid-lens/tiny-qwen2.5"}).close()
            >>> StudyStore(path).meta
            {'model': 'hybrid-lens/tiny-qwen2.5'}
        """
        self._db.close()
