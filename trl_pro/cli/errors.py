"""One-line errors for every command: `trl-pro <command>: error: <message>` instead of a traceback (set
`TRL_PRO_DEBUG=1` for the traceback)."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

from trl_pro.utils.errors import SetupError


#: Set to 1 to get full tracebacks instead of one-line errors.
DEBUG_ENV = "TRL_PRO_DEBUG"


def one_line(text: object) -> str:
    return " ".join(str(text).split())


def fail(prog: str, message: object, code: int = 2) -> NoReturn:
    """Print `prog: error: message` on one line to stderr and exit with `code` (2: usage, 1: runtime)."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(code)


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


class OneLineErrors:
    """Mixin for `argparse.ArgumentParser` subclasses: an argument error is one line, without the usage dump."""

    def error(self, message: str) -> NoReturn:  # argparse's hook for every parsing error
        fail(self.prog, f"{message} (see `{self.prog} --help`)")


@contextlib.contextmanager
def one_line_errors(prog: str, hint: str = "", plain_errors: tuple[type[Exception], ...] = (SetupError,)):
    """Turn any exception raised inside into `prog: error: ...` on one line, exit status 1, unless TRL_PRO_DEBUG is
    set (then the traceback is kept). Errors of `plain_errors` types are shown by their message alone (they are
    written to name the row, file or field); any other by its type too. `hint` is added to messages naming a row."""
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
    with one_line_errors(prog, plain_errors=plain_errors):
        return main(*args)


