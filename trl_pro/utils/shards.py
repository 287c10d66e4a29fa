"""Resumable, atomic output for `trl-pro generate` and `trl-pro rank`.

Rows are processed in shards of `shard_size` input rows. Each finished shard is written to
`<output_path>.parts/shard-NNNNN.jsonl` through a temporary file and `os.replace`, so a shard file is either complete
or absent. A manifest in the same folder records what the run is (input, arguments, row count): a rerun with the
same manifest skips the shards already there (an interrupted run resumes where it stopped, nothing is done twice); a
rerun with different settings is refused rather than mixing outputs (`overwrite` starts it over). When every shard is
there, they are joined into `output_path` (.jsonl, .jsonl.gz or .parquet) through a temporary file and `os.replace`,
the manifest is kept beside it as `<output_path>.manifest.json` with the file's size and SHA-256, and the parts folder
is removed: the final file is never half-written. A rerun of a finished run with the same settings finds it
`complete` and has nothing to do; an existing output of other settings, changed since, or of unknown origin is not
replaced unless `overwrite`.
"""

from __future__ import annotations

import hashlib
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


def _changed_keys(existing: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(existing) | set(expected) if existing.get(k) != expected.get(k))


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ShardedOutput:
    """Shards of an output file being built; see the module docstring. Nothing is written before the first shard."""

    def __init__(
        self, output_path: str, num_rows: int, shard_size: int, manifest: dict[str, Any], overwrite: bool = False
    ):
        if shard_size < 1:
            raise ValueError(f"--shard_size must be >= 1, got {shard_size}")
        self.output_path = check_output_path(output_path)
        self.parts = Path(str(self.output_path) + ".parts")
        self.record_path = Path(str(self.output_path) + ".manifest.json")
        self.num_rows, self.shard_size = num_rows, shard_size
        # through JSON, so that it compares equal to the manifest read back (tuples become lists, ...)
        self.manifest = json.loads(json.dumps({**manifest, "num_rows": num_rows, "shard_size": shard_size}))
        #: Row count of `output_path` when it already is this run's finished output (then `complete`), else None.
        self.finished_rows: int | None = None
        self._started = self._stale_parts = False
        manifest_path = self.parts / "manifest.json"
        if manifest_path.is_file():
            changed = _changed_keys(json.loads(manifest_path.read_text()), self.manifest)
            if changed and not overwrite:
                raise ValueError(
                    f"{self.parts} holds an interrupted run with other settings ({', '.join(changed)} differ); "
                    "rerun with the same settings to resume it, or with --overwrite to start over"
                )
            self._stale_parts = bool(changed)
        elif self.output_path.exists() and not overwrite:
            self.finished_rows = self._finished_rows()

    @property
    def complete(self) -> bool:
        """Whether `output_path` is already the finished output of this run (same settings, unchanged since)."""
        return self.finished_rows is not None

    def _finished_rows(self) -> int:
        """The row count of the existing `output_path` if its record shows this very run; else a `ValueError`."""
        output, record_name = self.output_path, self.record_path.name
        try:
            record = json.loads(self.record_path.read_text())
            recorded, digest, rows = record["manifest"], record["sha256"], record["rows"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(
                f"{output} exists but no finished run is recorded for it ({record_name} is missing or "
                "unreadable); --overwrite replaces it"
            ) from None
        if output.stat().st_size != record.get("bytes") or _file_digest(output) != digest:
            raise ValueError(
                f"{output} was changed after the run that wrote it ({record_name}); --overwrite redoes it"
            )
        changed = _changed_keys(recorded, self.manifest)
        if changed:
            raise ValueError(
                f"{output} was written with other settings ({', '.join(changed)} differ); --overwrite "
                "redoes it with these, or choose another --output_path"
            )
        return rows

    def _start(self) -> None:
        """Make the parts folder and its manifest (a stale one of other settings, with `overwrite`, is removed)."""
        if self._started:
            return
        if self._stale_parts:
            shutil.rmtree(self.parts)
        self.parts.mkdir(parents=True, exist_ok=True)
        if not (self.parts / "manifest.json").is_file():
            atomic_write_json(self.parts / "manifest.json", self.manifest)
        self._started = True

    @property
    def num_shards(self) -> int:
        return (self.num_rows + self.shard_size - 1) // self.shard_size

    def shard_range(self, shard: int) -> range:
        return range(shard * self.shard_size, min((shard + 1) * self.shard_size, self.num_rows))

    def shard_path(self, shard: int) -> Path:
        return self.parts / f"shard-{shard:05d}.jsonl"

    def pending(self) -> list[int]:
        if self.complete:
            return []
        self._start()
        return [shard for shard in range(self.num_shards) if not self.shard_path(shard).is_file()]

    def iter_pending(self, prog: str, progress: bool):
        """The shards still to do, as `(shard, row range)`, under a progress bar; says so when a run resumes."""
        from tqdm.auto import tqdm

        pending = self.pending()
        if len(pending) < self.num_shards and not self.complete:
            print(
                f"{prog}: resuming: {self.num_shards - len(pending)} of {self.num_shards} shards already done",
                file=sys.stderr,
            )
        for shard in tqdm(pending, desc="Shards", disable=not progress):
            yield shard, self.shard_range(shard)

    def write_shard(self, shard: int, rows: list[dict[str, Any]]) -> None:
        self._start()
        write_jsonl(self.shard_path(shard), rows)

    def finalize(self) -> int:
        """Join the shards into `output_path` (atomically), record the finished run beside it and remove the parts
        folder; returns the row count."""
        if self.complete:
            return self.finished_rows
        missing = self.pending()
        if missing:
            raise RuntimeError(f"cannot finalize {self.output_path}: shards {missing[:5]} are missing")
        rows = []
        for shard in range(self.num_shards):
            rows.extend(read_json_rows(self.shard_path(shard)))
        write_rows(self.output_path, rows)
        # After the output: a run stopped in between leaves the parts folder, and its rerun finalizes again
        atomic_write_json(
            self.record_path,
            {
                "manifest": self.manifest,
                "rows": len(rows),
                "bytes": self.output_path.stat().st_size,
                "sha256": _file_digest(self.output_path),
            },
        )
        shutil.rmtree(self.parts)
        self.finished_rows = len(rows)
        return len(rows)
