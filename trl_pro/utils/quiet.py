"""Known, harmless messages of dependencies that only confuse users, silenced in one place."""

from __future__ import annotations

import logging
import warnings


def quiet_bitsandbytes() -> None:
    """bitsandbytes logs at import, on CPUs with AVX512-BF16, that it cannot fetch an optional kernel from the hub;
    its own fallback is used and nothing is wrong. Called when `trl_pro` is imported, before bitsandbytes is."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def _not_the_empty_card_message(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("Repo card metadata block was not found")


def quiet_known_noise() -> None:
    """What the commands silence: bitsandbytes' import message, the empty-card message of a local data folder, and
    the deprecation warnings transformers>=5.23 gives on every run for TRL's default `gradient_checkpointing=True`
    (the new name is `activation_checkpointing`): nothing the user set, nothing the user can act on."""
    quiet_bitsandbytes()
    # `datasets` reads a local data folder's README.md as a dataset card; the vendored slice's has no YAML block
    logging.getLogger("huggingface_hub.repocard").addFilter(_not_the_empty_card_message)
    warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
