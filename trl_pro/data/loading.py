"""Loading datasets the way every command does: hub ids, local folders, `save_to_disk` folders and single local files
(json, jsonl, csv, parquet, arrow, optionally compressed), with column renames and split checks."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import json  # noqa: E402
import lzma
import os
import re
from pathlib import Path  # noqa: E402

from trl_pro.utils.errors import SetupError


_FILE_BUILDERS = {
    ".json": "json",
    ".jsonl": "json",
    ".csv": "csv",
    ".parquet": "parquet",
    ".arrow": "arrow",
}


_COMPRESSIONS = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")


def _file_builder(path: Path) -> str:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in _COMPRESSIONS:
        suffixes = suffixes[:-1]
    builder = _FILE_BUILDERS.get(suffixes[-1]) if suffixes else None
    if builder is None:
        raise SetupError(
            f"cannot tell the format of dataset file {path}: expected one of {', '.join(sorted(_FILE_BUILDERS))} "
            "(optionally .gz/.bz2/.xz/.zst compressed)"
        )
    return builder


def looks_like_local_path(name: str) -> bool:
    """Whether `name` can only be a local path, never a hub id (`name` or `org/name`): it starts with `.`, `/` or
    `~`, or holds two or more path separators."""
    separators = {"/", os.sep, os.altsep} - {None}
    return name.startswith((".", "~", *separators)) or os.path.isabs(name) or sum(map(name.count, separators)) > 1


def _local_path(name: str) -> Path:
    path = Path(name).expanduser()
    if not path.exists() and name.startswith("trl_pro/"):  # the embedded data, from any working directory
        path = Path(__file__).resolve().parents[2] / name
    return path


_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


_ROW = re.compile(r"Row (\d+)\b")


def _json_lines_opener(path: Path):
    """How to read `path` as text lines if it is a local .json/.jsonl file (plain, .gz, .bz2 or .xz), else None."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = suffixes[-1] if suffixes and suffixes[-1] in _COMPRESSIONS else None
    if compression is not None:
        suffixes = suffixes[:-1]
    if not suffixes or suffixes[-1] not in (".json", ".jsonl") or (compression and compression not in _OPENERS):
        return None
    return _OPENERS.get(compression, open)


def line_of_row(path: Path, row: int) -> int | None:
    """The line (1-based) of JSON Lines file `path` that holds row `row`, as `datasets` reads it (a blank line holds
    no row), or None when the file is a JSON array or has no such row."""
    opener = _json_lines_opener(path)
    if opener is None:
        return None
    seen = -1
    with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            if seen == -1 and line.lstrip().startswith("["):  # one JSON array: rows are not lines
                return None
            seen += 1
            if seen == row:
                return number
    return None


def with_line_numbers(message: str, name: str | None) -> str:
    """`message` with its leading "Row N" followed by "(line L of FILE)" when the rows come, in order, from the local
    JSON Lines file (.json/.jsonl, optionally compressed) that the dataset name `name` stands for; else unchanged."""
    match = _ROW.match(message)
    if match is None or not name:
        return message
    path = _local_path(name)
    line = line_of_row(path, int(match.group(1))) if path.is_file() else None
    if line is None:
        return message
    return f"{match.group(0)} (line {line} of {path.name}){message[match.end() :]}"


@contextlib.contextmanager
def rows_with_line_numbers(name: str | None):
    """Inside, a `ValueError` that names a row ("Row N...") of the dataset `name` also names its line, where the rows
    are those of one local JSON Lines file (`with_line_numbers`)."""
    try:
        yield
    except ValueError as error:
        if error.args and isinstance(error.args[0], str):
            message = with_line_numbers(error.args[0], name)
            if message != error.args[0]:
                error.args = (message, *error.args[1:])  # the same error, its type and traceback kept
        raise


def load_named_dataset(name: str, config: str | None = None, train_split: str = "train", streaming: bool = False):
    """A dataset by name: a local file (becomes the `train_split` split), a folder written by `save_to_disk`, a
    local folder of data files (their names give the splits) or a hub id, as a `DatasetDict`."""
    from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

    path = _local_path(name)
    if path.is_file():
        return load_dataset(_file_builder(path), data_files={train_split: str(path)}, streaming=streaming)
    if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        dataset = load_from_disk(str(path))
        if not isinstance(dataset, DatasetDict):
            dataset = DatasetDict({train_split: dataset})
        if streaming:
            return IterableDatasetDict({split: data.to_iterable_dataset() for split, data in dataset.items()})
        return dataset
    if path.is_dir():
        return load_dataset(str(path), name=config, streaming=streaming)
    if looks_like_local_path(name):
        raise SetupError(f"dataset path {name} does not exist")
    return load_dataset(name, name=config, streaming=streaming)


def load_dataset_splits(script_args, dataset_args):
    """The dataset as a `DatasetDict` (or `IterableDatasetDict`), from `datasets` (mixture) or `dataset_name`."""
    from trl import get_dataset

    if dataset_args.datasets:
        if script_args.dataset_name:
            print("Both `datasets` and `dataset_name` are given: `datasets` is used, `dataset_name` is ignored.")
        return get_dataset(dataset_args)
    if not script_args.dataset_name:
        raise SetupError("no dataset: give --dataset_name (a hub id, a local folder or file) or a `datasets:` list")
    return load_named_dataset(
        script_args.dataset_name,
        script_args.dataset_config,
        script_args.dataset_train_split,
        script_args.dataset_streaming,
    )


def _column_map(script_args) -> dict[str, str] | None:
    mapping = script_args.dataset_column_map
    if isinstance(mapping, str):
        try:
            mapping = json.loads(mapping)
        except json.JSONDecodeError as error:
            raise SetupError(f"--dataset_column_map must be a JSON object, got {mapping!r}: {error}") from None
    if mapping is not None and not (
        isinstance(mapping, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items())
    ):
        raise SetupError(f"dataset_column_map must map column names to column names, got {mapping!r}")
    return mapping or None


def _rename_columns(dataset, mapping: dict[str, str], split: str):
    columns = dataset.column_names
    if columns is not None:  # streaming datasets may not know their columns
        missing = [name for name in mapping if name not in columns]
        if missing:
            raise SetupError(f"dataset_column_map: split '{split}' has no column {missing} (columns: {columns})")
    return dataset.rename_columns(mapping)


def _split(dataset, name: str, role: str, required: bool):
    if name in dataset:
        return dataset[name]
    if required:
        raise SetupError(
            f"the dataset has no '{name}' split for {role} (splits: {', '.join(dataset)}); set "
            f"--dataset_{'train' if role == 'training' else 'test'}_split"
        )
    return None
