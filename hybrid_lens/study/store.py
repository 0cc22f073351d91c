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
        return {k: json.loads(v) for k, v in self._db.execute("SELECT key, value FROM meta")}

    def save_conditions(self, specs: Iterable[dict]) -> None:
        with self._db:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO conditions VALUES (?, ?, ?)",
                                 [(s["name"], i, json.dumps(s)) for i, s in enumerate(specs)])

    def conditions(self) -> list[dict]:
        return [json.loads(spec) for (spec,) in self._db.execute("SELECT spec FROM conditions ORDER BY position")]

    def is_done(self, condition: str, task: str) -> bool:
        row = self._db.execute("SELECT 1 FROM done WHERE condition = ? AND task = ?", (condition, task)).fetchone()
        return row is not None

    def write(self, condition: str, task: str, rows: pd.DataFrame, seconds: float) -> None:
        """Store one (condition, task) pair: `rows` has columns example, metric, value."""
        records = [(condition, task, int(e), str(m), float(v)) for e, m, v in rows[["example", "metric", "value"]].itertuples(index=False)]
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            if self.is_done(condition, task):
                return
            self._db.executemany("INSERT INTO results VALUES (?, ?, ?, ?, ?)", records)
            self._db.execute("INSERT INTO done VALUES (?, ?, ?)", (condition, task, seconds))

    def results(self) -> pd.DataFrame:
        """Every stored value: columns condition, task, example, metric, value."""
        return pd.read_sql_query("SELECT condition, task, example, metric, value FROM results", self._db)

    def timings(self) -> pd.DataFrame:
        return pd.read_sql_query("SELECT condition, task, seconds FROM done", self._db)

    def close(self) -> None:
        self._db.close()
