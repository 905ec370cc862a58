"""Messages for the user on stderr (stdout stays clean for ``--json`` and predictions)."""

import sys


def info(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
