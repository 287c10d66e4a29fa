"""What every layer uses: atomic writes and JSON lines (`io`), the content-keyed cache (`cache`), resumable sharded
outputs (`shards`), errors for settings the user must fix (`errors`) and silencing known harmless noise (`quiet`)."""

from trl_pro.utils.cache import KeyedCache, content_key, model_identity
from trl_pro.utils.errors import SetupError
from trl_pro.utils.io import (
    atomic_write,
    atomic_write_json,
    atomic_write_text,
    read_json_rows,
    write_jsonl,
    write_rows,
)


__all__ = [
    "KeyedCache",
    "SetupError",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "content_key",
    "model_identity",
    "read_json_rows",
    "write_jsonl",
    "write_rows",
]
