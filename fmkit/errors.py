"""The one exception type for user mistakes: the CLI prints it as a single line, never a traceback."""


class FmkitError(Exception):
    """A problem with the user's input (file, option, run directory), not a bug in fmkit."""
