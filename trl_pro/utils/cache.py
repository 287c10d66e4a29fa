"""One cache layer, keyed on what determines the content.

Every on-disk cache of trl-pro (eval responses and reward scores, judge answers, the systems `trl-pro compare` keeps)
is keyed on its inputs, never on a name or a path alone:

- a model by `model_identity`: its config and a fingerprint of its weight files (names, sizes, modification times and
  the first and last MiB of each), so that a model retrained into the same folder is a new model;
- the settings that change the output (generation or judge settings, the endpoint, the loading options).

`KeyedCache` is an append-only JSON-lines file with the key it holds beside it. Opened with another key, its entries
are stale: they are logged as such, removed and recomputed; a stale entry is never returned.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from trl_pro.utils.io import append_jsonl, atomic_write_json, read_jsonl_cache


logger = logging.getLogger(__name__)

#: Files whose bytes are a model's weights (a PEFT adapter's included).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".npz", ".h5", ".msgpack")
#: Files that configure a model.
CONFIG_FILES = ("config.json", "adapter_config.json", "generation_config.json")
_SAMPLE_BYTES = 1 << 20


def content_key(value: Any) -> str:
    """A short stable hash of a JSON-serialisable value (dict keys sorted)."""
    text = json.dumps(value, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{stat.st_size}\0{stat.st_mtime_ns}".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read(_SAMPLE_BYTES))
        if stat.st_size > 2 * _SAMPLE_BYTES:
            handle.seek(-_SAMPLE_BYTES, os.SEEK_END)
            digest.update(handle.read(_SAMPLE_BYTES))
    return digest.hexdigest()[:16]


def model_identity(name_or_path: str | os.PathLike, **loading: Any) -> dict[str, Any]:
    """What a model is, for cache keys: for a local folder its config files' contents and a fingerprint of every
    weight file (so retraining into the same folder changes it); for a hub id or a built-in name, the name (a hub
    model is identified by its id). `loading` (dtype, 4-bit, seed of a built-in model, ...) is part of it, since it
    changes the model's outputs."""
    path = Path(name_or_path)
    identity: dict[str, Any] = {"name": str(name_or_path)}
    if path.is_dir():
        identity["config"] = {
            name: json.loads((path / name).read_text()) for name in CONFIG_FILES if (path / name).is_file()
        }
        identity["weights"] = {
            str(file.relative_to(path)): _file_fingerprint(file)
            for file in sorted(path.rglob("*"))
            if file.is_file() and file.suffix in WEIGHT_SUFFIXES and "checkpoint-" not in str(file.relative_to(path))
        }
        base = identity["config"].get("adapter_config.json", {}).get("base_model_name_or_path")
        if base and Path(base).is_dir():
            identity["base"] = model_identity(base)
    elif path.is_file():
        identity["file"] = _file_fingerprint(path)
    if loading:
        identity["loading"] = loading
    return identity


def changed_fields(old: dict, new: dict) -> list[str]:
    """The top-level keys whose values differ between two keys."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


class KeyedCache:
    """An append-only JSON-lines cache at `path` whose entries hold for `key` alone (see the module docstring).

    `rows()` are the entries computed for this key; `append(rows)` adds some, synced to disk, so that an interrupted
    run loses at most the batch being computed. The key is written beside the file (`<path>.key.json`)."""

    def __init__(self, path: str | os.PathLike, key: dict[str, Any], *, what: str = "cache"):
        self.path = Path(path)
        self.key_path = self.path.with_name(self.path.name + ".key.json")
        self.key = json.loads(json.dumps(key, default=str))
        previous = json.loads(self.key_path.read_text()) if self.key_path.is_file() else None
        if previous is not None and previous != self.key:
            logger.warning(
                f"{what}: the cached entries in {self.path} were computed for another "
                f"{', '.join(changed_fields(previous, self.key))}; they are stale and are recomputed"
            )
            self.path.unlink(missing_ok=True)
        elif previous is None and self.path.exists():
            # entries of unknown origin (an older trl-pro, or a key file removed): never trusted
            logger.warning(f"{what}: {self.path} has no key file; its entries are recomputed")
            self.path.unlink()
        if previous != self.key:
            atomic_write_json(self.key_path, self.key)

    def rows(self) -> list[dict]:
        return read_jsonl_cache(self.path)

    def append(self, rows: Iterable[dict]) -> None:
        append_jsonl(self.path, rows)
