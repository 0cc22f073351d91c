"""Evaluation data: bundled offline subsets, local files, or hub datasets when online.

Task files are read into `Record`s that remember where they came from, so a malformed file fails
with an error naming the file, the row and the field (`TaskDataError`).
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA = Path(__file__).parent / "data"
WIKITEXT_HUB = ("wikitext", "wikitext-2-raw-v1")


def wikitext2(source: str | Path | None = None, split: str = "test") -> str:
    """WikiText-2 raw text, non-empty rows joined by newlines.

    Args:
        source: None for the bundled test split; a local `.txt`/`.txt.gz` file; or
            `"wikitext"` to load the hub dataset `wikitext-2-raw-v1` (needs network).
        split: the hub split (`"test"`, `"validation"`, `"train"`), for `"wikitext"` only.

    Examples:
        >>> text = wikitext2()                               # bundled, offline
        >>> text[:20]
        ' = Robert Boulter = '
        >>> validation = wikitext2("wikitext", split="validation")   # doctest: +SKIP
    """
    if source is None:
        source = DATA / "wikitext2_test.txt.gz"
    if str(source) == WIKITEXT_HUB[0]:
        from datasets import load_dataset

        rows = load_dataset(*WIKITEXT_HUB, split=split)["text"]
        return "\n".join(row for row in rows if row.strip())
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"No text file at {path}; pass a .txt/.txt.gz file, None (bundled), or 'wikitext'.")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return f.read()


class TaskDataError(ValueError):
    """A task file (or hub split) whose rows do not have the expected fields.

    Examples:
        >>> record = Record({"question": "Which planet is largest?"}, "questions.jsonl", 3)
        >>> try:
        ...     record.get("answer")
        ... except TaskDataError as error:
        ...     print(error)
        questions.jsonl, row 3: field 'answer' is missing (fields: ['question'])
    """


@dataclass(frozen=True)
class Record:
    """One row of a task file: its fields and where it was read (file, 1-based row).

    Examples:
        >>> record = Record({"question": "2 + 2?", "choices": {"text": ["3", "4"]}, "answer": "1"}, "quiz.csv", 1)
        >>> record.get("question"), record.get("answer", int), record.strings("choices.text")
        ('2 + 2?', 1, ['3', '4'])
    """

    data: Mapping[str, Any]
    file: str
    row: int

    def error(self, field: str, problem: str) -> TaskDataError:
        """A `TaskDataError` naming this record's file, row and `field` (to raise).

        Examples:
            >>> Record({"label": 7}, "hellaswag.jsonl", 12).error("label", "is not an index of the 4 endings")
            TaskDataError("hellaswag.jsonl, row 12: field 'label' is not an index of the 4 endings")
        """
        return TaskDataError(f"{self.file}, row {self.row}: field {field!r} {problem}")

    def get(self, field: str, kind: type = str) -> Any:
        """The value of `field` (dots reach into nested mappings), checked to be a `kind`.

        `int` fields also accept integer strings (CSV); `list` fields must be non-empty.

        Raises:
            TaskDataError: the field is missing or of another type.

        Examples:
            >>> record = Record({"answer": "3", "mc1_targets": {"labels": [1, 0]}}, "rows.jsonl", 5)
            >>> record.get("answer", int), record.get("mc1_targets.labels", list)
            (3, [1, 0])
        """
        value: Any = self.data
        for part in field.split("."):
            if not isinstance(value, Mapping) or part not in value:
                raise self.error(field, f"is missing (fields: {sorted(self.data)})")
            value = value[part]
        if kind is int and isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return int(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.error(field, f"should be {kind.__name__}, got {type(value).__name__}: {value!r:.80}")
        if kind is list and not value:
            raise self.error(field, "is an empty list")
        return value

    def strings(self, field: str) -> list[str]:
        """The value of `field`, checked to be a non-empty list of strings.

        Examples:
            >>> Record({"endings": ["runs away.", "sits down."]}, "rows.jsonl", 1).strings("endings")
            ['runs away.', 'sits down.']
        """
        values = self.get(field, list)
        if not all(isinstance(v, str) for v in values):
            raise self.error(field, f"should hold strings, got {values!r:.80}")
        return values


def read_records(path: str | Path) -> list[Record]:
    """Rows of a `.jsonl`, `.json` (a list of objects) or `.csv` file (with a header row).

    Examples:
        >>> records = read_records(DATA / "arc_challenge" / "test.jsonl")   # the bundled ARC subset
        >>> len(records), records[0].row, sorted(records[0].data)
        (100, 1, ['answer', 'id', 'index', 'options', 'question'])

    Raises:
        FileNotFoundError: no file at `path`.
        TaskDataError: a row that is not an object, or no row at all.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No task file at {path}.")
    records = _file_records(path)
    if not records:
        raise TaskDataError(f"{path} holds no examples: the task file is empty.")
    return records


