"""Files that are never half-written: atomic text/JSON/JSONL writes (temporary file in the same folder, then
`os.replace`), and append-only JSONL caches that tolerate a torn last line."""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Make `path` with `write(temporary)`, a temporary file in the same folder that then replaces `path` with
    `os.replace`: a reader never sees a half-written file, and an interrupted write leaves no file behind. The file
    gets the permissions a plain `open()` would give (0666 less the umask; `mkstemp` alone gives 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        write(Path(temporary))
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (see `atomic_write`), synced to disk."""

    def write(temporary: Path) -> None:
        with open(temporary, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    atomic_write(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def _jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write rows as JSON lines atomically; gzip-compressed when `path` ends in `.gz`."""
    if str(path).endswith(".gz"):
        text = _jsonl_text(rows)

        def write(temporary: Path) -> None:
            with gzip.open(temporary, "wt", encoding="utf-8") as f:
                f.write(text)

        atomic_write(path, write)
    else:
        atomic_write_text(path, _jsonl_text(rows))


def columns_of(rows: Sequence[dict]) -> list[str]:
    """Every key of every row, in order of first appearance (a column missing from the first row is still one)."""
    return list(dict.fromkeys(key for row in rows for key in row))


def write_rows(path: str | os.PathLike, rows: list[dict[str, Any]]) -> None:
    """Write `rows` to `path` (.jsonl, .jsonl.gz or .parquet) atomically. In parquet, a key some rows lack is a column
    with nulls there, whichever row has it first."""
    if not str(path).endswith(".parquet"):
        write_jsonl(path, rows)
        return
    from datasets import Dataset

    columns = columns_of(rows)
    table = Dataset.from_list([{column: row.get(column) for column in columns} for row in rows])
    atomic_write(path, lambda temporary: table.to_parquet(str(temporary)))


def read_jsonl_cache(path: str | os.PathLike) -> list[dict]:
    """Rows of an append-only cache file. A last line cut short by an interruption is ignored (it is redone); a bad
    line elsewhere is an error, since it means the file is not a cache this code wrote."""
    path = Path(path)
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):  # the unterminated last line of an interrupted append
                continue
            raise ValueError(f"{path}: line {number} is not JSON; delete the file to start over") from None
    return rows


def append_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Append rows to a cache file and flush them to disk (so that an interruption loses at most the current batch)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A previous run may have been interrupted in the middle of a line: drop that unfinished line (it is redone)
    if path.exists():
        data = path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(path, "r+b") as f:
                f.truncate(data.rfind(b"\n") + 1)
    with open(path, "a", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_json_rows(path: str | os.PathLike) -> list[dict]:
    """Rows of a JSON-lines file (optionally .gz) or of a JSON array of objects; a bad line is an error naming it."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    rows = []
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON array
        data = json.loads(text)
        if not all(isinstance(row, dict) for row in data):
            raise ValueError(f"{path}: expected a list of JSON objects")
        return data
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{path}: line {number} is not JSON ({error})") from None
        if not isinstance(row, dict):
            raise ValueError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    return rows
