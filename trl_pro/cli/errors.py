"""One-line errors for every command: `trl-pro <command>: error: <message>` instead of a traceback (set
`TRL_PRO_DEBUG=1` for the traceback), and one line instead of a KeyboardInterrupt traceback on Ctrl-C (exit status
130): `trl-pro <command>: interrupted; <what is kept and how to resume>`."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from typing import NoReturn

from trl_pro.utils.errors import SetupError


#: Set to 1 to get full tracebacks instead of one-line errors.
DEBUG_ENV = "TRL_PRO_DEBUG"
#: Exit status of a command stopped by Ctrl-C: 128 + SIGINT, what a shell reports for a process killed by it.
INTERRUPTED_STATUS = 130
#: Set by the `trl-pro` launcher for the script it starts: the launcher reports an interrupt, the script stops quietly.
LAUNCHED_ENV = "TRL_PRO_LAUNCHED"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print `prog: error: message` on one line to stderr and exit with `code` (2: usage, 1: runtime)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def interrupted_message(prog: str, kept: str | None = None) -> str:
    """`prog: interrupted; <kept>`: what Ctrl-C left behind and how to resume, on one line."""
    return f"{prog}: interrupted; {kept}" if kept else f"{prog}: interrupted"


def print_interrupted(prog: str, kept: str | None = None, new_line: bool = True) -> None:
    """Print `interrupted_message` to stderr, on a line of its own with `new_line` (the stopped script may have left
    one unfinished, a progress bar, and a terminal echoes `^C` at the cursor)."""
    print("\n" * new_line + interrupted_message(prog, kept), file=sys.stderr, flush=True)


#: Commands that resume by themselves when run again: (what an interrupted run keeps, the argument naming where, and
#: where it is under that path).
_KEPT_FOR_RERUN = {
    "generate": ("finished shards", "output_path", "{}.parts"),
    "rank": ("finished shards", "output_path", "{}.parts"),
    "eval": ("finished batches", "output_dir", "{}/cache"),
    "judge": ("the judgments made", "output_dir", "{}/judgments.jsonl"),
    "compare": ("the systems trained", "output_dir", "{}"),
}
#: Training commands; those of `_RESUME_FROM_LAST` take `--resume_from_checkpoint true` for the last complete
#: checkpoint of output_dir (the others, TRL's trainers as they are, a checkpoint's path).
_TRAINING_COMMANDS = ("pro", "rrhf", "list-dpo", "coh", "reward")
_RESUME_FROM_LAST = ("pro", "rrhf", "list-dpo")


def _training_note(command: str, args) -> str:
    """`interrupted_note` of a training command; `args`: its TrainingArguments, None when unknown."""
    resume_with = "true" if command in _RESUME_FROM_LAST else "<output_dir>/checkpoint-N"
    if args is None:
        return (
            f"complete checkpoints in --output_dir are kept: re-run with --resume_from_checkpoint {resume_with} "
            "to resume"
        )
    output_dir = args.output_dir
    if command in _RESUME_FROM_LAST:
        from trl_pro.trainers.checkpointing import last_complete_checkpoint

        rounds = getattr(args, "bootstrap_rounds", 0) or 0
        if rounds:
            from trl_pro.trainers.bootstrapping import bootstrap_resume_point

            kept = bootstrap_resume_point(output_dir, rounds) != (0, None)
        else:
            kept = last_complete_checkpoint(output_dir) is not None
    else:
        from transformers.trainer_utils import get_last_checkpoint

        last = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
        kept, resume_with = last is not None, last
    if kept:
        return f"checkpoints in {output_dir} are kept: re-run with --resume_from_checkpoint {resume_with} to resume"
    if getattr(args.save_strategy, "value", args.save_strategy) == "no":
        return "no checkpoint was kept (save_strategy is no): re-run the same command to start over"
    return f"no checkpoint was saved yet in {output_dir}: re-run the same command to start over"


def interrupted_note(command: str, parsed: Sequence | None = None) -> str | None:
    """What an interrupted `trl-pro <command>` leaves behind and how a re-run resumes, e.g. `finished shards in
    out.jsonl.parts are kept: re-run the same command to resume`; `parsed`: the script's parsed arguments (where its
    outputs are), when known. None for a command that keeps nothing known."""
    from transformers import TrainingArguments

    parsed = list(parsed or ())
    training_args = next((args for args in parsed if isinstance(args, TrainingArguments)), None)
    if command in _TRAINING_COMMANDS or training_args is not None:
        return _training_note(command, training_args)
    if command not in _KEPT_FOR_RERUN:
        return None
    what, attribute, where = _KEPT_FOR_RERUN[command]
    path = next((getattr(args, attribute) for args in parsed if getattr(args, attribute, None)), None)
    kept = f"{what} in {where.format(path)}" if path else what
    return f"{kept} are kept: re-run the same command to resume"


#: What `quiet_interrupts` reports: the command (`prog`) and its parsed arguments, when known.
_interrupted: dict = {"prog": None, "parsed": None}
_previous_excepthook = sys.excepthook


def _quiet_keyboard_interrupt(kind, value, traceback):
    if not issubclass(kind, KeyboardInterrupt) or debug_enabled():
        return _previous_excepthook(kind, value, traceback)
    prog = _interrupted["prog"]
    if prog is not None and not os.environ.get(LAUNCHED_ENV):
        print_interrupted(prog, interrupted_note(prog.split()[-1], _interrupted["parsed"]))


def quiet_interrupts(prog: str | None = None, parsed: tuple | None = None) -> None:
    """From now on, a Ctrl-C that stops this script prints no traceback (unless TRL_PRO_DEBUG is set): nothing when
    the `trl-pro` launcher started it (LAUNCHED_ENV: the launcher says what was kept), else `prog: interrupted; ...`
    (what is kept is read from `parsed`, the script's arguments, when given). The exit status stays that of a
    process stopped by SIGINT (130 in a shell)."""
    global _previous_excepthook
    if prog is not None and prog != _interrupted["prog"]:
        _interrupted.update(prog=prog, parsed=None)
    if parsed is not None:
        _interrupted["parsed"] = parsed
    if sys.excepthook is not _quiet_keyboard_interrupt:
        _previous_excepthook, sys.excepthook = sys.excepthook, _quiet_keyboard_interrupt


if os.environ.get(LAUNCHED_ENV):
    # a script started by `trl-pro`: quiet from the first import of this module on, before its `main` runs
    quiet_interrupts()


class OneLineErrors:
    """Mixin for `argparse.ArgumentParser` subclasses: an argument error is one line, without the usage dump."""

    def error(self, message: str) -> NoReturn:  # argparse's hook for every parsing error
        fail(self.prog, f"{message} (see `{self.prog} --help`)")


@contextlib.contextmanager
def one_line_errors(prog: str, hint: str = "", plain_errors: tuple[type[Exception], ...] = (SetupError,)):
    """Turn any exception raised inside into `prog: error: ...` on one line, exit status 1, unless TRL_PRO_DEBUG is
    set (then the traceback is kept). Errors of `plain_errors` types are shown by their message alone (they are
    written to name the row, file or field); any other by its type too. `hint` is added to messages naming a row.
    A Ctrl-C that stops the script is reported on one line as well (`quiet_interrupts`)."""
    quiet_interrupts(prog)
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        if debug_enabled():
            raise
        message = str(error) if isinstance(error, plain_errors) else f"{type(error).__name__}: {error}"
        if type(error).__name__ == "DatasetGenerationError" and error.__cause__ is not None:
            # datasets' own message ("An error occurred while generating the dataset") hides what was wrong
            message += f": {type(error.__cause__).__name__}: {error.__cause__}"
        if hint and "Row " in message:
            message += f" ({hint})"
        fail(prog, f"{message} [set TRL_PRO_DEBUG=1 for the traceback]", code=1)


def run_main(prog: str, main, *args, plain_errors: tuple[type[Exception], ...] = (ValueError,)):
    """Run a script's `main(*args)` under `one_line_errors`."""
    quiet_interrupts(prog, args)
    with one_line_errors(prog, plain_errors=plain_errors):
        return main(*args)
