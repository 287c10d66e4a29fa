"""Glue shared by the `trl-pro` command line and its scripts: one-line errors, `accelerate launch` arguments, and
Ctrl-C.

TRL's CLI hands every argument its script parser does not know to `accelerate launch`. Here those arguments are
checked first, so that a typo fails at once with one line instead of a usage dump or a traceback.

Ctrl-C (SIGINT to the whole process group, in a terminal) stops the launcher and the launched script; instead of a
KeyboardInterrupt traceback from each, the launcher prints one line saying what is kept and how a re-run resumes
(`trl_pro.cli.errors.interrupted_note`) and exits with status 130.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import sys
import threading

from trl_pro.cli.errors import INTERRUPTED_STATUS, LAUNCHED_ENV, debug_enabled, fail


_SENTINEL = "__trl_pro_training_script__"


def _launch_parser(prog: str):
    from accelerate.commands.launch import launch_command_parser

    parser = launch_command_parser()
    parser.error = lambda message: fail(prog, f"accelerate launch: {message}")
    return parser


def normalize_config_flags(config_remaining: list[str]) -> list[str]:
    """`TrlParser` turns the YAML keys that no dataclass knows into `["--key", str(value)]` pairs, meant for
    `accelerate launch`. For its on/off switches (`cpu: true`, `multi_gpu: true`...), `--key True` is not valid:
    make it `--key` (and drop `--key False`)."""
    from accelerate.commands.launch import launch_command_parser

    actions = launch_command_parser()._actions
    switches = {option for action in actions if action.nargs == 0 for option in action.option_strings}
    out: list[str] = []
    for key, value in zip(config_remaining[::2], config_remaining[1::2]):
        if key in switches and value in ("True", "False"):
            out += [key] if value == "True" else []
        else:
            out += [key, value]
    return out + config_remaining[len(config_remaining) // 2 * 2 :]


def parse_launch_args(launch_args: list[str], prog: str):
    """Parse `accelerate launch` arguments; returns (namespace, arguments accelerate does not know)."""
    namespace, unknown = _launch_parser(prog).parse_known_args(list(launch_args) + [_SENTINEL])
    strays = []
    if namespace.training_script != _SENTINEL:  # a stray value was taken for the training script
        strays = [namespace.training_script] + [a for a in namespace.training_script_args if a != _SENTINEL]
    return namespace, unknown + strays


def check_launch_args(launch_args: list[str], config_remaining: list[str], prog: str, config_path: str | None):
    """Fail with one line when an argument is neither a script flag nor an `accelerate launch` flag."""
    namespace, unknown = parse_launch_args(launch_args, prog)
    if unknown:
        from_config = config_path is not None and all(token in config_remaining for token in unknown)
        where = f" in {config_path}" if from_config else ""
        fail(
            prog,
            f"unrecognized arguments{where}: {' '.join(unknown)} (neither a `{prog}` flag nor an `accelerate launch` "
            f"flag; see `{prog} --help`)",
        )
    return namespace


def config_path_of(argv: list[str]) -> str | None:
    return argv[argv.index("--config") + 1] if "--config" in argv and argv.index("--config") + 1 < len(argv) else None


def resolve_launch_args(launch_args: list[str], prog: str) -> list[str]:
    """TRL's `--accelerate_config NAME|PATH` -> `--config_file PATH` (TRL's bundled names: single_gpu, multi_gpu,
    zero1, zero2, zero3, fsdp1, fsdp2)."""
    from trl.cli.accelerate_config import resolve_accelerate_config_argument

    try:
        return resolve_accelerate_config_argument(launch_args)
    except ValueError as error:
        fail(prog, error)


def _flag_key(token: str) -> str:
    return "--" + token.lstrip("-").split("=", 1)[0].replace("-", "_")


def merge_launch_flags(config_flags: list[str], cli_flags: list[str]) -> list[str]:
    """`accelerate launch` flags from the YAML then the command line, a command-line flag replacing the YAML one
    (`--accelerate_config fsdp2` on the command line wins over `accelerate_config: zero3` in the file)."""
    cli_keys = {_flag_key(token) for token in cli_flags if token.startswith("-")}
    kept, i = [], 0
    while i < len(config_flags):
        width = 2 if i + 1 < len(config_flags) and not config_flags[i + 1].startswith("-") else 1
        if _flag_key(config_flags[i]) not in cli_keys:
            kept += config_flags[i : i + width]
        i += width
    return kept + cli_flags


# ---------------------------------------------------------------------------------------------------------------------
# Ctrl-C


class _Discard(io.TextIOBase):
    """A text stream that drops what is written to it, as text or as bytes (through `buffer`)."""

    @property
    def buffer(self):
        return self

    def write(self, data) -> int:
        return len(data)


class _Watched:
    """A text stream (with its `buffer`) passed through, remembering whether what was written last ended a line."""

    def __init__(self, stream, owner=None):
        self._stream, self._owner = stream, owner or self
        self.at_line_start = True

    @property
    def buffer(self):
        return _Watched(self._stream.buffer, self)

    def write(self, data):
        if data:
            self._owner.at_line_start = data[-1:] in ("\n", b"\n")
        return self._stream.write(data)

    def __getattr__(self, name):
        return getattr(self._stream, name)


#: torchrun's agent logs, on Ctrl-C, that it got SIGINT and passes it on to each rank: the launcher's line says it.
_TORCHRUN_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")


def _not_about_sigint(record: logging.LogRecord) -> bool:
    message = record.getMessage()
    return not (
        message.startswith(f"Received {int(signal.SIGINT)} death signal") or message.endswith("closing signal SIGINT")
    )


@contextlib.contextmanager
def interruptible_launch():
    """Around `accelerate launch`: the script is started with LAUNCHED_ENV set, so that it stops without a traceback
    on Ctrl-C (`trl_pro.cli.errors.quiet_interrupts`); from the first Ctrl-C on, what it still writes to stderr
    through accelerate (which stops it: SIGTERM, SIGKILL after 5 s) is dropped, further Ctrl-Cs are ignored, and a
    line the script left unfinished (a progress bar) is ended. Raises KeyboardInterrupt when the launch was
    interrupted. With TRL_PRO_DEBUG set, nothing is dropped."""
    interrupted = False
    stderr = sys.stderr
    watched = _Watched(stderr)

    def on_sigint(signum, frame):
        nonlocal interrupted
        if interrupted:
            return  # accelerate is stopping the script already
        interrupted = True
        sys.stderr = _Discard()  # accelerate copies the script's stderr to `sys.stderr.buffer`, chunk by chunk
        raise KeyboardInterrupt

    quiet = not debug_enabled()
    catch = quiet and threading.current_thread() is threading.main_thread()  # handlers: in the main thread only
    if catch:
        previous_handler = signal.signal(signal.SIGINT, on_sigint)
        sys.stderr = watched
    if quiet:
        for name in _TORCHRUN_LOGGERS:
            logging.getLogger(name).addFilter(_not_about_sigint)
    previous_env = os.environ.get(LAUNCHED_ENV)
    os.environ[LAUNCHED_ENV] = "1"  # the launched processes inherit the environment
    try:
        yield
        if interrupted:  # the script's end was swallowed somewhere on the way: its work is not done
            raise KeyboardInterrupt
    except (KeyboardInterrupt, SystemExit) as error:
        # accelerate turns Ctrl-C into SystemExit(130) once the script is stopped; so does torchrun's agent, whose own
        # handler replaces ours
        if quiet and (interrupted or isinstance(error, KeyboardInterrupt) or error.code == INTERRUPTED_STATUS):
            if catch and (not watched.at_line_start or stderr.isatty()):  # a terminal echoes `^C` at the cursor
                stderr.write("\n")
            raise KeyboardInterrupt from None
        raise
    finally:
        if catch:
            signal.signal(signal.SIGINT, previous_handler)
        sys.stderr = stderr
        for name in _TORCHRUN_LOGGERS:
            logging.getLogger(name).removeFilter(_not_about_sigint)
        if previous_env is None:
            os.environ.pop(LAUNCHED_ENV, None)
        else:
            os.environ[LAUNCHED_ENV] = previous_env
