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

import json
import shutil
import sys
from pathlib import Path
from typing import Any

from trl_pro.utils.io import atomic_write_json, read_json_rows, write_jsonl, write_rows


OUTPUT_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")


def check_output_path(path: str) -> Path:
    output = Path(path)
    if not str(output).endswith(OUTPUT_SUFFIXES):
        raise ValueError(f"--output_path must end in {', '.join(OUTPUT_SUFFIXES)}, got {path}")
    return output


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
            atomic_write_json(manifest_path, self.manifest)

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
        write_jsonl(self.shard_path(shard), rows)

    def finalize(self) -> int:
        """Join the shards into `output_path` (atomically) and remove the parts folder; returns the row count."""
        missing = self.pending()
        if missing:
            raise RuntimeError(f"cannot finalize {self.output_path}: shards {missing[:5]} are missing")
        rows = []
        for shard in range(self.num_shards):
            rows.extend(read_json_rows(self.shard_path(shard)))
        write_rows(self.output_path, rows)
        shutil.rmtree(self.parts)
        return len(rows)
