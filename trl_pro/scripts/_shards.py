"""Resumable, atomic output for `trl-pro generate` and `trl-pro rank`.

Rows are processed in shards of `shard_size` input rows. Each finished shard is written to
`<output_path>.parts/shard-NNNNN.jsonl` through a temporary file and `os.replace`, so a shard file is either complete
or absent. A manifest in the same folder records what the run is (input, arguments, row count): a rerun with the
same manifest skips the shards already there (an interrupted run resumes where it stopped, nothing is done twice); a
rerun with different settings is refused rather than mixing outputs. When every shard is there, they are joined into
`output_path` (.jsonl, .jsonl.gz or .parquet) through a temporary file and `os.replace`, and the parts folder is
removed: the final file is never half-written.
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any


OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def check_output_path(path: str) -> Path:
    output = Path(path)
    if not str(output).endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--output_path must end in {', '.join(OUTPUT_SUFFIXES)}, got {path}")
    return output


def _write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(temporary))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write `rows` to `path` (.jsonl, .jsonl.gz or .parquet) atomically."""

    def write(temporary: Path) -> None:
        name = str(path)
        if name.endswith(".parquet"):
            from datasets import Dataset

            Dataset.from_list(rows).to_parquet(str(temporary))
        elif name.endswith(".gz"):
            with gzip.open(temporary, "wt", encoding="utf-8") as handle:
                for row in rows:
                    handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        else:
            _write_jsonl(temporary, rows)

    _write_atomically(path, write)


class ShardedOutput:
    """Shards of an output file being built; see the module docstring."""

    def __init__(self, output_path: str, num_rows: int, shard_size: int, manifest: dict[str, Any]):
        if shard_size < 1:
            raise ValueError(f"--shard_size must be >= 1, got {shard_size}")
        self.output_path = check_output_path(output_path)
        self.parts = Path(str(self.output_path) + ".parts")
        self.num_rows, self.shard_size = num_rows, shard_size
        self.manifest = {**manifest, "num_rows": num_rows, "shard_size": shard_size}
        manifest_path = self.parts / "manifest.json"
        if manifest_path.is_file():
            existing = json.loads(manifest_path.read_text())
            if existing != json.loads(json.dumps(self.manifest)):
                changed = sorted(k for k in set(existing) | set(self.manifest)
                                 if existing.get(k) != json.loads(json.dumps(self.manifest)).get(k))
                raise ValueError(
                    f"{self.parts} holds an interrupted run with other settings ({', '.join(changed)} differ); "
                    "rerun with the same settings to resume it, or delete the folder to start over"
                )
        else:
            self.parts.mkdir(parents=True, exist_ok=True)
            _write_atomically(manifest_path, lambda p: p.write_text(json.dumps(self.manifest, indent=1)))

    @property
    def num_shards(self) -> int:
        return (self.num_rows + self.shard_size - 1) // self.shard_size

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_rows))

    def shard_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:05d}.jsonl"

    def pending(self) -> list[int]:
        return [shard for shard in range(self.num_shards) if not self.shard_path(shard).is_file()]

    def iter_pending(self, prog: str, progress: bool):
        """The shards still to do, as `(shard, row range)`, under a progress bar; says so when a run resumes."""
        from tqdm.auto import tqdm

        pending = self.pending()
        if len(pending) < self.num_shards:
            print(f"{prog}: resuming: {self.num_shards - len(pending)} of {self.num_shards} shards already done",
                  file=sys.stderr)
        for shard in tqdm(pending, desc="Shards", disable=not progress):
            yield shard, self.shard_range(shard)

    def write_shard(self, shard: int, rows: list[dict[str, Any]]) -> None:
        _write_atomically(self.shard_path(shard), lambda p: _write_jsonl(p, rows))

    def finalize(self) -> int:
        """Join the shards into `output_path` (atomically) and remove the parts folder; returns the row count."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"cannot finalize {self.output_path}: shards {missing[:5]} are missing")
        rows = []
        for shard in range(self.num_shards):
            rows.extend(read_jsonl(self.shard_path(shard)))
        write_rows(self.output_path, rows)
        shutil.rmtree(self.parts)
        return len(rows)
