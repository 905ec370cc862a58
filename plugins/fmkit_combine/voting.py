"""``voting``: members that differ by seed (and by any train.* settings given per member), one vote."""

from __future__ import annotations

from pydantic import Field

from fmkit_combine.members import Combine, VariedOptions, trunk_option
from fmkit_combine.vote import VoteOptions


class Voting(Combine):
    """Voting: members that continue the trunk with their own seeds (or train.* option lists); soft or hard vote."""

    name = "voting"

    class Options(VariedOptions, VoteOptions):
        members: int = Field(3, ge=2, description="ensemble members; each continues the trunk on all the rows, "
                                                  "so the cost grows with it")
        trunk: float = trunk_option(0.7)
