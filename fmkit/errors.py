"""The one exception type for user mistakes: the CLI prints it as a single line, never a traceback."""


class FmkitError(Exception):
    """A problem with the user's input (file, option, run directory), not a bug in fmkit."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's error message (or its type's name): what a one-line error quotes."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
