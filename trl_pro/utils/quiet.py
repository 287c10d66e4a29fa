"""Known, harmless messages of dependencies that only confuse users, silenced in one place."""

from __future__ import annotations

import logging
import warnings


def quiet_bitsandbytes() -> None:
    """bitsandbytes logs at import, on CPUs with AVX512-BF16, that it cannot fetch an optional kernel from the hub;
    its own fallback is used and nothing is wrong. Called when `trl_pro` is imported, before bitsandbytes is."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def quiet_known_noise() -> None:
    """What the commands silence: bitsandbytes' import message, and the deprecation warning transformers>=5.23 gives
    on every run for TRL's default `gradient_checkpointing=True` (the new name is `activation_checkpointing`):
    nothing the user set, nothing the user can act on."""
    quiet_bitsandbytes()
    warnings.filterwarnings("ignore", message="`gradient_checkpointing` is deprecated", category=FutureWarning)
