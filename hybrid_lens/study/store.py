"""A durable, resumable store of per-example study results (one SQLite file per study).

Each (condition, task) pair is written in one transaction together with its completion marker,
so an interrupted study loses at most the pair in flight and never stores an example twice.
Several processes may write to the same store (sharded runs).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS conditions (name TEXT PRIMARY KEY, position INTEGER, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS results (
    condition TEXT NOT NULL, task TEXT NOT NULL, example INTEGER NOT NULL, metric TEXT NOT NULL,
    value REAL, PRIMARY KEY (condition, task, example, metric));
CREATE TABLE IF NOT EXISTS done (condition TEXT NOT NULL, task TEXT NOT NULL, seconds REAL,
    PRIMARY KEY (condition, task));
"""


class StudyStore:
    """Per-example results of one study of one model.

    Args:
        path: the SQLite file (created with its folder).
        meta: identifies the study (model name, tasks, n, seed, ...). Opening a store whose `model`
            differs raises unless `overwrite`, which deletes the old store first.

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
        >>> StudyStore(path, meta={"model": "hybrid-lens/tiny-falcon-h1"})
        Traceback (most recent call last):
        ...
        FileExistsError: ... holds a study of 'hybrid-lens/tiny-qwen3.5', not 'hybrid-lens/tiny-falcon-h1'. ...
        >>> store.close()
    """

    def __init__(self, path: str | Path, meta: dict | None = None, overwrite: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if overwrite and self.path.exists():
            self.path.unlink()
        self._db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        if meta is not None:
            self._check_meta(meta)

    def _check_meta(self, meta: dict) -> None:
        stored = self.meta
        if stored and stored.get("model") != meta.get("model"):
            raise FileExistsError(
                f"{self.path} holds a study of {stored.get('model')!r}, not {meta.get('model')!r}. "
                "Choose another output folder, or pass --overwrite to replace it."
            )
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO meta VALUES (?, ?)",
                                 [(k, json.dumps(v)) for k, v in meta.items()])

    @property
    def meta(self) -> dict:
        """The study's identification as stored (empty for a new store)."""
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def save_conditions(self, specs: Iterable[dict]) -> None:
        """Store the study's condition specs (`StudyCondition.to_dict()`), in order.

        Examples:
            >>> import tempfile
            >>> from hybrid_lens.study.conditions import baseline
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.save_conditions([baseline().to_dict(), {"name": "L3_off", "group": "layer"}])
            >>> [spec["name"] for spec in store.conditions()]
            ['baseline', 'L3_off']
            >>> store.close()
        """
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO conditions VALUES (?, ?, ?)",
                                 [(s["name"], i, json.dumps(s)) for i, s in enumerate(specs)])

    def conditions(self) -> list[dict]:
        """The saved condition specs, in the order they were saved.

        Examples:
            >>> import tempfile
            >>> from hybrid_lens.study.conditions import group_ablations
            >>> model = HookedHybrid.from_pretrained("hybrid-lens/tiny-qwen3.5")
            >>> store = StudyStore(Path(tempfile.mkdtemp()) / "results.sqlite")
            >>> store.save_conditions(c.to_dict() for c in group_ablations(model.layer_mixers))
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

        The rows and the completion marker are written in one transaction; a pair already done
        is left as it is (so a rerun or a second process never stores an example twice).

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
        records = [(condition, task, int(e), str(m), float(v)) for e, m, v in rows[["example", "metric", "value"]].itertuples(index=False)]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self.is_done(condition, task):
                return
            self._db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", records)
            self._db.execute("INSERT INTO done VALUES (?, ?, ?)", (condition, task, seconds))

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
