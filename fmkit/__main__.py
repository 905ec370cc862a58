"""``python -m fmkit`` (and ``accelerate launch -m fmkit``) runs the command line."""

from fmkit.cli import main

raise SystemExit(main())
