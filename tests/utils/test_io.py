"""Output files: atomic, complete (every column of every row), with the permissions a plain `open()` gives."""

import os

import pytest
from datasets import load_dataset

from trl_pro.utils.io import atomic_write_text, write_rows
from trl_pro.utils.shards import ShardedOutput


def test_parquet_keeps_a_column_the_first_row_lacks(tmp_path):
    # `trl-pro rank --keep_top1` records `rm_scores` only on rows whose top-1 it lifted
    output = ShardedOutput(str(tmp_path / "ranked.parquet"), num_rows=4, shard_size=2, manifest={"test": 1})
    output.write_shard(0, [{"prompt": "a", "scores": [1.0, 0.0]}, {"prompt": "b", "scores": [2.0, 1.0]}])
    output.write_shard(
        1, [{"prompt": "c", "scores": [3.0, 3.0], "rm_scores": [2.5, 3.0]}, {"prompt": "d", "scores": [1.0, 0.5]}]
    )
    assert output.finalize() == 4
    rows = load_dataset("parquet", data_files=str(tmp_path / "ranked.parquet"), split="train").to_list()
    assert [row["rm_scores"] for row in rows] == [None, None, [2.5, 3.0], None]


@pytest.mark.parametrize("name", ["out.jsonl", "out.jsonl.gz", "out.parquet"])
def test_written_files_respect_the_umask(tmp_path, name):
    previous = os.umask(0o022)
    try:
        write_rows(tmp_path / name, [{"prompt": "a"}])
        atomic_write_text(tmp_path / "results.md", "x")
    finally:
        os.umask(previous)
    assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "results.md").stat().st_mode & 0o777 == 0o644
    assert not [path for path in tmp_path.iterdir() if path.name.startswith(".")]  # no temporary file left
