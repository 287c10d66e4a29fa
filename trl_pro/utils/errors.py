"""Errors the library raises for settings the user must fix; the commands print them as one line."""


class SetupError(Exception):
    """A user-facing problem found before the work starts (bad dataset, model or flag value): its message says it all,
    so it is shown without its type."""
