"""The files a study writes, written safely: every file under `--out` is written atomically through
a temporary file whose name only hybrid-lens uses (`.<name>.<random>.hybrid-lens.tmp`), so a reader
never sees half a file and a user's own `*.tmp` files are never taken for ours; stale temporaries
are removed only inside a study folder (one that holds a study store); model names become folder
names without separators, `.` or `..`; and a full disk ends in one `DiskFullError` line, with no
temporary left behind.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import sqlite3
import time
import uuid
from pathlib import Path

TEMPORARY_SUFFIX = ".hybrid-lens.tmp"  # the end of every temporary file name hybrid-lens writes
STORE = "results.sqlite"  # a study store's file name (in a model's folder of the study folder)
_SQLITE_MAGIC = b"SQLite format 3\x00"
_NAME_LIMIT = 120  # longest folder name made from a model name (file systems allow 255 bytes)


class DiskFullError(OSError):
    """The disk filled while writing `path` (the message names it and says that rerunning resumes).

    Examples:
        >>> str(DiskFullError("out/report.html"))
        'disk full while writing out/report.html; nothing stored was lost; rerun to resume'
        >>> DiskFullError("out/report.html").errno == errno.ENOSPC
        True
    """

    def __init__(self, path: str | Path):
        super().__init__(errno.ENOSPC, "No space left on device", str(path))

    def __str__(self) -> str:
        return f"disk full while writing {self.filename}; nothing stored was lost; rerun to resume"


def is_disk_full(error: BaseException, folder: str | Path | None = None) -> bool:
    """Whether `error` means the disk (or the quota) is full: `ENOSPC`/`EDQUOT`, SQLite's
    `SQLITE_FULL`, or an SQLite I/O error while `folder`'s file system has no free block (SQLite
    reports a shared-memory file it cannot grow as an I/O error).

    Examples:
        >>> is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
        True
        >>> is_disk_full(sqlite3.OperationalError("database or disk is full"))
        True
        >>> is_disk_full(PermissionError(errno.EACCES, "Permission denied"))
        False
    """
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    if not isinstance(error, sqlite3.Error):
        return False
    name = getattr(error, "sqlite_errorname", "")
    if name == "SQLITE_FULL" or "disk is full" in str(error):
        return True
    if (name.startswith("SQLITE_IOERR") or "disk I/O error" in str(error)) and folder is not None:
        try:
            return os.statvfs(folder).f_bavail == 0
        except OSError:
            return False
    return False


def temporary_path(path: str | Path) -> Path:
    """A fresh temporary name beside `path`: `.<name>.<random>.hybrid-lens.tmp`.

    Examples:
        >>> name = temporary_path("out/report.html").name
        >>> name.startswith(".report.html.") and name.endswith(TEMPORARY_SUFFIX)
        True
    """
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}{TEMPORARY_SUFFIX}")


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (text as UTF-8) to `path` through a temporary file and a rename, so `path`
    holds either its old content or all of `data`; returns `path`.

    The temporary file is removed on any failure. A full disk raises `DiskFullError` naming `path`.

    Examples:
        >>> import tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> atomic_write(folder / "report.md", "# Study").read_text()
        '# Study'
        >>> [p.name for p in folder.iterdir()]                     # no temporary left
        ['report.md']
    """
    path = Path(path)
    temporary = temporary_path(path)
    try:
        with open(temporary, "xb") as file:
            file.write(data.encode("utf-8") if isinstance(data, str) else data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        if is_disk_full(error):
            raise DiskFullError(path) from None
        raise
    return path


def safe_folder_name(name: str) -> str:
    """`name` (a model's hub name or path) as one folder name: runs of characters other than
    letters, digits, `_`, `.` and `-` become `_`, leading dots become `_` (no `.`, `..` or hidden
    folder), and a name longer than 120 characters keeps its start and a hash of the whole.

    Examples:
        >>> safe_folder_name("hybrid-lens/tiny-qwen3.5"), safe_folder_name(".."), safe_folder_name("./my model")
        ('hybrid-lens_tiny-qwen3.5', '__', '__my_model')
        >>> len(safe_folder_name("m" * 500))
        120
    """
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
    safe = re.sub(r"^\.+", lambda dots: "_" * len(dots.group()), safe)
    if len(safe) > _NAME_LIMIT:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        safe = f"{safe[:_NAME_LIMIT - len(digest) - 1]}_{digest}"
    return safe


def is_store(path: str | Path) -> bool:
    """Whether `path` is a file that starts as an SQLite database does (a study store's file).

    Examples:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / STORE
        >>> _ = path.write_text("my notes")
        >>> is_store(path)
        False
    """
    try:
        with open(path, "rb") as file:
            return file.read(len(_SQLITE_MAGIC)) == _SQLITE_MAGIC
    except OSError:
        return False


def study_folders(folder: str | Path) -> list[Path]:
    """The folders of the study in `folder` that hybrid-lens writes: each model folder holding a
    study store, and, if there is one, `folder` itself and its `figures` folder; empty when
    `folder` holds no study.

    Examples:
        >>> import tempfile, sqlite3
        >>> out = Path(tempfile.mkdtemp())
        >>> study_folders(out)                                       # no study here
        []
        >>> (out / "tiny-qwen3.5").mkdir()
        >>> sqlite3.connect(out / "tiny-qwen3.5" / STORE).execute("CREATE TABLE meta (key)").connection.close()
        >>> [p.relative_to(out).as_posix() for p in study_folders(out)]
        ['.', 'figures', 'tiny-qwen3.5']
    """
    folder = Path(folder)
    models = sorted(path.parent for path in folder.glob(f"*/{STORE}") if is_store(path))
    if not models and not is_store(folder / STORE):
        return []
    return [folder, folder / "figures", *models]


def clean_stale_temporaries(folder: str | Path, older_than: float = 60.0) -> list[Path]:
    """Delete the temporary files an interrupted atomic write of hybrid-lens left in the study in
    `folder` (`study_folders`): only names ending in `.hybrid-lens.tmp`, untouched for
    `older_than` seconds (a write in progress is kept). Nothing else is touched, and nothing at all
    where `folder` holds no study.

    Returns:
        The deleted paths.

    Examples:
        >>> import tempfile, sqlite3
        >>> out = Path(tempfile.mkdtemp())
        >>> sqlite3.connect(out / STORE).execute("CREATE TABLE meta (key)").connection.close()
        >>> for name in (".report.html.3f2a9c1e.hybrid-lens.tmp", "notes.tmp"):
        ...     (out / name).touch()
        ...     os.utime(out / name, (0, 0))                      # written long ago
        >>> [path.name for path in clean_stale_temporaries(out)]
        ['.report.html.3f2a9c1e.hybrid-lens.tmp']
        >>> sorted(path.name for path in out.iterdir())
        ['notes.tmp', 'results.sqlite']
    """
    now, removed = time.time(), []
    for place in study_folders(folder):
        for path in place.glob(f".*{TEMPORARY_SUFFIX}"):
            try:
                if path.is_file() and not path.is_symlink() and now - path.stat().st_mtime > older_than:
                    path.unlink()
                    removed.append(path)
            except OSError:  # another process cleaned it, or a read-only folder: leave it
                continue
    return removed


def writable(folder: str | Path) -> bool:
    """Whether files can be created in `folder`, or in the nearest existing folder above it
    (False on a read-only file system or without write permission).

    Examples:
        >>> import tempfile
        >>> writable(Path(tempfile.mkdtemp()) / "new" / "study")
        True
    """
    folder = Path(folder).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)
