"""``voting``: members that differ by seed (and by any train.* settings given per member), one vote."""

from __future__ import annotations

from typing import Literal

from fmkit_combine.members import Combine, VariedOptions
from fmkit_combine.vote import VOTE_OPTION


class Voting(Combine):
    """Voting: members that differ by seed, or by any train.* option lists given; soft or hard vote."""

    name = "voting"

    class Options(VariedOptions):
        vote: Literal["soft", "hard"] = VOTE_OPTION