def _file_records(path: Path) -> list[Record]:
    if path.suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            return [Record(row, str(path), i) for i, row in enumerate(csv.DictReader(f), start=1)]
    if path.suffix == ".jsonl":
        records = []
        with open(path, encoding="utf-8") as f:
            for i, line in enumerate(f, start=1):
                if line.strip():
                    records.append(Record(_json_object(line, path, i), str(path), i))
        return records
    if path.suffix == ".json":
        try:
            rows = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise TaskDataError(f"{path}: not valid JSON ({error.msg}).") from None
        if not isinstance(rows, list):
            raise TaskDataError(f"{path}: expected a JSON list of objects, got {type(rows).__name__}.")
        return [Record(_checked_object(row, path, i), str(path), i) for i, row in enumerate(rows, start=1)]
    raise TaskDataError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .csv.")


def _json_object(line: str, path: Path, row: int) -> dict:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as error:
        raise TaskDataError(f"{path}, row {row}: not valid JSON ({error.msg}).") from error
    return _checked_object(value, path, row)


def _checked_object(value: Any, path: Path, row: int) -> dict:
    if not isinstance(value, dict):
        raise TaskDataError(f"{path}, row {row}: expected a JSON object, got {type(value).__name__}.")
    return value


def hub_records(path: str, name: str | None, split: str) -> list[Record]:
    """Rows of a hub dataset split (needs network), e.g. `hub_records("allenai/ai2_arc", "ARC-Challenge", "test")`.

    Examples:
        >>> records = hub_records("allenai/ai2_arc", "ARC-Challenge", "test")   # doctest: +SKIP
        >>> records[0].file                                                      # doctest: +SKIP
        'hub:allenai/ai2_arc/ARC-Challenge[test]'
    """
    from datasets import load_dataset

    try:
        rows = load_dataset(path, name, split=split)
    except Exception as error:  # datasets raises many types when offline or on a wrong name
        raise RuntimeError(
            f"Could not load hub dataset {path!r} ({name}, split {split!r}): {error}. Offline? Pass a local file or "
            "source='bundled'."
        ) from error
    where = f"hub:{path}" + (f"/{name}" if name else "") + f"[{split}]"
    return [Record(row, where, i) for i, row in enumerate(rows, start=1)]


def local_source(source: str | Path | None, bundled: str) -> Path | None:
    """The local path meant by `source`: `"bundled"` is the subset shipped in `data/<bundled>`;
    an existing path is itself; None or any other string means a hub dataset (returns None).

    Examples:
        >>> local_source("bundled", "arc_challenge/test.jsonl") == DATA / "arc_challenge" / "test.jsonl"
        True
        >>> local_source("allenai/ai2_arc", "arc_challenge/test.jsonl") is None    # a hub path
        True
    """
    if source is None:
        return None
    if str(source) == "bundled":
        return DATA / bundled
    path = Path(source)
    if path.exists():
        return path
    if path.suffix in (".jsonl", ".json", ".csv"):
        raise FileNotFoundError(f"No task file at {path}.")
    return None
