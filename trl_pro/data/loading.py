"""Loading datasets the way every command does: hub ids, local folders, `save_to_disk` folders and single local files
(json, jsonl, csv, parquet, arrow, optionally compressed), with column renames and split checks."""

from __future__ import annotations

import json  # noqa: E402
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


def load_named_dataset(name: str, config: str | None = None, train_split: str = "train", streaming: bool = False):
    """A dataset by name: a local file (becomes the `train_split` split), a folder written by `save_to_disk`, a
    local folder of data files (their names give the splits) or a hub id, as a `DatasetDict`."""
    from datasets import DatasetDict, IterableDatasetDict, load_dataset, load_from_disk

    path = Path(name).expanduser()
    if not path.exists() and name.startswith("trl_pro/"):  # the embedded data, from any working directory
        path = Path(__file__).resolve().parents[2] / name
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
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
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
        raise SetupError(f"the dataset has no '{name}' split for {role} (splits: {', '.join(dataset)}); set "
                          f"--dataset_{'train' if role == 'training' else 'test'}_split")
    return None


